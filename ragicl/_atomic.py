"""Crash-safe writes: atomic file replace, folder creation with normal permissions, directory fsync, locks.

Private helpers shared by the persistence code. The patterns:

* :func:`write_atomic` — write a sibling temp file, fsync it, ``os.replace`` it over the target and fsync
  the folder: a reader (or a crash) sees the whole old file or the whole new one, never a mix.
* :func:`make_dir` — ``os.mkdir`` with the mode a plain ``mkdir`` gives (``0o777`` minus the umask), unlike
  ``tempfile.mkdtemp``'s ``0o700``.
* :func:`fsync` — flush a file or a folder (folders where the filesystem allows it).
* :func:`exclusive_lock` — an exclusive lock on a lock file that serializes writers of one folder: an
  advisory ``flock`` on POSIX, the ``filelock`` package where ``fcntl`` is missing (Windows). A ``.lock``
  that is a symbolic link is refused, never created or truncated at its target (POSIX: the file is opened
  with ``O_NOFOLLOW``, no ``O_TRUNC``).
* **Only delete what ragicl made.** Folders a save creates have a strict name (a prefix and the 12 hex
  digits of :func:`unique_name`) and hold the marker file :data:`MARKER`, written right after the
  ``mkdir`` (:func:`make_owned_dir`). Cleaning removes a folder only if its name is strict *and* it holds
  the marker or is empty (a save killed between ``mkdir`` and the marker), or its caller knows it made it
  (a version named in a manifest): :func:`remove_owned_dir`. Temp files of :func:`write_atomic` are removed
  only under their strict name ``.<target>.tmp-<12 hex>`` (:func:`remove_temp_files`). A user's
  ``v-notes/``, ``.tmp-cache/`` or ``index-notes/`` is never touched.
* :func:`metadata_digest` / :func:`seal` / :func:`check_digest` — a SHA-256 over the canonical JSON of a
  metadata file (``manifest.json``, ``estimator.json``), stored inside it under :data:`DIGEST_FIELD`.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_atomic(d / "CURRENT", "v-1\\n")
>>> (d / "CURRENT").read_text()
'v-1\\n'
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

try:  # POSIX: flock; elsewhere (Windows) the filelock package (see exclusive_lock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def fsync(path: str | os.PathLike) -> None:
    """Flush a file or folder to disk (folders: where the filesystem allows it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


MARKER = ".ragicl-made"  # the file inside every folder a ragicl save creates (see the module docstring)
DIGEST_FIELD = "metadata_digest"  # the field of a metadata file holding the digest of the rest
_TOKEN = re.compile(r"[0-9a-f]{12}")


def unique_name(prefix: str) -> str:
    """``prefix`` followed by 12 random hex digits (names that are never reused)."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def is_strict_name(name: object, prefix: str) -> bool:
    """Whether ``name`` is exactly ``prefix`` + 12 lowercase hex digits, as :func:`unique_name` makes them
    (so no path separator, no ``..``: a plain name inside the folder)."""
    return isinstance(name, str) and name.startswith(prefix) and _TOKEN.fullmatch(name[len(prefix):]) is not None


def make_owned_dir(path: str | os.PathLike) -> Path:
    """:func:`make_dir`, then the :data:`MARKER` file in it: a folder ragicl may remove again."""
    path = make_dir(path)
    with open(path / MARKER, "x", encoding="utf-8") as fh:
        fh.write("made by ragicl: this folder is removed by ragicl once it is no longer needed\n")
    return path


def is_owned_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a real folder (not a link) holding :data:`MARKER`, or an empty one."""
    path = Path(path)
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        if os.path.isfile(path / MARKER) and not os.path.islink(path / MARKER):
            return True
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def remove_owned_dir(path: str | os.PathLike, prefix: str, *, known: Collection[str] = ()) -> bool:
    """Remove the folder ``path`` if ragicl made it: its name is strict for ``prefix`` and it holds the
    marker, is empty, or is named in ``known`` (folders a manifest records as made by ragicl). Returns
    whether it was removed; never follows a link, never raises for a folder that vanished meanwhile."""
    path = Path(path)
    if not is_strict_name(path.name, prefix):
        return False
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    if path.name not in known and not is_owned_dir(path):
        return False
    # the marker goes last: a removal killed midway leaves a folder that is still recognisably ragicl's
    for entry in list(os.scandir(path)) if path.is_dir() else []:
        if entry.name == MARKER:
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
    with contextlib.suppress(OSError):
        os.unlink(path / MARKER)
    shutil.rmtree(path, ignore_errors=True)
    return True


def is_temp_file(name: str, target: str) -> bool:
    """Whether ``name`` is a temp file :func:`write_atomic` makes for the file ``target``."""
    return is_strict_name(name, f".{target}.tmp-")


def remove_temp_files(folder: str | os.PathLike, target: str) -> None:
    """Remove the leftover temp files of killed :func:`write_atomic` calls for ``folder/target`` (plain
    files under the strict temp name only)."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in list(entries):
            if is_temp_file(entry.name, target) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def canonical_json(data: Mapping[str, Any]) -> bytes:
    """``data`` without :data:`DIGEST_FIELD`, as sorted, compact UTF-8 JSON (what the digest covers)."""
    body = {k: v for k, v in data.items() if k != DIGEST_FIELD}
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def metadata_digest(data: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of :func:`canonical_json` (``data``)."""
    return "sha256:" + hashlib.sha256(canonical_json(data)).hexdigest()


def seal(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with its :func:`metadata_digest` under :data:`DIGEST_FIELD` (written last in the file)."""
    body = {k: v for k, v in data.items() if k != DIGEST_FIELD}
    return {**body, DIGEST_FIELD: metadata_digest(body)}


def check_digest(data: Mapping[str, Any]) -> str | None:
    """Why ``data``'s stored digest does not match its content (a message), or ``None`` when it matches.
    A missing digest is a mismatch: callers decide first whether their format requires one."""
    recorded = data.get(DIGEST_FIELD)
    if not isinstance(recorded, str):
        return f"its {DIGEST_FIELD!r} is missing or not a string ({recorded!r})"
    if recorded != metadata_digest(data):
        return (f"its content does not match its {DIGEST_FIELD!r} ({recorded[:23]}...): the file was "
                "modified or corrupted after it was written")
    return None


def make_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (parents too) with a plain ``mkdir``'s permissions (the umask applies)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkdir(path)
    return path


def write_atomic(path: str | os.PathLike, data: str | bytes, *, before_replace=None) -> None:
    """Replace the file ``path`` by ``data`` atomically and durably (temp file, fsync, rename, dir fsync).

    ``before_replace`` (a no-argument callable) runs once the temp file is durable, just before the
    rename (a seam for crash tests). The temp file is removed if anything fails before the rename.
    """
    path = Path(path)
    tmp = path.parent / unique_name(f".{path.name}.tmp-")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "xb") as fh:  # mode 0o666 minus the umask, like any new file
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync(path.parent)


def _symlink_error(lock_file: str | os.PathLike) -> OSError:
    return OSError(errno.ELOOP, f"{lock_file} is a symbolic link; ragicl does not follow links for its lock "
                   "file (that would create or truncate the file it points to). Fix: remove the link (a save "
                   "creates a plain lock file).", str(lock_file))


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike, *, blocking: bool = True,
                   create: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock_file``; yields whether it is held.

    With ``blocking=False`` (or ``create=False`` and no such file, or a read-only folder) it yields
    ``False`` instead of waiting or failing; callers then skip what needs the lock. The lock is released
    when the block ends or the process dies (kill -9 included). A ``lock_file`` that is a symbolic link is
    an ``OSError`` (``ELOOP``) when the lock is required, ``False`` otherwise; its target is never opened.

    POSIX: ``flock`` on the file opened with ``O_NOFOLLOW`` and without ``O_TRUNC`` (kept after release, mode
    ``0o666`` minus the umask). Where ``fcntl`` is missing (Windows): :class:`filelock.FileLock` (see
    docs/DESIGN.md on why not on POSIX too).
    """
    if fcntl is None:  # pragma: no cover - Windows (tested on POSIX by hiding fcntl)
        with _filelock(lock_file, blocking=blocking, create=create) as held:
            yield held
        return
    flags = os.O_RDWR | (os.O_CREAT if create else 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(lock_file, flags, 0o666)
    except OSError as err:
        if not (blocking and create):
            yield False
            return
        if err.errno == errno.ELOOP or os.path.islink(lock_file):
            raise _symlink_error(lock_file) from None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError:
            if blocking:
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def _filelock(lock_file: str | os.PathLike, *, blocking: bool, create: bool) -> Iterator[bool]:
    """:func:`exclusive_lock` through the ``filelock`` package (platforms without ``fcntl``)."""
    from filelock import FileLock, Timeout  # a dependency of ragicl (and of huggingface_hub)

    required = blocking and create
    if os.path.islink(lock_file):  # filelock >= 3.20.1 refuses links too; this says why in ragicl's words
        if required:
            raise _symlink_error(lock_file)
        yield False
        return
    if not create and not os.path.isfile(lock_file):
        yield False
        return
    lock = FileLock(os.fspath(lock_file))
    try:
        lock.acquire(timeout=-1 if blocking else 0)
    except Timeout:
        yield False
        return
    except OSError:
        if required:
            raise
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def write_json_atomic(path: str | os.PathLike, data: object) -> None:
    """Write ``data`` as indented JSON with :func:`write_atomic` (parents created; numpy scalars and arrays and
    dataclasses serialised): the one JSON writer of the package. The file gets a plain ``open``'s mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2, default=_json_default))


def _json_default(obj: object) -> object:
    import dataclasses

    if hasattr(obj, "item") and hasattr(obj, "dtype") and getattr(obj, "shape", None) == ():
        return obj.item()  # a numpy scalar
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):
        return obj.tolist()  # a numpy array
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")
