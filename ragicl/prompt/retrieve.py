"""``Retriever``: choose the demonstrations for each query from an :class:`~ragicl.index.core.ExampleIndex`.

Retrieval runs in up to three steps: a **search** finds each query's candidate pool, an optional
**re-ranker** re-orders the pool, and a **selection** picks and orders the demonstrations from it.

Searches (``Retriever(search=...)``):

* ``"dense"`` (default) — cosine similarity of the index's embeddings (the FAISS index).
* ``"bm25"`` — lexical BM25 (:mod:`ragicl.index.lexical`); needs ``index.build_lexical()`` once.
* ``"hybrid"`` — both, fused by reciprocal-rank fusion: ``w_dense/(rrf_k + rank_dense) + w_bm25/(rrf_k +
  rank_bm25)`` with ``hybrid_weights=(w_dense, w_bm25)`` and ``rrf_k`` (default 60).

``reranker=`` (a cross-encoder hub id or folder, a ``CrossEncoder``, or any :class:`~ragicl.prompt.rerank.
Reranker`) re-orders the search's best ``rerank_depth`` candidates by its scores (:mod:`ragicl.prompt.rerank`).

Selections (``Retriever(selection=...)``; ``selection`` is ragicl's one name for "how demonstrations are
chosen", as in ``ICLClassifier(selection=...)`` and the CLI's ``--selection``; the older
``Retriever(strategy=...)`` still works and warns with a ``DeprecationWarning``):

* ``"topk"`` — the pool's best candidates, in its order.
* ``"balanced"`` — label-balanced: round-robin over labels, each label's candidates in pool order
  (round 1 holds the best example of every label present, ordered by rank, then round 2...). Drawn
  from the ``fetch_k`` best candidates.
* ``"mmr"`` — maximal marginal relevance over the ``fetch_k`` best candidates, using the index's stored
  embeddings: each step picks ``argmax λ·sim(q, c) − (1−λ)·max_{s∈chosen} sim(c, s)``.
* ``"dpp"`` — a determinantal point process over the ``fetch_k`` best candidates (the OpenICL formulation,
  greedy MAP; :mod:`ragicl.prompt.select_dpp`), returned in greedy order.
* ``"votek"`` — one pool for every query, diverse and representative (vote-k, Su et al. 2022;
  :mod:`ragicl.prompt.select_votek`) of ``votek_pool`` examples (default: as many as asked for), ordered
  by similarity to each query. Dense only: the pool is chosen from the embeddings.
* ``"random"`` — the random-k baseline, drawn from the whole index, seeded per query (its id and text) and
  ``seed``; its scores are NaN (no similarity is computed, so queries are not embedded).

MMR and DPP measure relevance and diversity with the embeddings whatever the search, so with BM25,
hybrid or a re-ranker the search decides *which* candidates are in the pool and the embeddings how they are
chosen. Scores returned: the search's (cosine, BM25 score, fused RRF score), the re-ranker's when there is
one, and the cosine to the query for MMR, DPP and VoteK. Ties are broken by position throughout, so every
selection is deterministic (``random`` given its seed). MDL, which needs the LM, is a prompt step:
:class:`ragicl.prompt.mdl.MDLStep`.

Every selection excludes **exact duplicates of the query**: every indexed example whose ``Example.key()``
(hash of the case-folded, whitespace-collapsed input text) equals the query's. A query taken from the
indexed dataset therefore never retrieves itself. Matching by id alone is off by default
(``exclude_same_id=False``) because row-number ids collide across files (``test.jsonl`` row ``"5"`` is not
``train.jsonl`` row ``"5"``); turn it on when ids are globally unique (``read_dataset(id_field=...)``).

**More candidates than k.** ``retrieve(index, queries, n_candidates=2 * k)`` returns up to ``n_candidates``
examples in the selection's order; the packer keeps the ones that fit the token budget and skips the rest,
so asking for extra candidates lets a prompt still hold ~k examples when some are long. The exact token
budget is always the packer's (:class:`~ragicl.prompt.pack.Packer`): every selection only orders candidates.

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
from typing import TYPE_CHECKING, Any

import numpy as np

from .._exceptions import check_positive_int
from ..types import Example, Retrieved, text_key
from . import _pool
from ._pool import SEARCHES, check_weights
from ._pool import exact as _exact  # noqa: F401 (tests compare against it)
from .rerank import get_reranker, rerank_pool
from .select_dpp import check_scale, dpp_order
from .select_votek import check_rho, votek_pool

if TYPE_CHECKING:
    from ..index.core import ExampleIndex
    from ..types import Query

SELECTIONS = ("topk", "balanced", "mmr", "dpp", "votek", "random")
STRATEGIES = SELECTIONS  # the former name, kept for imports
_DEFAULTS = {"search": "dense", "hybrid_weights": (1.0, 1.0), "rrf_k": 60.0, "reranker": None,
             "rerank_depth": None, "dpp_scale": 0.1, "votek_pool": None, "votek_k": 10, "votek_rho": 10.0}


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


def check_search(search: str) -> str:
    """``search`` if it is one of :data:`SEARCHES`, else ``ValueError`` listing them."""
    if search not in SEARCHES:
        raise ValueError(f"unknown search {search!r} (how candidates are found); valid: {list(SEARCHES)}.")
    return search


class Retriever:
    """Pick up to ``k`` demonstrations per query (see the module docstring for searches and selections).

    Args:
        k: examples per query; ``0`` means none (zero-shot: empty results, no search).
        selection: ``"topk"``, ``"balanced"``, ``"mmr"``, ``"dpp"``, ``"votek"`` or ``"random"``
            (``strategy``: deprecated alias).
        mmr_lambda: relevance weight of MMR in ``[0, 1]`` (1 = plain top-k, 0 = only diversity).
        fetch_k: candidate pool of ``balanced``, ``mmr`` and ``dpp``; default ``max(4 * n, 50)`` for ``n`` wanted.
        seed: seed of ``random`` (combined with each query's id and text).
        exclude_same_id: also exclude the indexed example with the query's id, even if its text differs.
        search: ``"dense"``, ``"bm25"`` or ``"hybrid"``.
        hybrid_weights: ``(dense, bm25)`` weights of the reciprocal-rank fusion.
        rrf_k: the fusion's rank offset (60 in Cormack et al. 2009); larger flattens the rank weights.
        reranker: re-orders the candidates: a cross-encoder hub id/folder, a ``CrossEncoder``, or a
            :class:`~ragicl.prompt.rerank.Reranker`.
        rerank_depth: how many of the search's best candidates the re-ranker scores (default ``max(depth,
            50)``, ``depth`` being the pool the selection needs).
        dpp_scale: relevance temperature of the DPP kernel (smaller: relevance counts more).
        votek_pool: size of the vote-k pool (default: ``n_candidates``); ``votek_k``: neighbours each example
            votes for; ``votek_rho``: discount of an already represented region's votes (> 1).

    >>> Retriever(k=4, selection="mmr", mmr_lambda=0.7)
    Retriever(k=4, selection='mmr', mmr_lambda=0.7, fetch_k=None, seed=0)
    >>> Retriever(k=4, search="hybrid", hybrid_weights=(1.0, 0.5))
    Retriever(k=4, selection='topk', mmr_lambda=0.5, fetch_k=None, seed=0, search='hybrid', hybrid_weights=(1.0, 0.5))
    """

    def __init__(self, k: int = 16, selection: str | None = None, mmr_lambda: float = 0.5,
                 fetch_k: int | None = None, seed: int = 0, exclude_same_id: bool = False, *,
                 strategy: str | None = None, search: str = "dense", hybrid_weights: Sequence[float] = (1.0, 1.0),
                 rrf_k: float = 60.0, reranker: Any = None, rerank_depth: int | None = None,
                 dpp_scale: float = 0.1, votek_pool: int | None = None, votek_k: int = 10,
                 votek_rho: float = 10.0) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative integer (0 = no examples, zero-shot), got {k!r}.")
        selection = resolve_selection(selection, strategy)
        if not isinstance(mmr_lambda, (int, float)) or not 0.0 <= mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be a number in [0, 1], got {mmr_lambda!r}.")
        for name, value in (("fetch_k", fetch_k), ("rerank_depth", rerank_depth), ("votek_pool", votek_pool)):
            if value is not None:
                check_positive_int(name, value)
        self.search = check_search(search)
        if selection == "votek" and search != "dense":
            raise ValueError(f"selection='votek' chooses one pool for every query from the embeddings and orders "
                             f"it by similarity; it does not search, so search={search!r} does not apply. Use "
                             "search='dense' with votek, or another selection.")
        if isinstance(rrf_k, bool) or not isinstance(rrf_k, (int, float)) or not math.isfinite(rrf_k) or rrf_k < 0:
            raise ValueError(f"rrf_k must be a non-negative number (the fusion's rank offset; 60 is usual), "
                             f"got {rrf_k!r}.")
        self.k = k
        self.selection = selection
        self.mmr_lambda = float(mmr_lambda)
        self.fetch_k = fetch_k
        self.seed = seed
        self.exclude_same_id = exclude_same_id
        self.hybrid_weights = check_weights(tuple(hybrid_weights) if isinstance(hybrid_weights, list)
                                            else hybrid_weights)
        self.rrf_k = float(rrf_k)
        self.reranker = get_reranker(reranker)
        self.rerank_depth = rerank_depth
        self.dpp_scale = check_scale(dpp_scale)
        self.votek_pool = votek_pool
        self.votek_k = check_positive_int("votek_k", votek_k)
        self.votek_rho = check_rho(votek_rho)

    @property
    def strategy(self) -> str:
        """Deprecated alias of :attr:`selection` (read-only)."""
        return self.selection

    def __repr__(self) -> str:
        extra = "".join(f", {name}={getattr(self, name)!r}" for name, default in _DEFAULTS.items()
                        if getattr(self, name) != default)
        return (f"Retriever(k={self.k}, selection={self.selection!r}, mmr_lambda={self.mmr_lambda}, "
                f"fetch_k={self.fetch_k}, seed={self.seed}{extra})")

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
        needs_vectors = self.search != "bm25" or self.selection in ("mmr", "dpp", "votek")
        x = index.embed(texts) if needs_vectors else None
        if self.selection == "votek":
            return self._votek(index, texts, x, excluded, n)
        depth = n if self.selection == "topk" else max(n, self.fetch_k or max(4 * n, 50))
        positions, scores, counts = self._pool(index, texts, x, excluded, depth)
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
        if self.selection == "dpp":
            return [_dpp(index, x[i], p, n, self.dpp_scale) for i, (p, _) in enumerate(pools)]  # type: ignore[index]
        return [_mmr(index, x[i], p, n, self.mmr_lambda) for i, (p, _) in enumerate(pools)]  # type: ignore[index]

    def _pool(self, index: ExampleIndex, texts: list[str], x: np.ndarray | None,
              excluded: list[tuple[int, ...]], depth: int) -> _pool.Pool:
        """The search's ``depth`` best candidates per query, re-ranked when there is a re-ranker."""
        first = depth if self.reranker is None else max(depth, self.rerank_depth or 50)
        if self.search == "dense":
            positions, scores, counts = _pool.dense(index, x, excluded, first)  # type: ignore[arg-type]
        elif self.search == "bm25":
            positions, scores, counts = _pool.bm25(index, texts, excluded, first)
        else:
            positions, scores, counts = _pool.hybrid(index, x, texts, excluded, first,  # type: ignore[arg-type]
                                                     self.hybrid_weights, self.rrf_k)
        if self.reranker is None:
            return positions, scores, counts
        examples = index.examples
        cand_texts = [[index.query_text(examples[p]) for p in positions[i, :c].tolist()]
                      for i, c in enumerate(counts.tolist())]
        positions, scores = rerank_pool(self.reranker, texts, cand_texts, positions, counts)
        width = min(depth, positions.shape[1])
        return positions[:, :width], scores[:, :width], np.minimum(counts, width)

    def _votek(self, index: ExampleIndex, texts: list[str], x: np.ndarray | None,
               excluded: list[tuple[int, ...]], n: int) -> list[Retrieved]:
        """The vote-k pool minus each query's exclusions, ordered by similarity (re-ranked if asked)."""
        size = self.votek_pool or n
        pool = votek_pool(index, min(len(index), size + max(map(len, excluded))), self.votek_k, self.votek_rho)
        emb = np.asarray(index.embeddings[np.sort(pool)], np.float32)
        by_pos = np.sort(pool)
        out = []
        for i, ex in enumerate(excluded):
            keep = pool[~np.isin(pool, ex)][:size] if ex else pool[:size]
            sims = emb[np.searchsorted(by_pos, keep)] @ x[i]  # type: ignore[index]
            order = np.lexsort((keep, -sims))[:n]
            positions, scores = keep[order], sims[order]
            if self.reranker is not None and len(positions):
                cand = [[index.query_text(index.examples[p]) for p in positions.tolist()]]
                p2, s2 = rerank_pool(self.reranker, [texts[i]], cand, positions[None, :],
                                     np.array([len(positions)]))
                positions, scores = p2[0], s2[0]
            out.append(Retrieved(tuple(positions.tolist()), tuple(scores.astype(float).tolist())))
        return out

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


def _dpp(index: ExampleIndex, q: np.ndarray, pos: np.ndarray, n: int, scale: float) -> Retrieved:
    """DPP greedy MAP over the pool; scores are each pick's cosine similarity to the query."""
    if len(pos) == 0:
        return Retrieved((), ())
    emb = np.asarray(index.embeddings[pos], dtype=np.float32)
    order = dpp_order(emb, q, n, scale)
    rel = emb[order] @ q
    return Retrieved(tuple(pos[order].tolist()), tuple(rel.astype(float).tolist()))


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
