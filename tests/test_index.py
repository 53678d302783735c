"""ExampleIndex: exactness vs numpy, persistence (atomic, verified), embedder checks, IVF, add."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import dataset_path

from ragicl._atomic import seal
from ragicl._exceptions import (
    DataError,
    EmbedderMismatchError,
    IndexFormatError,
    MissingDependencyError,
    NotFittedError,
)
from ragicl.data import from_records, read_dataset
from ragicl.index.core import ExampleIndex, build_and_save
from ragicl.index.embed import HashEmbedder
from ragicl.types import Example


@pytest.fixture(scope="module")
def rte():
    return read_dataset(dataset_path("rte"))


@pytest.fixture(scope="module")
def small(rte):
    return rte.subset(range(400))


@pytest.fixture(scope="module")
def index(small):
    return ExampleIndex.build(small, embedder=HashEmbedder(64))


def _brute_force(index, x, k):
    sims = x @ np.asarray(index.embeddings).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def test_search_equals_numpy_brute_force(index, rte):
    queries = [ex for ex in rte.examples[1000:1040]]
    res = index.search(queries, k=10)
    x = index.embed(queries)
    pos, scores = _brute_force(index, x, 10)
    np.testing.assert_array_equal(res.positions, pos)
    np.testing.assert_allclose(res.scores, scores, rtol=1e-5, atol=1e-6)
    assert res.positions.dtype == np.int64 and res.scores.dtype == np.float32
    # the same through a precomputed matrix, a single string and a mapping of input fields
    np.testing.assert_array_equal(index.search(x, 10).positions, pos)
    q = queries[0]
    np.testing.assert_array_equal(index.search(q.inputs, 10).positions[0], pos[0])
    np.testing.assert_array_equal(index.search(index.query_text(q), 10).positions[0], pos[0])


def test_properties_and_manifest(index, small):
    assert len(index) == 400 and index.dimension == 64 and index.factory == "Flat"
    assert index.examples == small.examples and index.embedder.name == "hash-64"
    ds = index.dataset
    assert ds.input_fields == ("premise", "hypothesis") and ds.labels == small.labels and ds.task == "classification"
    m = index.manifest
    assert m["count"] == 400 and m["dimension"] == 64 and m["metric"] == "inner_product"
    assert m["dataset_fingerprint"] == small.fingerprint() and m["embedder"] == "hash-64"
    assert index.keys[0] == small[0].key() and index.position_of("7") == 7
    assert index.label_ids.tolist() == small.label_array().tolist()


def test_k_larger_than_index_pads(small):
    tiny = ExampleIndex.build(small.subset(range(3)), embedder="hash-64")
    res = tiny.search(["anything"], k=5)  # columns stop at the index size
    assert res.positions.shape == res.scores.shape == (1, 3)
    assert sorted(res.positions[0].tolist()) == [0, 1, 2] and np.isfinite(res.scores).all()
    with pytest.raises(ValueError, match="k must be a positive integer"):
        tiny.search(["x"], k=0)
    assert tiny.search([], k=2).positions.shape == (0, 2)


def test_save_load_search_identical(index, rte, tmp_path):
    path = index.save(tmp_path / "idx")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and manifest["previous_version"] is None
    assert sorted(p.name for p in path.iterdir()) == [".lock", "manifest.json", manifest["version"]]
    assert sorted(p.name for p in (path / manifest["version"]).iterdir()) == [".ragicl-made", "embeddings.npy",
                                                                              "examples.jsonl", "index.faiss"]
    loaded = ExampleIndex.load(path)
    assert loaded.examples == index.examples and loaded.keys == index.keys
    assert loaded.manifest["dataset_fingerprint"] == index.manifest["dataset_fingerprint"]
    assert isinstance(loaded.embeddings, np.memmap)
    queries = list(rte.examples[2000:2030])
    a, b = index.search(queries, 8), loaded.search(queries, 8)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert loaded.dataset.input_fields == index.dataset.input_fields
    # overwrite in place, also from the loaded (memory-mapped) copy
    loaded.save(path)
    assert ExampleIndex.load(path).examples == index.examples
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    second = json.loads((path / "manifest.json").read_text())
    assert second["previous_version"] == manifest["version"]  # kept: a reader may still be loading it
    loaded.save(path)  # the third save removes the first version
    third = json.loads((path / "manifest.json").read_text())
    assert sorted(p.name for p in path.iterdir()) == sorted([".lock", "manifest.json", second["version"],
                                                             third["version"]])


def test_atomic_save_failure_keeps_old_index(small, tmp_path, monkeypatch):
    path = tmp_path / "idx"
    ExampleIndex.build(small.subset(range(50)), embedder="hash-64").save(path)
    before = _snapshot(path)
    bigger = ExampleIndex.build(small, embedder="hash-64")

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError, match="simulated"):
        bigger.save(path)
    monkeypatch.undo()
    assert _snapshot(path) == before  # no temp folder left behind
    assert len(ExampleIndex.load(path)) == 50
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]

    # a failure at the commit itself (replacing manifest.json) leaves the previous index, and no leftovers
    def flaky_replace(src, dst):
        raise OSError("crash during swap (simulated)")

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="swap"):
        bigger.save(path)
    monkeypatch.undo()
    assert len(ExampleIndex.load(path)) == 50 and _snapshot(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def _snapshot(path):
    """Every file under ``path`` (relative name -> bytes)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _file(saved, name):
    """Where the current version of the index folder ``saved`` keeps ``name``."""
    return saved / json.loads((saved / "manifest.json").read_text())["version"] / name


