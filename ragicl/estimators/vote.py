"""The kNN vote, once: the neighbours of a query and the (similarity-weighted) label vote over them.

Every vote in ragicl is this one: :class:`KNNVoteClassifier` (the plain baseline rows of ``ragicl eval``),
the vote side of :class:`~ragicl.estimators.fusion.FusionClassifier`, and the votes the tuner scores and
reports. :func:`neighbours` finds the nearest indexed examples (a query's own copy excluded, as retrieval
does); :func:`knn_distribution` turns their labels into a distribution: each neighbour votes 1
(``temperature=None``) or ``softmax(similarity / temperature)`` scaled to the neighbour count (the weighted
vote), plus ``smoothing`` (add-α) per label. The reported votes are :data:`PLAIN_VOTES`, named by
:func:`vote_name`.

>>> vote_name(32, None), vote_name(8, WEIGHTED_TEMPERATURE)
('kNN vote k=32', 'kNN vote k=8 weighted')
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from .._exceptions import NotFittedError, check_positive_int
from ..index.core import ExampleIndex
from ..prompt.retrieve import Retriever
from ..types import Example, Query
from ._common import as_examples
from .base import ParamsMixin

__all__ = ["PLAIN_VOTES", "VOTE_KS", "WEIGHTED_TEMPERATURE", "KNNVoteClassifier", "knn_distribution",
           "neighbours", "vote_name"]

#: the temperature of the similarity-weighted vote the reports show ("weighted")
WEIGHTED_TEMPERATURE = 0.05
#: the vote sizes of the plain rows (``ragicl eval``) and of the reported votes
VOTE_KS = (8, 32)
#: the reported kNN votes (size, temperature): always candidates of the tuner, always in its report
PLAIN_VOTES = tuple((k, t) for t in (None, WEIGHTED_TEMPERATURE) for k in VOTE_KS)


def vote_name(k: int, temperature: float | None) -> str:
    """The report's name of a vote: ``"kNN vote k=8"``, or ``"... weighted"`` for the weighted one."""
    suffix = "" if temperature is None else (" weighted" if temperature == WEIGHTED_TEMPERATURE
                                             else f" temperature {temperature:g}")
    return f"kNN vote k={k}{suffix}"


def knn_distribution(neighbor_labels: np.ndarray, neighbor_scores: np.ndarray, n_labels: int, *,
                     k: int, temperature: float | None, smoothing: float = 0.5) -> np.ndarray:
    """``(n, L)`` similarity-weighted label distribution over the first ``k`` neighbours of each row.

    >>> import numpy as np
    >>> knn_distribution(np.array([[0, 1, 1]]), np.array([[0.9, 0.5, 0.4]]), 2, k=3, temperature=None,
    ...                  smoothing=0.0).round(3).tolist()
    [[0.333, 0.667]]
    """
    labels = neighbor_labels[:, :k]
    scores = neighbor_scores[:, :k].astype(np.float64)
    valid = labels >= 0
    if temperature is None:
        w = valid.astype(np.float64)
    else:
        z = np.where(valid, scores / temperature, -np.inf)
        z = z - np.max(np.where(valid, z, -np.inf), axis=1, keepdims=True, initial=-1e300)
        w = np.where(valid, np.exp(z), 0.0)
        w /= np.maximum(w.sum(1, keepdims=True), 1e-300)
        w *= valid.sum(1, keepdims=True)  # weights sum to the neighbour count, as the plain vote's do
    out = np.full((len(labels), n_labels), float(smoothing), dtype=np.float64)  # add-α, as KNNVoteClassifier
    rows = np.repeat(np.arange(len(labels)), labels.shape[1])
    np.add.at(out, (rows[valid.ravel()], labels.ravel()[valid.ravel()]), w.ravel()[valid.ravel()])
    total = out.sum(1, keepdims=True)
    return np.divide(out, total, out=np.full_like(out, 1.0 / max(n_labels, 1)), where=total > 0)


