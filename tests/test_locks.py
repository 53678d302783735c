"""ragicl._atomic.exclusive_lock: the POSIX flock path and the filelock path used where fcntl is missing.

The filelock path (Windows) is exercised here by hiding ``fcntl`` from ``ragicl._atomic``; on Linux
``filelock.FileLock`` is then its flock-based ``UnixFileLock``, so the wrapper's own rules (links refused,
``create=False``, non-blocking tries, release on exit or death) are checked, not Windows' byte-range locks.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ragicl import _atomic

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32",
                                reason="POSIX checks (symlinks, kill -9)")


@pytest.fixture(params=["flock", "filelock"])
def backend(request, monkeypatch):
    if request.param == "filelock":
        pytest.importorskip("filelock")
        monkeypatch.setattr(_atomic, "fcntl", None)
    return request.param


def _try_from_thread(path: Path, **kwargs) -> bool:
    held: list[bool] = []

    def attempt() -> None:
        with _atomic.exclusive_lock(path, **kwargs) as ok:
            held.append(ok)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join()
    return held[0]


def test_one_holder_at_a_time_and_non_blocking_tries_say_no(backend, tmp_path):
    lock = tmp_path / ".lock"
    with _atomic.exclusive_lock(lock) as held:
        assert held
        assert _try_from_thread(lock, blocking=False) is False
        assert _try_from_thread(lock, blocking=False, create=False) is False
    assert _try_from_thread(lock, blocking=False) is True
    assert lock.is_file() and not lock.is_symlink()  # kept after release


def test_a_blocking_waiter_gets_the_lock_only_after_release(backend, tmp_path):
    lock = tmp_path / ".lock"
    events: list[str] = []
    holding, waiter_started = threading.Event(), threading.Event()

    def holder() -> None:
        with _atomic.exclusive_lock(lock):
            holding.set()
            waiter_started.wait()
            events.append("released")

    def waiter() -> None:
        waiter_started.set()
        with _atomic.exclusive_lock(lock) as held:
            events.append(f"acquired {held}")

    first = threading.Thread(target=holder)
    first.start()
    holding.wait()
    second = threading.Thread(target=waiter)
    second.start()
    first.join()
    second.join()
    assert events == ["released", "acquired True"]


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlinked_lock_is_refused_and_its_target_untouched(backend, tmp_path, dangling):
    target = tmp_path / ("absent" if dangling else "precious.txt")
    if not dangling:
        target.write_text("do not truncate")
    lock = tmp_path / ".lock"
    os.symlink(target, lock)
    with pytest.raises(OSError, match="symbolic link") as err, _atomic.exclusive_lock(lock):
        pass
    assert err.value.errno == errno.ELOOP
    for kwargs in ({"blocking": False}, {"create": False}):  # optional locks just say "not held"
        with _atomic.exclusive_lock(lock, **kwargs) as held:
            assert held is False
    assert target.exists() is not dangling
    if not dangling:
        assert target.read_text() == "do not truncate"


def test_create_false_never_creates_the_file(backend, tmp_path):
    lock = tmp_path / ".lock"
    with _atomic.exclusive_lock(lock, blocking=False, create=False) as held:
        assert held is False
    assert not lock.exists()
    lock.touch()
    with _atomic.exclusive_lock(lock, blocking=False, create=False) as held:
        assert held is True


def test_a_new_lock_file_follows_the_umask_and_an_existing_one_keeps_its_content(backend, tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    lock = tmp_path / ".lock"
    with _atomic.exclusive_lock(lock):
        pass
    assert stat.S_IMODE(lock.stat().st_mode) == 0o666 & ~umask
    lock.write_text("a note someone left")
    with _atomic.exclusive_lock(lock):
        pass
    assert lock.read_text() == "a note someone left"


HOLD = """\
import sys
from ragicl import _atomic
if sys.argv[2] == "filelock":
    _atomic.fcntl = None
with _atomic.exclusive_lock(sys.argv[1]) as held:
    print("held" if held else "not held", flush=True)
    sys.stdin.read()  # until killed
"""


def test_a_killed_holder_releases_the_lock(backend, tmp_path):
    lock = tmp_path / ".lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), backend], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with _atomic.exclusive_lock(lock, blocking=False) as held:
            assert held is False  # another process holds it
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with _atomic.exclusive_lock(lock, blocking=False) as held:
        assert held is True
