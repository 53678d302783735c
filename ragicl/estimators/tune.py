"""Choosing the ICL configuration on the user's own data: dev queries held out from the *training* set.

:class:`FusionTuner` draws ``dev_size`` examples from the indexed training set and uses them as queries
(each one's own copy is excluded from retrieval, as for any query equal to an indexed example, so no
example sees its own label). The test set is never touched. For each prompt configuration (``k``, candidate
labels, label-aware order) it scores the dev queries with the LM once; every mixing setting (vote size,
temperature, LM × kNN weight, calibration) is then evaluated on those scores without another LM call. The
winner is the best dev accuracy, ties broken by dev log-loss and then by the cheaper configuration; the
plain systems it must beat are rows of the same grid, so the report shows them side by side: the kNN vote
(weight 1) on every task, and retrieved-k (weight 0, no candidates, no calibration) on tasks with at most
``max_full_labels`` labels (above that, scoring every label is what the candidate sets avoid).

``time_budget`` (seconds) bounds the whole search. The first configuration scores a probe of the dev
queries to measure the LM's rate on this machine, then the rest of the dev set, or only as many as fit the
budget (never fewer than ``min_dev_size``) where the whole set would not: on a slow machine the dev set
shrinks rather than the budget overrunning. The dev set comes first because the free mixing grid (about a
thousand settings) is chosen on it; every later prompt configuration starts only if its estimated cost (the
measured rate, scaled by its prompt size) fits what is left; those not tried are listed in the result.

>>> from ragicl import ExampleIndex, FusionTuner, read_dataset
>>> index = ExampleIndex.build(read_dataset("../shared/datasets/trec/train.jsonl"))  # doctest: +SKIP
>>> tuner = FusionTuner(dev_size=200, time_budget=600).fit(index)                      # doctest: +SKIP
>>> print(tuner.result_.table()); tuner.best_estimator_.predict(["Who wrote Hamlet ?"])  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._exceptions import DataError, check_positive_int
from ..evaluation.stats import bootstrap_ci
from ..index.core import ExampleIndex
from ..lm.hf import LanguageModel
from ..models import DEFAULT_LM
from ..prompt.step import MANY_SHOT, check_k
from ..prompt.template import PromptTemplate
from .classifier import ICLClassifier
from .fusion import FusionClassifier, FusionParts, _softmax_masked, combine, neighbours, sharpen

logger = logging.getLogger(__name__)

OUTPUT_TEMPERATURES = tuple(float(2.0 ** (-e / 4)) for e in range(-4, 17))  # 2 … 1/16, quarter octaves, 1 exact
PROBE = 16  # dev queries scored first under a time budget, to measure the LM's rate on this machine
_now = time.perf_counter  # the clock of the time budget (tests substitute a simulated one)


@dataclass(frozen=True)
class Trial:
    """One evaluated setting on the dev queries."""

    params: Mapping[str, Any]
    accuracy: float
    log_loss: float
    lm_seconds: float


@dataclass(frozen=True)
class TuneResult:
    """What :class:`FusionTuner` chose, why, and what it compared."""

    params: Mapping[str, Any]
    dev_accuracy: float
    dev_log_loss: float
    baselines: Mapping[str, float]
    n_dev: int
    seconds: float
    trials: tuple[Trial, ...] = field(repr=False)
    skipped: tuple[Mapping[str, Any], ...] = ()
    prior: tuple[float, ...] | None = None
    n_dev_requested: int | None = None
    dev_log_loss_sharpened: float | None = None
    #: with ``vote_dev_size``: every vote setting (``knn_k``, ``knn_temperature``) on the leave-one-out queries
    vote_trials: tuple[Trial, ...] = field(default=(), repr=False)
    n_vote_dev: int | None = None
    #: the chosen setting's dev accuracy minus the best plain system's on the same dev queries, with its paired
    #: bootstrap 95% interval: (difference, low, high); None when the choice is that plain system or none is
    #: in the grid. An interval that includes 0 means the dev queries cannot tell the two apart.
    gain_over_plain: tuple[float, float, float] | None = None

    @property
    def reason(self) -> str:
        plain = ("best plain system: {} {:.3f}".format(*max(self.baselines.items(), key=lambda kv: kv[1]))
                 if self.baselines else "no plain system in the grid")
        shrunk = ("" if not self.n_dev_requested or self.n_dev_requested == self.n_dev
                  else f" (of {self.n_dev_requested} requested: the time budget)")
        votes = ("" if not self.n_vote_dev else
                 f"; the vote's k={self.params.get('knn_k')} and temperature {self.params.get('knn_temperature')} "
                 f"chosen first, without the LM, on {self.n_vote_dev} leave-one-out training queries")
        if self.gain_over_plain is not None:
            d, lo, hi = self.gain_over_plain
            plain += ("; the choice gives the same answers as it on every dev query" if lo == hi == 0.0 else
                      f"; the choice {d:+.3f} [{lo:+.3f}, {hi:+.3f}] against it on the same queries, paired "
                      f"bootstrap 95%" + (", within the dev noise" if lo <= 0 <= hi else ""))
        return (f"best dev accuracy {self.dev_accuracy:.3f} on {self.n_dev} held-out training examples{shrunk} "
                f"({plain}); ties broken by log-loss "
                f"{self.dev_log_loss:.3f}, then by cost" + votes + self._sharpened())

    def _sharpened(self) -> str:
        t = self.params.get("output_temperature", 1.0)
        if self.dev_log_loss_sharpened is None or t == 1.0:
            return ""
        return f"; output temperature {t:.3g} fitted on dev log-loss ({self.dev_log_loss:.3f} -> " \
               f"{self.dev_log_loss_sharpened:.3f})"

    def table(self, top: int = 10) -> str:
        """The chosen setting, the plain systems and the best ``top`` trials, as text."""
        lines = [f"chosen: {dict(self.params)}", self.reason, "", "dev accuracy of the plain systems:"]
        lines += [f"  {name:<24}{acc:.3f}" for name, acc in self.baselines.items()] or ["  (none in the grid)"]
        lines += ["", f"best {top} of {len(self.trials)} settings (accuracy, log-loss, LM s):"]
        for t in sorted(self.trials, key=_rank_key)[:top]:
            lines.append(f"  {t.accuracy:.3f}  {t.log_loss:.3f}  {t.lm_seconds:7.1f}  {dict(t.params)}")
        if self.skipped:
            lines.append(f"not tried (time budget): {[dict(s) for s in self.skipped]}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"params": dict(self.params), "dev_accuracy": self.dev_accuracy,
                "dev_log_loss": self.dev_log_loss, "baselines": dict(self.baselines), "n_dev": self.n_dev,
                "n_dev_requested": self.n_dev_requested or self.n_dev,
                "dev_log_loss_sharpened": self.dev_log_loss_sharpened,
                "seconds": self.seconds, "reason": self.reason, "prior": None if self.prior is None else
                list(self.prior), "skipped": [dict(s) for s in self.skipped],
                "trials": [{"params": dict(t.params), "accuracy": t.accuracy, "log_loss": t.log_loss}
                           for t in self.trials],
                "n_vote_dev": self.n_vote_dev,
                "gain_over_plain": None if self.gain_over_plain is None else dict(
                    zip(("difference", "low", "high"), self.gain_over_plain)),
                "vote_trials": [{"params": dict(t.params), "accuracy": t.accuracy, "log_loss": t.log_loss}
                                for t in self.vote_trials]}


def _cost(params: Mapping[str, Any]) -> tuple:
    cand = params.get("candidates")
    return (params.get("k", 0), math.inf if cand is None else cand, params.get("knn_k", 0))


def _rank_key(t: Trial) -> tuple:
    return (-t.accuracy, round(t.log_loss, 9), _cost(t.params))


class FusionTuner:
    """Grid search of :class:`FusionClassifier` settings on dev data carved from the training set.

    Parameters
    ----------
    lm, template, max_prompt_tokens, selection, batch_size, device, show_progress : the LM side, as
        :class:`ICLClassifier`.
    dev_size : dev queries drawn (seeded) from the indexed training examples.
    ks : demonstrations per prompt to try (``0`` = zero-shot LM side, ``"max"`` = as many as the token budget
        holds: many-shot).
    candidates : candidate-label counts to try (``None`` = every label; dropped for tasks with more than
        ``max_full_labels`` labels, where scoring every label is what candidates avoid).
    label_aware : label-aware prompt orders to try.
    knn_ks, temperatures, weights, calibrations : the mixing grid (free: no LM call).
    time_budget : seconds for the whole search (None = every configuration on every dev query). The first
        configuration always runs, on every dev query or as many as the budget allows at the LM's measured
        rate (at least ``min_dev_size``); later ones run while their estimated cost fits what is left.
    min_dev_size : the fewest dev queries a time budget may shrink the dev set to.
    vote_dev_size : None (default) searches the vote's settings (``knn_ks`` x ``temperatures``) jointly with the
        rest on the dev queries. A number first ranks them alone, by leave-one-out accuracy (then log-loss) of
        the vote over that many training queries, which costs no LM call, and keeps only the best for the grid;
        fewer settings chosen on the small LM-scored dev set means less of its noise in the choice. Its
        cost is one retrieval (and embedding) of those queries.
    output_temperatures : the sharpening temperatures tried for the chosen setting, by dev log-loss (``(1.0,)``
        = none). It changes no prediction; it makes the fused distribution as confident as it is accurate.
    """

    def __init__(self, lm: str | LanguageModel = DEFAULT_LM, template: PromptTemplate | None = None, *,
                 max_prompt_tokens: int | None = 1024, selection: str = "topk", dev_size: int = 200,
                 ks: Sequence[int | str] = (8, 16, 4), candidates: Sequence[int | None] = (None, 4, 8, 16),
                 label_aware: Sequence[bool] = (False, True), knn_ks: Sequence[int] = (8, 16, 32, 64, 128),
                 temperatures: Sequence[float | None] = (None, 0.02, 0.05, 0.1),
                 weights: Sequence[float] = tuple(np.round(np.linspace(0, 1, 11), 2)),
                 calibrations: Sequence[str] = ("none", "batch", "prior"), max_full_labels: int = 20,
                 time_budget: float | None = None, min_dev_size: int = 50,
                 output_temperatures: Sequence[float] = OUTPUT_TEMPERATURES, batch_size: int | None = None,
                 device: str = "auto", seed: int = 0, vote_dev_size: int | None = None,
                 show_progress: bool | None = None) -> None:
        self.lm = lm
        self.template = template
        self.max_prompt_tokens = max_prompt_tokens
        self.selection = selection
        self.dev_size = dev_size
        self.ks = ks
        self.candidates = candidates
        self.label_aware = label_aware
        self.knn_ks = knn_ks
        self.temperatures = temperatures
        self.weights = weights
        self.calibrations = calibrations
        self.max_full_labels = max_full_labels
        self.time_budget = time_budget
        self.min_dev_size = min_dev_size
        self.output_temperatures = output_temperatures
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.vote_dev_size = vote_dev_size
        self.show_progress = show_progress

    def _lm_configs(self, n_labels: int) -> list[dict[str, Any]]:
        cands = [c for c in self.candidates if (c is None and n_labels <= self.max_full_labels)
                 or (c is not None and c < n_labels)]
        if not cands:
            cands = [min(c for c in self.candidates if c is not None)] if any(
                c is not None for c in self.candidates) else [None]
        configs = []
        for k, cand, aware in itertools.product(self.ks, cands, self.label_aware):
            if aware and k == 0:
                continue
            configs.append({"k": k if k == MANY_SHOT else int(k), "candidates": cand, "label_aware": bool(aware)})
        return configs

    def fit(self, index: ExampleIndex) -> FusionTuner:
        """Run the search; sets ``result_`` (:class:`TuneResult`) and ``best_estimator_`` (fitted)."""
        if not isinstance(index, ExampleIndex):
            raise TypeError(f"FusionTuner.fit expects an ExampleIndex, got {type(index).__name__}.")
        check_positive_int("dev_size", self.dev_size)
        check_positive_int("min_dev_size", self.min_dev_size)
        if self.vote_dev_size is not None:
            check_positive_int("vote_dev_size", self.vote_dev_size)
        if self.time_budget is not None and not (isinstance(self.time_budget, (int, float)) and self.time_budget >= 0):
            raise ValueError(f"time_budget must be a number of seconds >= 0 or None (no limit), got "
                             f"{self.time_budget!r}.")
        for name in ("ks", "knn_ks", "weights", "calibrations", "temperatures", "label_aware", "candidates",
                     "output_temperatures"):
            if not len(getattr(self, name)):
                raise ValueError(f"{name} is empty: give at least one value to try.")
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < math.inf
                   for t in self.output_temperatures):
            raise ValueError(f"output_temperatures must be numbers > 0, got {list(self.output_temperatures)}.")
        labels = tuple(index.labels)
        if len(index) < 2 or not labels:
            raise DataError(f"tuning needs a labeled classification index with at least 2 examples; got "
                            f"{len(index)} examples and labels {list(labels)}.")
        t0 = _now()
        dev = index.dataset.sample(min(self.dev_size, len(index)), seed=self.seed)
        n_requested, dev_examples = len(dev), list(dev.examples)
        y = np.array([labels.index(ex.label) for ex in dev.examples], dtype=np.int64)
        ks = [check_k(k) for k in self.ks]
        ints = [k for k in ks if k != MANY_SHOT]
        icl = ICLClassifier(self.lm, self.template, k=MANY_SHOT if MANY_SHOT in ks else max(max(ints), 1),
                            max_prompt_tokens=self.max_prompt_tokens, selection=self.selection,
                            batch_size=self.batch_size, device=self.device, seed=self.seed,
                            show_progress=self.show_progress).fit(index)
        depth = max(max(self.knn_ks), 2 * icl.k_)
        vote_grid = [(int(k), t) for k, t in itertools.product(self.knn_ks, self.temperatures)]
        vote_trials: tuple[Trial, ...] = ()
        if self.vote_dev_size is not None:
            vote_trials = self._rank_votes(index, labels)
            best_vote = min(vote_trials, key=_rank_key)
            vote_grid = [(best_vote.params["knn_k"], best_vote.params["knn_temperature"])]
            logger.info("tune: vote settings ranked on %d leave-one-out training queries: knn_k=%d, temperature "
                        "%s (accuracy %.3f)", min(self.vote_dev_size, len(index)), *vote_grid[0],
                        best_vote.accuracy)
        trials: list[Trial] = []
        skipped: list[dict[str, Any]] = []
        priors: dict[tuple, np.ndarray] = {}
        scored: dict[tuple, FusionParts] = {}
        configs = self._lm_configs(len(labels))
        rate: tuple[float, int] | None = None  # (seconds per dev query, prompt size) of the first configuration
        for i, cfg in enumerate(configs):
            fc = FusionClassifier(self.lm, self.template, max_prompt_tokens=self.max_prompt_tokens,
                                  selection=self.selection, batch_size=self.batch_size, device=self.device,
                                  seed=self.seed, show_progress=self.show_progress, **cfg)
            fc.fit(index, icl=icl)
            if i > 0 and self.time_budget is not None and rate is not None:
                spent = _now() - t0
                estimate = rate[0] * len(y) * (fc.k_ + 1) / (rate[1] + 1)
                if spent + estimate > self.time_budget:
                    skipped.append(cfg)
                    logger.info("time budget %.0f s: %.0f s spent, %s would take about %.0f s: not tried",
                                self.time_budget, spent, cfg, estimate)
                    continue
            t_lm = _now()
            if i == 0 and self.time_budget is not None:
                parts, n = self._score_within_budget(fc, dev_examples, depth, t0)
                y = y[:n]
            else:
                parts = fc.parts(dev_examples[:len(y)], knn_k=depth)
            lm_seconds = _now() - t_lm
            if i == 0:
                rate = (lm_seconds / max(len(y), 1), fc.k_)
            logger.info("tune: %s scored %d dev queries in %.1f s", cfg, len(y), lm_seconds)
            prior = _softmax_masked(parts.lm_logp).mean(0)
            priors[_key(cfg)] = prior
            scored[_key(cfg)] = parts
            # the vote alone does not depend on the prompt: it is kept once, with the first configuration
            # scored (always the first of the grid; on many-label tasks it has candidates)
            trials.extend(self._mix_trials(parts, y, cfg, prior, lm_seconds, vote_grid,
                                           keep_vote=len(scored) == 1))
        best = min(trials, key=_rank_key)
        prior = priors[_key(best.params)] if best.params.get("calibration") == "prior" else None
        mixed = combine(scored[_key(best.params)], knn_k=best.params["knn_k"],
                        knn_temperature=best.params["knn_temperature"], knn_weight=best.params["knn_weight"],
                        calibration=best.params["calibration"], prior=priors[_key(best.params)])
        temperature, sharpened = best_output_temperature(mixed, y, self.output_temperatures)
        plain = _plain_trials([*trials, *self._plain_votes(next(iter(scored.values())), y, vote_trials)])
        result = TuneResult(params={**best.params, "output_temperature": temperature}, dev_accuracy=best.accuracy,
                            dev_log_loss=best.log_loss, dev_log_loss_sharpened=sharpened,
                            baselines={name: t.accuracy for name, t in plain.items()},
                            gain_over_plain=_gain_over_plain(mixed, best, plain, scored, priors, y),
                            n_dev=len(y),
                            seconds=_now() - t0, trials=tuple(trials), skipped=tuple(skipped),
                            prior=None if prior is None else tuple(float(p) for p in prior),
                            n_dev_requested=n_requested, vote_trials=vote_trials,
                            n_vote_dev=min(self.vote_dev_size, len(index)) if vote_trials else None)
        self.result_ = result
        self.best_estimator_ = FusionClassifier(
            self.lm, self.template, max_prompt_tokens=self.max_prompt_tokens, selection=self.selection,
            batch_size=self.batch_size, device=self.device, seed=self.seed, show_progress=self.show_progress,
            prior=result.prior, **result.params).fit(index, icl=icl)
        logger.info("tune: %s", result.reason)
        return self

    def _score_within_budget(self, fc: FusionClassifier, dev: list, depth: int, t0: float
                             ) -> tuple[FusionParts, int]:
        """The first configuration under a time budget: a probe of :data:`PROBE` dev queries measures the LM's
        rate, then as many more as fit the budget (at least ``min_dev_size`` in all). Returns the parts
        and how many dev queries (a prefix of ``dev``, itself a seeded random sample) they cover."""
        floor = min(self.min_dev_size, len(dev))
        n_probe = min(PROBE, len(dev))
        t_probe = _now()
        head = fc.parts(dev[:n_probe], knn_k=depth)
        per_query = (_now() - t_probe) / n_probe
        room = self.time_budget - (_now() - t0)
        n = n_probe + (max(0, int(room / per_query)) if per_query > 0 else len(dev))
        n = min(len(dev), max(floor, n))
        if n < len(dev):
            logger.warning("tuning: %.2f s per dev query on this machine; the %.0f s budget allows %d of the %d "
                           "dev queries (about %.0f s would score them all for one configuration)",
                           per_query, self.time_budget, n, len(dev), per_query * len(dev))
        if n == n_probe:  # n >= n_probe always: the probe is never thrown away
            return head, n
        return _concat(head, fc.parts(dev[n_probe:n], knn_k=depth)), n

    def _rank_votes(self, index: ExampleIndex, labels: tuple[str, ...]) -> tuple[Trial, ...]:
        """Every vote setting's leave-one-out accuracy and log-loss over ``vote_dev_size`` training queries (each
        query's own copy excluded from its neighbours, as for the dev queries). No LM call."""
        queries = index.dataset.sample(min(self.vote_dev_size, len(index)), seed=self.seed)
        grid = list(itertools.product(map(int, self.knn_ks), self.temperatures))
        return tuple(leave_one_out_vote_trials(index, queries.examples, labels, grid))

    def _plain_votes(self, parts: FusionParts, y: np.ndarray, vote_trials: Sequence[Trial]) -> list[Trial]:
        """With ``vote_dev_size`` the grid holds one vote setting; the plain votes are still reported (as rows
        of the dev queries, not candidates) so the report compares the choice with them."""
        if not vote_trials:
            return []
        grid = [(k, t) for k in (8, 32) if k in self.knn_ks for t in (None, 0.05) if t in self.temperatures]
        cfg = {"k": 0, "candidates": None, "label_aware": False, "knn_weight": 1.0, "calibration": "none"}
        return [Trial({**cfg, **t.params}, t.accuracy, t.log_loss, 0.0) for t in _vote_trials(parts, y, grid)]

    def _mix_trials(self, parts: FusionParts, y: np.ndarray, cfg: Mapping[str, Any], prior: np.ndarray,
                    lm_seconds: float, vote_grid: Sequence[tuple[int, float | None]], *,
                    keep_vote: bool) -> list[Trial]:
        out = []
        for (knn_k, temp), w, cal in itertools.product(vote_grid, self.weights, self.calibrations):
            if float(w) >= 1.0 and cal != "none":  # the vote alone: calibration of the LM is moot
                continue
            if float(w) <= 0.0 and (knn_k, temp) != vote_grid[0]:
                continue  # the LM alone: the vote's settings are moot
            if float(w) >= 1.0 and not keep_vote:
                continue  # the vote alone does not depend on the prompt: one copy is kept
            p = combine(parts, knn_k=int(knn_k), knn_temperature=temp, knn_weight=float(w), calibration=cal,
                        prior=prior)
            params = {**cfg, "knn_k": int(knn_k), "knn_temperature": temp, "knn_weight": float(w),
                      "calibration": cal}
            out.append(Trial(params, _accuracy(p, y), _log_loss(p, y), lm_seconds))
        return out


