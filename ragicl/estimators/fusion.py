"""LM × kNN: retrieval ICL fused with a similarity-weighted vote over many more neighbours.

A prompt holds a handful of demonstrations; the index holds the whole fine-tuning set. :class:`FusionClassifier`
uses both. For each query it retrieves ``knn_k`` neighbours (far more than fit in a prompt) and

1. forms the **kNN distribution** ``p_knn(y) ∝ α + Σ_i w_i [y_i = y]`` with ``w_i = softmax(s_i / τ)`` over
   the neighbours' cosine scores (``knn_temperature=None``: a plain majority vote);
2. keeps the **candidate labels**: the ``candidates`` labels with the most kNN mass (all labels when ``None``
   or when the task has no more than that), grown to cover ``candidate_mass`` of that mass when set, and
   never without a label of the :data:`VOTE_TOP` nearest neighbours or of the prompt's demonstrations (so
   neither the small vote nor the prompt can point at a label the LM is not allowed to answer). Only these
   are scored by the LM, so a 77-label task costs a handful of label continuations per query, and the LM
   chooses among plausible labels;
3. builds the ICL prompt from the nearest neighbours, **label-aware**: the nearest example of each candidate
   label goes in first, so every label the LM may answer is demonstrated at least once (``label_aware``);
4. scores the candidates with the LM, optionally **calibrated** against a label prior: ``"batch"`` divides by
   the mean LM distribution over the predicted batch (batch calibration, Zhou et al. 2024), ``"prior"`` by
   one estimated on dev data (:func:`ragicl.estimators.tune` estimates it), ``"none"`` leaves it;
5. mixes: ``p = (1 − w) · p_LM + w · p_kNN`` (``knn_weight = w``; 0 is plain retrieval ICL over the candidates,
   1 is the kNN vote alone);
6. optionally **sharpens** the mixture, ``p ∝ p^(1/T)`` (``output_temperature = T``; 1 leaves it): a mixture of
   two distributions is less confident than either, and temperature scaling fitted on dev log-loss (Guo et
   al. 2017) restores calibrated confidence without changing any prediction.

The weight, the neighbour count, the temperature, the candidate count, the calibration and the output
temperature are chosen on dev
data held out from the training set by :func:`ragicl.estimators.tune` (``ragicl tune`` on the command line).

All the arithmetic after the LM is in :func:`combine`, a pure function of :class:`FusionParts`, so tuning
scores the LM once per prompt configuration and tries every mixing setting for free.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._exceptions import NotFittedError, check_positive_int
from ..index.core import ExampleIndex
from ..lm.hf import LanguageModel
from ..models import DEFAULT_LM
from ..prompt.step import MANY_SHOT, check_k, resolve_k
from ..prompt.template import PromptTemplate
from ..types import Example, PackedPrompt, Query
from ._common import as_examples
from .base import ParamsMixin
from .classifier import ICLClassifier
from .vote import knn_distribution, neighbours

logger = logging.getLogger(__name__)

CALIBRATIONS = ("none", "batch", "prior")
CANDIDATE_POOL = 32  # neighbours whose similarity-weighted vote ranks the candidate labels
CANDIDATE_TEMPERATURE = 0.05  # softmax temperature of that ranking over cosine scores
VOTE_TOP = 8  # nearest neighbours whose labels every candidate set keeps (those of the k=8 vote)


@dataclass(frozen=True)
class FusionPlan:
    """A batch of queries ready for the LM (:meth:`FusionClassifier.plan`): their neighbours, candidate
    labels and packed prompts (``None``: the LM is not run), and ``lm_tokens``, the LM work scoring them
    costs: every prompt token plus, per candidate label, the answer tokens fed after the prompt's last
    position (a label's first token is read off that position: ``len(answer) - 1`` each)."""

    neighbor_labels: np.ndarray
    neighbor_scores: np.ndarray
    n_labels: int
    candidates: np.ndarray
    prompts: tuple[PackedPrompt, ...] | None
    lm_tokens: int


@dataclass(frozen=True)
class FusionParts:
    """What the LM and the index said about a batch of queries, before mixing.

    ``lm_logp`` is ``(n, L)`` label log-probabilities from the LM, ``-inf`` outside each query's candidates;
    ``neighbor_labels`` / ``neighbor_scores`` are ``(n, K)`` label indices (``-1`` = none) and cosine scores of
    the ``K`` nearest neighbours, nearest first; ``candidates`` the ``(n, L)`` mask of labels the LM scored.
    """

    lm_logp: np.ndarray
    neighbor_labels: np.ndarray
    neighbor_scores: np.ndarray
    n_labels: int
    candidates: np.ndarray


def candidate_labels(knn_p: np.ndarray, candidates: int | None, *, keep: np.ndarray | None = None,
                     mass: float | None = None) -> np.ndarray:
    """``(n, L)`` boolean mask of the ``candidates`` most probable labels per row (all when None or ≥ L).

    ``mass`` (in (0, 1]) grows each row's set to the fewest most probable labels that hold at least that share
    of the row's mass (the size adapts: one label where the neighbours agree, more where they disagree);
    ``keep`` (an ``(n, L)`` mask) is always in. Ties are broken by label order, so the mask is a function of
    the scores alone.

    >>> import numpy as np
    >>> p = np.array([[0.5, 0.3, 0.15, 0.05], [0.9, 0.04, 0.03, 0.03]])
    >>> candidate_labels(p, 1, mass=0.8).astype(int).tolist()
    [[1, 1, 0, 0], [1, 0, 0, 0]]
    >>> candidate_labels(p, 1, keep=np.array([[0, 0, 0, 1], [0, 0, 0, 0]], bool)).astype(int).tolist()
    [[1, 0, 0, 1], [1, 0, 0, 0]]
    """
    n, n_labels = knn_p.shape
    if candidates is None or candidates >= n_labels:
        return np.ones((n, n_labels), dtype=bool)
    order = np.lexsort((np.broadcast_to(np.arange(n_labels), knn_p.shape), -knn_p), axis=-1)
    size = np.full(n, int(candidates))
    if mass is not None:
        ranked = np.take_along_axis(np.asarray(knn_p, dtype=np.float64), order, axis=1)
        total = ranked.sum(1, keepdims=True)
        share = np.cumsum(ranked, axis=1) / np.where(total > 0, total, 1.0)
        # the fewest labels whose share reaches ``mass`` (a hair of float slack: 0.3 + 0.5 is 0.8)
        size = np.maximum(size, (share < float(mass) - 1e-12).sum(1) + 1)
    mask = np.zeros((n, n_labels), dtype=bool)
    np.put_along_axis(mask, order, np.arange(n_labels)[None, :] < size[:, None], axis=1)
    if keep is not None:
        mask |= np.asarray(keep, dtype=bool)
    return mask


def labels_of_nearest(neighbor_labels: np.ndarray, n_labels: int, top: int = VOTE_TOP) -> np.ndarray:
    """``(n, L)`` mask of the labels among each row's ``top`` nearest neighbours (``-1`` pads ignored)."""
    mask = np.zeros((len(neighbor_labels), n_labels), dtype=bool)
    rows, cols = np.nonzero(neighbor_labels[:, :top] >= 0)
    mask[rows, neighbor_labels[:, :top][rows, cols]] = True
    return mask


def _softmax_masked(logp: np.ndarray) -> np.ndarray:
    finite = np.isfinite(logp)
    m = np.max(np.where(finite, logp, -np.inf), axis=1, keepdims=True)
    e = np.where(finite, np.exp(logp - np.where(np.isfinite(m), m, 0.0)), 0.0)
    return e / np.maximum(e.sum(1, keepdims=True), 1e-300)


def calibrate(p_lm: np.ndarray, mode: str, prior: np.ndarray | None = None) -> np.ndarray:
    """Divide an LM label distribution by a label prior and renormalize (zeros stay zero).

    ``"batch"``: the prior is the mean of ``p_lm`` over the rows (the batch itself); ``"prior"``: the given
    ``prior`` (e.g. the mean over dev queries); ``"none"``: unchanged.
    """
    if mode == "none":
        return p_lm
    if mode == "batch":
        prior = p_lm.mean(0)
    elif mode == "prior":
        if prior is None:
            raise ValueError("calibration='prior' needs a prior estimated on dev data: run ragicl.estimators.tune(...), "
                             "or use calibration='batch' or 'none'.")
    else:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {mode!r}.")
    q = p_lm / np.clip(np.asarray(prior, dtype=np.float64), 1e-12, None)[None, :]
    total = q.sum(1, keepdims=True)
    return np.divide(q, total, out=np.array(p_lm, dtype=np.float64), where=total > 0)


def sharpen(p: np.ndarray, temperature: float) -> np.ndarray:
    """Rows of ``p`` raised to ``1 / temperature`` and renormalized (zeros stay zero; 1 returns ``p``).

    Monotone within a row, so the most probable label never changes.

    >>> sharpen(np.array([[0.6, 0.4, 0.0]]), 0.5).round(3).tolist()
    [[0.692, 0.308, 0.0]]
    """
    if temperature == 1.0:
        return p
    with np.errstate(divide="ignore"):
        return _softmax_masked(np.log(p) / temperature)


def combine(parts: FusionParts, *, knn_k: int, knn_temperature: float | None, knn_weight: float,
            calibration: str = "none", prior: np.ndarray | None = None, smoothing: float = 0.5,
            output_temperature: float = 1.0) -> np.ndarray:
    """The fused ``(n, L)`` distribution: ``(1 − w)·calibrated p_LM + w·p_kNN``, sharpened by
    ``output_temperature``."""
    p_knn = knn_distribution(parts.neighbor_labels, parts.neighbor_scores, parts.n_labels, k=knn_k,
                             temperature=knn_temperature, smoothing=smoothing)
    if knn_weight >= 1.0:
        return sharpen(p_knn, output_temperature)
    p_lm = calibrate(_softmax_masked(parts.lm_logp), calibration, prior)
    return sharpen((1.0 - knn_weight) * p_lm + knn_weight * p_knn, output_temperature)


def _check_weight(w: float) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
        raise ValueError(f"knn_weight must be a number in [0, 1] (0 = LM only, 1 = kNN vote only), got {w!r}.")
    return float(w)


class FusionClassifier(ParamsMixin):
    """Retrieval ICL × kNN vote, with candidate labels, label-aware prompts and calibration.

    Parameters
    ----------
    lm, template, k, max_prompt_tokens, selection, search, batch_size, device, seed, show_progress :
        as :class:`ICLClassifier` (the LM side). ``k`` may be larger than fits: the packer stops at the budget.
        The vote always counts the dense index's neighbours; ``search`` and ``selection`` choose the prompt's
        demonstrations (dense top-k reuses the vote's neighbours: no second search).
    knn_k : neighbours in the vote (default 64), independent of how many fit in the prompt.
    knn_temperature : softmax temperature over cosine scores (None = plain majority vote).
    knn_weight : mixing weight ``w`` of the vote, in [0, 1].
    candidates : score only this many labels per query, those with the most kNN mass (None = all), plus any
        label of the :data:`VOTE_TOP` nearest neighbours or of the prompt's demonstrations.
    candidate_mass : grow each query's candidate set to the fewest labels holding this share of the
        neighbours' label mass (None = a fixed count); the set adapts to how much the neighbours agree.
    label_aware : put the nearest example of every candidate label in the prompt first.
    calibration : ``"none"``, ``"batch"`` or ``"prior"`` (needs ``prior``, set by :func:`ragicl.estimators.tune`).
    prior : label prior for ``calibration="prior"`` (a sequence over the index's labels).
    output_temperature : ``T`` of the final sharpening ``p ∝ p^(1/T)`` (1 = none; the tuner fits it on dev
        log-loss). It never changes a prediction, only how confident the distribution is.

    Example
    -------
    >>> from ragicl import ExampleIndex, FusionClassifier, read_dataset
    >>> index = ExampleIndex.build(read_dataset("../shared/datasets/trec/train.jsonl"))  # doctest: +SKIP
    >>> clf = FusionClassifier(k=8, knn_k=64, knn_weight=0.5, candidates=4).fit(index)      # doctest: +SKIP
    >>> clf.predict(["Who wrote Hamlet ?"])                                                 # doctest: +SKIP
    """

    def __init__(self, lm: str | LanguageModel = DEFAULT_LM, template: PromptTemplate | None = None, *,
                 k: int | str = 8, max_prompt_tokens: int | None = 1024, selection: str = "topk", knn_k: int = 64,
                 knn_temperature: float | None = 0.05, knn_weight: float = 0.5, candidates: int | None = None,
                 candidate_mass: float | None = None, label_aware: bool = True, calibration: str = "none", prior: Sequence[float] | None = None,
                 smoothing: float = 0.5, output_temperature: float = 1.0, batch_size: int | None = None,
                 device: str = "auto", seed: int = 0, show_progress: bool | None = None,
                 search: str = "dense") -> None:
        self.lm = lm
        self.template = template
        self.k = k
        self.max_prompt_tokens = max_prompt_tokens
        self.selection = selection
        self.knn_k = knn_k
        self.knn_temperature = knn_temperature
        self.knn_weight = knn_weight
        self.candidates = candidates
        self.candidate_mass = candidate_mass
        self.label_aware = label_aware
        self.calibration = calibration
        self.prior = prior
        self.smoothing = smoothing
        self.output_temperature = output_temperature
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.show_progress = show_progress
        self.search = search

    def _check_params(self) -> None:
        check_positive_int("knn_k", self.knn_k)
        _check_weight(self.knn_weight)
        if self.candidates is not None:
            check_positive_int("candidates", self.candidates)
        m = self.candidate_mass
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < float(m) <= 1):
            raise ValueError(f"candidate_mass must be a share in (0, 1] of the neighbours' label mass, or None (a "
                             f"fixed candidate count), got {m!r}.")
        if self.knn_temperature is not None and not float(self.knn_temperature) > 0:
            raise ValueError(f"knn_temperature must be > 0 or None (plain vote), got {self.knn_temperature!r}.")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}.")
        t = self.output_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < float(t) < np.inf):
            raise ValueError(f"output_temperature must be a number > 0 (1 = unchanged, < 1 sharper), got {t!r}.")

    def fit(self, index: ExampleIndex, *, icl: ICLClassifier | None = None) -> FusionClassifier:
        """Prepare the LM side and the vote over ``index`` (``icl``: reuse an already fitted LM side)."""
        self._check_params()
        if not isinstance(index, ExampleIndex):
            raise TypeError(f"FusionClassifier.fit expects an ExampleIndex (the vote needs neighbours), got "
                            f"{type(index).__name__}.")
        self.icl_ = icl if icl is not None else ICLClassifier(
            self.lm, self.template, k=self.k if self.k == MANY_SHOT else max(check_k(self.k), 1),
            max_prompt_tokens=self.max_prompt_tokens,
            selection=self.selection, search=self.search, batch_size=self.batch_size, device=self.device,
            seed=self.seed, show_progress=self.show_progress).fit(index)
        self.index_ = index
        self.k_ = resolve_k(self.k, self.icl_.packer_, len(index))
        self.classes_ = tuple(self.icl_.classes_)
        self.input_fields_ = tuple(self.icl_.input_fields_)
        if self.prior is not None and len(self.prior) != len(self.classes_):
            raise ValueError(f"prior has {len(self.prior)} entries but the index has {len(self.classes_)} labels "
                             f"{list(self.classes_)}.")
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "icl_"):
            raise NotFittedError("this FusionClassifier is not fitted yet: call fit(index) first.")

    # ------------------------------------------------------------------ parts
    def plan(self, queries: Sequence[Query] | Query, *, knn_k: int | None = None, score_lm: bool = True
             ) -> FusionPlan:
        """Everything before the LM: neighbours, candidate labels, packed prompts and their LM work.

        No LM call: :attr:`FusionPlan.lm_tokens` is what :meth:`score` will feed the LM, counted from the
        packed prompts, so a search can be budgeted in LM work before it runs (the same count on any machine).
        ``score_lm=False`` packs nothing (a mix that gives the LM no weight)."""
        self._check_fitted()
        examples = as_examples(queries, self.input_fields_)
        depth = max(knn_k or self.knn_k, 2 * self.k_, CANDIDATE_POOL, VOTE_TOP)
        positions, labels, scores = neighbours(self.index_, examples, depth)
        n_labels = len(self.classes_)
        ranked = knn_distribution(labels, scores, n_labels, k=CANDIDATE_POOL, temperature=CANDIDATE_TEMPERATURE,
                                  smoothing=0.0)
        mask = candidate_labels(ranked, self.candidates, keep=labels_of_nearest(labels, n_labels),
                                mass=self.candidate_mass)
        if not score_lm:
            return FusionPlan(labels, scores, n_labels, mask, None, 0)
        pools = self._prompt_positions(examples, positions)
        label_of = self.index_.label_ids
        if self.label_aware and self.k_ > 0:
            pools = [label_aware_order(pool, label_of, np.flatnonzero(m), self.k_) for pool, m in zip(pools, mask)]
        prompts = self.icl_.packer_.pack_batch(examples, pools, max_examples=self.k_)
        if not mask.all():  # the prompt's demonstrations' labels stay answerable
            for row, prompt in enumerate(prompts):
                mask[row, [int(label_of[self.index_.position_of(i)]) for i in prompt.included]] = True
        extra = np.array([len(ids) - 1 for ids in self.icl_.label_ids_], dtype=np.int64)
        tokens = sum(p.n_tokens for p in prompts) + int((mask * extra[None, :]).sum())
        return FusionPlan(labels, scores, n_labels, mask, tuple(prompts), tokens)

    def score(self, plan: FusionPlan) -> FusionParts:
        """The LM's label log-probabilities for a :meth:`plan` (candidates only), as :class:`FusionParts`."""
        self._check_fitted()
        if plan.prompts is None:
            mask = plan.candidates
            lm_logp = np.where(mask, -np.log(np.maximum(mask.sum(axis=1, keepdims=True), 1)), -np.inf)
        else:
            lm_logp = self._lm_logp(list(plan.prompts), plan.candidates)
        return FusionParts(lm_logp, plan.neighbor_labels, plan.neighbor_scores, plan.n_labels, plan.candidates)

    def parts(self, queries: Sequence[Query] | Query, *, knn_k: int | None = None, score_lm: bool = True
              ) -> FusionParts:
        """Score ``queries`` with the LM (candidates only) and collect their neighbours, unmixed
        (:meth:`plan`, then :meth:`score`).

        ``score_lm=False`` skips the LM (its log-probabilities are left uniform over the candidates): for a
        mix that gives the LM no weight."""
        return self.score(self.plan(queries, knn_k=knn_k, score_lm=score_lm))

    def _prompt_positions(self, examples: list[Example], nearest: np.ndarray) -> list[list[int]]:
        if self.k_ == 0:
            return [[] for _ in examples]
        if self.selection == "topk" and self.search == "dense":  # the vote's own neighbours: no second search
            return [[int(p) for p in row if p >= 0] for row in nearest]
        retrieved = self.icl_.retriever_.retrieve(self.index_, examples, n_candidates=2 * self.k_)
        return [list(r.positions) for r in retrieved]

    def _lm_logp(self, prompts: list[PackedPrompt], mask: np.ndarray) -> np.ndarray:
        icl = self.icl_
        out = np.full(mask.shape, -np.inf, dtype=np.float64)
        if mask.all():  # every label for every query: one batched call
            out[:] = icl.label_logprobs(prompts, show_progress=self.show_progress)
            return out
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, m in enumerate(mask):
            groups.setdefault(tuple(np.flatnonzero(m).tolist()), []).append(row)
        for cand, rows in groups.items():
            got = icl.label_logprobs([prompts[r] for r in rows], cand, show_progress=False)
            out[np.ix_(rows, list(cand))] = np.asarray(got, dtype=np.float64)
        return out

    # ------------------------------------------------------------------ predict
    def parts_for_mix(self, queries: Sequence[Query] | Query) -> FusionParts:
        """:meth:`parts` as this classifier's own :meth:`mix` needs them: the LM is not run at
        ``knn_weight=1`` (the vote alone), where the mix ignores it. Ray actors call this too."""
        self._check_params()
        return self.parts(queries, score_lm=_check_weight(self.knn_weight) < 1.0)

    def predict_proba(self, queries: Sequence[Query] | Query) -> np.ndarray:
        """``(n, L)`` fused label distribution over ``classes_`` (the LM is not run at ``knn_weight=1``: the
        vote alone)."""
        return self.mix(self.parts_for_mix(queries))

    def mix(self, parts: FusionParts) -> np.ndarray:
        """The fused distribution of already collected :meth:`parts` under this classifier's settings
        (batch calibration uses exactly the rows given: mix a whole test set at once)."""
        self._check_params()
        prior = None if self.prior is None else np.asarray(self.prior, dtype=np.float64)
        return combine(parts, knn_k=self.knn_k, knn_temperature=self.knn_temperature,
                       knn_weight=_check_weight(self.knn_weight), calibration=self.calibration, prior=prior,
                       smoothing=self.smoothing, output_temperature=float(self.output_temperature))

    def predict(self, queries: Sequence[Query] | Query) -> list[str]:
        return [self.classes_[i] for i in self.predict_proba(queries).argmax(1)]



def label_aware_order(pool: Sequence[int], label_of: np.ndarray, candidates: Sequence[int], k: int) -> list[int]:
    """``pool`` (most relevant first) reordered so the nearest example of each candidate label comes first.

    At most ``k`` label representatives lead (candidate order = their first appearance in the pool); the rest
    of the pool follows in its own order. Labels absent from the pool are skipped.

    >>> import numpy as np
    >>> label_aware_order([5, 6, 7, 8], np.array([0, 0, 0, 0, 0, 0, 0, 1, 2]), [1, 2], k=4)
    [7, 8, 5, 6]
    """
    wanted = {int(c) for c in candidates}
    leads: list[int] = []
    for pos in pool:
        if pos < 0:
            continue
        lab = int(label_of[pos])
        if lab in wanted:
            leads.append(int(pos))
            wanted.discard(lab)
            if not wanted or len(leads) >= k:
                break
    lead_set = set(leads)
    return leads + [int(p) for p in pool if p >= 0 and p not in lead_set]
