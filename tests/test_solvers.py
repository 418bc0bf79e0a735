import pytest
import torch

from lewm.config import PlanConfig
from lewm.plan.solvers import CEM, ICEM, MPPI, GradientDescent, make_solver, noise


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def quadratic(target: torch.Tensor):
    def cost(candidates: torch.Tensor) -> torch.Tensor:
        return ((candidates - target) ** 2).flatten(2).sum(-1)

    return cost


TARGET = torch.tensor([[0.5, -1.5, 2.0], [1.0, 0.0, -0.7]])
SOLVERS = {
    "cem": CEM(300, 30, 30),
    "icem": ICEM(300, 30, 20),
    "mppi": MPPI(300, 20),
    "gradient": GradientDescent(8, 150, 0.1),
}


@pytest.mark.parametrize("name", SOLVERS)
def test_solver_lowers_a_known_quadratic(name):
    solver = SOLVERS[name]
    cost = quadratic(TARGET)
    start = cost(torch.zeros(1, 1, *TARGET.shape)).item()
    plan = solver.solve(cost, TARGET.shape, generators=gens(0))
    assert plan.shape == (1, *TARGET.shape)
    final = cost(plan.unsqueeze(1)).item()
    assert final < 0.05 * start
    torch.testing.assert_close(plan[0], TARGET, atol=0.1, rtol=0)


def test_cem_reaches_the_minimum_closely():
    plan = CEM(300, 30, 30).solve(quadratic(TARGET), TARGET.shape, generators=gens(0))
    torch.testing.assert_close(plan[0], TARGET, atol=1e-2, rtol=0)


@pytest.mark.parametrize("name", SOLVERS)
def test_batched_planning_equals_planning_one_problem_at_a_time(name):
    solver = SOLVERS[name]
    targets = torch.stack([TARGET, -TARGET, 0.5 * TARGET])

    def batched(candidates):
        return ((candidates - targets.unsqueeze(1)) ** 2).flatten(2).sum(-1)

    together = solver.solve(batched, TARGET.shape, batch=3, generators=gens(1, 2, 3))
    for i, seed in enumerate((1, 2, 3)):
        alone = solver.solve(quadratic(targets[i]), TARGET.shape, generators=gens(seed))
        torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=0)


def test_same_seed_same_plan_and_seed_matters():
    solver = CEM(50, 5, 3)
    target = torch.tensor([[0.3, 0.1]])
    a = solver.solve(quadratic(target), (1, 2), generators=gens(7))
    b = solver.solve(quadratic(target), (1, 2), generators=gens(7))
    c = solver.solve(quadratic(target), (1, 2), generators=gens(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cem_keeps_the_mean_as_a_candidate():
    seen = []

    def cost(candidates):
        seen.append(candidates.clone())
        return candidates.abs().flatten(2).sum(-1)

    CEM(10, 2, 1).solve(cost, (2, 2), generators=gens(0))
    assert torch.equal(seen[0][0, 0], torch.zeros(2, 2))


def test_warm_start_is_the_first_candidate():
    init = torch.full((1, 2, 3), 0.7)
    seen = []

    def cost(candidates):
        seen.append(candidates.clone())
        return candidates.abs().flatten(2).sum(-1)

    CEM(10, 2, 1).solve(cost, (2, 3), generators=gens(0), init=init)
    assert torch.equal(seen[0][0, 0], init[0])


def test_gradient_solver_gradients_match_finite_differences():
    """The gradient the solver follows is the true gradient of the cost it is given."""
    torch.manual_seed(0)
    weight = torch.randn(6, 6, dtype=torch.float64)

    def cost(a):
        return torch.tanh(a.flatten(2) @ weight).pow(2).sum(-1)

    actions = torch.randn(1, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(cost(actions).sum(), actions)
    numeric = torch.zeros_like(actions)
    for idx in range(6):
        bump = torch.zeros(6, dtype=torch.float64)
        bump[idx] = 1e-6
        bump = bump.view(1, 1, 2, 3)
        numeric.view(-1)[idx] = (cost(actions + bump) - cost(actions - bump)).item() / 2e-6
    torch.testing.assert_close(grad, numeric, atol=1e-6, rtol=1e-5)


def test_coloured_noise_is_unit_variance_and_correlated_in_time():
    white = noise(gens(0), 1, 4000, (8, 2), "cpu")
    red = noise(gens(0), 1, 4000, (8, 2), "cpu", beta=2.0)
    assert abs(red.std().item() - 1.0) < 0.1

    def lag1(x):
        return torch.corrcoef(torch.stack([x[0, :, :-1].flatten(), x[0, :, 1:].flatten()]))[0, 1]

    assert lag1(red) > 0.5 > abs(lag1(white)) + 0.4


@pytest.mark.parametrize("kwargs", [{"elites": 1}, {"elites": 400}, {"iterations": 0}])
def test_cem_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="CEM needs"):
        CEM(**{"samples": 300, "elites": 30, "iterations": 30, **kwargs})


def test_cost_of_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="cost function returned shape"):
        CEM(10, 2, 1).solve(lambda c: c.sum(-1), (2, 3))


def test_solvers_are_chosen_by_name():
    for name, kind in (("cem", CEM), ("icem", ICEM), ("mppi", MPPI), ("gradient", GradientDescent)):
        assert isinstance(make_solver(PlanConfig(solver=name)), kind)
    with pytest.raises(ValueError, match="unknown solver 'simplex'.*cem, icem, mppi, gradient"):
        make_solver(PlanConfig(solver="simplex"))
