"""``Retriever``: choose the demonstrations for each query from an :class:`~ragicl.index.core.ExampleIndex`.

Selections (``Retriever(selection=...)``; ``selection`` is ragicl's one name for "how demonstrations are
chosen", as in ``ICLClassifier(selection=...)`` and the CLI's ``--selection``; the older
``Retriever(strategy=...)`` still works and warns with a ``DeprecationWarning``):

* ``"topk"`` — the nearest examples by cosine similarity, best first.
* ``"balanced"`` — label-balanced: round-robin over labels, each label's candidates in similarity order
  (round 1 holds the best example of every label present, ordered by similarity, then round 2...). Drawn
  from the ``fetch_k`` nearest candidates.
* ``"mmr"`` — maximal marginal relevance over the ``fetch_k`` nearest candidates, using the index's stored
  embeddings: each step picks ``argmax λ·sim(q, c) − (1−λ)·max_{s∈chosen} sim(c, s)``.
* ``"random"`` — the random-k baseline, drawn from the whole index, seeded per query (its id and text) and
  ``seed``; its scores are NaN (no similarity is computed, so queries are not embedded).

Every selection excludes **exact duplicates of the query**: every indexed example whose ``Example.key()``
(hash of the case-folded, whitespace-collapsed input text) equals the query's. A query taken from the
indexed dataset therefore never retrieves itself. Matching by id alone is off by default
(``exclude_same_id=False``) because row-number ids collide across files (``test.jsonl`` row ``"5"`` is not
``train.jsonl`` row ``"5"``); turn it on when ids are globally unique (``read_dataset(id_field=...)``).

**More candidates than k.** ``retrieve(index, queries, n_candidates=2 * k)`` returns up to ``n_candidates``
examples in the selection's order; the packer keeps the ones that fit the token budget and skips the rest,
so asking for extra candidates lets a prompt still hold ~k examples when some are long.

>>> from ragicl.data import from_records
>>> from ragicl.index.core import ExampleIndex
>>> ds = from_records([{"text": t, "label": l} for t, l in
...                    [("good film", "pos"), ("great film", "pos"), ("bad film", "neg")]])
>>> index = ExampleIndex.build(ds, embedder="hash-32")
>>> [r.positions for r in Retriever(k=2).retrieve(index, [ds[0]])]   # never itself (position 0)
[(1, 2)]
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .._exceptions import check_positive_int
from ..types import Example, Retrieved, text_key

if TYPE_CHECKING:
    from ..index.core import ExampleIndex
    from ..types import Query

SELECTIONS = ("topk", "balanced", "mmr", "random")
STRATEGIES = SELECTIONS  # the former name, kept for imports


def check_selection(selection: str) -> str:
    """``selection`` if it is one of :data:`SELECTIONS`, else ``ValueError`` listing them."""
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r} (how demonstrations are chosen); valid: "
                         f"{list(SELECTIONS)}.")
    return selection


def resolve_selection(selection: str | None, strategy: str | None, *, default: str = "topk",
                      stacklevel: int = 3) -> str:
    """The selection given as ``selection=`` or through the deprecated alias ``strategy=`` (which warns)."""
    if strategy is not None:
        warnings.warn("strategy= is deprecated; use selection= (the same values: "
                      f"{', '.join(SELECTIONS)})", DeprecationWarning, stacklevel=stacklevel)
        if selection is not None and selection != strategy:
            raise ValueError(f"got selection={selection!r} and its deprecated alias strategy={strategy!r}; "
                             "pass selection= alone.")
        selection = strategy
    return check_selection(default if selection is None else selection)


class Retriever:
    """Pick up to ``k`` demonstrations per query (see the module docstring for the strategies).

    Args:
        k: examples per query; ``0`` means none (zero-shot: empty results, no search).
        selection: ``"topk"``, ``"balanced"``, ``"mmr"`` or ``"random"`` (``strategy``: deprecated alias).
        mmr_lambda: relevance weight of MMR in ``[0, 1]`` (1 = plain top-k, 0 = only diversity).
        fetch_k: candidate pool of ``balanced`` and ``mmr``; default ``max(4 * n, 50)`` for ``n`` wanted.
        seed: seed of ``random`` (combined with each query's id and text).
        exclude_same_id: also exclude the indexed example with the query's id, even if its text differs.

    >>> Retriever(k=4, selection="mmr", mmr_lambda=0.7)
    Retriever(k=4, selection='mmr', mmr_lambda=0.7, fetch_k=None, seed=0)
    """

    def __init__(self, k: int = 16, selection: str | None = None, mmr_lambda: float = 0.5,
                 fetch_k: int | None = None, seed: int = 0, exclude_same_id: bool = False, *,
                 strategy: str | None = None) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative integer (0 = no examples, zero-shot), got {k!r}.")
        selection = resolve_selection(selection, strategy)
        if not isinstance(mmr_lambda, (int, float)) or not 0.0 <= mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be a number in [0, 1], got {mmr_lambda!r}.")
        if fetch_k is not None:
            check_positive_int("fetch_k", fetch_k)
        self.k = k
        self.selection = selection
        self.mmr_lambda = float(mmr_lambda)
        self.fetch_k = fetch_k
        self.seed = seed
        self.exclude_same_id = exclude_same_id

    @property
    def strategy(self) -> str:
        """Deprecated alias of :attr:`selection` (read-only)."""
        return self.selection

    def __repr__(self) -> str:
        return (f"Retriever(k={self.k}, selection={self.selection!r}, mmr_lambda={self.mmr_lambda}, "
                f"fetch_k={self.fetch_k}, seed={self.seed})")

    def retrieve(self, index: ExampleIndex, queries: Sequence[Query] | Query,
                 n_candidates: int | None = None) -> list[Retrieved]:
        """Demonstrations for each query, most relevant first (positions into ``index.examples``).

        Args:
            index: the :class:`~ragicl.index.core.ExampleIndex` to draw from.
            queries: strings, mappings of input fields, or :class:`Example`\\ s (one or a sequence).
            n_candidates: how many to return per query (default ``k``); ask for more than ``k`` when a
                packer will skip candidates that do not fit the token budget.

        Fewer are returned only when the index holds fewer non-duplicate examples.
        """
        if isinstance(queries, (str, Mapping, Example)):
            queries = [queries]
        queries = list(queries)
        if self.k == 0 or not queries:
            return [Retrieved((), ()) for _ in queries]
        n = self.k if n_candidates is None else check_positive_int("n_candidates", n_candidates)
        texts = [index.query_text(q) for q in queries]
        excluded = self._excluded(index, queries, texts)
        if self.selection == "random":
            return [self._random(index, q, t, ex, n) for q, t, ex in zip(queries, texts, excluded)]
        x = index.embed(texts)
        depth = n if self.selection == "topk" else max(n, self.fetch_k or max(4 * n, 50))
        positions, scores, counts = _candidates(index, x, excluded, depth)
        if self.selection == "topk":  # one tolist() per matrix, not per row
            rows = zip(positions.tolist(), scores.tolist())
            if counts.min() == positions.shape[1]:
                return [Retrieved(tuple(p), tuple(s)) for p, s in rows]
            return [Retrieved(tuple(p[:c]), tuple(s[:c])) for (p, s), c in zip(rows, counts.tolist())]
        pools = [(positions[i, :c], scores[i, :c]) for i, c in enumerate(counts.tolist())]
        if self.selection == "balanced":
            if not index.labels:
                raise ValueError("selection 'balanced' needs a classification index with labels; this index "
                                 "has none. Fix: use selection='topk' or 'mmr'.")
            return [_balanced(index.label_ids[p], p, s, n) for p, s in pools]
        return [_mmr(index, x[i], p, n, self.mmr_lambda) for i, (p, _) in enumerate(pools)]

    def _excluded(self, index: ExampleIndex, queries: list[Query], texts: list[str]) -> list[tuple[int, ...]]:
        """Positions to exclude per query: its exact duplicates (and, if asked, the example with its id)."""
        duplicates_of = index.duplicates_of
        excluded = [duplicates_of(text_key(t)) for t in texts]
        if self.exclude_same_id:
            for i, query in enumerate(queries):
                if isinstance(query, Example):
                    own = index.position_of(query.id)
                    if own is not None and own not in excluded[i]:
                        excluded[i] = (*excluded[i], own)
        return excluded

    def _random(self, index: ExampleIndex, query: Query, text: str, excluded: tuple[int, ...],
                n: int) -> Retrieved:
        ident = f"{query.id if isinstance(query, Example) else ''}\x00{text}"
        digest = int.from_bytes(hashlib.sha256(ident.encode("utf-8")).digest()[:8], "little")
        rng = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, digest])
        total = len(index)
        draw = rng.choice(total, size=min(total, n + len(excluded)), replace=False)
        if excluded:
            draw = draw[~np.isin(draw, excluded)]
        draw = draw[:n]
        return Retrieved(tuple(draw.tolist()), (math.nan,) * len(draw))


def _candidates(index: ExampleIndex, x: np.ndarray, excluded: Sequence[Sequence[int]],
                depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``depth`` nearest non-excluded candidates per query, widening the search (×2) as needed.

    Vectorised over the batch: returns ``positions`` (``(Q, min(depth, N))`` int64, padded with ``-1``),
    ``scores`` (float32, padded with ``-inf``) and ``counts`` (valid candidates per row, best first). Each
    search pass runs on the same rows as a per-query loop would, so results are identical to one.
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
                p, s = _exact(index, x[q], np.asarray(excluded[q], np.int64), depth)
                positions[q, :len(p)], scores[q, :len(p)], counts[q] = p, s, len(p)
            break
        todo, fetch = todo[~done], min(total, fetch * 2)
    return positions, scores, counts


def _exact(index: ExampleIndex, q: np.ndarray, excluded: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over the stored embeddings (rare fallback for approximate indexes)."""
    sims = np.asarray(index.embeddings, dtype=np.float32) @ q
    if len(excluded):
        sims[excluded] = -np.inf
    n = min(depth, len(sims) - len(excluded))
    top = np.argpartition(-sims, n - 1)[:n] if n > 0 else np.zeros(0, np.int64)
    top = top[np.argsort(-sims[top], kind="stable")]
    return top.astype(np.int64), sims[top].astype(np.float32)


def _balanced(label_ids: np.ndarray, pos: np.ndarray, sc: np.ndarray, n: int) -> Retrieved:
    """Round-robin over labels; within a round, by similarity (candidates arrive best first)."""
    rank = np.empty(len(label_ids), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, lab in enumerate(label_ids.tolist()):
        rank[i] = seen.get(lab, 0)
        seen[lab] = rank[i] + 1
    order = np.lexsort((np.arange(len(rank)), rank))[:n]
    return Retrieved(tuple(pos[order].tolist()), tuple(sc[order].tolist()))


def _mmr(index: ExampleIndex, q: np.ndarray, pos: np.ndarray, n: int, lam: float) -> Retrieved:
    """Greedy maximal marginal relevance; scores are each pick's cosine similarity to the query."""
    if len(pos) == 0:
        return Retrieved((), ())
    emb = np.asarray(index.embeddings[pos], dtype=np.float32)
    rel = emb @ q
    sim = emb @ emb.T
    chosen: list[int] = [int(np.argmax(rel))]
    max_sim = sim[chosen[0]].copy()
    available = np.ones(len(pos), dtype=bool)
    available[chosen[0]] = False
    for _ in range(min(n, len(pos)) - 1):
        gain = np.where(available, lam * rel - (1.0 - lam) * max_sim, -np.inf)
        best = int(np.argmax(gain))
        chosen.append(best)
        available[best] = False
        np.maximum(max_sim, sim[best], out=max_sim)
    return Retrieved(tuple(pos[chosen].tolist()), tuple(rel[chosen].astype(float).tolist()))
