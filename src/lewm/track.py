"""Experiment trackers: training curves, evaluation results and report figures in one place.

``train.logger`` names Lightning's own loggers (csv, tensorboard, wandb, mlflow). csv is
required because ``lewm report`` and ``lewm compare`` read ``logs/metrics.csv``; the others
are optional, and wandb and mlflow need their extras (``pip install 'lewm[wandb]'``,
``'lewm[mlflow]'``). A run records its tracker run ids in ``RUN/trackers.json`` so that a
resumed training, a later ``lewm eval`` and ``lewm report`` all log to the *same* tracker
run instead of scattering one experiment over several.

Where the data goes is the trackers' own business, set the way their users already do:
W&B reads ``WANDB_MODE`` (``offline`` writes ``RUN/wandb/`` for ``wandb sync`` later) and
its login; MLflow reads ``MLFLOW_TRACKING_URI`` and otherwise writes a local file store in
``RUN/mlruns`` (view it with ``mlflow ui --backend-store-uri RUN/mlruns``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lewm.config_checks import require
from lewm.io import atomic_write_text

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

    from lewm.config import RunConfig

LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")
# The trackers that live outside the run folder's own files, and the package each needs.
EXTERNAL = {"wandb": "wandb", "mlflow": "mlflow"}
TRACKERS_FILE = "trackers.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif")


def parse_loggers(text: str, field: str = "train.logger") -> tuple[str, ...]:
    """``"csv,wandb"`` → ``("csv", "wandb")``; unknown names, repeats and a missing csv are
    refused, naming ``field``."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    require(
        all(n in LOGGERS for n in names) and len(set(names)) == len(names), field, text,
        f"a comma-separated list of distinct loggers from {', '.join(LOGGERS)}",
    )  # fmt: skip
    require("csv" in names, field, text, "a list that includes csv (lewm report and lewm "
            "compare read logs/metrics.csv)")  # fmt: skip
    return names


def require_trackers(text: str) -> None:
    """Fail before anything is written, naming the extra to install, not deep inside
    Lightning after the run folder was made."""
    for name in parse_loggers(text):
        if name in EXTERNAL:
            require_package(name)


def require_package(name: str) -> None:
    try:
        importlib.import_module(EXTERNAL[name])
    except ImportError:
        raise ModuleNotFoundError(
            f"train.logger={name} needs the {EXTERNAL[name]} package: "
            f"pip install 'lewm[{name}]'"
        ) from None


def _mlflow_uri(run_dir: Path, saved: dict[str, Any]) -> str:
    """The run's recorded store, else ``MLFLOW_TRACKING_URI``, else ``RUN/mlruns``."""
    uri = (
        saved.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        or (run_dir / "mlruns").resolve().as_uri()
    )  # fmt: skip
    if uri.startswith("file:"):
        # MLflow 3 refuses its file store unless asked; a local store is what offline,
        # server-less use needs, and what mlflow-skinny (no SQL backend) can write.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def _load_ids(run_dir: Path) -> dict[str, Any]:
    path = run_dir / TRACKERS_FILE
    if not path.is_file():
        return {}
    try:
        ids = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable tracker ids ({exc}); delete it to start new "
                         "tracker runs") from None  # fmt: skip
    if not isinstance(ids, dict):
        raise ValueError(f"{path}: expected a JSON object of tracker run ids")
    return ids


def training_loggers(run_dir: Path, cfg: RunConfig, owner: bool = True) -> list[Logger]:
    """Lightning loggers for ``cfg.train.logger``, continuing the run's tracker runs when it
    resumes. The ``owner`` process (global rank 0) records their ids in
    ``RUN/trackers.json``; Lightning keeps the other ranks' trackers silent."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    names = parse_loggers(cfg.train.logger)
    require_trackers(cfg.train.logger)
    ids = _load_ids(run_dir)
    loggers: list[Logger] = []
    if "csv" in names:
        loggers.append(CSVLogger(run_dir, name="logs"))
    if "tensorboard" in names:
        loggers.append(TensorBoardLogger(run_dir, name="tb", version=0))
    if "wandb" in names:
        from lightning.pytorch.loggers import WandbLogger

        # W&B run ids are lowercase letters and digits; a fresh one per run folder.
        fresh = {"id": secrets.token_hex(6), "project": cfg.train.tracker_project}
        entry = ids.get("wandb") or fresh
        ids["wandb"] = entry
        loggers.append(WandbLogger(
            project=entry["project"], id=entry["id"], name=run_dir.name, save_dir=str(run_dir),
            resume="allow", config=cfg.to_dict(),
        ))  # fmt: skip
    if "mlflow" in names:
        from lightning.pytorch.loggers import MLFlowLogger

        entry = ids.get("mlflow") or {"experiment": cfg.train.tracker_project}
        uri = _mlflow_uri(run_dir, entry)
        logger = MLFlowLogger(
            experiment_name=entry["experiment"], run_name=run_dir.name, tracking_uri=uri,
            run_id=entry.get("run_id"),
        )  # fmt: skip
        if owner:
            ids["mlflow"] = entry | {"run_id": logger.run_id, "tracking_uri": uri}
        loggers.append(logger)
    if ids and owner:
        atomic_write_text(run_dir / TRACKERS_FILE, json.dumps(ids, indent=2))
    return loggers


@contextlib.contextmanager
def closing_trackers(loggers: list[Logger]) -> Iterator[None]:
    """Finish the W&B run when training ends, however it ends: Lightning leaves it open,
    and a later ``wandb.init`` in the same process (evaluation, a second training) would
    then write into it instead of resuming by id."""
    try:
        yield
    finally:
        for logger in loggers:
            if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
                logger.experiment.finish()


def log_to_run(
    run_dir: str | Path, metrics: dict[str, float], files: Iterable[Path] = (), folder: str = ""
) -> list[str]:
    """Add ``metrics`` and ``files`` (images show as images in W&B; MLflow keeps every file
    as an artifact under ``folder``) to the tracker runs a training recorded in
    ``RUN/trackers.json``; returns the trackers logged to (none: a no-op).

    Called after results are saved, so a tracker that cannot be reached is a warning, not a
    lost evaluation."""
    run = Path(run_dir)
    ids = _load_ids(run)
    done = []
    for name, log in (("wandb", _log_wandb), ("mlflow", _log_mlflow)):
        if name not in ids:
            continue
        try:
            require_package(name)
            log(run, ids[name], metrics, [Path(f) for f in files], folder)
        except Exception as exc:  # noqa: BLE001 - any tracker failure leaves results intact
            warnings.warn(f"{run}: results are saved, but logging them to {name} failed: "
                          f"{exc}", stacklevel=2)  # fmt: skip
        else:
            done.append(name)
    return done


def _log_wandb(
    run: Path, entry: dict[str, Any], metrics: dict[str, float], files: list[Path], folder: str
) -> None:
    import wandb

    with wandb.init(project=entry["project"], id=entry["id"], dir=str(run),
                    resume="allow") as tracker:  # fmt: skip
        media = {
            f"{folder}/{f.stem}" if folder else f.stem: wandb.Image(str(f))
            for f in files if f.suffix.lower() in IMAGE_SUFFIXES
        }  # fmt: skip
        tracker.log({**metrics, **media})


def _log_mlflow(
    run: Path, entry: dict[str, Any], metrics: dict[str, float], files: list[Path], folder: str
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(_mlflow_uri(run, entry))
    for key, value in metrics.items():
        client.log_metric(entry["run_id"], key, float(value))
    for f in files:
        client.log_artifact(entry["run_id"], str(f), folder or None)
