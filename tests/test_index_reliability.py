"""ExampleIndex under faults (issues 11 §5 and 16): kill -9 at every step of a save, readers during saves,
concurrent savers, corruption, permissions, foreign files, threads searching, bad query arguments.

Subprocesses run tests/_index_worker.py (two same-size variants of one index, "a" and "b"); small
hash-embedder indexes keep the whole file to seconds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import _index_worker as worker
import numpy as np
import pytest

from ragicl._atomic import make_owned_dir
from ragicl._exceptions import DataError, IndexFormatError
from ragicl.data import from_records
from ragicl.index import folder as _index_io
from ragicl.index.core import ExampleIndex

WORKER = Path(__file__).with_name("_index_worker.py")
COMMITTED = {"manifest-replaced", "cleaned"}  # steps after the commit: the new version is current


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _load(path: Path, **kwargs) -> ExampleIndex:
    return ExampleIndex.load(path, device="cpu", **kwargs)


def _assert_tidy(path: Path) -> None:
    """Only the current and previous versions remain; no temp leftovers (inside or beside the folder)."""
    manifest = json.loads((path / "manifest.json").read_text())
    keep = {manifest["version"], manifest.get("previous_version")}
    names = {p.name for p in path.iterdir()}
    assert names - {".lock", "manifest.json"} <= keep, names
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.fixture(scope="module")
def variants():
    return {name: worker.variant(name) for name in "ab"}


# ---------------------------------------------------------------- kill -9 during a save
@pytest.mark.parametrize("step", _index_io.SAVE_STEPS)
def test_kill_at_every_step_of_a_save_leaves_the_old_or_the_new_index(step, variants, tmp_path):
    path = tmp_path / "idx"
    variants["a"].save(path)
    done = _run("kill-at", step, str(path))
    assert done.returncode == -signal.SIGKILL, done.stderr  # it died at that step
    loaded = _load(path)  # no manual recovery, no "no index"
    assert worker.check_consistent(loaded) == ("b" if step in COMMITTED else "a")
    _assert_tidy(path)  # the load removed what the killed save left
    variants["a"].save(path)
    assert worker.check_consistent(_load(path)) == "a"
    _assert_tidy(path)


@pytest.mark.parametrize("step", ["examples.jsonl", "manifest-written"])
def test_kill_during_a_first_save_is_no_index_then_a_clean_save(step, variants, tmp_path):
    path = tmp_path / "idx"
    assert _run("kill-at", step, str(path)).returncode == -signal.SIGKILL
    with pytest.raises(IndexFormatError, match="no index at .*no manifest.json"):
        _load(path)
    variants["b"].save(path)  # the leftovers are not mistaken for a foreign folder
    assert worker.check_consistent(_load(path)) == "b"
    _assert_tidy(path)


def test_kill_at_random_moments_of_repeated_saves(variants, tmp_path):
    path = tmp_path / "idx"
    variants["a"].save(path)
    rng = random.Random(0)
    for _ in range(3):
        proc = _spawn("save-loop", "1000", str(path))
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert worker.check_consistent(_load(path)) in {"a", "b"}
        _assert_tidy(path)


# ---------------------------------------------------------------- concurrency
def _load_while(procs: list[subprocess.Popen], path: Path) -> tuple[int, set[str]]:
    """Load ``path`` in a loop until every process has exited; every load must be one whole variant."""
    loads, seen = 0, set()
    while any(p.poll() is None for p in procs) or loads == 0:
        seen.add(worker.check_consistent(_load(path)))
        loads += 1
    return loads, seen


def test_a_reader_during_repeated_saves_sees_whole_versions(variants, tmp_path):
    path = tmp_path / "idx"
    variants["a"].save(path)
    saver = _spawn("save-loop", "50", str(path))
    assert saver.stdout.readline().strip() == "ready"
    loads, seen = _load_while([saver], path)
    _, err = saver.communicate()
    assert saver.returncode == 0, err
    assert loads > 0 and seen <= {"a", "b"}
    print(f"{loads} loads during 50 saves; versions seen: {sorted(seen)}")
    _assert_tidy(path)


def test_two_concurrent_savers_both_finish(variants, tmp_path):
    path = tmp_path / "idx"
    savers = [_spawn("save-loop", "15", str(path)) for _ in range(2)]
    for proc in savers:
        assert proc.stdout.readline().strip() == "ready"
    while not (path / "manifest.json").exists() and any(p.poll() is None for p in savers):
        time.sleep(0.005)
    _load_while(savers, path)
    for proc in savers:
        _, err = proc.communicate()
        assert proc.returncode == 0, err  # no FileNotFoundError/FileExistsError from either
    assert worker.check_consistent(_load(path)) in {"a", "b"}
    _assert_tidy(path)


@pytest.fixture(scope="module")
def ivf():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((600, 32)).astype(np.float32)
    ds = from_records([{"text": f"t{i}", "label": "x"} for i in range(600)])
    index = ExampleIndex.from_vectors(vectors, ds, embedder="hash-32", factory="IVF16,Flat", device="cpu")
    index.set_search_params(nprobe=2)
    return index


def test_per_call_nprobe_never_touches_the_stored_value(ivf, monkeypatch):
    queries = np.asarray(ivf.embeddings[:20])
    expected = ivf.search(queries, 10, nprobe=16).positions

    def forbidden(**params):
        raise AssertionError(f"per-call nprobe changed the index's parameters: {params}")

    monkeypatch.setattr(ivf, "set_search_params", forbidden)
    np.testing.assert_array_equal(ivf.search(queries, 10, nprobe=16).positions, expected)
    assert ivf.manifest["search_params"] == {"nprobe": 2}


def test_eight_threads_searching_with_nprobe_match_one_thread(ivf, tmp_path):
    queries = np.asarray(ivf.embeddings[::7])
    probes = [1, 2, 4, 16, None]
    reference = {p: ivf.search(queries, 10, nprobe=p) for p in probes}
    failures: list[str] = []

    def work(seed: int) -> None:
        for i in range(20):
            p = probes[(seed + i) % len(probes)]
            got = ivf.search(queries, 10, nprobe=p)
            if not (np.array_equal(got.positions, reference[p].positions)
                    and np.array_equal(got.scores, reference[p].scores)):
                failures.append(f"thread {seed}, nprobe={p}")

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert ivf._search_params == {"nprobe": 2}
    assert json.loads((ivf.save(tmp_path / "ivf") / "manifest.json").read_text())["search_params"] == {"nprobe": 2}
    assert ExampleIndex.load(tmp_path / "ivf")._search_params == {"nprobe": 2}


# ---------------------------------------------------------------- what a save writes and keeps
def test_saving_keeps_other_files_in_the_folder(variants, tmp_path):
    path = tmp_path / "idx"
    variants["a"].save(path)
    (path / "NOTES.md").write_text("built from the March export")
    variants["b"].save(path)
    variants["a"].save(path)
    assert (path / "NOTES.md").read_text() == "built from the March export"
    assert worker.check_consistent(_load(path)) == "a"


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_saved_with_a_plain_mkdirs_permissions(variants, tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = variants["a"].save(tmp_path / "deep" / "idx")
    finally:
        os.umask(previous)
    entries = [path, *path.rglob("*")]
    assert len(entries) >= 5
    for entry in entries:  # folders as mkdir makes them, files as open() makes them
        assert entry.stat().st_mode & 0o777 == (0o777 if entry.is_dir() else 0o666) & ~umask, entry


@pytest.mark.parametrize("name", _index_io.FILES)
def test_same_size_corruption_is_caught_by_the_checksum(variants, tmp_path, name):
    path = variants["a"].save(tmp_path / "idx")
    file = path / json.loads((path / "manifest.json").read_text()).get("version", "") / name
    data = bytearray(file.read_bytes())
    at = len(data) - 8 if name != "examples.jsonl" else data.index(b"apples")  # vector bytes / a text
    data[at] = data[at] ^ 0x01  # 'a' -> '`' in the text; a flipped low bit in a float
    file.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=f"{name} is corrupt: its checksum differs"):
        _load(path)
    assert len(_load(path, verify=False)) == 40  # the explicit opt-out skips the check


def _as_format1(path: Path) -> dict:
    """Rewrite a saved folder as ragicl's first format wrote it: the files beside manifest.json."""
    manifest = json.loads((path / "manifest.json").read_text())
    version = path / manifest["version"]
    for name in _index_io.FILES:
        os.replace(version / name, path / name)
    shutil.rmtree(version)
    (path / ".lock").unlink()
    for key in ("version", "previous_version", "checksums", "own_versions", "metadata_digest"):
        manifest.pop(key)
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    return manifest


