"""ragicl.distributed: the sharded layout and its exact merged search (no Ray), and on a local Ray cluster
the distributed build, exact against the single-process build, and its resume after a killed worker or
driver."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _ray_rows import assert_same_topk, make_rows, needs_ray

from ragicl import (
    DataError,
    EmbedderMismatchError,
    ExampleIndex,
    HashEmbedder,
    IndexFormatError,
    read_dataset,
)
from ragicl._exceptions import MissingDependencyError
from ragicl.distributed import (
    ClusterError,
    build_distributed,
    connect,
    is_sharded,
    load_index,
    load_sharded,
    predict_distributed,
)
from ragicl.distributed.sharded import search_shards


# ------------------------------------------------------------------------------------------- no Ray
def test_search_shards_is_the_exact_flat_search():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((503, 24)).astype(np.float32)
    x[250:260] = x[10]  # exact duplicates: ties across shards
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = np.concatenate([x[[10, 3]], rng.standard_normal((40, 24)).astype(np.float32)])
    flat = faiss.IndexFlatIP(24)
    flat.add(x)
    shards, bounds = [], [0, 100, 101, 350, 503]  # uneven, one shard of a single row
    for lo, hi in itertools.pairwise(bounds):
        sub = faiss.IndexFlatIP(24)
        sub.add(x[lo:hi])
        shards.append((lo, sub))
    from ragicl.types import SearchResult

    for k in (1, 15, 120, 600):  # 120 > a shard; 600 > everything: padded with -1 / -inf
        got = search_shards(shards, q, k)
        d, i = flat.search(q, min(k, 503))
        want = SearchResult(np.pad(i, ((0, 0), (0, k - i.shape[1])), constant_values=-1),
                            np.pad(d, ((0, 0), (0, k - d.shape[1])), constant_values=-np.inf))
        assert got.positions.shape == (len(q), k)
        assert (got.positions[:, 503:] == -1).all() and np.isneginf(got.scores[:, 503:]).all()
        w = min(k, 503)
        assert_same_topk(type(got)(got.positions[:, :w], got.scores[:, :w]),
                         type(got)(want.positions[:, :w], want.scores[:, :w]))


def test_ray_missing_gives_the_install_hint(tmp_path, monkeypatch):
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "x"}\n')
    monkeypatch.setitem(sys.modules, "ray", None)
    for call in (lambda: build_distributed(tmp_path / "d.jsonl", tmp_path / "out", embedder="hash-8"),
                 lambda: predict_distributed(tmp_path / "idx", ["a"]),
                 lambda: connect("auto")):
        with pytest.raises(MissingDependencyError, match=r"pip install 'ragicl\[ray\]'"):
            call()
    assert not (tmp_path / "out").exists()


@needs_ray
def test_unreachable_address_is_a_clear_error():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        start = time.perf_counter()
        with pytest.raises(ClusterError, match=rf"127\.0\.0\.1:{port}.*unreachable"):
            connect(address, timeout=5)
        assert time.perf_counter() - start < 60  # not Ray's minutes of retries (generous bound)
    with pytest.raises(ClusterError, match="cannot parse"):
        connect("nowhere")


def test_a_flat_folder_is_not_sharded(tmp_path):
    ExampleIndex.build(read_dataset(make_rows(20)), embedder="hash-16").save(tmp_path / "flat")
    assert not is_sharded(tmp_path / "flat") and not is_sharded(tmp_path / "none")
    assert len(load_index(tmp_path / "flat")) == 20
    with pytest.raises(IndexFormatError, match="not a sharded index"):
        load_sharded(tmp_path / "flat")



# ------------------------------------------------------------------------------------------- Ray build
def test_distributed_build_equals_single_process_build(ray_built, flat_reference):
    assert len(ray_built) == len(flat_reference) == 300
    ids = [e.id for e in ray_built.examples]
    assert ids == [e.id for e in flat_reference.examples] == [str(i) for i in range(300)]
    assert ray_built.examples == flat_reference.examples and ray_built.labels == flat_reference.labels
    np.testing.assert_array_equal(ray_built.embeddings, flat_reference.embeddings)  # a hash embedder: bit for bit
    m = ray_built.sharded_manifest
    assert m["dataset_fingerprint"] == flat_reference.manifest["dataset_fingerprint"]
    assert [s["count"] for s in m["shards"]] == [45] * 6 + [30] and m["count"] == 300
    assert m["build"]["runs"] == 1 and not m["build"]["resumed"] and len(m["build"]["shards_built"]) == 7
    queries = [r["text"] for r in make_rows(40, seed=9)] + ["red cat"]
    for k in (1, 10, 50, 400):  # 400 > the index: padded (or cut) as ExampleIndex does
        got, want = ray_built.search(queries, k=k), flat_reference.search(queries, k=k)
        assert got.positions.shape == want.positions.shape
        assert_same_topk(got, want)


def test_a_real_dataset_with_meta_json_reads_as_read_dataset_does(ray_cluster, sst2_dev_path, tmp_path):
    path = sst2_dev_path  # meta.json beside it gives input fields, labels and the name
    index = build_distributed(path, tmp_path / "idx", embedder="hash-32", shard_size=300, workers=2)
    ref = ExampleIndex.build(read_dataset(path), embedder="hash-32")
    assert index.examples == ref.examples and index.labels == ref.labels
    assert index.sharded_manifest["name"] == ref.manifest["name"] == "sst2-dev"
    assert index.sharded_manifest["dataset_fingerprint"] == ref.manifest["dataset_fingerprint"]


def test_the_same_shards_whatever_the_number_of_workers(ray_built, ray_inputs, tmp_path):
    one = build_distributed(ray_inputs, tmp_path / "one", embedder="hash-32", shard_size=45, workers=1,
                            load=False)
    a = json.loads((one / "manifest.json").read_text())
    b = ray_built.sharded_manifest
    assert a["shards"] == b["shards"] and a["dataset_fingerprint"] == b["dataset_fingerprint"]
    for s in b["shards"]:  # byte-identical shard files
        for ext in ("parquet", "faiss"):
            assert (one / "shards" / f"{s['name']}.{ext}").read_bytes() == \
                (ray_built.path / "shards" / f"{s['name']}.{ext}").read_bytes()


def test_loads_without_ray_and_through_load_index(ray_built):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from ragicl.distributed import load_index\n"
            f"ix = load_index({str(ray_built.path)!r})\n"
            "print(type(ix).__name__, len(ix), ix.search(['red cat'], k=3).positions.tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    want = ray_built.search(["red cat"], k=3).positions.tolist()
    assert out.stdout.split()[:2] == ["ShardedIndex", "300"] and str(want) in out.stdout


def test_a_corrupted_shard_is_named(ray_built, tmp_path):
    copy = tmp_path / "idx"
    shutil.copytree(ray_built.path, copy)
    f = copy / "shards" / "shard-00002.parquet"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=r"shard-00002.*corrupted"):
        load_sharded(copy)
    (copy / "shards" / "shard-00004.faiss").unlink()
    with pytest.raises(IndexFormatError, match="shard-00002|shard-00004"):
        load_sharded(copy, verify=False)


def test_shards_from_another_embedder_are_named(ray_built, ray_inputs, tmp_path):
    class OtherEmbedder(HashEmbedder):  # same width, another model
        @property
        def name(self) -> str:
            return "other-32"

    other = build_distributed(ray_inputs, tmp_path / "other", embedder=OtherEmbedder(32), shard_size=45,
                              workers=1, load=False)
    mixed = tmp_path / "mixed"
    shutil.copytree(ray_built.path, mixed)
    for f in (other / "shards").glob("shard-00003.*"):
        shutil.copy(f, mixed / "shards" / f.name)
    with pytest.raises(EmbedderMismatchError, match=r"shard-00003.*'other-32'"):
        load_sharded(mixed)
    with pytest.raises(EmbedderMismatchError, match=r"shard-00003.*'other-32'"):  # resuming into it too
        build_distributed(ray_inputs, mixed, embedder="hash-32", shard_size=45, workers=1)


def test_bad_rows_are_reported_with_file_and_line(ray_cluster, tmp_path):
    rows = make_rows(1100)
    rows[1050] = {"label": "pos"}  # past the 1000 rows checked on the driver: found by a Ray task
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError,
                       match=r"row 1050 \(line 1051\) of .*bad\.jsonl: input field 'text' is missing"):
        build_distributed(path, tmp_path / "out", embedder="hash-8", shard_size=500, workers=1)
    rows[3] = {"text": "x", "label": None}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"row 3 \(line 4\) of .*bad\.jsonl: label field 'label' is missing"):
        build_distributed(path, tmp_path / "out2", embedder="hash-8", shard_size=500, workers=1)


def slow_hash(dim: int, delay: float):
    """A hash embedder that sleeps per call (a class made here is shipped to Ray workers by value)."""

    class SlowHash(HashEmbedder):  # name "hash-<dim>": the same embedder as HashEmbedder(dim)
        def encode(self, texts, **kwargs):
            time.sleep(delay)
            return super().encode(texts, **kwargs)

    return SlowHash(dim)


def wait_for_shards(out: Path, n: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / "shards").glob("shard-*.json"))) < n:
        if time.monotonic() > deadline:
            pytest.fail(f"no {n} finished shards in {out} after {timeout} s")
        time.sleep(0.05)


def check_complete(index, flat_reference, n_shards: int) -> dict:
    """Exact counts, the reference's ids/vectors, every shard once; returns the build record."""
    m = index.sharded_manifest
    assert len(index) == m["count"] == 300 and len(m["shards"]) == n_shards
    assert [e.id for e in index.examples] == [e.id for e in flat_reference.examples]
    np.testing.assert_array_equal(index.embeddings, flat_reference.embeddings)
    assert m["dataset_fingerprint"] == flat_reference.manifest["dataset_fingerprint"]
    b = m["build"]
    names = {s["name"] for s in m["shards"]}
    assert set(b["shards_reused"]).isdisjoint(b["shards_built"])
    assert set(b["shards_reused"]) | set(b["shards_built"]) == names
    return b


