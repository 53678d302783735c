"""ragicl.distributed: the sharded layout and its exact merged search (no Ray), and on a local Ray cluster
(one per session, ``ray.init(num_cpus=2)``) the distributed build, its resume after a killed worker or
driver, and batch predict, each against the single-process result."""

from __future__ import annotations

import itertools
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

import numpy as np
import pytest

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

try:
    import ray
    import ray.data  # noqa: F401

    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray[data] is not installed (pip install 'ragicl[ray]'); "
                                                    "CI installs it through scripts/setup.sh")

WORDS = ["red", "green", "blue", "cat", "dog", "fish", "runs", "jumps", "big", "small", "happy", "sad",
         "film", "plot", "dull", "great", "slow", "fast", "old", "new", "bright", "dark", "loud", "quiet"]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    # a few exact duplicate texts, so ties are exercised
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))) if i % 17 else "red cat",
             "label": rng.choice(["pos", "neg", "neu"])} for i in range(n)]


def write_inputs(folder: Path, rows: list[dict]) -> list[Path]:
    """The rows over three files of three formats (JSONL with blank lines, CSV, Parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    a, b = len(rows) // 3, 2 * len(rows) // 3
    with open(folder / "part-0.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + ("\n\n" if i % 10 == 3 else "\n") for i, r in enumerate(rows[:a]))
    import csv

    with open(folder / "part-1.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, ["text", "label"])
        w.writeheader()
        w.writerows(rows[a:b])
    pq.write_table(pa.Table.from_pylist(rows[b:]), str(folder / "part-2.parquet"), row_group_size=37)
    return [folder / "part-0.jsonl", folder / "part-1.csv", folder / "part-2.parquet"]


def assert_same_topk(a, b, scale: float = 1.0) -> None:
    """Same neighbours, allowing ties: scores equal within float32 rounding of inner products of unit
    vectors, and ids equal wherever the score differs from its row neighbours by more than that."""
    tol = 1e-5 * scale
    np.testing.assert_allclose(a.scores, b.scores, atol=tol, rtol=0)
    s = b.scores
    distinct = np.ones_like(s, dtype=bool)
    with np.errstate(invalid="ignore"):  # -inf padding
        distinct[:, 1:] &= np.abs(s[:, 1:] - s[:, :-1]) > 2 * tol
        distinct[:, :-1] &= np.abs(s[:, :-1] - s[:, 1:]) > 2 * tol
        distinct &= s > s[:, -1:] + 2 * tol  # a score tied with the k-th may tie with rows past k
    np.testing.assert_array_equal(a.positions[distinct], b.positions[distinct])
    # ties: the same set of positions at each tied score
    for q in range(s.shape[0]):
        with np.errstate(invalid="ignore"):
            full = (a.positions[q] >= 0) & (s[q] > s[q, -1] + 2 * tol)  # groups cut by k: not comparable
        assert set(a.positions[q][full].tolist()) == set(b.positions[q][full].tolist())


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


# ------------------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="session")
def ray_cluster():
    if not HAVE_RAY:
        pytest.skip("ray[data] is not installed (pip install 'ragicl[ray]')")
    import ray

    connect("local", num_cpus=2)
    yield ray
    ray.shutdown()


ROWS = make_rows(300, seed=1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"), ROWS)


@pytest.fixture(scope="module")
def reference():
    """The single-process index over the same rows (ids = row numbers, as read_dataset gives)."""
    return ExampleIndex.build(read_dataset(ROWS), embedder="hash-32")


@pytest.fixture(scope="module")
def built(ray_cluster, inputs, tmp_path_factory):
    """The same input built with 2 workers (shards of 45 rows, cut across the three files)."""
    out = tmp_path_factory.mktemp("built") / "idx"
    return build_distributed(inputs, out, embedder="hash-32", shard_size=45, workers=2)


def test_distributed_build_equals_single_process_build(built, reference):
    assert len(built) == len(reference) == 300
    ids = [e.id for e in built.examples]
    assert ids == [e.id for e in reference.examples] == [str(i) for i in range(300)]
    assert built.examples == reference.examples and built.labels == reference.labels
    np.testing.assert_array_equal(built.embeddings, reference.embeddings)  # a hash embedder: bit for bit
    m = built.sharded_manifest
    assert m["dataset_fingerprint"] == reference.manifest["dataset_fingerprint"]
    assert [s["count"] for s in m["shards"]] == [45] * 6 + [30] and m["count"] == 300
    assert m["build"]["runs"] == 1 and not m["build"]["resumed"] and len(m["build"]["shards_built"]) == 7
    queries = [r["text"] for r in make_rows(40, seed=9)] + ["red cat"]
    for k in (1, 10, 50, 400):  # 400 > the index: padded (or cut) as ExampleIndex does
        got, want = built.search(queries, k=k), reference.search(queries, k=k)
        assert got.positions.shape == want.positions.shape
        assert_same_topk(got, want)


def test_a_real_dataset_with_meta_json_reads_as_read_dataset_does(ray_cluster, tmp_path):
    from conftest import dataset_path

    path = dataset_path("sst2", "dev")  # meta.json beside it gives input fields, labels and the name
    index = build_distributed(path, tmp_path / "idx", embedder="hash-32", shard_size=300, workers=2)
    ref = ExampleIndex.build(read_dataset(path), embedder="hash-32")
    assert index.examples == ref.examples and index.labels == ref.labels
    assert index.sharded_manifest["name"] == ref.manifest["name"] == "sst2-dev"
    assert index.sharded_manifest["dataset_fingerprint"] == ref.manifest["dataset_fingerprint"]


def test_the_same_shards_whatever_the_number_of_workers(built, inputs, tmp_path):
    one = build_distributed(inputs, tmp_path / "one", embedder="hash-32", shard_size=45, workers=1,
                            load=False)
    a = json.loads((one / "manifest.json").read_text())
    b = built.sharded_manifest
    assert a["shards"] == b["shards"] and a["dataset_fingerprint"] == b["dataset_fingerprint"]
    for s in b["shards"]:  # byte-identical shard files
        for ext in ("parquet", "faiss"):
            assert (one / "shards" / f"{s['name']}.{ext}").read_bytes() == \
                (built.path / "shards" / f"{s['name']}.{ext}").read_bytes()


def test_loads_without_ray_and_through_load_index(built):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from ragicl.distributed import load_index\n"
            f"ix = load_index({str(built.path)!r})\n"
            "print(type(ix).__name__, len(ix), ix.search(['red cat'], k=3).positions.tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    want = built.search(["red cat"], k=3).positions.tolist()
    assert out.stdout.split()[:2] == ["ShardedIndex", "300"] and str(want) in out.stdout


def test_a_corrupted_shard_is_named(built, tmp_path):
    copy = tmp_path / "idx"
    shutil.copytree(built.path, copy)
    f = copy / "shards" / "shard-00002.parquet"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=r"shard-00002.*corrupted"):
        load_sharded(copy)
    (copy / "shards" / "shard-00004.faiss").unlink()
    with pytest.raises(IndexFormatError, match="shard-00002|shard-00004"):
        load_sharded(copy, verify=False)


def test_shards_from_another_embedder_are_named(built, inputs, tmp_path):
    class OtherEmbedder(HashEmbedder):  # same width, another model
        @property
        def name(self) -> str:
            return "other-32"

    other = build_distributed(inputs, tmp_path / "other", embedder=OtherEmbedder(32), shard_size=45,
                              workers=1, load=False)
    mixed = tmp_path / "mixed"
    shutil.copytree(built.path, mixed)
    for f in (other / "shards").glob("shard-00003.*"):
        shutil.copy(f, mixed / "shards" / f.name)
    with pytest.raises(EmbedderMismatchError, match=r"shard-00003.*'other-32'"):
        load_sharded(mixed)
    with pytest.raises(EmbedderMismatchError, match=r"shard-00003.*'other-32'"):  # resuming into it too
        build_distributed(inputs, mixed, embedder="hash-32", shard_size=45, workers=1)


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


def check_complete(index, reference, n_shards: int) -> dict:
    """Exact counts, the reference's ids/vectors, every shard once; returns the build record."""
    m = index.sharded_manifest
    assert len(index) == m["count"] == 300 and len(m["shards"]) == n_shards
    assert [e.id for e in index.examples] == [e.id for e in reference.examples]
    np.testing.assert_array_equal(index.embeddings, reference.embeddings)
    assert m["dataset_fingerprint"] == reference.manifest["dataset_fingerprint"]
    b = m["build"]
    names = {s["name"] for s in m["shards"]}
    assert set(b["shards_reused"]).isdisjoint(b["shards_built"])
    assert set(b["shards_reused"]) | set(b["shards_built"]) == names
    return b