def test_save_refuses_foreign_folder(index, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an ExampleIndex folder"):
        index.save(tmp_path / "data")


@pytest.fixture
def saved(small, tmp_path):
    return ExampleIndex.build(small.subset(range(30)), embedder="hash-64").save(tmp_path / "idx")


def test_load_missing_folder(tmp_path):
    with pytest.raises(IndexFormatError, match="does not exist.*ragicl index build"):
        ExampleIndex.load(tmp_path / "nothing")


@pytest.mark.parametrize("name", ["index.faiss", "embeddings.npy", "examples.jsonl"])
def test_load_missing_file(saved, name):
    _file(saved, name).unlink()
    with pytest.raises(IndexFormatError, match=rf"missing v-\w+/{name}"):
        ExampleIndex.load(saved)


@pytest.mark.parametrize("name", ["index.faiss", "embeddings.npy", "examples.jsonl"])
def test_load_truncated_file(saved, name):
    data = _file(saved, name).read_bytes()
    _file(saved, name).write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFormatError, match="truncated"):
        ExampleIndex.load(saved)


def test_load_count_mismatch_and_bad_manifest(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    (saved / "manifest.json").write_text(json.dumps(seal({**manifest, "count": 31})))  # digest matches
    with pytest.raises(IndexFormatError, match="inconsistent.*31 examples"):
        ExampleIndex.load(saved)
    (saved / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(IndexFormatError, match="format version 99"):
        ExampleIndex.load(saved)
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="unreadable"):
        ExampleIndex.load(saved)
    (saved / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        ExampleIndex.load(saved)


def test_embedder_mismatch(saved):
    with pytest.raises(EmbedderMismatchError, match="built with 'hash-64'.*'hash-32'"):
        ExampleIndex.load(saved, embedder=HashEmbedder(32))
    assert len(ExampleIndex.load(saved, embedder=HashEmbedder(64))) == 30
    index = ExampleIndex.load(saved)
    with pytest.raises(EmbedderMismatchError, match="64-dimensional"):
        index.search(np.ones((2, 32), np.float32), k=3)
    index._embedder = HashEmbedder(16)  # an embedder swapped behind the index's back
    with pytest.raises(EmbedderMismatchError, match="16-dimensional"):
        index.search(["text"], k=3)


def test_ivf_recall_and_nprobe(rte, tmp_path):
    ds = rte.subset(range(2000))
    flat = ExampleIndex.build(ds, embedder="hash-64")
    ivf = ExampleIndex.build(ds, embedder="hash-64", factory="IVF16,Flat")
    queries = list(rte.examples[2000:2100])
    truth = flat.search(queries, 10).positions

    def recall(res):
        return np.mean([len(set(t) & set(r)) / 10 for t, r in zip(truth, res.positions)])

    assert recall(ivf.search(queries, 10, nprobe=16)) == 1.0  # probing every list is exact
    ivf.set_search_params(nprobe=4)
    low = recall(ivf.search(queries, 10))
    assert 0.5 < low <= 1.0
    assert recall(ivf.search(queries, 10, nprobe=1)) <= low  # per-call override...
    assert recall(ivf.search(queries, 10)) == low  # ...is restored afterwards
    loaded = ExampleIndex.load(ivf.save(tmp_path / "ivf"))
    assert loaded.manifest["search_params"] == {"nprobe": 4}
    assert recall(loaded.search(queries, 10)) == low
    with pytest.raises(ValueError, match="cannot set nprobe"):
        flat.set_search_params(nprobe=4)


def test_factory_errors(small):
    with pytest.raises(ValueError, match="invalid faiss factory"):
        ExampleIndex.build(small, embedder="hash-64", factory="NotAFactory")
    with pytest.raises(ValueError, match="could not train.*fewer IVF lists"):
        ExampleIndex.build(small.subset(range(20)), embedder="hash-64", factory="IVF64,Flat")
    with pytest.raises(ValueError, match="no GPU support|sees no GPU|no CUDA device|has no CUDA"):
        try:
            import faiss

            if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
                pytest.skip("a GPU is present")
        except ImportError:
            pass
        ExampleIndex.build(small, embedder="hash-64", device="cuda")


def test_hnsw_builds(small):
    index = ExampleIndex.build(small, embedder="hash-64", factory="HNSW16")
    assert index.search([small[3]], 1).positions[0, 0] == 3


def test_add_incremental_equals_build(small):
    whole = ExampleIndex.build(small, embedder="hash-64")
    part = ExampleIndex.build(small.subset(range(250)), embedder="hash-64")
    part.add(small.subset(range(250, 400)))
    assert part.examples == whole.examples and part.manifest["dataset_fingerprint"] == small.fingerprint()
    q = [ex.text() for ex in small.examples[:5]]
    np.testing.assert_array_equal(part.search(q, 5).positions, whole.search(q, 5).positions)
    with pytest.raises(DataError, match="already in the index"):
        part.add(small[0])
    with pytest.raises(DataError, match="outside the index's label set"):
        part.add(Example("new-1", {"premise": "a", "hypothesis": "b"}, label="maybe"))
    with pytest.raises(DataError, match="lacks input field"):
        part.add(Example("new-2", {"text": "a"}, label="entailment"))
    part.add(Example("new-3", {"premise": "a", "hypothesis": "b"}, label="entailment"))
    assert len(part) == 401 and part.position_of("new-3") == 400


def test_empty_and_unbuilt(small):
    with pytest.raises(NotFittedError):
        ExampleIndex(embedder="hash-64").search(["x"], 1)
    lazy = ExampleIndex(embedder="hash-64")
    lazy.add(small.subset(range(10)))
    assert len(lazy) == 10
    with pytest.raises(DataError):
        ExampleIndex.build(from_records([{"text": "x", "label": "a"}]).subset([]), embedder="hash-64")


def test_build_and_save_from_file(tmp_path):
    rows = [{"q": f"question number {i}", "a": str(i)} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = build_and_save(tmp_path / "d.jsonl", tmp_path / "indexes" / "d", embedder="hash-32",
                           output_field="a")
    assert index.dataset.task == "generation" and index.summary()["bytes_on_disk"] > 0
    assert ExampleIndex.load(tmp_path / "indexes" / "d").dataset.output_field == "a"


def test_torch_backend_seam(small, tmp_path, monkeypatch):
    """Without faiss-gpu, a CUDA request routes exact search through ragicl.index.torch_search; run it on CPU."""
    torch_search = pytest.importorskip("ragicl.index.torch_search")
    import ragicl.index.device as device_module

    monkeypatch.setattr(device_module, "torch_searcher",
                        lambda vectors, *a: torch_search.TorchExactSearch(vectors, device="cpu"))
    reference = ExampleIndex.build(small, embedder="hash-64", device="cpu")
    index = ExampleIndex.build(small.subset(range(300)), embedder="hash-64", device="auto")
    index.add(small.subset(range(300, 400)))
    assert index.summary()["backend"] == "torch" and len(index) == 400
    queries = [ex.text() for ex in small.examples[:20]]
    a, b = reference.search(queries, 7), index.search(queries, 7)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot set nprobe"):
        index.set_search_params(nprobe=2)
    loaded = ExampleIndex.load(index.save(tmp_path / "idx"))  # re-enters the seam on load
    assert loaded.summary()["backend"] == "torch"
    np.testing.assert_array_equal(loaded.search(queries, 7).positions, a.positions)
    assert ExampleIndex.load(tmp_path / "idx", device="cpu").summary()["backend"] == "cpu"


def test_ivfpq_trains_without_polysemous_codes():
    """faiss's factory turns on polysemous training for IVF-PQ (minutes of k-means on codes); the index
    switches it off, since nothing searches polysemous codes."""
    import faiss

    from ragicl import ExampleIndex, HashEmbedder
    from ragicl.types import Dataset, Example

    rows = tuple(Example(id=str(i), inputs={"text": f"review number {i} is {'good' if i % 2 else 'bad'}"},
                         label="positive" if i % 2 else "negative") for i in range(400))
    ds = Dataset(rows, ("text",), "classification", ("negative", "positive"))
    index = ExampleIndex.build(ds, embedder=HashEmbedder(32), factory="IVF4,PQ4", show_progress=False)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index._cpu_index()))
    assert ivf.do_polysemous_training is False
    assert index.search(["review number 3 is good"], 5).positions.shape == (1, 5)


# ---------------------------------------------------------------------- from_vectors
def _own_vectors(dataset, dim=64):
    """What ``build`` embeds: each example's input fields in the dataset's order, through HashEmbedder."""
    return HashEmbedder(dim).encode([ex.text(dataset.input_fields) for ex in dataset.examples])


def test_from_vectors_of_the_embedders_output_is_the_built_index(index, small, rte):
    vectors = _own_vectors(small)
    fv = ExampleIndex.from_vectors(vectors, small, embedder=HashEmbedder(64))
    np.testing.assert_array_equal(fv.embeddings, index.embeddings)  # bit for bit, not re-normalized
    assert fv.examples == index.examples and fv.keys == index.keys and fv.dataset.labels == small.labels
    assert fv.manifest["dataset_fingerprint"] == index.manifest["dataset_fingerprint"]
    assert fv.manifest["embedder"] == "hash-64" and fv.factory == "Flat"
    queries = list(rte.examples[1000:1040])
    a, b = index.search(queries, 10), fv.search(queries, 10)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.scores, b.scores)
    from ragicl.prompt.retrieve import Retriever

    for strategy in ("topk", "balanced", "mmr"):
        r = Retriever(k=6, strategy=strategy)
        batch = queries + list(small.examples[:5])  # the last five are indexed: excluded duplicates
        assert r.retrieve(fv, batch) == r.retrieve(index, batch)
    fv.add(rte[500])  # the embedder embeds what is added later
    assert len(fv) == 401 and fv.search([rte[500]], 1).positions[0, 0] == 400


