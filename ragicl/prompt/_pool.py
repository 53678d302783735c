"""Candidate pools of the retrieve stage: the ``depth`` best non-excluded examples per query, by the dense
search, BM25, or both fused by reciprocal-rank fusion (private to :mod:`ragicl.prompt.retrieve`).

Every pool is ``(positions, scores, counts)``: ``(Q, width)`` int64 positions best first (padded with
``-1``), float32 scores (padded with ``-inf``) and the number of valid entries per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..index.core import ExampleIndex

Pool = tuple[np.ndarray, np.ndarray, np.ndarray]
SEARCHES = ("dense", "bm25", "hybrid")


def dense(index: ExampleIndex, x: np.ndarray, excluded: Sequence[Sequence[int]], depth: int) -> Pool:
    """Up to ``depth`` nearest non-excluded candidates per query, widening the search (×2) as needed.

    Vectorised over the batch; each search pass runs on the same rows as a per-query loop would, so results
    are identical to one.
    """
    total, n_q = len(index), len(x)
    width = min(depth, total)
    positions = np.full((n_q, width), -1, np.int64)
    scores = np.full((n_q, width), -np.inf, np.float32)
    counts = np.zeros(n_q, np.int64)
    n_excluded = np.fromiter(map(len, excluded), np.int64, n_q)
    need = np.minimum(depth, total - n_excluded)  # fewer only when the index runs out
    todo = np.arange(n_q)
    fetch = min(total, depth + int(n_excluded.max(initial=0)))
    while len(todo) and fetch > 0:
        res = index.search_vectors(x if len(todo) == n_q else x[todo], fetch)
        pos, sc = res.positions, res.scores
        keep = pos >= 0
        rows = np.flatnonzero(n_excluded[todo])  # rows (of this pass) with something to exclude
        if len(rows):  # one np.isin over (row, position) codes; -1 entries are already dropped
            lens = n_excluded[todo[rows]]
            ex_positions = np.concatenate([excluded[q] for q in todo[rows].tolist()])
            banned = np.repeat(rows, lens) * total + ex_positions
            keep[rows] &= ~np.isin(rows[:, None] * total + pos[rows], banned)
        kept = keep.sum(axis=1)
        if kept.min() < fetch:  # move the kept entries to the front of their row, order preserved
            order = np.argsort(~keep, axis=1, kind="stable")
            pos = np.take_along_axis(pos, order, axis=1)
            sc = np.take_along_axis(sc, order, axis=1)
            gone = np.arange(fetch) >= kept[:, None]
            pos[gone], sc[gone] = -1, -np.inf
        done = kept >= need[todo]
        rows_done = todo[done]
        positions[rows_done] = pos[done, :width]
        scores[rows_done] = sc[done, :width]
        counts[rows_done] = np.minimum(kept[done], depth)
        if fetch >= total:  # an approximate index (IVF, HNSW) saw too few: exact search instead
            for q in todo[~done].tolist():
                p, s = exact(index, x[q], np.asarray(excluded[q], np.int64), depth)
                positions[q, :len(p)], scores[q, :len(p)], counts[q] = p, s, len(p)
            break
        todo, fetch = todo[~done], min(total, fetch * 2)
    return positions, scores, counts


def exact(index: ExampleIndex, q: np.ndarray, excluded: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over the stored embeddings (rare fallback for approximate indexes)."""
    sims = np.asarray(index.embeddings, dtype=np.float32) @ q
    if len(excluded):
        sims[excluded] = -np.inf
    n = min(depth, len(sims) - len(excluded))
    top = np.argpartition(-sims, n - 1)[:n] if n > 0 else np.zeros(0, np.int64)
    top = top[np.argsort(-sims[top], kind="stable")]
    return top.astype(np.int64), sims[top].astype(np.float32)


def lexical_index(index: ExampleIndex) -> object:
    """The index's BM25 part, or a ``ValueError`` saying how to build it."""
    lex = index.lexical
    if lex is None:
        raise ValueError("search='bm25'/'hybrid' needs the index's BM25 part, and this index has none. Fix: "
                         "call index.build_lexical() once (then index.save(path) keeps it), or use "
                         "search='dense'.")
    return lex


def bm25(index: ExampleIndex, texts: Sequence[str], excluded: Sequence[Sequence[int]], depth: int) -> Pool:
    """The ``depth`` best non-excluded examples by BM25 score (ties by position)."""
    res = lexical_index(index).search(list(texts), depth, exclude=excluded)  # type: ignore[attr-defined]
    counts = (res.positions >= 0).sum(axis=1).astype(np.int64)
    return res.positions, res.scores, counts


def hybrid(index: ExampleIndex, x: np.ndarray, texts: Sequence[str], excluded: Sequence[Sequence[int]],
           depth: int, weights: tuple[float, float], rrf_k: float) -> Pool:
    """Dense and BM25 fused by reciprocal-rank fusion (Cormack et al. 2009).

    Each list contributes ``weight / (rrf_k + rank)`` (ranks from 1) for the examples it ranks among its
    ``depth`` best; BM25 ranks only examples sharing a term with the query (score > 0). Ties of the fused
    score go to the better dense rank, then to the lower position.
    """
    d_pos, _, d_cnt = dense(index, x, excluded, depth)
    l_pos, l_sc, l_cnt = bm25(index, texts, excluded, depth)
    w_dense, w_bm25 = weights
    width = min(depth, len(index))
    positions = np.full((len(texts), width), -1, np.int64)
    scores = np.full((len(texts), width), -np.inf, np.float32)
    counts = np.zeros(len(texts), np.int64)
    for i in range(len(texts)):
        fused: dict[int, float] = {}
        dense_rank: dict[int, int] = {}
        for r, p in enumerate(d_pos[i, :d_cnt[i]].tolist(), start=1):
            fused[p] = w_dense / (rrf_k + r)
            dense_rank[p] = r
        matched = l_pos[i, :l_cnt[i]][l_sc[i, :l_cnt[i]] > 0]
        for r, p in enumerate(matched.tolist(), start=1):
            fused[p] = fused.get(p, 0.0) + w_bm25 / (rrf_k + r)
        order = sorted(fused, key=lambda p: (-fused[p], dense_rank.get(p, depth + 1), p))[:width]
        positions[i, :len(order)] = order
        scores[i, :len(order)] = [fused[p] for p in order]
        counts[i] = len(order)
    return positions, scores, counts


def check_weights(weights: object) -> tuple[float, float]:
    """``(dense, bm25)`` fusion weights: two finite non-negative numbers, not both 0."""
    ok = (isinstance(weights, (tuple, list)) and len(weights) == 2
          and all(isinstance(w, (int, float)) and not isinstance(w, bool) and np.isfinite(w) and w >= 0
                  for w in weights) and any(w > 0 for w in weights))
    if not ok:
        raise ValueError(f"hybrid_weights must be two non-negative numbers (dense, bm25), not both 0, e.g. (1.0, "
                         f"1.0); got {weights!r}.")
    return float(weights[0]), float(weights[1])  # type: ignore[index]