def test_a_killed_worker_loses_nothing_and_resumes(ray_cluster, inputs, reference, tmp_path):
    import psutil

    out, result = tmp_path / "idx", {}

    def run():
        try:
            result["index"] = build_distributed(inputs, out, embedder=slow_hash(32, 0.3), shard_size=30,
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
    index = build_distributed(inputs, out, embedder="hash-32", shard_size=30, workers=1)
    b = check_complete(index, reference, 10)
    assert b["runs"] == 2 and b["resumed"] and len(b["shards_reused"]) >= done_before >= 2
    if "index" in result:  # the first run itself finished, thanks to Ray's retry
        assert len(result["index"]) == 300


DRIVER = """
import sys, time
import ray
from ragicl.index.embed import HashEmbedder
from ragicl.distributed import build_distributed

class SlowHash(HashEmbedder):
    def encode(self, texts, **kwargs):
        time.sleep(0.3)
        return super().encode(texts, **kwargs)

ray.init(address=sys.argv[1], log_to_driver=False)
build_distributed(sys.argv[3:], sys.argv[2], embedder=SlowHash(32), shard_size=30, workers=1, load=False)
"""


def test_a_killed_driver_resumes_from_the_finished_shards(ray_cluster, inputs, reference, tmp_path):
    out = tmp_path / "idx"
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, address, str(out), *map(str, inputs)],
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
    index = build_distributed(inputs, out, embedder="hash-32", shard_size=30, workers=1)
    b = check_complete(index, reference, 10)
    assert b["runs"] == 2 and b["resumed"] and len(b["shards_reused"]) >= 3
    assert json.loads((out / "runs.jsonl").read_text().splitlines()[0])["run"] == 1