def test_a_killed_worker_loses_nothing_and_resumes(ray_cluster, ray_inputs, flat_reference, tmp_path):
    import psutil

    out, result = tmp_path / "idx", {}

    def run():
        try:
            result["index"] = build_distributed(ray_inputs, out, embedder=slow_hash(32, 0.3), shard_size=30,
                                                workers=1)
        except Exception as err:  # noqa: BLE001 - the test inspects it
            result["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    wait_for_shards(out, 2)
    me = os.getpid()
    workers = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.info["pid"] != me
               and "_EmbedShard" in " ".join(p.info["cmdline"] or [])]
    assert workers, "no embedding actor process found"
    for p in workers:
        os.kill(p.info["pid"], signal.SIGKILL)
    thread.join(300)
    done_before = len(list((out / "shards").glob("shard-*.json")))
    # Ray restarts the actor and retries the shard it held; either way the same build run again
    # resumes from disk and the result is exact.
    index = build_distributed(ray_inputs, out, embedder="hash-32", shard_size=30, workers=1)
    b = check_complete(index, flat_reference, 10)
    assert b["runs"] == 2 and b["resumed"] and len(b["shards_reused"]) >= done_before >= 2
    if "index" in result:  # the first run itself finished, thanks to Ray's retry
        assert len(result["index"]) == 300


