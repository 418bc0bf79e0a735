"""Per-column z-scoring (MODEL.md §1).

The reference recomputes action statistics from the dataset at every train and eval run;
we fit them once and save them as JSON beside the checkpoint, so planning with a trained
model never needs the training file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from lewm.data.store import EpisodeStore
from lewm.io import atomic_write_text, read_json_object

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def join_columns(values: Mapping[str, Any], columns: Sequence[str], rows: int) -> np.ndarray:
    """``rows`` rows of several columns → one float (rows, width) array, each column's row
    flattened, in ``columns`` order: how proprioception that a file spreads over columns
    (Cube's ``proprio_*``) reaches a model as one vector. No columns give (rows, 0)."""
    parts = [np.asarray(values[c], dtype=np.float64).reshape(rows, -1) for c in columns]
    return np.concatenate(parts, axis=-1) if parts else np.zeros((rows, 0))


class Normalizer:
    """Mean and unbiased std per column, per value of the row (e.g. per action dimension)."""

    def __init__(self, mean: dict[str, np.ndarray], std: dict[str, np.ndarray]) -> None:
        self.mean = {k: np.asarray(v, dtype=np.float64) for k, v in mean.items()}
        self.std = {k: np.asarray(v, dtype=np.float64) for k, v in std.items()}

    @classmethod
    def fit(
        cls,
        store: EpisodeStore,
        columns: Iterable[str] = ("action",),
        rows: np.ndarray | None = None,
    ) -> Normalizer:
        """Statistics over the given rows (all rows by default), ignoring NaN values.

        NaN marks the action "executed" from an episode's last observation, which does not
        exist; counting it would bias both moments. Fit on the training rows only when a
        validation split must stay unseen.
        """
        mean: dict[str, np.ndarray] = {}
        std: dict[str, np.ndarray] = {}
        selection = slice(None) if rows is None else np.asarray(rows, dtype=np.int64)
        for column in columns:
            values = store.read(column, selection).astype(np.float64)
            counts = np.sum(~np.isnan(values), axis=0)
            if values.shape[0] == 0 or counts.min() < 2:
                raise ValueError(
                    f"{store.path}: column {column!r}: expected at least 2 non-NaN values per "
                    f"dimension to fit statistics, found {int(counts.min(initial=0))}"
                )
            mean[column] = np.nanmean(values, axis=0)
            spread = np.nanstd(values, axis=0, ddof=1)
            # A constant dimension carries no information; leaving it unscaled keeps it finite.
            std[column] = np.where(spread > 0, spread, 1.0)
        return cls(mean, std)

    def require(self, column: str | Sequence[str], width: int, source: str) -> None:
        """Refuse statistics that cannot z-score rows of ``width`` values of ``column`` (or of
        several columns joined), when they are loaded rather than at the first plan (as a
        KeyError or a broadcast error)."""
        columns = (column,) if isinstance(column, str) else tuple(column)
        for name in columns:
            if name not in self.mean:
                have = ", ".join(map(repr, self.mean)) or "none"
                raise ValueError(
                    f"{source}: no statistics for column {name!r} (has {have}); expected "
                    f"'columns.{name}' with {width if len(columns) == 1 else 'its'} values of "
                    "'mean' and 'std'"
                )
        if not isinstance(column, str):
            joined = sum(self.mean[c].size for c in columns)
            if joined != width:
                raise ValueError(
                    f"{source}: columns {', '.join(columns)}: expected {width} values of "
                    f"'mean' in all, found {joined}"
                )
        elif self.mean[column].shape != (width,):
            raise ValueError(
                f"{source}: field 'columns.{column}.mean': expected {width} values, found "
                f"shape {self.mean[column].shape}"
            )

    def _stats(self, column: str | Sequence[str], like: Array) -> tuple[Array, Array]:
        """A column's statistics, or several columns' joined as :func:`join_columns` joins
        their values (then checked against the width of ``like``)."""
        columns = (column,) if isinstance(column, str) else tuple(column)
        for name in columns:
            if name not in self.mean:
                raise KeyError(f"no statistics for column {name!r}; have {', '.join(self.mean)}")
        if isinstance(column, str):
            mean, std = self.mean[column], self.std[column]
        else:
            mean = np.concatenate([self.mean[c].reshape(-1) for c in columns])
            std = np.concatenate([self.std[c].reshape(-1) for c in columns])
            if like.shape[-1] != mean.shape[0]:
                raise ValueError(
                    f"columns {', '.join(columns)} join to {mean.shape[0]} values per row, "
                    f"got rows of {like.shape[-1]}"
                )
        if isinstance(like, torch.Tensor):
            dtype = like.dtype if like.is_floating_point() else torch.float32
            return (
                torch.as_tensor(mean, dtype=dtype, device=like.device),
                torch.as_tensor(std, dtype=dtype, device=like.device),
            )
        return mean.astype(np.float32), std.astype(np.float32)

    def transform(self, column: str | Sequence[str], x: Array) -> Array:
        """Z-score, then NaN → 0: the model sees the missing last action as the mean one.
        Several columns z-score rows that join them (:func:`join_columns`)."""
        mean, std = self._stats(column, x)
        if isinstance(x, torch.Tensor):
            return torch.nan_to_num((x.to(mean.dtype) - mean) / std, nan=0.0)
        return np.nan_to_num((np.asarray(x, dtype=np.float32) - mean) / std, nan=0.0)

    def inverse(self, column: str | Sequence[str], x: Array) -> Array:
        """Back to raw units, e.g. to send a planned action block to the environment."""
        mean, std = self._stats(column, x)
        if isinstance(x, torch.Tensor):
            return x.to(mean.dtype) * std + mean
        return np.asarray(x, dtype=np.float32) * std + mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": {
                k: {"mean": self.mean[k].tolist(), "std": self.std[k].tolist()} for k in self.mean
            }
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "normalizer") -> Normalizer:
        if not isinstance(d, dict) or not isinstance(d.get("columns"), dict):
            raise ValueError(f"{source}: field 'columns': expected an object of per-column stats")
        mean: dict[str, np.ndarray] = {}
        std: dict[str, np.ndarray] = {}
        for column, stats in d["columns"].items():
            where = f"{source}: field 'columns.{column}"
            if not isinstance(stats, dict):
                raise ValueError(f"{where}': expected an object with 'mean' and 'std'")
            values = {}
            for key in ("mean", "std"):
                if key not in stats:
                    raise ValueError(f"{where}.{key}': missing")
                try:
                    values[key] = np.asarray(stats[key], dtype=np.float64)
                except (TypeError, ValueError):
                    raise ValueError(f"{where}.{key}': expected a list of numbers") from None
                if not np.isfinite(values[key]).all():
                    raise ValueError(f"{where}.{key}': expected finite numbers")
            if values["mean"].shape != values["std"].shape:
                raise ValueError(
                    f"{where}.std': expected shape {values['mean'].shape} (as mean), "
                    f"found {values['std'].shape}"
                )
            if (values["std"] <= 0).any():
                raise ValueError(f"{where}.std': expected positive numbers")
            mean[column], std[column] = values["mean"], values["std"]
        return cls(mean, std)

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Normalizer:
        return cls.from_dict(read_json_object(path, "normalizer file"), source=str(path))

    def __repr__(self) -> str:
        return f"Normalizer(columns={list(self.mean)})"