def leave_one_out_vote_trials(index: ExampleIndex, examples: Sequence[Any], labels: Sequence[str],
                              grid: Sequence[tuple[int, float | None]]) -> list[Trial]:
    """Accuracy and log-loss of each kNN-vote setting ``(knn_k, temperature)`` in ``grid`` over ``examples``
    drawn from ``index`` (each example's own copy excluded from its neighbours, as for the tuner's dev
    queries), in grid order. No LM call: this is what ``FusionTuner(vote_dev_size=N)`` ranks the votes by.
    """
    labels = tuple(labels)
    y = np.array([labels.index(ex.label) for ex in examples], dtype=np.int64)
    _, nl, ns = neighbours(index, list(examples), max(int(k) for k, _ in grid))
    n = len(labels)
    parts = FusionParts(np.zeros((len(y), n)), nl, ns, n, np.ones((len(y), n), dtype=bool))
    return _vote_trials(parts, y, grid)


def _vote_trials(parts: FusionParts, y: np.ndarray, grid: Sequence[tuple[int, float | None]]) -> list[Trial]:
    out = []
    for knn_k, temp in grid:
        p = combine(parts, knn_k=int(knn_k), knn_temperature=temp, knn_weight=1.0, calibration="none")
        out.append(Trial({"knn_k": int(knn_k), "knn_temperature": temp}, _accuracy(p, y), _log_loss(p, y), 0.0))
    return out


