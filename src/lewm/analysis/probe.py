"""Probing frozen embeddings for physical quantities (PROTOCOL.md §5).

A linear (ridge) and a small MLP probe are fitted per quantity on embeddings of held-out
episodes and scored on other held-out episodes, as MSE on standardized targets and Pearson
r, the paper's "Lin MSE (r) | MLP MSE (r)" format. The same probes on a randomly
initialised encoder give the floor: a random ViT already keeps some pixel geometry, so only
the gap above it says what training added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lewm.analysis.embed import embed_episodes, random_model
from lewm.checkpoint import Checkpoint
from lewm.data import EpisodeStore
from lewm.data.clips import heldout_episodes


@dataclass(frozen=True)
class Target:
    """A physical quantity: columns ``dims`` of dataset column ``column``.

    Angles are probed as (sin, cos) so that errors wrap: -π and π are the same angle.
    """

    name: str
    column: str
    dims: tuple[int, ...] | None = None
    angle: bool = False


# Named quantities per environment; any dataset column can also be probed by its name.
NAMED_TARGETS: dict[str, tuple[Target, ...]] = {
    "tworoom": (Target("agent_pos", "proprio", (0, 1)),),
}
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {"tworoom": ("agent_pos",)}
# Bookkeeping columns that are not physical quantities.
NOT_TARGETS = ("pixels", "action", "step_idx", "ep_idx", "episode_idx", "ep_len", "ep_offset")


def resolve_targets(env: str, names: Sequence[str] | None, columns: Sequence[str]) -> list[Target]:
    """Targets by name: the environment's named quantities first, then raw column names."""
    named = {t.name: t for t in NAMED_TARGETS.get(env, ()) if t.column in columns}
    raw = [c for c in columns if c not in NOT_TARGETS]
    if not names:
        names = [n for n in DEFAULT_TARGETS.get(env, ()) if n in named] or raw
    targets = []
    for name in names:
        if name in named:
            targets.append(named[name])
        elif name in raw:
            targets.append(Target(name, name))
        else:
            raise ValueError(
                f"unknown probe target {name!r}; available: {', '.join([*named, *raw])}"
            )
    if not targets:
        raise ValueError("no probe targets: the data file has no state or proprio columns")
    return targets


def target_values(store: EpisodeStore, target: Target, rows: np.ndarray) -> np.ndarray:
    values = np.asarray(store.read(target.column, rows), dtype=np.float64).reshape(rows.size, -1)
    if target.dims is not None:
        values = values[:, list(target.dims)]
    if target.angle:
        values = np.concatenate([np.sin(values), np.cos(values)], axis=1)
    return values


def _standardize(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std


def fit_ridge(x: Tensor, y: Tensor, ridge: float = 1e-6) -> Tensor:
    """Closed-form ridge weights (D+1, k) with a bias row; λ scales with the sample count.

    The default is nearly plain least squares: only enough to keep the solve stable when
    embeddings use few dimensions. On TwoRoom, λ = 1e-3·N already cost 0.04 of r.
    """
    xb = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    reg = ridge * x.shape[0] * torch.eye(xb.shape[1], dtype=x.dtype)
    reg[-1, -1] = 0.0  # the bias is not shrunk
    return torch.linalg.solve(xb.T @ xb + reg, xb.T @ y)


def predict_ridge(w: Tensor, x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1) @ w


def fit_mlp(x: Tensor, y: Tensor, seed: int, steps: int = 1500, hidden: int = 256) -> nn.Module:
    """A two-hidden-layer MLP trained full batch with Adam; seeded without touching the
    caller's global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = nn.Sequential(
            nn.Linear(x.shape[1], hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, y.shape[1]),
        )
    x, y = x.float(), y.float()
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.mean((mlp(x) - y) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return mlp.eval()


def scores(pred: Tensor, target: Tensor) -> dict[str, float]:
    """MSE on standardized targets (mean ± std over samples) and Pearson r (mean over dims)."""
    pred, target = pred.double(), target.double()
    per_sample = ((pred - target) ** 2).mean(dim=1)
    pc, tc = pred - pred.mean(0), target - target.mean(0)
    denom = (pc.norm(dim=0) * tc.norm(dim=0)).clamp_min(1e-12)
    r = (pc * tc).sum(0) / denom
    return {
        "mse": float(per_sample.mean()),
        "mse_std": float(per_sample.std()) if per_sample.numel() > 1 else 0.0,
        "r": float(r.mean()),
    }


def probe_features(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, seed: int,
    mlp_steps: int = 1500,
) -> dict[str, dict[str, float]]:
    """Fit both probes on (x_train, y_train) and score them on the test split.

    Features and targets are standardized with the training split's statistics, so MSE
    is in units of the target's spread and comparable across quantities.
    """
    xtr, xte = _standardize(x_train.double(), x_test.double())
    ytr, yte = _standardize(y_train.double(), y_test.double())
    w = fit_ridge(xtr, ytr)
    mlp = fit_mlp(xtr, ytr, seed, steps=mlp_steps)
    with torch.inference_mode():
        mlp_pred = mlp(xte.float())
    return {"linear": scores(predict_ridge(w, xte), yte), "mlp": scores(mlp_pred, yte)}


def run_probe(
    ckpt: Checkpoint,
    store: EpisodeStore,
    targets: Sequence[str] | None = None,
    seed: int = 0,
    max_episodes: int = 0,
    test_fraction: float = 0.2,
    mlp_steps: int = 1500,
) -> dict:
    """Probe the checkpoint's encoder and a random one on the run's held-out episodes.

    The held-out episodes are split again, by episode, into probe-train and probe-test, so
    no test frame comes from an episode a probe was fitted on.
    """
    cfg = ckpt.config
    resolved = resolve_targets(cfg.env, targets, store.columns)
    store.require_finite(sorted({t.column for t in resolved}))
    episodes = heldout_episodes(cfg, store)
    rng = np.random.default_rng(seed)
    episodes = rng.permutation(episodes)
    if max_episodes:
        episodes = episodes[:max_episodes]
    if episodes.size < 2:
        raise ValueError(f"{store.path}: probing needs at least 2 held-out episodes")
    n_test = min(max(1, round(test_fraction * episodes.size)), episodes.size - 1)
    split = {"test": np.sort(episodes[:n_test]), "train": np.sort(episodes[n_test:])}
    device = ckpt.model.pixel_mean.device
    encoders = {"trained": ckpt.model, "random_init": random_model(ckpt, seed)}
    results: dict = {
        "env": cfg.env,
        "data": str(store.path),
        "episodes": {k: int(v.size) for k, v in split.items()},
        "targets": {},
    }
    features: dict[str, dict[str, Tensor]] = {}
    rows: dict[str, np.ndarray] = {}
    for part, eps in split.items():
        for name, model in encoders.items():
            embedded = embed_episodes(model, store, eps, ckpt.normalizer, cfg.model.frameskip,
                                      device)
            features.setdefault(name, {})[part] = torch.cat([e.z for e in embedded])
            rows[part] = np.concatenate([e.rows for e in embedded])
    results["samples"] = {k: int(v.size) for k, v in rows.items()}
    for target in resolved:
        y = {part: torch.from_numpy(target_values(store, target, rows[part])) for part in split}
        results["targets"][target.name] = {
            "column": target.column,
            **{
                name: probe_features(feats["train"], y["train"], feats["test"], y["test"],
                                     seed, mlp_steps)
                for name, feats in features.items()
            },
        }
    return results