def test_distributed_predict_equals_local_predict(ray_cluster, built, smollm_path):
    from ragicl import ICLClassifier, PromptTemplate

    test = read_dataset(make_rows(11, seed=5))
    kw = {"k": 4, "max_prompt_tokens": 160,
          "template": PromptTemplate(example="Text: {text}\nLabel: {label}")}
    got = predict_distributed(built.path, test, lm=smollm_path, workers=2, batch_size=3, **kw)
    want = ICLClassifier(smollm_path, **kw).fit(load_index(built.path)).predict_proba(list(test.examples))
    assert got.classes == ("neg", "neu", "pos") and got.probs.shape == (11, 3)
    # a prompt scores the same alone or batched to ~1e-4 in log-probability (DESIGN, LM); probabilities
    # move by at most about that much, so 2e-3 is a 10x margin yet far below the gaps between labels
    np.testing.assert_allclose(got.probs, want, atol=2e-3, rtol=0)
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 4e-3
    assert np.array_equal(np.asarray(got.labels)[clear], np.asarray(got.classes)[want.argmax(1)][clear])


def test_distributed_fusion_equals_local_fusion(ray_cluster, built, smollm_path):
    """"ragicl best" on Ray: actors return the unmixed parts, the driver mixes them over the whole test set,
    so batch calibration (the prior is the mean over every query) matches one process."""
    from ragicl import FusionClassifier, PromptTemplate
    from ragicl.estimators.fusion import combine

    test = read_dataset(make_rows(11, seed=5))
    kw = {"k": 2, "max_prompt_tokens": 160, "knn_k": 16, "knn_weight": 0.4, "candidates": 2,
          "calibration": "batch", "template": PromptTemplate(example="Text: {text}\nLabel: {label}")}
    local = FusionClassifier(smollm_path, **kw).fit(load_index(built.path))
    want = local.predict_proba(list(test.examples))
    got = predict_distributed(built.path, test, lm=smollm_path, workers=2, batch_size=3, estimator="fusion", **kw)
    assert got.classes == ("neg", "neu", "pos") and got.probs.shape == (11, 3)
    np.testing.assert_allclose(got.probs, want, atol=2e-3, rtol=0)  # the LM's batch noise, as above
    # the check can fail: calibrating each actor batch of 3 on its own gives other distributions
    parts = local.parts(list(test.examples))
    chunked = np.concatenate([combine(type(parts)(parts.lm_logp[i:i + 3], parts.neighbor_labels[i:i + 3],
                                                  parts.neighbor_scores[i:i + 3], 3, parts.candidates[i:i + 3]),
                                      knn_k=16, knn_temperature=local.knn_temperature, knn_weight=0.4,
                                      calibration="batch") for i in range(0, 11, 3)])
    assert np.abs(chunked - want).max() > 10 * 2e-3
    with pytest.raises(ValueError, match="estimator must be one of"):
        predict_distributed(built.path, test, lm=smollm_path, estimator="vote")


