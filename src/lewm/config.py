"""Typed configuration with named presets and ``key=value`` overrides.

Every command resolves one :class:`RunConfig` (preset, then overrides) and saves it with
the run, so a run folder always says exactly what produced it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lewm.baselines.dinowm_config import DinoWMConfig
from lewm.baselines.pldm_config import PLDMConfig
from lewm.config_checks import (
    RENDER_MODES,
    ConfigError,
    at_least,
    field_types,
    finite,
    require,
    show,
)
from lewm.io import atomic_write_text, read_json_object
from lewm.model.config import ModelConfig
from lewm.track import parse_loggers

__all__ = [
    "MODEL_CONFIGS",
    "ConfigError",
    "DataConfig",
    "DinoWMConfig",
    "EvalConfig",
    "ModelConfig",
    "PLDMConfig",
    "PlanConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "preset",
    "resolve",
]

# Lightning's seed range (seed_everything refuses anything outside it).
SEED_MAX = 2**32 - 1
# The training precisions lewm supports, as Lightning names them: float32, and float32
# weights under bf16 or fp16 autocast (SIGReg always runs in float32); auto picks bf16 where
# the device computes it natively, else float32 (lewm.device.train_precision).
TRAIN_PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
# The solvers that keep elites (cf. PlanConfig); the others ignore plan.elites.
ELITE_SOLVERS = ("cem", "icem")

# Every world model's config, by ``model.kind``; each lives beside its model.
MODEL_CONFIGS: dict[str, type] = {"lewm": ModelConfig, "pldm": PLDMConfig, "dinowm": DinoWMConfig}
AnyModelConfig = ModelConfig | DinoWMConfig
# Frame size, time axis and predictor mean the same in every kind, so these survive a
# change of ``model.kind`` (a preset's small predictor stays small); LeWM and PLDM share
# their whole network besides, but never a loss weight.
KIND_INDEPENDENT = (
    "image_size", "history", "num_preds", "action_dim", "frameskip", "pred_depth", "pred_heads",
    "pred_dim_head", "pred_mlp", "pred_dropout",
)  # fmt: skip
LOSS_WEIGHTS = ("sigreg_lambda",)


def model_config_class(kind: Any, where: str = "model.kind") -> type:
    """The config class of a world-model kind; an unknown kind is refused with the list."""
    if kind not in MODEL_CONFIGS:
        raise ConfigError(
            f"{where}={show(kind)}: unknown world-model kind; expected one of "
            f"{', '.join(sorted(MODEL_CONFIGS))}",
            field="model.kind",
        )
    return MODEL_CONFIGS[kind]


def switch_kind(model: AnyModelConfig, kind: str) -> AnyModelConfig:
    """``model`` as a config of ``kind``: the new kind's defaults, keeping the fields that
    mean the same in both (see KIND_INDEPENDENT)."""
    cls = model_config_class(kind)
    if type(model) is cls:
        return model
    names = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(model)}
    if isinstance(model, ModelConfig) and issubclass(cls, ModelConfig):
        keep = names - {"kind", *LOSS_WEIGHTS}
    else:
        keep = names & set(KIND_INDEPENDENT)
    return cls(**{name: getattr(model, name) for name in keep})


@dataclass
class DataConfig:
    """``render`` is how the training data's frames were drawn, read from the file by
    training (files without the attribute, such as the released ones, are ``faithful``), so
    that evaluation draws the environment the same way."""

    path: str = ""
    val_fraction: float = 0.1
    cache: str = "auto"
    num_workers: int = 0
    render: str = "faithful"

    def validate(self, section: str = "data") -> None:
        """A validation split that exists and leaves training data (training needs both)."""
        finite(section, self)
        require(
            0 < self.val_fraction < 1, f"{section}.val_fraction", self.val_fraction,
            "a fraction in (0, 1)",
        )  # fmt: skip
        at_least(section, self, 0, "num_workers")
        require(
            self.render in RENDER_MODES, f"{section}.render", self.render,
            f"one of {', '.join(RENDER_MODES)}",
        )  # fmt: skip


@dataclass
class TrainConfig:
    """Optimisation and the engineering around it (MODEL.md §7).

    ``batch_size`` is the global batch: with ``devices`` processes per node on ``num_nodes``
    nodes, each process loads batch_size / (devices·num_nodes) clips, and SIGReg is computed
    over the whole global batch (MODEL.md §5.1), so λ and ``lr`` need no change when scaling
    out. ``strategy`` is Lightning's: ``auto`` (one device) or ``ddp`` (one process per device,
    launched by ``lewm train`` itself, by torchrun or by SLURM). A step whose loss is NaN or inf is
    skipped and counted (``train/nonfinite_steps``); ``max_nonfinite`` such steps in a row stop
    the run (0: never stop). ``logger`` lists Lightning loggers (csv, tensorboard, wandb,
    mlflow; csv always, lewm's own tools read it); ``tracker_project`` is the W&B project and
    the MLflow experiment. See :mod:`lewm.track`. ``precision`` ``auto`` is the paper's bf16
    autocast where the device computes bf16 natively and float32 where it would emulate it
    (CPUs without AVX-512/AMX, where emulated bf16 made a step 17x slower); the run's saved
    config records what it resolved to.
    """

    max_steps: int = 10_000
    max_minutes: float = 0.0
    batch_size: int = 128
    lr: float = 5e-5
    weight_decay: float = 1e-3
    warmup_fraction: float = 0.01
    grad_clip: float = 1.0
    precision: str = "auto"
    log_every: int = 25
    val_every: int = 250
    val_batches: int = 8
    ckpt_every: int = 250
    bn_recalib_batches: int = 40
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    max_nonfinite: int = 20
    logger: str = "csv,tensorboard"
    tracker_project: str = "lewm"

    def validate(self, section: str = "train") -> None:
        """Refuse settings that would train without bound, not at all, or into NaN weights
        (``lr=inf`` does so within a step and still exits 0)."""
        finite(section, self)
        at_least(
            section, self, 1, "max_steps", "batch_size", "log_every", "val_every",
            "val_batches", "ckpt_every", "bn_recalib_batches", "devices", "num_nodes",
        )  # fmt: skip
        at_least(section, self, 0, "max_nonfinite")
        require(self.lr > 0, f"{section}.lr", self.lr, "a number > 0")
        for name in ("max_minutes", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            require(value >= 0, f"{section}.{name}", value, "a number >= 0")
        require(
            0 <= self.warmup_fraction < 1, f"{section}.warmup_fraction", self.warmup_fraction,
            "a fraction in [0, 1)",
        )  # fmt: skip
        require(
            self.precision in TRAIN_PRECISIONS, f"{section}.precision", self.precision,
            f"one of {', '.join(TRAIN_PRECISIONS)}",
        )  # fmt: skip
        parse_loggers(self.logger, f"{section}.logger")
        require(bool(self.tracker_project.strip()), f"{section}.tracker_project",
                self.tracker_project, "a W&B project / MLflow experiment name")  # fmt: skip


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
    ``history`` is how many real frames (``frameskip`` steps apart, the current one last) the
    predictor starts from, with the blocks executed between them; 1 is the reference's
    evaluation (the current frame only). More lets a model trained with ``model.history`` > 1
    see velocities, which one frame does not show; at most ``model.history``.
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
    history: int = 1

    def validate(self, section: str = "plan") -> None:
        """Refuse searches that are empty, cannot rank (one elite has no spread) or grow
        without bound (an iCEM decay below 1 enlarges the population every iteration)."""
        finite(section, self)
        at_least(
            section, self, 1, "samples", "iterations", "horizon", "receding_horizon", "history"
        )
        require(
            self.receding_horizon <= self.horizon, f"{section}.receding_horizon",
            self.receding_horizon, f"at most {section}.horizon={self.horizon}",
        )  # fmt: skip
        if self.solver in ELITE_SOLVERS:
            require(
                2 <= self.elites <= self.samples, f"{section}.elites", self.elites,
                f"an integer in [2, {section}.samples={self.samples}] for {self.solver}",
            )  # fmt: skip
        require(self.icem_beta >= 0, f"{section}.icem_beta", self.icem_beta, "a number >= 0")
        require(self.icem_decay >= 1, f"{section}.icem_decay", self.icem_decay, "a number >= 1")
        for name in ("mppi_temperature", "grad_lr"):
            value = getattr(self, name)
            require(value > 0, f"{section}.{name}", value, "a number > 0")


@dataclass
class EvalConfig:
    episodes: int = 50
    goal_offset: int = 25
    budget: int = 50
    split: str = "val"
    gifs: int = 4
    batch: int = 10
    exclude_solved_starts: bool = True
    render: str = ""

    def validate(self, section: str = "eval") -> None:
        """Refuse an evaluation of no episodes or steps, which would report a success rate
        of nothing. ``render`` empty means as the training data was drawn (``data.render``)."""
        at_least(section, self, 1, "episodes", "goal_offset", "budget", "batch")
        at_least(section, self, 0, "gifs")
        require(
            self.render in ("", *RENDER_MODES), f"{section}.render", self.render,
            f"empty (as the training data) or one of {', '.join(RENDER_MODES)}",
        )  # fmt: skip


@dataclass
class RunConfig:
    """``env`` is empty until set: training takes it from the data file, and an ``env=`` given
    by the user must then agree with the file rather than be silently replaced."""

    env: str = ""
    preset: str = "paper"
    seed: int = 0
    model: AnyModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        """Every section's checks, plus the seed's range; ConfigError names the first bad
        field by its dotted path, its value and what was expected."""
        require(0 <= self.seed <= SEED_MAX, "seed", self.seed, f"an integer in [0, {SEED_MAX}]")
        self.model.validate()
        self.data.validate()
        self.train.validate()
        self.plan.validate()
        self.eval.validate()
        require(
            self.plan.history <= self.model.history, "plan.history", self.plan.history,
            f"at most model.history={self.model.history} (the predictor's window)",
        )  # fmt: skip
        require(
            self.plan.history == 1 or not self.model.uses_proprio, "plan.history",
            self.plan.history, "1 for a model that reads proprioception (its past is not kept)",
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        """A checked config from JSON data: every field of its annotated type, every value
        valid; errors start with ``source`` (the file)."""
        cfg: RunConfig = _build(cls, data, source)
        try:
            cfg.validate()
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}", field=exc.field) from None
        return cfg

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


def _leaf_paths(obj: Any, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Map every dotted field path (``model.patch_size``) of the config ``obj`` to its tuple
    of names; sections are read from the instance, whose model kind decides its fields."""
    paths: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(obj):
        full = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            paths.update(
                {k: (f.name, *v) for k, v in _leaf_paths(value, f"{full}.").items()}
            )
        else:
            paths[full] = (f.name,)
    return paths


def _optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` → (X, True); any other annotation → (itself, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _coerce(text: str, tp: Any, key: str) -> Any:
    tp, nullable = _optional(tp)
    if nullable and text.lower() in ("none", "null"):
        return None
    try:
        if tp is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if tp is int:
            if "e" not in text.lower():
                return int(text)
            number = float(text)  # 1e5 is an integer; 1.5e0 is not
            if not number.is_integer():
                raise ValueError(text)
            return int(number)
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
    """Apply ``key=value`` strings; a key is a dotted path or an unambiguous field name.

    The result is validated as a whole (:meth:`RunConfig.validate`), so no caller can go on
    with a value the typed text allowed but the run cannot use (``train.lr=inf``).
    """
    kinds = [item for item in overrides if item.split("=", 1)[0].strip() in ("kind", "model.kind")]
    for item in kinds:  # first, so that the other overrides see the new kind's fields
        cfg.model = switch_kind(cfg.model, item.split("=", 1)[1].strip())
    paths = _leaf_paths(cfg)
    by_leaf: dict[str, list[str]] = {}
    for dotted in paths:
        by_leaf.setdefault(dotted.rsplit(".", 1)[-1], []).append(dotted)
    for item in overrides:
        if item in kinds:
            continue
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
                    else "no such field for this model.kind; run `lewm config --preset tiny` "
                    "(with model.kind=...) to list them"
                )
                raise ConfigError(f"override {key!r}: {hint}")
            key = matches[0]
        target: Any = cfg
        names = paths[key]
        for name in names[:-1]:
            target = getattr(target, name)
        leaf_type = field_types(type(target))[names[-1]]
        setattr(target, names[-1], _coerce(text.strip(), leaf_type, key))
    cfg.validate()
    return cfg


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _typed(value: Any, tp: Any, where: str) -> Any:
    """``value`` if it has the annotated type ``tp`` (an integer is a fine float, a boolean
    is no number), else a ConfigError naming the field: a "8" or a 0.5 where an int
    belongs would otherwise surface as a TypeError deep in torch."""
    tp, nullable = _optional(tp)
    if value is None and nullable:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is float:
        ok = number and (isinstance(value, float) or abs(value) <= sys.float_info.max)
        if ok:
            return float(value)
    elif tp is bool or tp is str:
        ok = isinstance(value, tp)
    elif tp is int:
        ok = number and isinstance(value, int)
    else:
        raise ConfigError(f"{where}: fields of type {tp} cannot be read from JSON")
    if not ok:
        expected = _TYPE_NAMES[tp] + (" or null" if nullable else "")
        raise ConfigError(f"{where}: expected {expected}, found {show(value)}", field=where)
    return value


def _build(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    """``cls`` from JSON data, every field type-checked; errors name ``source`` and the
    field's dotted path."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{source}: {where}: expected an object of {cls.__name__} fields")
    hints = field_types(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        names = ", ".join(f"{prefix}{name}" for name in unknown)
        raise ConfigError(f"{source}: unknown field(s) {names} in {cls.__name__}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if cls is RunConfig and name == "model":
            # the kind picks the model's fields; configs from before kinds existed are LeWM's
            kind = value.get("kind", "lewm") if isinstance(value, dict) else "lewm"
            tp = model_config_class(kind, f"{source}: model.kind")
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, source, f"{prefix}{name}.")
        else:
            try:
                kwargs[name] = _typed(value, tp, f"{prefix}{name}")
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}", field=exc.field) from None
    return cls(**kwargs)


def resolve(
    preset_name: str,
    overrides: list[str] | None = None,
    options: dict[str, Any] | None = None,
) -> RunConfig:
    """Preset, then CLI options given explicitly (dotted path -> value), then overrides.

    Both steps are validated: an option is refused for its own value (``--batch-size 0``)
    even where an override then replaces it, and the overrides as a whole.
    """
    given = [f"{dotted}={value}" for dotted, value in (options or {}).items() if value is not None]
    return apply_overrides(apply_overrides(preset(preset_name), given), list(overrides or []))
