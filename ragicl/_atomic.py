"""Crash-safe writes: atomic file replace, folder creation with normal permissions, directory fsync, locks.

Private helpers shared by the persistence code. The patterns:

* :func:`write_atomic` — write a sibling temp file, fsync it, ``os.replace`` it over the target and fsync
  the folder: a reader (or a crash) sees the whole old file or the whole new one, never a mix.
* :func:`make_dir` — ``os.mkdir`` with the mode a plain ``mkdir`` gives (``0o777`` minus the umask), unlike
  ``tempfile.mkdtemp``'s ``0o700``.
* :func:`fsync` — flush a file or a folder (folders where the filesystem allows it).
* :func:`exclusive_lock` — an advisory ``flock`` on a lock file (serializes writers of one folder on
  POSIX; a no-op where ``fcntl`` is missing).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_atomic(d / "CURRENT", "v-1\\n")
>>> (d / "CURRENT").read_text()
'v-1\\n'
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

try:  # POSIX only
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


def unique_name(prefix: str) -> str:
    """``prefix`` followed by 12 random hex digits (names that are never reused)."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


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


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike, *, blocking: bool = True,
                   create: bool = True) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``lock_file``; yields whether it is held.

    With ``blocking=False`` (or ``create=False`` and no such file, or a read-only folder) it yields
    ``False`` instead of waiting or failing; callers then skip what needs the lock. The lock is released
    when the block ends or the process dies (kill -9 included).
    """
    if fcntl is None:  # pragma: no cover - no advisory locks: writers are not serialized
        yield blocking
        return
    try:
        fd = os.open(lock_file, os.O_RDWR | (os.O_CREAT if create else 0), 0o666)
    except OSError:
        if blocking and create:
            raise
        yield False
        return
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