def test_a_vote_only_fusion_actor_does_not_run_the_lm(built, smollm_path, monkeypatch):
    """At knn_weight 1 the mix ignores the LM, so the Ray actor skips it as FusionClassifier.predict_proba
    does (it used to score every prompt for nothing: a whole retrieved-k's time on SUBJ's 500 queries)."""
    from ragicl import FusionClassifier, PromptTemplate
    from ragicl.distributed.predict import _Predictor
    from ragicl.estimators.fusion import FusionParts

    test = list(read_dataset(make_rows(5, seed=5)).examples)
    kw = {"k": 2, "max_prompt_tokens": 160, "knn_k": 16, "knn_weight": 1.0, "knn_temperature": 0.05,
          "template": PromptTemplate(example="Text: {text}\nLabel: {label}")}
    actor = _Predictor(str(built.path), smollm_path, kw, "cpu", estimator="fusion")
    calls = []
    monkeypatch.setattr(FusionClassifier, "_lm_logp", lambda self, *a, **k: calls.append(1) or 1 / 0)
    out = actor({"row": np.arange(5), "example": [json.dumps(ex.to_json()) for ex in test]})
    assert not calls and not any(out["error"])
    local = FusionClassifier(smollm_path, **kw).fit(load_index(built.path))
    parts = FusionParts(out["lm_logp"], out["neighbor_labels"], out["neighbor_scores"], len(local.classes_),
                        out["candidates"].astype(bool))
    np.testing.assert_allclose(local.mix(parts), local.predict_proba(test), atol=1e-12)
    actor.clf.knn_weight = 0.5  # a real mix does score the LM (and the stub says so)
    with pytest.raises(ZeroDivisionError):
        actor({"row": np.arange(5), "example": [json.dumps(ex.to_json()) for ex in test]})
    assert calls


@pytest.mark.slow
def test_distributed_build_with_the_real_minilm(ray_cluster, inputs, minilm, tmp_path):
    index = build_distributed(inputs, tmp_path / "idx", embedder="all-MiniLM-L6-v2", shard_size=150,
                              workers=1)  # one actor loads the model once for both shards
    ref = ExampleIndex.build(read_dataset(ROWS), embedder=minilm)
    assert [e.id for e in index.examples] == [e.id for e in ref.examples]
    # batches differ (150-row shards vs 300 rows): vectors agree to float32 noise, not bit for bit
    np.testing.assert_allclose(index.embeddings, ref.embeddings, atol=1e-5, rtol=0)
    queries = [r["text"] for r in make_rows(30, seed=4)]
    assert_same_topk(index.search(queries, k=8), ref.search(queries, k=8), scale=4.0)


