"""The fused top-k kernel (ragicl/index/_fused_topk.py) run on CPU through Triton's interpreter.

``TRITON_INTERPRET=1`` makes ``triton.jit`` return an interpreted function (numpy underneath) that takes CPU
tensors, but only when set before triton is first imported; so the kernel runs in one subprocess
(``tests/_fused_topk_worker.py``) over all cases, and the tests here check its answers. Every result is
compared with faiss ``IndexFlatIP`` through ``assert_same_neighbours`` (tie-tolerant, rejects a wrong
neighbour), or with the exact order where the data make the scores exact (integer-valued vectors).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install 'ragicl[kernels]'); the fused "
                                     "kernel cannot be interpreted without it")
torch = pytest.importorskip("torch")
faiss = pytest.importorskip("faiss")

from _neighbours import assert_same_neighbours

from ragicl.index import _fused_topk as ft
from ragicl.index.torch_search import TorchExactSearch

WORKER = Path(__file__).with_name("_fused_topk_worker.py")
SHAPES = {  # name: (Q, N, d, k, slabs)
    "k1": (5, 1000, 16, 1, 1),          # k = 1, one slab
    "wide": (33, 3000, 100, 20, 3),     # d not a power of two (masked), Q past one block, three slabs
    "q1": (1, 1234, 37, 7, 2),          # Q = 1, N not a multiple of the tile
    "pow2": (17, 2000, 64, 16, None),   # k a power of two, automatic slab count
}


def _data(n_q, n, d, seed):
    rng = np.random.default_rng(seed)
    db = rng.standard_normal((n, d)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[rng.integers(0, n, n_q)] + 0.3 * rng.standard_normal((n_q, d)).astype(np.float32)
    return q.astype(np.float32), db


def _ties():
    """Integer-valued vectors: every product is exact, many scores equal, duplicates span the slabs."""
    rng = np.random.default_rng(1)
    base = rng.integers(-2, 3, (40, 24)).astype(np.float32)
    return rng.integers(-2, 3, (9, 24)).astype(np.float32), base[rng.integers(0, 40, 900)]


def _faiss(q, db, k):
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    return index.search(q, k)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """All cases through the interpreted kernel in one subprocess: name → (inputs, outputs)."""
    tmp = tmp_path_factory.mktemp("fused")
    cases, arrays = [], {}

    def add(name, q, db, **case):
        cases.append({"name": name, **case})
        arrays[f"{name}/q"], arrays[f"{name}/db"] = q, db

    for name, (n_q, n, d, k, slabs) in SHAPES.items():
        add(name, *_data(n_q, n, d, seed=n + d), mode="kernel", k=k, slabs=slabs)
    add("ties", *_ties(), mode="kernel", k=20, slabs=4)
    add("ties_ref", *_ties(), mode="reference", k=20)
    add("negzero", np.array([[0.0, -0.0], [1.0, 0.0]], np.float32),
        np.array([[0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]], np.float32), mode="kernel", k=4)
    add("bf16", *_data(12, 1500, 48, seed=3), mode="search", dtype="bfloat16", k=5)
    add("pad", *_data(3, 6, 16, seed=4), mode="search", dtype="float32", k=9)
    (tmp / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    np.savez(tmp / "in.npz", **arrays)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(WORKER), str(tmp / "cases.json"), str(tmp / "in.npz"),
                           str(tmp / "out.npz")], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    out = dict(np.load(tmp / "out.npz"))
    return lambda name: (arrays[f"{name}/q"], arrays[f"{name}/db"], out[f"{name}/s"], out[f"{name}/p"],
                         out.get(f"{name}/runs"), out[f"{name}/calls"])


@pytest.mark.parametrize("name", list(SHAPES))
def test_kernel_matches_faiss(run, name):
    q, db, s, p, runs, _ = run(name)
    k = SHAPES[name][3]
    assert bool(runs), "the interpreted kernel should have run on CPU tensors, not the torch fallback"
    assert s.dtype == np.float32 and p.dtype == np.int64 and p.shape == (len(q), k)
    assert_same_neighbours(db, q, (s, p), _faiss(q, db, k))


def test_exact_ties_come_out_by_position(run):
    q, db, s, p, runs, _ = run("ties")
    exact = q.astype(np.float64) @ db.astype(np.float64).T
    want = np.lexsort((np.broadcast_to(np.arange(len(db)), exact.shape), -exact), axis=-1)[:, :20]
    assert bool(runs)
    np.testing.assert_array_equal(p, want)
    np.testing.assert_array_equal(s, np.take_along_axis(exact, want, 1).astype(np.float32))
    np.testing.assert_array_equal(run("ties_ref")[3], want)  # the pure-torch path agrees exactly


def test_negative_zero_ties_with_zero(run):
    *_, p, _, _ = run("negzero")
    assert p[0].tolist() == [0, 1, 2, 3]  # +0.0 and -0.0 scores all tie: by position
    assert p[1].tolist() == [3, 0, 2, 1]


def test_bfloat16_through_torch_exact_search_is_certified(run):
    q, db, s, p, _, calls = run("bf16")
    assert "bfloat16" in calls.tolist(), "the bf16 candidates should come from the fused kernel"
    assert_same_neighbours(db, q, (s, p), _faiss(q, db, 5))


def test_torch_exact_search_fused_pads_when_k_exceeds_n(run):
    q, db, s, p, _, calls = run("pad")
    assert calls.tolist(), "the float32 search should go through the fused kernel"
    assert (p[:, 6:] == -1).all() and np.all(s[:, 6:] == -np.finfo(np.float32).max)
    assert_same_neighbours(db, q, (s, p), _faiss(q, db, 9))


def test_fallback_without_interpreter_is_exact(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, db = _ties()
    tq = torch.from_numpy(q)
    assert not ft.kernel_runs_on(tq)  # CPU tensors, no interpreter: the torch path
    _, p = ft.fused_topk(tq, torch.from_numpy(db), 20)
    exact = q.astype(np.float64) @ db.astype(np.float64).T
    want = np.lexsort((np.broadcast_to(np.arange(len(db)), exact.shape), -exact), axis=-1)[:, :20]
    np.testing.assert_array_equal(p.numpy(), want)


def test_auto_keeps_torch_topk_on_cpu():
    search = TorchExactSearch(np.eye(4, dtype=np.float32), device="cpu")
    assert search.topk == "auto" and not search._use_fused(search._db, 3)


def test_bad_arguments_are_explained():
    x = torch.zeros(4, 8)
    with pytest.raises(ValueError, match="k must be"):
        ft.fused_topk(x, x, 5)
    with pytest.raises(ValueError, match="share a dtype"):
        ft.fused_topk(x, x.bfloat16(), 1)
    with pytest.raises(ValueError, match="topk must be"):
        TorchExactSearch(x, device="cpu", topk="bitonic")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the compiled kernel)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compiled_kernel_on_cuda_matches_faiss(dtype):
    q, db = _data(300, 20_011, 384, seed=7)
    tq, tdb = torch.from_numpy(q).cuda(), torch.from_numpy(db).cuda()
    assert ft.kernel_runs_on(tq)
    if dtype == "float32":  # the kernel alone, IEEE float32 products
        s, p = ft.fused_topk(tq, tdb, 10)
        got = (s.cpu().numpy(), p.cpu().numpy())
    else:  # bf16 candidates from the kernel, certified by the float32 re-rank
        got = TorchExactSearch(db, device="cuda", dtype="bfloat16", topk="fused").search(q, k=10)
    assert_same_neighbours(db, q, got, _faiss(q, db, 10))
    _, dup = ft.fused_topk(tdb[:64].repeat(3, 1), tdb[:64].repeat(3, 1), 3)  # exact duplicates: by position
    assert dup.cpu().numpy().tolist() == [[i % 64, i % 64 + 64, i % 64 + 128] for i in range(192)]
