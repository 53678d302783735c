"""Re-ranking of retrieved candidates by a cross-encoder (``Retriever(reranker=...)``).

A cross-encoder reads the query and a candidate together and outputs one relevance score; it is slower
than the bi-encoder search but more accurate, so it re-orders the first stage's best ``rerank_depth``
candidates. Give a sentence-transformers ``CrossEncoder`` hub id or folder (e.g.
``"cross-encoder/ms-marco-MiniLM-L-6-v2"``), a loaded ``CrossEncoder``, or any object with
``score(query, texts) -> scores`` (the :class:`Reranker` protocol).

The scored text of a candidate is its query text (input fields joined by newlines), the text the first
stage searched. Ties are broken by the first stage's order, so re-ranking is deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .._exceptions import check_positive_int, require

logger = logging.getLogger(__name__)

__all__ = ["CrossEncoderReranker", "Reranker", "get_reranker", "rerank_pool"]


@runtime_checkable
class Reranker(Protocol):
    """Scores candidates for a query: ``score(query, texts)`` → float array, higher = more relevant."""

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray: ...


class CrossEncoderReranker:
    """A sentence-transformers ``CrossEncoder`` as a :class:`Reranker`, loaded on first use.

    Args:
        model: a hub id or a folder of a cross-encoder, or a loaded ``CrossEncoder``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
        batch_size: pairs per forward pass.
        max_length: truncate each (query, candidate) pair to this many tokens (default: the model's).
    """

    def __init__(self, model: Any, device: str = "auto", batch_size: int = 32,
                 max_length: int | None = None) -> None:
        if not isinstance(model, str) and not hasattr(model, "predict"):
            raise TypeError(f"model must be a cross-encoder hub id, a folder, or a loaded sentence-transformers "
                            f"CrossEncoder; got {type(model).__name__}.")
        self.model = model
        self.device = device
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.max_length = None if max_length is None else check_positive_int("max_length", max_length)
        self._model: Any = None if isinstance(model, str) else model

    def __repr__(self) -> str:
        name = self.model if isinstance(self.model, str) else type(self.model).__name__
        return f"CrossEncoderReranker({name!r})"

    def load(self) -> Any:
        """The ``CrossEncoder`` (loaded once)."""
        if self._model is None:
            st = require("sentence_transformers", "cpu", "sentence-transformers")
            from .._device import resolve_device

            device = resolve_device(self.device)
            logger.info("loading cross-encoder %s on %s", self.model, device)
            try:
                self._model = st.CrossEncoder(self.model, device=device, max_length=self.max_length)
            except OSError as err:
                raise OSError(f"cross-encoder {self.model!r} cannot be loaded ({err}). Expected a hub id reachable "
                              "from here or cached, or a local folder of a sentence-transformers CrossEncoder. Fix: "
                              "download it once where the hub is reachable and pass its folder.") from err
        return self._model

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, np.float32)
        out = self.load().predict([(query, t) for t in texts], batch_size=self.batch_size,
                                  show_progress_bar=False, convert_to_numpy=True)
        out = np.asarray(out, np.float32)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.shape != (len(texts),):
            raise ValueError(f"the cross-encoder returned scores of shape {out.shape} for {len(texts)} pairs; a "
                             "re-ranker needs one score per pair (a model with num_labels=1).")
        return out


def get_reranker(spec: Any) -> Reranker | None:
    """A :class:`Reranker` from ``None``, a hub id/folder (a :class:`CrossEncoderReranker`), a loaded
    ``CrossEncoder`` or an object with ``score``; ``TypeError`` otherwise."""
    if spec is None or isinstance(spec, Reranker):
        return spec
    if isinstance(spec, str) or hasattr(spec, "predict"):
        return CrossEncoderReranker(spec)
    raise TypeError(f"reranker must be None, a cross-encoder hub id or folder, a sentence-transformers "
                    f"CrossEncoder, or an object with score(query, texts); got {type(spec).__name__}.")


def rerank_pool(reranker: Reranker, queries: Sequence[str], candidate_texts: Sequence[Sequence[str]],
                positions: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-order each row's valid candidates by the reranker's score (ties: the first stage's order); returns
    the re-ordered ``positions`` and the rerank scores (``-inf`` padding)."""
    out_pos = positions.copy()
    out_sc = np.full(positions.shape, -np.inf, np.float32)
    for i, (query, texts) in enumerate(zip(queries, candidate_texts)):
        c = int(counts[i])
        if c == 0:
            continue
        scores = np.asarray(reranker.score(query, list(texts)), np.float32).reshape(-1)
        if scores.shape != (c,) or not np.isfinite(scores).all():
            raise ValueError(f"the reranker returned {scores.shape[0]} scores (finite: {bool(np.isfinite(scores).all())}) "
                             f"for {c} candidates; expected one finite score per candidate.")
        order = np.argsort(-scores, kind="stable")
        out_pos[i, :c] = positions[i, :c][order]
        out_sc[i, :c] = scores[order]
    return out_pos, out_sc