@pytest.mark.parametrize("factory", ["IVF4,Flat", "IVF4,PQ8x4"])
def test_ivf_assembly_searches_like_the_single_process_ivf(built, inputs, reference, tmp_path, factory):
    """Trained once on the same sample, shards added in Ray tasks, lists merged: the single-process IVF."""
    out = tmp_path / "idx"
    shutil.copytree(built.path, out)  # the embedded shards are reused: only the IVF stage runs
    index = build_distributed(inputs, out, embedder="hash-32", factory=factory, shard_size=45, workers=2)
    ref = ExampleIndex.build(read_dataset(ROWS), embedder="hash-32", factory=factory)
    m = index.sharded_manifest
    assert m["factory"] == factory and m["ivf"]["ntotal"] == 300 and len(m["build"]["shards_reused"]) == 7
    assert not list((out / "shards").glob("*.ivf.faiss"))  # merged, then removed
    queries = [r["text"] for r in make_rows(30, seed=7)]
    for nprobe in (1, 2):
        assert_same_topk(index.search(queries, k=10, nprobe=nprobe), ref.search(queries, k=10, nprobe=nprobe))
    if factory == "IVF4,Flat":  # every list probed: the exact result
        assert_same_topk(index.search(queries, k=10, nprobe=4), reference.search(queries, k=10))


def test_distributed_classifier_is_a_compare_system(built, monkeypatch):
    """What ``ragicl eval --ray`` plugs into ``compare``: classes from the manifest, probabilities from
    ``predict_distributed`` with its arguments passed through (the Ray run itself is tested above)."""
    from ragicl.distributed import BatchPrediction, DistributedClassifier, predict

    calls = []

    def fake(index, queries, **kw):
        calls.append((index, list(queries), kw))
        return BatchPrediction(("neg", "neu", "pos"), ("pos",), np.array([[0.1, 0.2, 0.7]]))

    monkeypatch.setattr(predict, "predict_distributed", fake)
    clf = DistributedClassifier(built.path, lm="some-lm", k=3, address="auto").fit()
    assert clf.classes_ == ("neg", "neu", "pos") and clf.predict(["red cat"]) == ["pos"]
    assert calls == [(built.path, ["red cat"], {"lm": "some-lm", "k": 3, "address": "auto"})]


# ------------------------------------------------------------------ wiring: ExampleIndex.load and the CLI
def test_example_index_load_opens_a_sharded_folder(built):
    """The sharded layout is registered with the index folder module: ExampleIndex.load dispatches to it."""
    from ragicl.distributed import ShardedIndex

    index = ExampleIndex.load(built.path)
    assert isinstance(index, ShardedIndex) and index.n_shards == 7 and index.examples == built.examples
    queries = [r["text"] for r in make_rows(20, seed=3)]
    got, want = index.search(queries, k=12), built.search(queries, k=12)
    np.testing.assert_array_equal(got.positions, want.positions)  # the same shards and merge: identical
    with pytest.raises(EmbedderMismatchError, match="hash-32"):
        ExampleIndex.load(built.path, embedder="hash-16")


def test_cli_index_build_with_ray_reads_several_files_and_globs(built, inputs, tmp_path, capsys):
    from ragicl.cli import main

    out = tmp_path / "cli"
    glob = str(inputs[0].parent / "part-*.*")  # a quoted glob, as `data/*.parquet` unexpanded
    argv = ["index", "build", glob, "--out", str(out), "--ray", "local", "--workers", "2", "--shard-size", "45",
            "--embedder", "hash-32"]
    assert main(argv) == 0
    assert "300 examples in 7 shards" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["shards"] == built.sharded_manifest["shards"]
    assert ExampleIndex.load(out).examples == built.examples
    files = [str(p) for p in inputs]  # the shell-expanded form, several arguments: the same plan, so it resumes
    assert main(["index", "build", *files, "--out", str(out), "--ray", "local", "--shard-size", "45",
                 "--embedder", "hash-32"]) == 0
    build = json.loads((out / "manifest.json").read_text())["build"]
    assert build["runs"] == 2 and len(build["shards_reused"]) == 7 and not build["shards_built"]


