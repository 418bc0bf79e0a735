"""Typed configuration with named presets and ``key=value`` overrides.

Every command resolves one :class:`RunConfig` (preset, then overrides) and saves it with
the run, so a run folder always says exactly what produced it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lewm.io import atomic_write_text, read_json_object


class ConfigError(ValueError):
    """A preset name, an override or a saved config that cannot be used."""


@dataclass
class ModelConfig:
    """The LeWM architecture (MODEL.md §2–5). Defaults are the released ``paper`` model."""

    image_size: int = 224
    patch_size: int = 14
    enc_dim: int = 192
    enc_depth: int = 12
    enc_heads: int = 3
    enc_mlp: int = 768
    embed_dim: int = 192
    proj_hidden: int = 2048
    pred_depth: int = 6
    pred_heads: int = 16
    pred_dim_head: int = 64
    pred_mlp: int = 2048
    pred_dropout: float = 0.1
    history: int = 3
    num_preds: int = 1
    action_dim: int = 2
    frameskip: int = 5
    action_hidden: int = 768
    sigreg_lambda: float = 0.09
    sigreg_projections: int = 1024
    sigreg_knots: int = 17

    @property
    def block_dim(self) -> int:
        """Width of one action block: ``frameskip`` raw actions concatenated."""
        return self.frameskip * self.action_dim

    @property
    def num_steps(self) -> int:
        """Frames per training clip: the predictor's context plus the frames it predicts."""
        return self.history + self.num_preds


@dataclass
class DataConfig:
    path: str = ""
    val_fraction: float = 0.1
    cache: str = "auto"
    num_workers: int = 0


@dataclass
class TrainConfig:
    """Optimisation and the engineering around it (MODEL.md §7).

    ``batch_size`` is the global batch: with ``devices`` processes per node on ``num_nodes``
    nodes, each process loads batch_size / (devices·num_nodes) clips, and SIGReg is computed
    over the whole global batch (MODEL.md §5.1), so λ and ``lr`` need no change when scaling
    out. ``strategy`` is Lightning's: ``auto`` (one device) or ``ddp`` (one process per device,
    launched by ``lewm train`` itself, by torchrun or by SLURM). A step whose loss is NaN or inf is
    skipped and counted (``train/nonfinite_steps``); ``max_nonfinite`` such steps in a row stop
    the run (0: never stop).
    """

    max_steps: int = 10_000
    max_minutes: float = 0.0
    batch_size: int = 128
    lr: float = 5e-5
    weight_decay: float = 1e-3
    warmup_fraction: float = 0.01
    grad_clip: float = 1.0
    precision: str = "bf16-mixed"
    log_every: int = 25
    val_every: int = 250
    val_batches: int = 8
    ckpt_every: int = 250
    bn_recalib_batches: int = 40
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    max_nonfinite: int = 20


@dataclass
class PlanConfig:
    """Planner settings; the defaults are the paper's CEM (PROTOCOL.md §2).

    ``samples`` is the population of cem/icem/mppi and the number of parallel starts of
    ``gradient``; ``elites`` is used by cem and icem; the ``icem_``, ``mppi_`` and ``grad_``
    fields tune only their solver. ``warm_start`` starts each plan from the previous plan's
    unexecuted tail instead of from zero. ``compile`` runs the latent rollout through
    ``torch.compile`` with the weights frozen: the same rollout to float rounding, 1.3×
    (paper) to 1.6× (tiny) faster on CPU, after a one-off compile of 20–45 s per batch shape
    (on CPU it needs a C++ compiler); the gradient solver, which needs autograd, keeps the
    eager rollout.
    ``precision="bf16"`` runs the rollout under bfloat16 autocast (costs stay float32):
    faster where the hardware has bf16 matmuls (AMX CPUs, GPUs), but plans are no longer
    those of float32, since late CEM iterations rank candidates closer than bf16 resolves.
    """

    solver: str = "cem"
    samples: int = 300
    elites: int = 30
    iterations: int = 30
    horizon: int = 5
    receding_horizon: int = 5
    warm_start: bool = False
    compile: bool = False
    precision: str = "fp32"
    icem_beta: float = 2.0
    icem_decay: float = 1.25
    mppi_temperature: float = 0.1
    grad_lr: float = 0.1


