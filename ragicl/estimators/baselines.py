"""Baselines a reviewer asks for next to retrieval ICL.

- :class:`KNNVoteClassifier` — majority vote over the retrieved neighbours' labels; no LM at all. If it
  matches retrieved ICL, the LM adds nothing beyond the retriever.
- :class:`CalibratedClassifier` — contextual calibration (Zhao et al. 2021): the same prompt with a
  content-free query ("N/A") gives the model's label bias ``p_cf``; predictions are rescaled by it,
  ``q ∝ p / p_cf`` (the diagonal ``W = diag(p_cf)^-1``, ``b = 0`` of the paper).
- :class:`KNNPromptingClassifier` — kNN-prompting (Xu et al. 2023): every training example ("anchor")
  is run through the LM with a fixed few-shot prefix; its next-token distribution is its representation,
  and a query is labeled by its nearest anchors under KL divergence. It uses the whole training set,
  beyond what fits in one context.

All three expose ``classes_`` and ``predict_proba`` so :func:`ragicl.compare` evaluates them like any
system.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from .._exceptions import NotFittedError, check_positive_int
from ..index.core import ExampleIndex
from ..prompt.step import make_packer
from ..types import Example, Query
from ._common import as_examples, softmax
from .base import ParamsMixin
from .classifier import ICLClassifier
from .vote import KNNVoteClassifier  # noqa: F401  (re-exported: the baseline rows)

logger = logging.getLogger(__name__)


class CalibratedClassifier(ParamsMixin):
    """Contextual calibration of an ICL classifier (Zhao et al. 2021).

    For each query, the prompt is rebuilt with the same demonstrations and a content-free query
    (``content_free``, default ``"N/A"`` in every input field); the model's label distribution on it,
    ``p_cf``, estimates its bias, and the calibrated distribution is ``p / p_cf`` renormalized. With
    several content-free strings their distributions are averaged, as in the paper.

    >>> cal = CalibratedClassifier(ICLClassifier(k=8)).fit(index)          # doctest: +SKIP
    """

    def __init__(self, base: ICLClassifier, content_free: Sequence[str] = ("N/A", "", "[MASK]")) -> None:
        self.base = base
        self.content_free = content_free

    def fit(self, data) -> CalibratedClassifier:
        if not self.content_free:
            raise ValueError("content_free is empty; give at least one string, e.g. ('N/A',).")
        self.base.fit(data)
        self.classes_ = self.base.classes_
        index = self.base.index_
        self._position_of = ({ex.id: i for i, ex in enumerate(index.examples)} if index is not None else {})
        return self

    def predict_proba(self, queries: Sequence[Query] | Query) -> np.ndarray:
        if not hasattr(self, "classes_"):
            raise NotFittedError("call fit(index) before predict_proba.")
        base = self.base
        prompts = base.prompts(queries)
        p = softmax(base.label_logprobs(prompts))
        cf_probs = np.zeros_like(p)
        for text in self.content_free:
            cf_prompts = []
            for prompt in prompts:
                cf_query = Example(id="content-free", inputs={f: text for f in base.input_fields_})
                # The same demonstrations, in relevance order (prompt order is least relevant first).
                positions = [self._position_of[i] for i in reversed(prompt.included)]
                cf_prompts.append(base.packer_.pack(cf_query, positions))
            cf_probs += softmax(base.label_logprobs(cf_prompts))
        cf_probs /= len(self.content_free)
        q = p / np.clip(cf_probs, 1e-12, None)
        return q / q.sum(1, keepdims=True)

    def predict(self, queries: Sequence[Query] | Query) -> list[str]:
        return [self.classes_[i] for i in self.predict_proba(queries).argmax(1)]


class KNNPromptingClassifier(ParamsMixin):
    """kNN-prompting (Xu et al. 2023): nearest training anchors in the LM's output-distribution space.

    ``n_demos`` random training examples form one fixed prefix (as in the paper); every anchor and every
    query is scored after that prefix, and its full next-token distribution at the answer position is
    kept. A query's label distribution is the (smoothed) label frequency among its ``n_neighbors``
    anchors of smallest KL(anchor || query). ``n_anchors`` caps the anchors (a seeded sample) for CPUs.

    >>> knnp = KNNPromptingClassifier(ICLClassifier(k=0), n_anchors=512).fit(index)   # doctest: +SKIP
    """

    def __init__(self, base: ICLClassifier, *, n_demos: int = 4, n_anchors: int | None = None,
                 n_neighbors: int = 8, top_tokens: int = 2048, seed: int = 0,
                 smoothing: float = 0.5) -> None:
        self.base = base
        self.n_demos = n_demos
        self.n_anchors = n_anchors
        self.n_neighbors = n_neighbors
        self.top_tokens = top_tokens
        self.seed = seed
        self.smoothing = smoothing

    def fit(self, index: ExampleIndex) -> KNNPromptingClassifier:
        check_positive_int("n_neighbors", self.n_neighbors)
        if self.base.k != 0:
            raise ValueError(f"the base classifier must be zero-shot (k=0); got k={self.base.k}: "
                             "kNN-prompting uses its own fixed demonstration prefix (n_demos).")
        self.base.fit(index.dataset)
        self.classes_ = self.base.classes_
        rng = np.random.default_rng(self.seed)
        n = len(index)
        self._demos = [int(i) for i in rng.choice(n, size=min(self.n_demos, n), replace=False)]
        rest = np.setdiff1d(np.arange(n), self._demos)
        if self.n_anchors is not None and self.n_anchors < len(rest):
            rest = np.sort(rng.choice(rest, size=self.n_anchors, replace=False))
        self._examples = list(index.examples)
        # The packer over the full index lets the prefix be packed by position.
        self._packer = make_packer(self.base.lm_, self.base.template_, self._examples,
                                   max_prompt_tokens=self.base.max_prompt_tokens, labels=self.classes_)
        anchors = [self._examples[i] for i in rest]
        logger.info("kNN-prompting: scoring %d anchors with a %d-shot prefix", len(anchors), len(self._demos))
        full = self._distributions(anchors)
        # Keep only the tokens that carry mass across anchors: KL over them approximates the full KL
        # and keeps memory at anchors × top_tokens.
        self._vocab = np.argsort(-full.mean(0))[: self.top_tokens]
        self._anchor_logp = _renorm_log(full[:, self._vocab])
        self._anchor_labels = np.array([self.classes_.index(ex.label) for ex in anchors], dtype=np.int64)
        return self

    def _distributions(self, examples: Sequence[Example]) -> np.ndarray:
        prompts = [self._packer.pack(ex, self._demos).token_ids for ex in examples]
        return np.asarray(self.base.lm_.next_token_logprobs(prompts), dtype=np.float32)

    def predict_proba(self, queries: Sequence[Query] | Query) -> np.ndarray:
        if not hasattr(self, "_anchor_logp"):
            raise NotFittedError("call fit(index) before predict_proba.")
        examples = as_examples(queries, self.base.input_fields_)
        q_logp = _renorm_log(self._distributions(examples)[:, self._vocab])
        a = self._anchor_logp
        # KL(anchor || query) = Σ p_a (log p_a − log p_q), for every (query, anchor) pair.
        neg_entropy = (np.exp(a) * a).sum(1)  # (A,)
        cross = q_logp @ np.exp(a).T  # (Q, A)
        kl = neg_entropy[None, :] - cross
        nn = np.argsort(kl, axis=1)[:, : self.n_neighbors]
        out = np.full((len(examples), len(self.classes_)), self.smoothing)
        for row, idx in zip(out, nn):
            np.add.at(row, self._anchor_labels[idx], 1.0)
        return out / out.sum(1, keepdims=True)

    def predict(self, queries: Sequence[Query] | Query) -> list[str]:
        return [self.classes_[i] for i in self.predict_proba(queries).argmax(1)]


def _renorm_log(logp: np.ndarray) -> np.ndarray:
    m = logp.max(1, keepdims=True)
    return logp - (m + np.log(np.exp(logp - m).sum(1, keepdims=True)))

