"""VoteK: a fixed prompt pool that is diverse and representative, chosen once per index (Su et al. 2022).

"Selective Annotation Makes Language Models Better Few-Shot Learners", stage 1 (graph-based vote-k): every
example ``v`` votes for its ``k`` nearest neighbours (cosine, the index's embeddings). Greedily, the
example ``u`` with the highest vote score joins the pool, where

    score(u) = Σ_{v votes for u, v not in the pool} ρ^(−|{ℓ in the pool : v votes for ℓ}|)

so the votes of a region already represented in the pool count less (ρ > 1; the paper's ρ = 10). The
greedy order is a ranking: its first ``m`` members are the pool of size ``m``. (The paper's optional
second stage, which spends part of the budget on examples the LM is least confident about, is not
implemented; nor is OpenICL's simplified overlap-threshold variant.)

``Retriever(selection="votek")`` hands each query the pool's members ordered by similarity to it (the
pool is the same for every query; it is computed once per index and parameters, and cached while the
index lives). Ties are broken by position, so the pool is deterministic.

>>> from ragicl.data import from_records
>>> from ragicl.index.core import ExampleIndex
>>> ds = from_records([{"text": t, "label": "x"} for t in ["red", "red.", "red!", "blue", "blue."]])
>>> index = ExampleIndex.build(ds, embedder="hash-32")
>>> len(votek_pool(index, 2, k=2)), len(set(votek_pool(index, 5, k=2).tolist()))
(2, 5)
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from .._exceptions import check_positive_int

if TYPE_CHECKING:
    from ..index.core import ExampleIndex

__all__ = ["check_rho", "votek_pool", "votek_rank"]

_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple, np.ndarray]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_CHUNK = 1024  # examples searched per pass when building the vote graph
_TIE = 1e-9  # relative: vote scores this close are equal


def check_rho(rho: object) -> float:
    """``rho`` if it is a finite number > 1, else ``ValueError``."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho <= 1:
        raise ValueError(f"votek_rho must be a number > 1 (how much an already represented region's votes are "
                         f"discounted; the paper uses 10), got {rho!r}.")
    return float(rho)


def vote_graph(index: ExampleIndex, k: int) -> Any:
    """The ``(N, N)`` scipy CSR matrix ``A[v, u] = 1`` when ``u`` is among ``v``'s ``k`` nearest others."""
    from scipy import sparse

    n = len(index)
    emb = index.embeddings
    rows, cols = [], []
    for start in range(0, n, _CHUNK):
        x = np.ascontiguousarray(emb[start:start + _CHUNK], dtype=np.float32)
        pos = index.search_vectors(x, min(n, k + 1)).positions
        for i, row in enumerate(pos.tolist(), start=start):
            picked = [p for p in row if p >= 0 and p != i][:k]
            rows.extend([i] * len(picked))
            cols.extend(picked)
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))


def votek_rank(graph: Any, size: int, rho: float = 10.0) -> np.ndarray:
    """The first ``size`` examples of the greedy vote-k order over a vote graph (see the module docstring)."""
    rho = check_rho(rho)
    n = graph.shape[0]
    size = min(size, n)
    csr, csc = graph.tocsr(), graph.tocsc()
    weight = np.ones(n)  # ρ^(−votes of v for pool members)
    open_voter = np.ones(n, dtype=bool)  # v not in the pool
    score = np.asarray(csr.sum(axis=0)).ravel().astype(np.float64)  # Σ over voters of weight
    in_pool = np.zeros(n, dtype=bool)
    order: list[int] = []
    for _ in range(size):
        masked = np.where(in_pool, -np.inf, score)
        top = masked.max()  # ties (up to the rounding of the incremental updates): the lower position
        u = int(np.flatnonzero(masked >= top - _TIE * max(1.0, abs(top)))[0])
        order.append(u)
        in_pool[u] = True
        if open_voter[u]:  # u no longer votes
            open_voter[u] = False
            targets = csr.indices[csr.indptr[u]:csr.indptr[u + 1]]
            np.subtract.at(score, targets, weight[u])
        voters = csc.indices[csc.indptr[u]:csc.indptr[u + 1]]
        for v in voters[open_voter[voters]].tolist():  # each open voter of u now counts ρ times less
            new = weight[v] / rho
            targets = csr.indices[csr.indptr[v]:csr.indptr[v + 1]]
            np.add.at(score, targets, new - weight[v])
            weight[v] = new
    return np.asarray(order, np.int64)


def votek_pool(index: ExampleIndex, size: int, k: int = 10, rho: float = 10.0) -> np.ndarray:
    """The vote-k pool of ``size`` positions of ``index`` (greedy order), cached per index and ``(k, rho)``."""
    size = check_positive_int("votek_pool", size)
    k = check_positive_int("votek_k", k)
    rho = check_rho(rho)
    key = (len(index), k, rho)
    with _LOCK:
        cached = _CACHE.get(index, {}).get(key)
    if cached is not None and (len(cached) >= size or len(cached) == len(index)):
        return cached[:size]
    order = votek_rank(vote_graph(index, k), size, rho)
    with _LOCK:
        per_index = _CACHE.setdefault(index, {})
        if key not in per_index or len(per_index[key]) < len(order):
            per_index[key] = order
    return order
