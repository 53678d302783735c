"""GPU-only tests: skipped cleanly (whole module) when torch sees no CUDA device.

* ``TorchExactSearch`` on CUDA (bf16 storage, exact re-rank) against faiss's CPU ``IndexFlatIP``;
* ``ExampleIndex`` on faiss-gpu (only with a faiss build that has GPU support): exact and IVF factories,
  float16 storage, sharding over several GPUs, saving through the CPU form;
* the embedder in float16 and the LM in bfloat16 on CUDA agree with their CPU float32 results.
"""

from __future__ import annotations

import numpy as np
import pytest
from _neighbours import assert_same_neighbours

torch = pytest.importorskip("torch")
faiss = pytest.importorskip("faiss")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)"),
]

FAISS_GPU = hasattr(faiss, "StandardGpuResources") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0
needs_faiss_gpu = pytest.mark.skipif(not FAISS_GPU, reason="faiss has no GPU support (faiss-cpu installed)")


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _faiss_cpu(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    return index.search(q, k)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return _unit(rng, 50_000, 128), _unit(rng, 300, 128)


# --------------------------------------------------------------------------- torch exact search
@pytest.mark.parametrize("dtype", ["auto", "float32", "float16"])
def test_torch_search_cuda_matches_faiss(data, dtype):
    from ragicl.index.torch_search import TorchExactSearch

    db, q = data
    ref_s, ref_p = _faiss_cpu(db, q, 10)
    search = TorchExactSearch(db, device="cuda", dtype=dtype, chunk_size=7_000, query_batch=128)
    if dtype == "auto":
        assert search.dtype in (torch.bfloat16, torch.float16)
    s, p = search.search(q, 10)
    assert_same_neighbours(db, q, (s, p), (ref_s, ref_p))


def test_torch_search_cuda_host_copy_and_torch_queries(data):
    from ragicl.index.torch_search import TorchExactSearch

    db, q = data
    ref_s, ref_p = _faiss_cpu(db, q, 20)
    search = TorchExactSearch(torch.from_numpy(db).cuda(), device="cuda", exact_copy="host")
    assert search._exact.device.type == "cpu"
    s, p = search.search(torch.from_numpy(q).cuda(), 20)
    # CPU and GPU order near-equal scores differently: same neighbours up to float ties, not same order
    assert_same_neighbours(db, q, (s, p), (ref_s, ref_p))


def test_torch_search_cuda_k_over_n_pads(data):
    from ragicl.index.torch_search import FLT_MAX, TorchExactSearch

    db, q = data
    s, p = TorchExactSearch(db[:5], device="cuda").search(q[:2], 8)
    assert (p[:, 5:] == -1).all() and (s[:, 5:] == -FLT_MAX).all()


@pytest.mark.skipif(FAISS_GPU, reason="faiss-gpu present: ExampleIndex uses faiss, not the torch fallback")
def test_maybe_torch_search_used_without_faiss_gpu(data):
    from ragicl.index.torch_search import TorchExactSearch, maybe_torch_search

    db, q = data
    search = maybe_torch_search(db, factory="Flat", device="auto")
    assert isinstance(search, TorchExactSearch) and search.device.startswith("cuda")
    assert_same_neighbours(db, q, search.search(q, 5), _faiss_cpu(db, q, 5))


# --------------------------------------------------------------------------- faiss-gpu ExampleIndex
def _dataset(n: int = 3000):
    from ragicl.data import from_records

    words = ["good", "bad", "fine", "dull", "great", "awful", "film", "plot", "cast", "music", "ending"]
    rng = np.random.default_rng(3)
    rows = [{"text": " ".join(rng.choice(words, 6)) + f" #{i}", "label": "pos" if i % 2 else "neg"}
            for i in range(n)]
    return from_records(rows)


@needs_faiss_gpu
@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat", "IVF32,PQ8"])
def test_example_index_on_faiss_gpu_matches_cpu(factory, tmp_path):
    from ragicl.index.core import ExampleIndex

    ds = _dataset()
    cpu = ExampleIndex.build(ds, embedder="hash-64", factory=factory, device="cpu")
    gpu = ExampleIndex.build(ds, embedder="hash-64", factory=factory, device="cuda")
    assert gpu.summary()["device"] == "gpu"
    if "IVF" in factory:
        cpu.set_search_params(nprobe=32)
        gpu.set_search_params(nprobe=32)  # all lists: exhaustive, comparable to CPU
    queries = [ex.text() for ex in ds.examples[:50]]
    a, b = cpu.search(queries, 10), gpu.search(queries, 10)
    db, qv = np.asarray(cpu.embeddings), cpu.embed(queries)
    if factory == "Flat":  # exact on both sides: same neighbours up to float ties (hash texts tie often)
        assert_same_neighbours(db, qv, (b.scores, b.positions), (a.scores, a.positions))
    recall = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a.positions.tolist(), b.positions.tolist())])
    assert recall >= 0.9
    # saved through the CPU form, reloads on CPU with identical results
    gpu.save(tmp_path / "idx")
    back = ExampleIndex.load(tmp_path / "idx", device="cpu")
    assert back.summary()["device"] == "cpu"
    c, g = back.search(queries, 10), gpu.search(queries, 10)
    if factory in ("Flat", "IVF32,Flat"):  # exhaustive on both sides: the same up to float ties
        assert_same_neighbours(db, qv, (c.scores, c.positions), (g.scores, g.positions))
    else:  # PQ scores are code distances, not inner products: both sides decode the same codes
        np.testing.assert_array_equal(c.positions, g.positions)


