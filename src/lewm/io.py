"""File output that a reader can trust: a file or folder is either the old one or the new
one, never half of either; nothing but a regular file (or a folder of results) is ever
replaced; and one writer at a time holds an output, by a lock that names its holder.

Every ``lewm`` output goes through here, so the guarantees the README's "Safety and failure
behaviour" section states are made in one place.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PART = ".part"

# What a person should read for the OS errors a hostile or unlucky machine produces.
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory, expected a file",
    errno.ENOTDIR: "a parent of this path is not a folder",
    errno.EFBIG: "file too large for this file system",
    errno.ENAMETOOLONG: "file name too long",
}
# Errors that are about the file being written, whatever call raised them.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


class InUseError(ValueError):
    """Another process holds the output this one was asked to write."""


def explain_os_error(exc: OSError) -> str:
    """One line for an OS error: the path it concerns, then the reason in plain words."""
    reason = _REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


def name_write_error(exc: BaseException, path: str | os.PathLike[str]) -> BaseException:
    """``exc`` with ``path`` attached when it is a write failure that does not name its file
    (HDF5, torch and Python's own ``write`` report a full disk without a path)."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS and not exc.filename:
        return OSError(exc.errno, os.strerror(exc.errno), str(path))
    return exc


def _existing_kind(path: Path) -> str | None:
    """None if nothing is at ``path`` (a dangling link counts as something), else its kind."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return "device, pipe or socket"


def check_output_file(
    path: str | os.PathLike[str], overwrite: bool, flag: str = "--overwrite"
) -> None:
    """Refuse to write ``path`` when something is there: a regular file only with ``overwrite``,
    anything else (folder, link, device node) never."""
    path = Path(path)
    kind = _existing_kind(path)
    if kind is None:
        return
    if kind != "file":
        raise FileExistsError(f"{path}: exists and is a {kind}; lewm only replaces regular files")
    if not overwrite:
        raise FileExistsError(f"{path}: already exists; pass {flag} to replace it")


def _mode(default: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return default & ~umask


def _staging(path: Path, folder: bool) -> Path:
    """A new hidden ``.NAME.*.part`` file or folder beside ``path``, with the permissions
    the umask gives (mkstemp/mkdtemp make owner-only ones); an error names ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    where = {"prefix": f".{path.name}.", "suffix": PART, "dir": path.parent}
    try:
        if folder:
            tmp = Path(tempfile.mkdtemp(**where))
        else:
            fd, name = tempfile.mkstemp(**where)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:  # name the output asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    tmp.chmod(_mode(0o777 if folder else 0o666))
    return tmp


@contextlib.contextmanager
def _naming_write_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise name_write_error(exc, path) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A target that exists and is not a regular file (a folder, a link, a device node) is
    refused before and after the work: a rename would silently replace it.
    """
    path = Path(path)
    check_output_file(path, overwrite=True)
    tmp_path = _staging(path, folder=False)
    try:
        with _naming_write_errors(path):
            yield tmp_path
        check_output_file(path, overwrite=True)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where the system cannot."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str], replace: bool) -> Iterator[Path]:
    """Yield a staging folder beside ``path`` that becomes ``path`` in one step on success.

    With ``replace`` an existing folder is swapped out whole (it is never merged with the new
    one); without, ``path`` must not exist or be empty. On failure the staging folder is
    removed and ``path`` is untouched. A process killed at any moment leaves ``path`` as
    either the old folder or the new one, plus at most a hidden ``.NAME.*.part`` folder that
    :func:`remove_stale_parts` clears.
    """
    path = Path(path)
    kind = _existing_kind(path)
    if kind not in (None, "folder"):
        raise FileExistsError(f"{path}: exists and is a {kind}, expected a folder")
    if kind == "folder" and not replace and any(path.iterdir()):
        raise FileExistsError(f"{path}: already exists and is not an empty folder")
    tmp = _staging(path, folder=True)
    try:
        with _naming_write_errors(path):
            yield tmp
        if _existing_kind(path) is None:
            os.rename(tmp, path)
        elif not _exchange(tmp, path):
            # No atomic swap here: move the old folder aside first, so a kill in between
            # leaves it complete under a .part name rather than merged with the new one.
            aside = _staging(path, folder=True)
            os.replace(path, aside)
            os.rename(tmp, path)
            tmp = aside
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_parts(path: str | os.PathLike[str]) -> None:
    """Delete the temporary files and folders that killed writers of ``path`` left beside it.

    Only safe while holding ``path``'s lock (:func:`exclusive`): a live writer's part would
    go too.
    """
    path = Path(path)
    for part in path.parent.glob(f".{path.name}.*{PART}"):
        if part.is_dir() and not part.is_symlink():
            shutil.rmtree(part, ignore_errors=True)
        else:
            part.unlink(missing_ok=True)


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    pid, _, command = text.partition(" ")
    return f"process {pid} ({command})" if pid else "another process"


@contextlib.contextmanager
def exclusive(lock: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold the advisory lock file ``lock`` for the block, or refuse at once.

    The holder writes its pid and command line into the file, so a refused process can say
    who holds ``what``. The lock dies with its process (flock), so a killed writer never
    leaves a run locked.
    """
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise InUseError(
                f"{what} is in use by {holder}; wait for it to finish or stop it"
            ) from None
        # The last holder unlinks the file on release; a lock taken on that unlinked file
        # would exclude nobody, so take it again on the file now at the path.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        os.write(fd, f"{os.getpid()} {command}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file that guards ``path``: a hidden sibling."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def held_output(
    path: Path, overwrite: bool, check: Callable[[Path, bool], None] = check_output_file
) -> Iterator[None]:
    """Hold ``path``'s lock while it is written, ``check`` it again under the lock (another
    writer may have made it since the first check) and clear what killed writers left."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive(lock_path(path), str(path)))
        except OSError as exc:  # the lock is a hidden sibling; name the output asked for
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        check(path, overwrite)
        remove_stale_parts(path)
        yield


def read_json_object(
    path: str | os.PathLike[str], what: str = "file", error: type[ValueError] = ValueError
) -> dict[str, Any]:
    """A JSON object from ``path``; a missing file, bad JSON or a non-object raises
    ``error`` with a message that starts with the path."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, expected a {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise error(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data