def test_cli_ray_options_are_checked_before_any_work(built, inputs, tmp_path, capsys):
    from ragicl.cli import main

    def fails(argv, *expected):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "ragicl: error:" in err and "Traceback" not in err, err
        for text in expected:
            assert text in err, err

    files = [str(p) for p in inputs]
    fails(["index", "build", *files, "--out", str(tmp_path / "a"), "--embedder", "hash-32"],
          "received 3 data files", "--ray auto")
    fails(["index", "build", files[0], "--out", str(tmp_path / "a"), "--workers", "2", "--embedder", "hash-32"],
          "--workers 2", "without --ray")
    fails(["index", "build", files[2], "--out", str(tmp_path / "a"), "--shard-size", "9", "--embedder",
           "hash-32"], "--shard-size 9")
    assert not (tmp_path / "a").exists()
    sharded = tmp_path / "sharded"
    shutil.copytree(built.path, sharded)
    before = (sharded / "manifest.json").read_bytes()
    fails(["index", "build", files[0], "--out", str(sharded), "--embedder", "hash-32"], "holds a sharded index")
    assert (sharded / "manifest.json").read_bytes() == before
    flat = tmp_path / "flat"
    ExampleIndex.build(read_dataset(make_rows(10)), embedder="hash-32").save(flat)
    fails(["index", "build", *files, "--out", str(flat), "--ray", "local", "--embedder", "hash-32"],
          "holds a single-process index")
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in make_rows(4, seed=5)))
    fails(["eval", "--index", str(flat), "--test", str(test), "--workers", "2", "--lm", "none"], "--workers 2")


def test_cli_eval_with_ray_fans_the_lm_systems_out(built, tmp_path, capsys, monkeypatch, smollm_path):
    """``eval --ray``: every LM-scored row is a DistributedClassifier with the CLI's settings; kNN votes run
    locally on the sharded index (the Ray scoring itself: test_distributed_predict_equals_local_predict)."""
    from ragicl import PromptTemplate
    from ragicl.cli import main
    from ragicl.distributed import BatchPrediction, predict

    calls = []

    def fake(index, queries, **kw):
        calls.append((str(index), len(queries), kw))
        probs = np.tile([0.2, 0.3, 0.5], (len(queries), 1))
        return BatchPrediction(("neg", "neu", "pos"), ("pos",) * len(queries), probs)

    monkeypatch.setattr(predict, "predict_distributed", fake)
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in make_rows(9, seed=5)))
    report = tmp_path / "r.json"
    code = main(["eval", "--index", str(built.path), "--test", str(test), "--ray", "local", "--workers", "3",
                 "--k", "2", "--lm", smollm_path, "--batch-size", "4", "--max-prompt-tokens", "200", "--json",
                 str(report), "--dev-size", "6", "--tune-budget", "0", "--predictions", str(tmp_path / "p.json")])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    names = [s["name"] for s in data["systems"]]
    assert names == ["zero-shot", "random-2", "retrieved-2", "kNN vote k=8", "kNN vote k=32", "ragicl best"]
    assert [c[:2] for c in calls] == [(str(built.path), 9)] * 4
    for (_, _, kw), (k, selection) in zip(calls, [(0, None), (2, "random"), (2, "topk"), (2, "topk")]):
        assert kw["lm"] == smollm_path and kw["address"] == "local" and kw["workers"] == 3
        assert kw["lm_batch_size"] == 4 and kw["max_prompt_tokens"] == 200 and kw["k"] == k
        assert kw.get("selection") == selection and isinstance(kw["template"], PromptTemplate)
    # "ragicl best": tuned here on 6 dev queries, then fanned out as a fusion with the chosen setting
    best = calls[3][2]
    assert best["estimator"] == "fusion" and "batch_size" not in best and "device" not in best
    chosen = next(n for n in data["notes"] if n.startswith("ragicl best = "))
    assert f"vote k={best['knn_k']}" in chosen and f"weight {best['knn_weight']:.2f}" in chosen
    assert "estimator" not in calls[0][2]
    # the same run again with its saved predictions: nothing is scored on Ray and "ragicl best" is not re-tuned
    import ragicl._cli_systems as cli_systems

    def no_tuning(*a, **k):
        raise AssertionError("tuned again")

    monkeypatch.setattr(cli_systems, "tune_best", no_tuning)
    assert main(["eval", "--index", str(built.path), "--test", str(test), "--ray", "local", "--workers", "3",
                 "--k", "2", "--lm", smollm_path, "--batch-size", "4", "--max-prompt-tokens", "200", "--json",
                 str(report), "--dev-size", "6", "--tune-budget", "0", "--predictions", str(tmp_path / "p.json")]) == 0
    assert len(calls) == 4 and [s["name"] for s in json.loads(report.read_text())["systems"]] == names