@needs_faiss_gpu
def test_example_index_gpu_float16_storage_is_close():
    from ragicl.index.core import ExampleIndex

    ds = _dataset()
    exact = ExampleIndex.build(ds, embedder="hash-64", device="cpu")
    half = ExampleIndex.build(ds, embedder="hash-64", device="cuda", fp16=True)
    queries = [ex.text() for ex in ds.examples[:50]]
    a, b = exact.search(queries, 10), half.search(queries, 10)
    np.testing.assert_allclose(a.scores, b.scores, atol=5e-3)


@needs_faiss_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs at least two GPUs")
def test_example_index_over_several_gpus():
    """index_cpu_to_all_gpus (replicas or shards, as index.py configures it) returns the CPU results."""
    from ragicl.index.core import ExampleIndex

    ds = _dataset()
    cpu = ExampleIndex.build(ds, embedder="hash-64", device="cpu")
    multi = ExampleIndex.build(ds, embedder="hash-64", device="cuda")
    queries = [ex.text() for ex in ds.examples[:20]]
    a, b = cpu.search(queries, 5), multi.search(queries, 5)
    assert_same_neighbours(np.asarray(cpu.embeddings), cpu.embed(queries), (b.scores, b.positions),
                           (a.scores, a.positions))


# --------------------------------------------------------------------------- embedder and LM on GPU
@pytest.mark.slow
def test_embedder_float16_on_cuda_close_to_cpu():
    from ragicl.index.embed import SentenceTransformerEmbedder

    texts = ["a gripping, beautifully shot film", "dull and far too long", "short", "x " * 200]
    cpu = SentenceTransformerEmbedder(device="cpu").encode(texts)
    gpu = SentenceTransformerEmbedder(device="cuda").encode(texts)
    assert gpu.dtype == np.float32
    cos = np.sum(cpu * gpu, axis=1)
    assert np.all(cos > 0.999), cos


@pytest.mark.slow
def test_lm_bfloat16_on_cuda_agrees_with_cpu():
    from ragicl.lm.hf import TransformersLM

    cpu = TransformersLM(device="cpu", batch_size=4)
    gpu = TransformersLM(device="cuda", batch_size=4)
    tok = cpu.tokenizer
    prompts = [tok(f"Review: {t}\nSentiment:")["input_ids"]
               for t in ["a joy from start to finish", "a tedious mess", "great acting", "boring"]]
    labels = [tok(" positive", add_special_tokens=False)["input_ids"],
              tok(" negative", add_special_tokens=False)["input_ids"]]
    a = cpu.score_continuations(prompts, labels)
    b = gpu.score_continuations(prompts, labels)
    assert gpu.model.dtype in (torch.bfloat16, torch.float16)
    clear = np.abs(a[:, 0] - a[:, 1]) > 0.5  # bf16 may flip near-ties only
    np.testing.assert_array_equal(a.argmax(1)[clear], b.argmax(1)[clear])
    np.testing.assert_allclose(a, b, atol=0.5)  # bf16 forward vs fp32


@pytest.mark.slow
def test_token_budget_on_cuda_fills_the_gpu_and_scores_like_count_batches():
    """issue 15 §3: the auto budget comes from free memory (bounded), and 300 mixed-length prompts scored
    in token-budget batches equal the same prompts in count batches of 4 (bf16 both: same kernels per row
    up to batch-shape effects, so a tolerance of bf16 resolution on log-probs ~10)."""
    from ragicl.lm.batching import token_batches
    from ragicl.lm.hf import TransformersLM

    lm = TransformersLM(device="cuda").load()
    budget = lm.token_budget
    assert 8192 <= budget <= 131072 and budget % 1024 == 0
    tok = lm.tokenizer
    rng = np.random.default_rng(0)
    words = ["good", "bad", "film", "plot", "actors", "slow", "fun", "the", "a", "and"]
    prompts = [tok(" ".join(rng.choice(words, size=int(n))) + "\nSentiment:")["input_ids"]
               for n in rng.integers(1, 300, size=300)]
    labels = [tok(w, add_special_tokens=False)["input_ids"] for w in (" positive", " negative", " so so")]
    assert len(token_batches([len(p) for p in prompts], budget)) < len(prompts) / 4  # fewer passes
    count = TransformersLM.from_model(lm.model, tok, batch_size=4, batch_tokens=None)
    a, b = lm.score_continuations(prompts, labels), count.score_continuations(prompts, labels)
    np.testing.assert_allclose(a, b, rtol=0, atol=0.02 * max(1.0, float(np.abs(b).max())))


def test_hardware_peak_and_mfu(monkeypatch):
    """The benchmarks' FLOP accounting (benchmarks/_hardware.py: benchmark support, outside the package)."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _hardware import forward_flops, gpu_peak_flops, mfu

    peak, name = gpu_peak_flops("bfloat16")
    assert name
    if peak is not None:
        assert 1e13 < peak < 1e16
        assert 0 < mfu(forward_flops(135_000_000, 10_000), 1.0, peak) < 1