def test_from_vectors_normalizes_copies_and_saves(index, small, rte, tmp_path):
    unit = _own_vectors(small)
    scale = np.random.default_rng(0).uniform(0.1, 10.0, size=(len(small), 1))
    raw = unit.astype(np.float64) * scale  # unnormalized float64, e.g. a model run without normalization
    before = raw.copy()
    fv = ExampleIndex.from_vectors(raw, small, embedder="hash-64")
    np.testing.assert_array_equal(raw, before)  # the caller's array is untouched...
    assert fv.embeddings.dtype == np.float32 and fv.embeddings.flags.c_contiguous
    raw[:] = 0  # ...and not aliased
    np.testing.assert_allclose(np.linalg.norm(fv.embeddings, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(fv.embeddings, unit, atol=1e-6)
    queries = list(rte.examples[1000:1030])
    np.testing.assert_array_equal(fv.search(queries, 5).positions, index.search(queries, 5).positions)
    loaded = ExampleIndex.load(fv.save(tmp_path / "fv"))
    assert loaded.manifest["embedder"] == "hash-64" and len(loaded) == len(small)
    np.testing.assert_array_equal(loaded.search(queries, 5).positions, fv.search(queries, 5).positions)
    np.testing.assert_array_equal(loaded.embeddings, fv.embeddings)
    # records instead of a Dataset, and a trained factory
    records = [{"text": t, "label": "x"} for t in ("red", "green", "blue", "cyan")]
    tiny = ExampleIndex.from_vectors(np.eye(4, 8), records, embedder="hash-8")
    assert tiny.search(np.eye(4, 8, dtype=np.float32), 1).positions[:, 0].tolist() == [0, 1, 2, 3]
    ivf = ExampleIndex.from_vectors(unit, small, embedder="hash-64", factory="IVF4,Flat")
    exact = index.search(queries, 5).positions
    np.testing.assert_array_equal(ivf.search(queries, 5, nprobe=4).positions, exact)


def test_from_vectors_rejects_bad_input(small):
    good = _own_vectors(small)
    with pytest.raises(DataError, match=r"shape \(399, 64\).*400 rows"):
        ExampleIndex.from_vectors(good[:-1], small, embedder="hash-64")
    with pytest.raises(DataError, match=r"2-D float array.*shape \(25600,\)"):
        ExampleIndex.from_vectors(good.ravel(), small, embedder="hash-64")
    with pytest.raises(DataError, match="dtype int64.*np.float32"):
        ExampleIndex.from_vectors(np.ones((400, 64), np.int64), small, embedder="hash-64")
    with pytest.raises(TypeError, match="numpy cannot read"):
        ExampleIndex.from_vectors(object(), small, embedder="hash-64")
    bad = good.copy()
    bad[7, 3], bad[9, 0] = np.nan, np.inf
    with pytest.raises(DataError, match=r"NaN or infinite.*2 row\(s\).*\[7, 9\]"):
        ExampleIndex.from_vectors(bad, small, embedder="hash-64")
    with pytest.raises(DataError, match="NaN or infinite"):  # finite float64 overflowing float32
        ExampleIndex.from_vectors(np.full((400, 64), 1e300), small, embedder="hash-64")
    bad = good.copy()
    bad[5] = 0
    with pytest.raises(DataError, match=r"1 zero row\(s\) \(norm < 1e-12\).*\[5\]"):
        ExampleIndex.from_vectors(bad, small, embedder="hash-64")
    with pytest.raises(EmbedderMismatchError, match="64-dimensional but embedder 'hash-32' produces 32"):
        ExampleIndex.from_vectors(good, small, embedder="hash-32")
    with pytest.raises(DataError, match="empty dataset"):
        ExampleIndex.from_vectors(np.zeros((0, 64), np.float32), small.subset([]), embedder="hash-64")


def test_from_vectors_does_not_load_a_model_to_check_its_dimension(small):
    from ragicl.index.embed import SentenceTransformerEmbedder

    lazy = SentenceTransformerEmbedder("no-such-model-is-ever-loaded")
    index = ExampleIndex.from_vectors(_own_vectors(small, 24), small, embedder=lazy, device="cpu")
    assert not lazy.is_loaded and index.manifest["embedder"] == "no-such-model-is-ever-loaded"
    x = np.asarray(index.embeddings[:3])
    assert index.search(x, 1).positions[:, 0].tolist() == [0, 1, 2]  # matrix queries never load it
    assert not lazy.is_loaded
    with pytest.raises(EmbedderMismatchError, match="24-dimensional"):  # a wrong width is still caught
        index.search(np.ones((1, 16), np.float32), 1)


@pytest.mark.slow  # imports sentence-transformers (about 10 s on a busy machine)
def test_an_embedder_that_is_not_installed_is_named_with_the_fix(tmp_path):
    ds = from_records([{"text": t, "label": "x"} for t in ["red", "green", "blue"]])
    vectors = HashEmbedder(16).encode([ex.text() for ex in ds])
    name = "sentence-transformers/ragicl-test-model-that-does-not-exist"
    ExampleIndex.from_vectors(vectors, ds, embedder=name, device="cpu").save(tmp_path / "idx")
    index = ExampleIndex.load(tmp_path / "idx", device="cpu")
    assert index.search(vectors[:1], k=1).positions.tolist() == [[0]]  # vectors need no embedder
    with pytest.raises(MissingDependencyError, match=f"built with the embedder '{name}'.*embedder="):
        index.search(["red"], k=1)


# ---------------------------------------------------------------- the folder as a record
def test_the_folder_module_writes_and_reads_a_plain_record(small, tmp_path):
    """``index.folder`` saves an ``IndexFolder`` made of plain data (no ExampleIndex) that
    ``ExampleIndex.load`` then opens, and reads the same record back."""
    import faiss

    from ragicl.index import folder

    vectors = HashEmbedder(32).encode([ex.text() for ex in small.examples])
    flat = faiss.IndexFlatIP(32)
    flat.add(vectors)
    fields = {"embedder": "hash-32", "dimension": 32, "metric": "inner_product", "factory": "Flat",
              "dataset_fingerprint": small.fingerprint(), "count": len(small),
              "input_fields": list(small.input_fields), "task": small.task, "labels": list(small.labels),
              "output_field": None, "name": small.name, "search_params": {}}
    keys = [ex.key() for ex in small.examples]
    written = folder.save(folder.IndexFolder(fields, flat, vectors, small.examples, keys), tmp_path / "rec")
    assert written["version"] and set(written["checksums"]) == set(folder.FILES)
    back = folder.read(tmp_path / "rec")
    assert back.manifest == written and list(back.examples) == list(small.examples) and back.keys == keys
    np.testing.assert_array_equal(back.vectors, vectors)
    loaded = ExampleIndex.load(tmp_path / "rec")
    built = ExampleIndex.build(small, embedder="hash-32")
    assert loaded.manifest["dataset_fingerprint"] == built.manifest["dataset_fingerprint"]
    queries = [ex.text() for ex in small.examples[:20]]
    np.testing.assert_array_equal(loaded.search(queries, k=5).positions, built.search(queries, k=5).positions)


def test_a_folder_of_an_unknown_layout_is_a_clear_error(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "manifest.json").write_text(json.dumps({"layout": "columnar", "format_version": 1}))
    with pytest.raises(IndexFormatError, match=r"layout 'columnar'.*\['sharded'.*import the package"):
        ExampleIndex.load(tmp_path / "x")