def _concat(a: FusionParts, b: FusionParts) -> FusionParts:
    width = max(a.neighbor_labels.shape[1], b.neighbor_labels.shape[1])

    def pad(x: np.ndarray, fill: float) -> np.ndarray:
        return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=fill)

    return FusionParts(np.concatenate([a.lm_logp, b.lm_logp]),
                       np.concatenate([pad(a.neighbor_labels, -1), pad(b.neighbor_labels, -1)]),
                       np.concatenate([pad(a.neighbor_scores, -np.inf), pad(b.neighbor_scores, -np.inf)]),
                       a.n_labels, np.concatenate([a.candidates, b.candidates]))


def best_output_temperature(p: np.ndarray, y: np.ndarray, temperatures: Sequence[float] = OUTPUT_TEMPERATURES
                            ) -> tuple[float, float]:
    """The temperature in ``temperatures`` whose sharpened ``p`` has the lowest log-loss on labels ``y``, and
    that log-loss; ties go to the temperature nearest 1 (the least change).

    >>> import numpy as np
    >>> p = np.array([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4]])  # right, right, right but unsure
    >>> best_output_temperature(p, np.array([0, 1, 0]), (1.0, 0.5, 0.25))[0]
    0.25
    """
    losses = [(_log_loss(sharpen(p, float(t)), y), abs(math.log(float(t))), float(t)) for t in temperatures]
    loss, _, t = min(losses, key=lambda v: (round(v[0], 12), v[1]))
    return t, loss