def neighbours(index: ExampleIndex, examples: Sequence[Example], k: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, k)`` positions, label ids (both ``-1`` pad) and cosine scores of each query's ``k`` nearest
    indexed examples, nearest first.

    The query itself (an indexed example with the same text) is excluded, as :class:`Retriever` does, so a
    dev query drawn from the training set never votes for itself. ``k`` is capped at the index size, as
    ``index.search`` caps it (no ``(n, k)`` array wider than the index: ``k=10**9`` is the whole index).
    """
    k = max(0, min(int(k), len(index)))
    retrieved = Retriever(k=k, selection="topk").retrieve(index, list(examples))
    label_of = index.label_ids
    positions = np.full((len(examples), k), -1, dtype=np.int64)
    labels = np.full((len(examples), k), -1, dtype=np.int64)
    scores = np.full((len(examples), k), -np.inf, dtype=np.float64)
    for row, r in enumerate(retrieved):
        pos = np.asarray(r.positions, dtype=np.int64)
        pos = pos[pos >= 0][:k]
        positions[row, : len(pos)] = pos
        labels[row, : len(pos)] = label_of[pos]
        scores[row, : len(pos)] = np.asarray(r.scores, dtype=np.float64)[: len(pos)]
    return positions, labels, scores



class KNNVoteClassifier(ParamsMixin):
    """Label distribution = the (smoothed) vote of the ``k`` nearest indexed examples; no LM at all. If it
    matches retrieved ICL, the LM adds nothing beyond the retriever.

    ``temperature=None`` counts each neighbour once; a number weights them by ``softmax(similarity /
    temperature)`` (the weighted vote; :data:`WEIGHTED_TEMPERATURE` in the reports). ``weighted=True`` is the
    deprecated spelling of that weighted vote.

    >>> KNNVoteClassifier(k=32, temperature=0.05)
    KNNVoteClassifier(k=32, temperature=0.05)
    >>> from ragicl import ExampleIndex, HashEmbedder, read_dataset           # doctest: +SKIP
    >>> index = ExampleIndex.build(read_dataset("train.jsonl"), embedder=HashEmbedder())  # doctest: +SKIP
    >>> KNNVoteClassifier(k=16).fit(index).predict(["great film"])           # doctest: +SKIP
    """

    _estimator_type = "classifier"

    def __init__(self, k: int = 16, *, temperature: float | None = None, smoothing: float = 0.5,
                 weighted: bool | None = None) -> None:
        self.k = k
        self.temperature = temperature
        self.smoothing = smoothing
        self.weighted = weighted

    def _temperature(self) -> float | None:
        if self.weighted:
            warnings.warn("KNNVoteClassifier(weighted=True) is deprecated: use temperature="
                          f"{WEIGHTED_TEMPERATURE} (the weighted vote every report shows)", DeprecationWarning,
                          stacklevel=3)
            return WEIGHTED_TEMPERATURE if self.temperature is None else self.temperature
        return self.temperature

    def fit(self, index: ExampleIndex) -> KNNVoteClassifier:
        check_positive_int("k", self.k)
        t = self._temperature()
        if t is not None and not (isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0):
            raise ValueError(f"temperature must be a number > 0 or None (plain vote), got {t!r}.")
        if not (isinstance(self.smoothing, (int, float)) and self.smoothing >= 0):
            raise ValueError(f"smoothing must be a number >= 0, got {self.smoothing!r}.")
        self.index_ = index
        self.classes_ = tuple(index.dataset.labels)
        self.input_fields_ = tuple(index.dataset.input_fields)
        self.temperature_ = t
        return self

    def predict_proba(self, queries: Sequence[Query] | Query) -> np.ndarray:
        if not hasattr(self, "index_"):
            raise NotFittedError("call fit(index) before predict_proba.")
        examples = as_examples(queries, self.input_fields_)
        _, labels, scores = neighbours(self.index_, examples, self.k)
        return knn_distribution(labels, scores, len(self.classes_), k=self.k, temperature=self.temperature_,
                                smoothing=self.smoothing)

    def predict(self, queries: Sequence[Query] | Query) -> list[str]:
        return [self.classes_[i] for i in self.predict_proba(queries).argmax(1)]