@dataclass
class EvalConfig:
    episodes: int = 50
    goal_offset: int = 25
    budget: int = 50
    split: str = "val"
    gifs: int = 4
    batch: int = 10


@dataclass
class RunConfig:
    env: str = "tworoom"
    preset: str = "paper"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        return _build(cls, data, source)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(read_json_object(path, "config file", ConfigError), str(path))


def _tiny() -> RunConfig:
    """A CPU preset sized so that ``make demo`` trains in minutes on two cores.

    Patch 8 at 64 px keeps the agent (a ~4 px dot) inside few patches, and history 1 is
    what the paper uses for TwoRoom; both mattered more than width in calibration.
    """
    return RunConfig(
        preset="tiny",
        model=ModelConfig(
            image_size=64,
            patch_size=8,
            enc_dim=128,
            enc_depth=4,
            enc_heads=4,
            enc_mlp=512,
            embed_dim=128,
            proj_hidden=512,
            pred_depth=4,
            pred_heads=4,
            pred_dim_head=32,
            pred_mlp=512,
            history=1,
            action_hidden=512,
        ),
        train=TrainConfig(
            max_steps=1000,
            max_minutes=0.0,
            batch_size=64,
            lr=1e-3,
            warmup_fraction=0.02,
            log_every=25,
            val_every=200,
            ckpt_every=200,
        ),
    )


def _paper() -> RunConfig:
    """The released LeWM configuration (MODEL.md §7): 224 px, ViT-tiny/14, history 3."""
    return RunConfig(preset="paper")


PRESETS: dict[str, typing.Callable[[], RunConfig]] = {"tiny": _tiny, "paper": _paper}


def preset(name: str) -> RunConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}"
        ) from None


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _leaf_paths(cls: type, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Map every dotted field path (``model.patch_size``) to its tuple of names."""
    paths: dict[str, tuple[str, ...]] = {}
    for name, tp in _field_types(cls).items():
        full = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            paths.update(
                {k: (name, *v) for k, v in _leaf_paths(tp, f"{full}.").items()}
            )
        else:
            paths[full] = (name,)
    return paths


def _coerce(text: str, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        tp = args[0]
    try:
        if tp is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if tp is int:
            return int(float(text)) if "e" in text.lower() else int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
    except ValueError:
        raise ConfigError(
            f"override {key}={text!r}: expected a value of type {tp.__name__}"
        ) from None
    raise ConfigError(f"override {key}: fields of type {tp} cannot be set from text")


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``key=value`` strings; a key is a dotted path or an unambiguous field name."""
    paths = _leaf_paths(RunConfig)
    by_leaf: dict[str, list[str]] = {}
    for dotted in paths:
        by_leaf.setdefault(dotted.rsplit(".", 1)[-1], []).append(dotted)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-3")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in paths:
            matches = by_leaf.get(key, [])
            if len(matches) != 1:
                hint = (
                    f"ambiguous, say one of {', '.join(matches)}"
                    if matches
                    else "no such field; run `lewm config --preset tiny` to list them"
                )
                raise ConfigError(f"override {key!r}: {hint}")
            key = matches[0]
        target: Any = cfg
        names = paths[key]
        for name in names[:-1]:
            target = getattr(target, name)
        leaf_type = _field_types(type(target))[names[-1]]
        setattr(target, names[-1], _coerce(text.strip(), leaf_type, key))
    return cfg


def _build(cls: type, data: dict[str, Any], source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected an object for {cls.__name__}")
    hints = _field_types(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)} in {cls.__name__}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        is_section = dataclasses.is_dataclass(tp)
        kwargs[name] = _build(tp, value, f"{source}.{name}") if is_section else value
    return cls(**kwargs)


def resolve(
    preset_name: str,
    overrides: list[str] | None = None,
    options: dict[str, Any] | None = None,
) -> RunConfig:
    """Preset, then CLI options given explicitly (dotted path -> value), then overrides."""
    cfg = preset(preset_name)
    for dotted, value in (options or {}).items():
        if value is not None:
            apply_overrides(cfg, [f"{dotted}={value}"])
    return apply_overrides(cfg, list(overrides or []))
