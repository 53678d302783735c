"""How an :class:`~ragicl.index.core.ExampleIndex` searches: argument checks and thread-safe per-call ``nprobe``.

Private (used by ``ExampleIndex.search`` / ``search_vectors``). Result shape: ``(Q, min(k, len(index)))``;
columns never exceed the index size (``k=10**9`` allocates nothing extra), and entries an approximate index
(IVF, HNSW) could not fill are ``-1`` with score ``-inf``. A per-call ``nprobe`` is passed to FAISS as
search parameters (``faiss.SearchParametersIVF``), so it never touches the index's stored ``nprobe`` and
concurrent searches from threads do not see each other's value.
"""

from __future__ import annotations

import numbers
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from .._exceptions import DataError, EmbedderMismatchError, MissingDependencyError, require

if TYPE_CHECKING:
    from .core import ExampleIndex

_fallback_lock = threading.Lock()  # only for backends that reject per-call parameters


def check_count(name: str, value: object) -> int:
    """A user-given positive integer: any integral type (``np.int64`` too), never a bool or a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__}). "
                        f"Fix: pass an int, e.g. {name}=5.")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_query_vectors(x: np.ndarray) -> np.ndarray:
    """``DataError`` if a query vector holds NaN or infinity (FAISS would rank them arbitrarily)."""
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(f"query vector(s) at row(s) {bad[:10].tolist()} contain NaN or infinite values "
                        f"({len(bad)} of {len(x)} rows). Fix: check the embedding step that produced them, "
                        "or drop those rows.")
    return x


def _ivf_params(faiss: Any, index: Any, nprobe: int) -> Any:
    """Search parameters that set ``nprobe`` on this index's IVF part (through a pre-transform)."""
    params = faiss.SearchParametersIVF()
    params.nprobe = nprobe
    if isinstance(index, faiss.IndexPreTransform):
        outer = faiss.SearchParametersPreTransform()
        outer.index_params = params
        outer.params_ref = params  # keep the inner object alive as long as the outer one
        return outer
    return params


def search_vectors(index: ExampleIndex, x: np.ndarray, k: int, *, nprobe: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, scores)`` of shape ``(Q, min(k, len(index)))`` for a checked float32 matrix."""
    n_q, kk = x.shape[0], min(k, len(index))
    searcher = index._faiss_index
    if n_q == 0 or kk == 0:
        return np.full((n_q, kk), -1, np.int64), np.full((n_q, kk), -np.inf, np.float32)
    if nprobe is not None and nprobe != index._search_params.get("nprobe"):
        nprobe = check_count("nprobe", nprobe)
        if index._search_params.get("nprobe") is None:
            raise ValueError(f"nprobe applies to IVF indexes; this one is {index.factory!r}.")
        faiss = require("faiss", "cpu", "faiss-cpu")
        try:
            scores, positions = searcher.search(x, kk, params=_ivf_params(faiss, searcher, nprobe))
        except (RuntimeError, TypeError):  # a backend without per-call parameters: swap under a lock
            with _fallback_lock:
                previous = index._search_params["nprobe"]
                index.set_search_params(nprobe=nprobe)
                try:
                    scores, positions = searcher.search(x, kk)
                finally:
                    index.set_search_params(nprobe=previous)
    elif index._backend == "faiss-gpu" and kk > 2048:  # faiss-gpu's k limit: exact search on host
        sims = x @ np.asarray(index._embeddings).T
        positions = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
        scores = np.take_along_axis(sims, positions, axis=1)
    else:
        scores, positions = searcher.search(x, kk)
    scores = np.array(scores, dtype=np.float32)
    scores[positions < 0] = -np.inf
    return positions.astype(np.int64, copy=False), scores


def check_matrix(index: ExampleIndex, queries: np.ndarray) -> np.ndarray:
    """A query matrix (or one vector) as contiguous float32 ``(Q, d)``, its width and values checked."""
    x = queries.reshape(1, -1) if queries.ndim == 1 else queries
    if x.ndim != 2 or (index._embeddings is not None and x.shape[1] != index.dimension):
        raise EmbedderMismatchError(
            f"query vectors have shape {queries.shape}; this index holds {index.dimension}-dimensional "
            f"vectors from {index.embedder.name!r}. Fix: embed the queries with the same embedder, "
            "or pass texts and let the index embed them.")
    return check_query_vectors(np.ascontiguousarray(x, dtype=np.float32))


def encode_texts(index: ExampleIndex, texts: list[str]) -> np.ndarray:
    """``texts`` embedded by the index's embedder, checked; a clear error if that embedder cannot load."""
    emb = index.embedder
    loaded_before = getattr(emb, "is_loaded", True)
    try:
        if not texts:
            dim = index.dimension if index._embeddings is not None else emb.dimension
            return np.zeros((0, dim), np.float32)
        x = np.asarray(emb.encode(texts, batch_size=index.batch_size, show_progress=index.show_progress))
    except (OSError, MissingDependencyError) as err:  # e.g. "couldn't connect to huggingface.co"
        if loaded_before is not False:
            raise
        from .folder import embedder_unavailable

        raise embedder_unavailable(emb.name, err) from err
    if x.ndim != 2 or x.shape[0] != len(texts):
        raise EmbedderMismatchError(f"embedder {emb.name!r} returned shape {x.shape} for {len(texts)} texts; "
                                    "expected (n_texts, dimension).")
    if index._embeddings is not None and x.shape[1] != index.dimension:
        raise EmbedderMismatchError(
            f"embedder {emb.name!r} produces {x.shape[1]}-dimensional vectors; the index was built with "
            f"{index.manifest.get('embedder')!r} ({index.dimension} dims). Fix: load the index with the "
            "embedder it was built with, or rebuild it.")
    return np.ascontiguousarray(x, dtype=np.float32)