def test_format1_folders_still_load_and_convert_on_save(variants, tmp_path):
    path = variants["a"].save(tmp_path / "idx")
    _as_format1(path)
    (path / "NOTES.md").write_text("mine")
    assert worker.check_consistent(_load(path)) == "a"
    variants["b"].save(path)
    assert worker.check_consistent(_load(path)) == "b"
    assert json.loads((path / "manifest.json").read_text())["format_version"] == _index_io.FORMAT_VERSION
    assert not [name for name in _index_io.FILES if (path / name).exists()]  # the flat files are gone
    assert (path / "NOTES.md").read_text() == "mine"


def test_load_finishes_a_format1_save_killed_between_its_renames(variants, tmp_path):
    path = variants["a"].save(tmp_path / "idx")
    _as_format1(path)
    os.replace(path, tmp_path / ".idx.old-1a2b3c4d")  # the old code's first rename happened, not the second
    os.mkdir(tmp_path / ".idx.tmp-5e6f7a8b")
    assert worker.check_consistent(_load(path)) == "a"
    variants["b"].save(path)
    _assert_tidy(path)  # the next save removed the old code's leftover


def test_load_removes_leftovers_of_killed_saves(variants, tmp_path):
    path = variants["a"].save(tmp_path / "idx")
    variants["b"].save(path)
    tmp = make_owned_dir(path / ".tmp-0123456789ab")  # as a save killed while writing makes them
    (tmp / "index.faiss").write_bytes(b"x" * 100)
    make_owned_dir(path / "v-00000000000a")  # published, never committed
    (path / ".tmp-0123456789ac").mkdir()  # killed between mkdir and the marker: empty
    (path / ".manifest.json.tmp-0123456789ab").write_text("{}")
    assert worker.check_consistent(_load(path)) == "b"
    _assert_tidy(path)
    assert len([p for p in path.iterdir() if p.name.startswith("v-")]) == 2  # current and previous kept


# ---------------------------------------------------------------- query arguments
def test_non_finite_query_vectors_are_a_data_error(variants):
    index = variants["a"]
    x = np.asarray(index.embeddings[:3]).copy()
    for bad in (np.nan, np.inf, -np.inf):
        x[1, 4] = bad
        with pytest.raises(DataError, match=r"row\(s\) \[1\] contain NaN or infinite"):
            index.search(x, k=2)


def test_k_beyond_the_index_size_stops_at_it(variants):
    index = variants["a"]
    res = index.search(["cats and apples", "dogs"], k=10**9)  # no (2, 10**9) allocation
    assert res.positions.shape == res.scores.shape == (2, 40)
    assert sorted(res.positions[0].tolist()) == list(range(40))


def test_k_accepts_integral_types_and_rejects_bools_and_floats(variants):
    index = variants["a"]
    expected = index.search(["dogs"], k=3).positions
    for k in (np.int64(3), np.int32(3), np.uint8(3)):
        np.testing.assert_array_equal(index.search(["dogs"], k=k).positions, expected)
    for k in (True, np.bool_(True), 3.0, np.float64(3), "3"):
        with pytest.raises(TypeError, match="k must be a positive integer"):
            index.search(["dogs"], k=k)
