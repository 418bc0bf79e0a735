import pytest
import torch

from lewm.plan.cem import CEM


def quadratic(target: torch.Tensor):
    def cost(candidates: torch.Tensor) -> torch.Tensor:
        return ((candidates - target) ** 2).flatten(2).sum(-1)

    return cost


def test_cem_finds_minimum_of_known_quadratic():
    target = torch.tensor([[0.5, -1.5, 2.0], [1.0, 0.0, -0.7]])
    plan = CEM(samples=300, elites=30, iterations=30).solve(
        quadratic(target), target.shape, generator=torch.Generator().manual_seed(0)
    )
    assert plan.shape == (1, 2, 3)
    torch.testing.assert_close(plan[0], target, atol=1e-2, rtol=0)


def test_cem_batched_problems_are_solved_independently():
    targets = torch.tensor([[[1.0, 2.0]], [[-2.0, 0.5]]])

    def cost(candidates):
        return ((candidates - targets.unsqueeze(1)) ** 2).flatten(2).sum(-1)

    plan = CEM(200, 20, 25).solve(cost, (1, 2), batch=2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(plan, targets, atol=2e-2, rtol=0)


def test_cem_same_seed_same_plan_and_seed_matters():
    target = torch.tensor([[0.3, 0.1]])
    solver = CEM(50, 5, 3)
    a = solver.solve(quadratic(target), (1, 2), generator=torch.Generator().manual_seed(7))
    b = solver.solve(quadratic(target), (1, 2), generator=torch.Generator().manual_seed(7))
    c = solver.solve(quadratic(target), (1, 2), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_cem_keeps_the_mean_as_a_candidate():
    """Candidate 0 is the current mean: with one iteration and a cost that only the
    all-zero sequence satisfies, the elite set must contain it."""
    seen = []

    def cost(candidates):
        seen.append(candidates.clone())
        return candidates.abs().flatten(2).sum(-1)

    CEM(10, 2, 1).solve(cost, (2, 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen[0][0, 0], torch.zeros(2, 2))


@pytest.mark.parametrize("kwargs", [{"elites": 1}, {"elites": 400}, {"iterations": 0}])
def test_cem_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="CEM needs"):
        CEM(**{"samples": 300, "elites": 30, "iterations": 30, **kwargs})


def test_cem_rejects_cost_of_wrong_shape():
    with pytest.raises(ValueError, match="cost function returned shape"):
        CEM(10, 2, 1).solve(lambda c: c.sum(-1), (2, 3))