def _key(cfg: Mapping[str, Any]) -> tuple:
    return (cfg["k"], cfg["candidates"], cfg["label_aware"])


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(p.argmax(1) == y))


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def _plain_trials(trials: Sequence[Trial]) -> dict[str, Trial]:
    """The plain systems found in the grid, by name: retrieved-k and the kNN votes (the best copy of each)."""
    out: dict[str, Trial] = {}
    for t in trials:
        p = t.params
        if p["knn_weight"] == 0.0 and p["candidates"] is None and not p["label_aware"] and p["calibration"] == "none":
            out[f"retrieved-{p['k']}" if p["k"] else "zero-shot"] = t
    for t in trials:
        p = t.params
        if p["knn_weight"] == 1.0 and p["knn_k"] in (8, 32):
            name = f"kNN vote k={p['knn_k']}" + ("" if p["knn_temperature"] is None else " weighted")
            if p["knn_temperature"] in (None, 0.05) and (name not in out or t.accuracy > out[name].accuracy):
                out[name] = t
    return out


def _gain_over_plain(mixed: np.ndarray, best: Trial, plain: Mapping[str, Trial],
                     scored: Mapping[tuple, FusionParts], priors: Mapping[tuple, np.ndarray],
                     y: np.ndarray) -> tuple[float, float, float] | None:
    """The chosen setting against the best plain system (the one the report names) on the same dev queries:
    the difference of their accuracies and its paired bootstrap interval. None when they are the same."""
    if not plain:
        return None
    rival = max(plain.values(), key=lambda t: t.accuracy)
    if rival is best or dict(rival.params) == dict(best.params):
        return None
    p = rival.params
    # the vote alone does not depend on the prompt (its rows may come from any scored configuration)
    key = _key(p) if _key(p) in scored else next(iter(scored))
    other = combine(scored[key], knn_k=int(p["knn_k"]), knn_temperature=p["knn_temperature"],
                    knn_weight=float(p["knn_weight"]), calibration=p["calibration"], prior=priors[key])
    diff = (mixed.argmax(1) == y).astype(float) - (other.argmax(1) == y).astype(float)
    ci = bootstrap_ci(diff)
    return float(diff.mean()), float(ci.low), float(ci.high)