DRIVER = """
import sys, time
from ragicl.index.embed import HashEmbedder
from ragicl.distributed import build_distributed, connect

class SlowHash(HashEmbedder):
    def encode(self, texts, **kwargs):
        time.sleep(0.3)
        return super().encode(texts, **kwargs)

connect(sys.argv[1])  # the fixture's cluster listens on 127.0.0.1; a bare ray.init would dial the external IP
build_distributed(sys.argv[3:], sys.argv[2], embedder=SlowHash(32), shard_size=30, workers=1, load=False)
"""


def test_a_killed_driver_resumes_from_the_finished_shards(ray_cluster, ray_inputs, flat_reference, tmp_path):
    out = tmp_path / "idx"
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, address, str(out), *map(str, ray_inputs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_shards(out, 3)
    finally:
        proc.kill()  # kill -9 the driver mid-build
        proc.wait(30)
    assert not (out / "manifest.json").exists()  # unfinished: not loadable
    with pytest.raises(IndexFormatError, match="has not finished"):
        load_sharded(out)
    done_before = len(list((out / "shards").glob("shard-*.json")))
    assert done_before < 10, "the driver finished before it could be killed"
    index = build_distributed(ray_inputs, out, embedder="hash-32", shard_size=30, workers=1)
    b = check_complete(index, flat_reference, 10)
    assert b["runs"] == 2 and b["resumed"] and len(b["shards_reused"]) >= 3
    assert json.loads((out / "runs.jsonl").read_text().splitlines()[0])["run"] == 1


