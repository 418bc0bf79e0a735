"""One place that turns a model config into a world model, keyed by ``model.kind``.

Every command builds its model here, so a new kind is one entry below (plus its config in
``lewm.config.MODEL_CONFIGS``) and never an ``if kind == ...`` in shared code. Kinds are
imported on demand: building LeWM never imports the baselines.
"""

from __future__ import annotations

import importlib
from typing import Any

from lewm.config import MODEL_CONFIGS, model_config_class
from lewm.model.protocol import WorldModel

# kind -> (module, class); the class takes the kind's config as its only argument.
MODELS: dict[str, tuple[str, str]] = {
    "lewm": ("lewm.model.lewm", "LeWM"),
    "pldm": ("lewm.baselines.pldm", "PLDM"),
    "dinowm": ("lewm.baselines.dinowm", "DinoWM"),
}
assert set(MODELS) == set(MODEL_CONFIGS), "every config kind needs a model, and back"


def model_class(kind: str) -> type:
    """The world-model class of ``kind``; an unknown kind is refused with the list of kinds."""
    model_config_class(kind)
    module, name = MODELS[kind]
    return getattr(importlib.import_module(module), name)


def build_model(cfg: Any, pretrained: bool = False) -> WorldModel:
    """A fresh model of ``cfg.kind`` with weights initialised as for training.

    ``pretrained`` loads what the config names from outside the run (DINO-WM's encoder
    weights) when training starts; a checkpoint holds every weight, so loading one never does.
    """
    expected = model_config_class(cfg.kind)
    if not isinstance(cfg, expected):
        raise TypeError(
            f"model.kind={cfg.kind!r} needs a {expected.__name__}, got a {type(cfg).__name__}"
        )
    model = model_class(cfg.kind)(cfg)
    if pretrained and hasattr(model, "load_pretrained"):
        model.load_pretrained()
    return model
