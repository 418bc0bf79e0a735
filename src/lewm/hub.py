"""``hf://`` paths: a dataset file or a checkpoint folder on the Hugging Face Hub, used
wherever a local one is.

    hf://OWNER/REPO[@REVISION][/PATH]            a model repository (or a folder in it)
    hf://datasets/OWNER/REPO[@REVISION]/PATH     a file of a dataset repository

Files come through ``huggingface_hub``'s own cache, so a second use reads the local copy,
``HF_HUB_OFFLINE=1`` works from that cache alone and ``HF_HUB_CACHE`` / ``HF_TOKEN`` apply as
for every Hugging Face library. ``huggingface_hub`` is an optional extra (``lewm[hub]``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PREFIX = "hf://"
_SPEC = re.compile(
    r"(?P<kind>datasets/)?(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+)(@(?P<rev>[\w.-]+))?"
    r"(/(?P<path>.+))?"
)


class HubError(ValueError):
    """An ``hf://`` path that cannot be resolved: says what to check or set."""


@dataclass(frozen=True)
class HubPath:
    repo_id: str
    repo_type: str  # "model" or "dataset"
    revision: str | None
    path: str  # inside the repository; empty for the whole repository

    def __str__(self) -> str:
        kind = "datasets/" if self.repo_type == "dataset" else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{kind}{self.repo_id}{rev}" + (f"/{self.path}" if self.path else "")


def is_hub_path(path: str | os.PathLike[str]) -> bool:
    """True for ``hf://…``, also once a ``pathlib.Path`` has folded it to ``hf:/…``."""
    return str(path).startswith(("hf://", "hf:/"))


def parse(path: str | os.PathLike[str]) -> HubPath:
    text = str(path)
    body = text[len("hf://") :] if text.startswith("hf://") else text[len("hf:/") :]
    match = _SPEC.fullmatch(body)
    if not match:
        raise HubError(
            f"{text}: expected hf://OWNER/REPO[@REVISION][/PATH] or "
            "hf://datasets/OWNER/REPO[@REVISION]/PATH"
        )
    return HubPath(
        repo_id=f"{match['owner']}/{match['repo']}",
        repo_type="dataset" if match["kind"] else "model",
        revision=match["rev"],
        path=(match["path"] or "").strip("/"),
    )


def _hub() -> ModuleType:
    try:
        import huggingface_hub
        import huggingface_hub.constants  # read at call time: the offline flag, the cache
    except ImportError:
        raise HubError("hf:// paths need huggingface_hub: pip install 'lewm[hub]'") from None
    return huggingface_hub


def local_file(path: str | os.PathLike[str]) -> Path:
    """A file of a repository, downloaded into (or found in) the Hugging Face cache."""
    spec = parse(path)
    if not spec.path:
        raise HubError(f"{path}: name a file inside the repository (hf://…/REPO/FILE)")
    hub = _hub()
    try:
        return Path(hub.hf_hub_download(spec.repo_id, spec.path, repo_type=spec.repo_type,
                                        revision=spec.revision))
    except Exception as exc:  # the library's errors: not found, offline, auth, network
        raise HubError(_explain(spec, exc, hub.constants.HF_HUB_OFFLINE)) from None


def local_folder(path: str | os.PathLike[str]) -> Path:
    """A repository (or a folder of it) in the Hugging Face cache, as a local folder."""
    spec = parse(path)
    hub = _hub()
    patterns = [f"{spec.path}/*"] if spec.path else None
    try:
        root = hub.snapshot_download(spec.repo_id, repo_type=spec.repo_type,
                                     revision=spec.revision, allow_patterns=patterns)
    except Exception as exc:
        raise HubError(_explain(spec, exc, hub.constants.HF_HUB_OFFLINE)) from None
    folder = Path(root) / spec.path
    if not folder.is_dir():
        raise HubError(f"{spec}: no folder {spec.path!r} in {spec.repo_id}")
    return folder


def resolve(path: str | os.PathLike[str], folder: bool = False) -> Path:
    """``path`` itself when local; the cached copy of an ``hf://`` one."""
    if not is_hub_path(path):
        return Path(path)
    return local_folder(path) if folder else local_file(path)


def record(path: str | os.PathLike[str]) -> str:
    """How a run remembers where its data came from: the ``hf://`` name (which resolves on
    any machine with access) or the absolute local path."""
    return str(parse(path)) if is_hub_path(path) else str(Path(path).resolve())


def push_target(target: str) -> HubPath:
    """Where ``--push`` uploads, checked before anything is exported."""
    if not is_hub_path(target):
        raise HubError(f"--push {target}: expected hf://OWNER/REPO[@REVISION][/PATH]")
    spec = parse(target)
    if spec.repo_type != "model":
        raise HubError(f"{target}: a checkpoint goes to a model repository, "
                       "hf://OWNER/REPO[@REVISION][/PATH], not a dataset one")  # fmt: skip
    return spec


def push_folder(folder: str | os.PathLike[str], target: str | os.PathLike[str]) -> str:
    """Upload ``folder``'s files to ``hf://OWNER/REPO[@REVISION][/PATH]`` (a model
    repository, made private if it does not exist; its files land under PATH). Uses the
    token huggingface_hub finds (``HF_TOKEN`` or ``hf auth login``). Returns the commit URL."""
    spec = push_target(target)
    hub = _hub()
    if hub.constants.HF_HUB_OFFLINE:
        raise HubError(f"{spec}: HF_HUB_OFFLINE is set; unset it to push")
    api = hub.HfApi()
    try:
        api.create_repo(spec.repo_id, repo_type="model", private=True, exist_ok=True)
        commit = api.upload_folder(
            repo_id=spec.repo_id, repo_type="model", folder_path=str(folder),
            path_in_repo=spec.path or None, revision=spec.revision,
            commit_message=f"lewm export-checkpoint: {Path(folder).name}",
        )  # fmt: skip
    except Exception as exc:  # the library's errors: auth, network, revision
        raise HubError(_explain(spec, exc, offline=False)) from None
    return str(commit)


def _explain(spec: HubPath, exc: Exception, offline: bool) -> str:
    """One line: what failed and what to check, from the library's exception class."""
    name = type(exc).__name__
    if offline or name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        return (f"{spec}: not in the Hugging Face cache and HF_HUB_OFFLINE is set (or no "
                "network); download it once online, or point HF_HUB_CACHE at a cache that "
                "has it")
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return (f"{spec}: repository {spec.repo_id} ({spec.repo_type}) not found or not "
                "accessible; check the name, or set HF_TOKEN for a private repository")
    if name in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
        return f"{spec}: no file {spec.path!r} in {spec.repo_id}"
    if name == "RevisionNotFoundError":
        return f"{spec}: no revision {spec.revision!r} in {spec.repo_id}"
    return f"{spec}: {name}: {str(exc).splitlines()[0] if str(exc) else 'download failed'}"
