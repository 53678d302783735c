"""Choosing the ICL configuration on the user's own data: dev queries held out from the *training* set.

:class:`FusionTuner` draws ``dev_size`` examples from the indexed training set and uses them as queries
(each one's own copy is excluded from retrieval, as for any query equal to an indexed example, so no
example sees its own label). The test set is never touched. For each prompt configuration (``k``, candidate
labels, label-aware order) it scores the dev queries with the LM once; every mixing setting (vote size,
temperature, LM × kNN weight, calibration) is then evaluated on those scores without another LM call.

**The plain systems are always candidates**: zero-shot and retrieved-k over every label (each ``k`` of
``ks``) are scored whatever the budget, and the kNN votes (k = 8 and 32, plain and similarity-weighted, with
the rest of the vote grid) cost no LM call and are always in. So the choice can always be a plain system, and
the report compares it with them on the same dev queries (``TuneResult.gain_over_plain``).

**The search is budgeted in LM work, not seconds** (``lm_budget``: LM tokens, counted from the packed prompts
before anything is scored; :class:`~ragicl.estimators.fusion.FusionPlan`). The other configurations are
tried cheap before expensive while they fit what is left; the dev set is never shrunk. Same data, seed and
settings give the same search and the same choice on any machine. ``max_seconds`` is an optional wall-clock
cap on top: a configuration it skips is listed with the reason, a warning is logged, and the result is marked
not reproducible (``TuneResult.reproducible``).

**Retrievers** (``searches`` x ``selections``, e.g. dense and BM25, top-k and MMR): the tuner's own
``search``/``selection`` make the plain systems; every other pair is searched like the other configurations
(each ``k`` and candidate-label count, cheapest first within the budget), and the result says which retriever
won on dev and by how much (``TuneResult.retrievers``). The vote always counts the dense neighbours.

**The choice** is made by ``rule`` (:mod:`ragicl.estimators._tune_rules`) over every setting's dev answers,
optionally weighted toward the user's queries: ``fit(index, unlabeled=queries)`` takes unlabeled queries (the
test inputs, no labels) and ``dev_weights`` says how they weigh the dev queries (label-prior shift, distance
to the index).

>>> from ragicl import ExampleIndex, FusionTuner, read_dataset
>>> index = ExampleIndex.build(read_dataset("../shared/datasets/trec/train.jsonl"))  # doctest: +SKIP
>>> tuner = FusionTuner(dev_size=200, lm_budget=2_000_000).fit(index)                 # doctest: +SKIP
>>> print(tuner.result_.table()); tuner.best_estimator_.predict(["Who wrote Hamlet ?"])  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._exceptions import DataError, check_positive_int
from ..index.core import ExampleIndex
from ..lm.hf import LanguageModel
from ..models import DEFAULT_LM
from ..prompt.step import MANY_SHOT, check_k
from ..prompt.template import PromptTemplate
from ..types import Query
from ._common import as_examples
from ._tune_grid import (  # re-exported: experiments and tests import them from here
    OUTPUT_TEMPERATURES,
    TUNABLE_SELECTIONS,
    _accuracy,
    _gain_over_plain,
    _key,
    _log_loss,
    _retriever,
    best_output_temperature,
    grid_answers,
    leave_one_out_vote_trials,
    lm_configs,
    retriever_accuracies,
    retriever_configs,
    retriever_name,
)
from ._tune_result import Trial, TuneResult, _config_name, _plain_trials, _rank_key
from ._tune_rules import RULES, WEIGHTINGS, Answers, Shift, choose, estimate_shift
from .base import ParamsMixin
from .classifier import ICLClassifier
from .fusion import FusionClassifier, FusionParts, _softmax_masked, combine, neighbours
from .vote import PLAIN_VOTES

__all__ = ["OUTPUT_TEMPERATURES", "TUNABLE_SELECTIONS", "FusionTuner", "Trial", "TuneResult", "_accuracy",
           "_gain_over_plain", "_key", "_log_loss", "_plain_trials", "_rank_key", "best_output_temperature",
           "grid_answers", "leave_one_out_vote_trials", "lm_configs", "retriever_accuracies", "retriever_configs",
           "retriever_name"]

logger = logging.getLogger(__name__)

_now = time.perf_counter  # the clock of the optional seconds cap (tests substitute a simulated one)


class FusionTuner(ParamsMixin):
    """Grid search of :class:`FusionClassifier` settings on dev data carved from the training set.

    Parameters
    ----------
    lm, template, max_prompt_tokens, selection, search, batch_size, device, show_progress : the LM side, as
        :class:`ICLClassifier`; ``search`` and ``selection`` are the retriever of the plain systems.
    searches, selections : the retrievers to choose among (every pair; None = just ``search`` / ``selection``),
        e.g. ``searches=("dense", "bm25", "hybrid")``. The pairs other than ``(search, selection)`` are tried
        with each ``k`` and candidate-label count (not label-aware), within ``lm_budget``. ``"mdl"`` is not a
        selection the tuner can try (it scores prompts with the LM itself).
    dev_size : dev queries drawn (seeded) from the indexed training examples; never shrunk.
    ks : demonstrations per prompt to try (``"max"`` = as many as the token budget holds: many-shot). Zero-shot
        and retrieved-k over every label for each of them are always scored.
    candidates : candidate-label counts to try (``None`` = every label).
    candidate_mass : grows every candidate set to this share of the neighbours' label mass (None = fixed
        counts); see :class:`FusionClassifier`.
    label_aware : label-aware prompt orders to try.
    knn_ks, temperatures, weights, calibrations : the mixing grid (free: no LM call). The kNN votes k = 8 and
        32, plain and at temperature 0.05, are always in it.
    max_full_labels : above this many labels, every label with a label-aware order is not tried (retrieved-k
        over every label always is).
    lm_budget : LM tokens (prompt tokens + label tokens after the prompt, counted before scoring) for the whole
        search; None = every configuration. The plain systems are scored first whatever it says; the others,
        cheapest first, while they fit what is left. Deterministic: the same on any machine.
    max_seconds : optional wall-clock cap (None = none). A configuration whose estimated time (the measured
        seconds per LM token) would pass it is skipped, with a warning; the result is then marked not
        reproducible. The plain systems are never skipped.
    rule : how the choice is made from the dev answers: ``"one-se"`` (the default: the best of the simplest
        set, plain systems then votes then everything, within one standard error of the best setting),
        ``"best"`` (best dev accuracy), ``"fallback"`` or ``"crossfit"`` (:mod:`ragicl.estimators._tune_rules`).
        The default and ``zero_shot_mix=True`` were chosen on six shared datasets by the worst margin against
        the plain systems on their test sets, then the mean (docs/results/best.md, "Selection rules").
    dev_weights : with ``fit(..., unlabeled=...)``: ``"none"``, ``"prior"``, ``"distance"`` or ``"both"``
        (how the unlabeled queries weigh the dev queries in the rule).
    zero_shot_mix : also mix the zero-shot LM with the votes (default True; False: zero-shot is a plain
        candidate only). Zero-shot prompts are short, so the mix costs little LM work.
    vote_dev_size : None (default) searches the vote's settings (``knn_ks`` x ``temperatures``) jointly with the
        rest on the dev queries. A number first ranks them alone, by leave-one-out accuracy (then log-loss) of
        the vote over that many training queries, which costs no LM call, and keeps only the best for the grid
        (with the plain votes).
    output_temperatures : the sharpening temperatures tried for the chosen setting, by dev log-loss (``(1.0,)``
        = none). It changes no prediction; it makes the fused distribution as confident as it is accurate.
    time_budget : deprecated alias of ``max_seconds``. min_dev_size : deprecated, ignored (the dev set is never
        shrunk).
    """

    def __init__(self, lm: str | LanguageModel = DEFAULT_LM, template: PromptTemplate | None = None, *,
                 max_prompt_tokens: int | None = 1024, selection: str = "topk", dev_size: int = 200,
                 ks: Sequence[int | str] = (8, 16, 4), candidates: Sequence[int | None] = (None, 4, 8, 16),
                 candidate_mass: float | None = None, label_aware: Sequence[bool] = (False, True),
                 knn_ks: Sequence[int] = (8, 16, 32, 64, 128),
                 temperatures: Sequence[float | None] = (None, 0.02, 0.05, 0.1),
                 weights: Sequence[float] = tuple(np.round(np.linspace(0, 1, 11), 2)),
                 calibrations: Sequence[str] = ("none", "batch", "prior"), max_full_labels: int = 20,
                 lm_budget: int | None = None, max_seconds: float | None = None, rule: str = "one-se",
                 dev_weights: str = "none", zero_shot_mix: bool = True,
                 output_temperatures: Sequence[float] = OUTPUT_TEMPERATURES, batch_size: int | None = None,
                 device: str = "auto", seed: int = 0, vote_dev_size: int | None = None,
                 show_progress: bool | None = None, time_budget: float | None = None,
                 min_dev_size: int | None = None, search: str = "dense", searches: Sequence[str] | None = None,
                 selections: Sequence[str] | None = None) -> None:
        self.lm = lm
        self.template = template
        self.max_prompt_tokens = max_prompt_tokens
        self.selection = selection
        self.dev_size = dev_size
        self.ks = ks
        self.candidates = candidates
        self.candidate_mass = candidate_mass
        self.label_aware = label_aware
        self.knn_ks = knn_ks
        self.temperatures = temperatures
        self.weights = weights
        self.calibrations = calibrations
        self.max_full_labels = max_full_labels
        self.lm_budget = lm_budget
        self.max_seconds = max_seconds
        self.rule = rule
        self.dev_weights = dev_weights
        self.zero_shot_mix = zero_shot_mix
        self.output_temperatures = output_temperatures
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.vote_dev_size = vote_dev_size
        self.show_progress = show_progress
        self.time_budget = time_budget
        self.min_dev_size = min_dev_size
        self.search = search
        self.searches = searches
        self.selections = selections

    def retrievers(self) -> list[tuple[str, str]]:
        """Every ``(search, selection)`` pair searched, the tuner's own (that of the plain systems) first."""
        from ..prompt.retrieve import check_search

        own = (self.search, self.selection)
        for name in ("searches", "selections"):
            values = getattr(self, name)
            if values is not None and (isinstance(values, str) or not len(values)):
                raise ValueError(f"{name} must be a non-empty list of names or None, got {values!r}.")
        searches = [self.search] if self.searches is None else list(self.searches)
        selections = [self.selection] if self.selections is None else list(self.selections)
        for search in searches:
            check_search(search)
        for selection in selections:
            if selection not in TUNABLE_SELECTIONS and selection != self.selection:
                raise ValueError(f"the tuner can try the selections {list(TUNABLE_SELECTIONS)}, got {selection!r}"
                                 + (" (MDL scores candidate prompts with the LM itself: run it with ICLClassifier"
                                    "(selection='mdl'))" if selection == "mdl" else "") + ".")
        pairs = [own] + [(a, b) for a, b in itertools.product(searches, selections) if (a, b) != own]
        return list(dict.fromkeys(pairs))

    def _seconds_cap(self) -> float | None:
        """``max_seconds``, or the deprecated ``time_budget`` mapped onto it; checked."""
        cap = self.max_seconds
        if self.time_budget is not None:
            if cap is not None:
                raise ValueError("give max_seconds or time_budget (its deprecated alias), not both.")
            warnings.warn("FusionTuner(time_budget=...) is deprecated: the search is budgeted in LM work "
                          "(lm_budget, LM tokens: the same choice on any machine); time_budget is now the "
                          "optional seconds cap max_seconds, which makes the choice machine-dependent.",
                          DeprecationWarning, stacklevel=3)
            cap, name = self.time_budget, "time_budget"
        else:
            name = "max_seconds"
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap >= 0):
            raise ValueError(f"{name} must be a number of seconds >= 0 or None (no cap), got {cap!r}.")
        return cap

    def _check(self) -> float | None:
        check_positive_int("dev_size", self.dev_size)
        if self.min_dev_size is not None:
            warnings.warn("FusionTuner(min_dev_size=...) is deprecated and ignored: the dev set is never shrunk.",
                          DeprecationWarning, stacklevel=3)
        if self.vote_dev_size is not None:
            check_positive_int("vote_dev_size", self.vote_dev_size)
        if self.lm_budget is not None and (isinstance(self.lm_budget, bool) or not isinstance(self.lm_budget, int)
                                           or self.lm_budget < 0):
            raise ValueError(f"lm_budget must be a number of LM tokens >= 0 (prompt tokens + label tokens "
                             f"scored) or None (no limit), got {self.lm_budget!r}.")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}.")
        if self.dev_weights not in WEIGHTINGS:
            raise ValueError(f"dev_weights must be one of {WEIGHTINGS}, got {self.dev_weights!r}.")
        for name in ("ks", "knn_ks", "weights", "calibrations", "temperatures", "label_aware", "candidates",
                     "output_temperatures"):
            if not len(getattr(self, name)):
                raise ValueError(f"{name} is empty: give at least one value to try.")
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < math.inf
                   for t in self.output_temperatures):
            raise ValueError(f"output_temperatures must be numbers > 0, got {list(self.output_temperatures)}.")
        self.retrievers()
        return self._seconds_cap()

    def vote_grid(self, chosen: tuple[int, float | None] | None = None) -> list[tuple[int, float | None]]:
        """The vote settings ``(knn_k, temperature)`` mixed with each LM configuration: the grid (or the one
        ``chosen`` first by ``vote_dev_size``), then the plain votes not in it."""
        grid = [chosen] if chosen is not None else [(int(k), t) for k, t in itertools.product(self.knn_ks,
                                                                                              self.temperatures)]
        return grid + [v for v in PLAIN_VOTES if v not in grid]

    def dev_queries(self, index: ExampleIndex) -> list:
        """The dev queries of a search over ``index``: ``dev_size`` training examples, seeded."""
        return list(index.dataset.sample(min(self.dev_size, len(index)), seed=self.seed).examples)

    def fit(self, index: ExampleIndex, unlabeled: Sequence[Query] | None = None) -> FusionTuner:
        """Run the search; sets ``result_`` (:class:`TuneResult`) and ``best_estimator_`` (fitted).

        ``unlabeled``: the user's queries without labels (e.g. the test inputs; labels, if any, are not read),
        which ``dev_weights`` uses to weigh the dev queries; no LM call is made on them."""
        if not isinstance(index, ExampleIndex):
            raise TypeError(f"FusionTuner.fit expects an ExampleIndex, got {type(index).__name__}.")
        cap = self._check()
        labels = tuple(index.labels)
        if len(index) < 2 or not labels:
            raise DataError(f"tuning needs a labeled classification index with at least 2 examples; got "
                            f"{len(index)} examples and labels {list(labels)}.")
        t0 = _now()
        dev_examples = self.dev_queries(index)
        y = np.array([labels.index(ex.label) for ex in dev_examples], dtype=np.int64)
        ks = [check_k(k) for k in self.ks]
        ints = [k for k in ks if k != MANY_SHOT]
        k_icl = MANY_SHOT if MANY_SHOT in ks else max(max(ints, default=1), 1)
        retrievers = self.retrievers()
        icls: dict[tuple[str, str], ICLClassifier] = {}
        for search, selection in retrievers:  # one loaded LM (the first's), each retriever
            icls[(search, selection)] = ICLClassifier(
                icls[retrievers[0]].lm_ if icls else self.lm, self.template, k=k_icl,
                max_prompt_tokens=self.max_prompt_tokens, selection=selection, search=search,
                batch_size=self.batch_size, device=self.device, seed=self.seed,
                show_progress=self.show_progress).fit(index)
        icl = icls[retrievers[0]]
        depth = max(max(self.knn_ks), 32, 2 * icl.k_)
        vote_trials: tuple[Trial, ...] = ()
        first = None
        if self.vote_dev_size is not None:
            vote_trials = self._rank_votes(index, labels)
            best_vote = min(vote_trials, key=_rank_key)
            first = (best_vote.params["knn_k"], best_vote.params["knn_temperature"])
            logger.info("tune: vote settings ranked on %d leave-one-out training queries: knn_k=%d, temperature "
                        "%s (accuracy %.3f)", min(self.vote_dev_size, len(index)), *first, best_vote.accuracy)
        vote_grid = self.vote_grid(first)
        plain, extras = lm_configs(ks, self.candidates, self.label_aware, len(labels), self.max_full_labels)
        extras += retriever_configs(ks, self.candidates, retrievers[1:], len(labels), self.max_full_labels)
        planned = []
        for cfg in plain + extras:
            fc = self._classifier(cfg).fit(index, icl=icls[_retriever(cfg, retrievers[0])])
            planned.append((cfg, fc, fc.plan(dev_examples, knn_k=depth)))
        n_plain = len(plain)
        order = list(range(n_plain)) + sorted(range(n_plain, len(planned)), key=lambda i: planned[i][2].lm_tokens)
        trials: list[Trial] = []
        answers: list[Answers] = []
        searched: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        priors: dict[tuple, np.ndarray] = {}
        scored: dict[tuple, FusionParts] = {}
        used, lm_seconds, cut_by_clock = 0, 0.0, False
        for i in order:
            cfg, fc, plan = planned[i]
            why = None if i < n_plain else self._why_skip(plan.lm_tokens, used, lm_seconds, _now() - t0, cap)
            if why is not None:
                skipped.append({**cfg, "lm_tokens": plan.lm_tokens, "reason": why})
                cut_by_clock |= why.startswith("max_seconds")
                logger.log(logging.WARNING if why.startswith("max_seconds") else logging.INFO,
                           "tune: %s not tried: %s", _config_name(cfg), why)
                continue
            t_lm = _now()
            parts = fc.score(plan)
            seconds = _now() - t_lm
            used, lm_seconds = used + plan.lm_tokens, lm_seconds + seconds
            searched.append({**cfg, "lm_tokens": plan.lm_tokens, "seconds": seconds})
            logger.info("tune: %s: %d dev queries, %d LM tokens, %.1f s", _config_name(cfg), len(y),
                        plan.lm_tokens, seconds)
            prior = _softmax_masked(parts.lm_logp).mean(0)
            priors[_key(cfg)], scored[_key(cfg)] = prior, parts
            # the vote alone does not depend on the prompt: it is kept once, with the first configuration
            got = grid_answers(parts, y, cfg, prior, vote_grid, self.weights, self.calibrations,
                               keep_vote=len(scored) == 1, lm_tokens=plan.lm_tokens,
                               mix=cfg["k"] != 0 or self.zero_shot_mix)
            answers += [a for a, _ in got]
            trials += [Trial(t.params, t.accuracy, t.log_loss, seconds) for _, t in got]
        shift = None
        if unlabeled is not None:
            shift = self._shift(index, unlabeled, y, scored[_key(plain[0])], depth)
        choice = choose(answers, y, self.rule, None if shift is None else shift.weights, seed=self.seed)
        best = trials[choice.index]
        key = _key(best.params)
        prior = priors[key] if best.params.get("calibration") == "prior" else None
        mixed = combine(scored[key], knn_k=best.params["knn_k"], knn_temperature=best.params["knn_temperature"],
                        knn_weight=best.params["knn_weight"], calibration=best.params["calibration"],
                        prior=priors[key])
        temperature, sharpened = best_output_temperature(mixed, y, self.output_temperatures)
        plain_trials = _plain_trials(trials)
        result = TuneResult(params={**best.params, "output_temperature": temperature}, dev_accuracy=best.accuracy,
                            dev_log_loss=best.log_loss, dev_log_loss_sharpened=sharpened,
                            baselines={name: t.accuracy for name, t in plain_trials.items()},
                            gain_over_plain=_gain_over_plain(mixed, best, plain_trials, scored, priors, y),
                            n_dev=len(y), seconds=_now() - t0, trials=tuple(trials), skipped=tuple(skipped),
                            prior=None if prior is None else tuple(float(p) for p in prior),
                            n_dev_requested=len(y), vote_trials=vote_trials,
                            n_vote_dev=min(self.vote_dev_size, len(index)) if vote_trials else None,
                            rule=self.rule, rule_reason=choice.reason, searched=tuple(searched),
                            lm_budget=self.lm_budget, lm_tokens=used, max_seconds=cap,
                            reproducible=not cut_by_clock,
                            shift=None if shift is None else _shift_json(shift),
                            retrievers=retriever_accuracies(trials, retrievers[0]) if len(retrievers) > 1 else {},
                            retriever=retriever_name(*_retriever(best.params, retrievers[0])))
        if cut_by_clock:
            logger.warning("tune: the %.0f s cap skipped %d configuration(s); another machine may choose otherwise "
                           "(budget the search with lm_budget instead)", cap, len(skipped))
        self.result_ = result
        self.best_estimator_ = self._classifier(result.params, prior=result.prior).fit(
            index, icl=icls[_retriever(result.params, retrievers[0])])
        logger.info("tune: %s", result.reason)
        return self

    def _classifier(self, params: Mapping[str, Any], **extra: Any) -> FusionClassifier:
        """A FusionClassifier with the tuner's LM side and ``params`` (their retriever, else the tuner's)."""
        params = dict(params)
        search, selection = params.pop("search", self.search), params.pop("selection", self.selection)
        return FusionClassifier(self.lm, self.template, max_prompt_tokens=self.max_prompt_tokens,
                                selection=selection, search=search, batch_size=self.batch_size, device=self.device,
                                seed=self.seed, show_progress=self.show_progress,
                                candidate_mass=self.candidate_mass, **params, **extra)

    def _why_skip(self, tokens: int, used: int, lm_seconds: float, spent: float, cap: float | None) -> str | None:
        """Why a configuration costing ``tokens`` LM tokens is not tried now (None: it is)."""
        if self.lm_budget is not None and used + tokens > self.lm_budget:
            return f"lm_budget: needs {tokens:,} LM tokens, {max(self.lm_budget - used, 0):,} left"
        if cap is not None:
            estimate = lm_seconds / max(used, 1) * tokens
            if spent + estimate > cap:
                return f"max_seconds: about {estimate:.0f} s at this machine's rate, {max(cap - spent, 0):.0f} s left"
        return None

    def _shift(self, index: ExampleIndex, unlabeled: Sequence[Query], y: np.ndarray, dev_parts: FusionParts,
               depth: int) -> Shift:
        queries = as_examples(list(getattr(unlabeled, "examples", unlabeled)), index.dataset.input_fields)
        if not queries:
            raise ValueError("unlabeled is empty: give the queries the tuned system will answer, or None.")
        _, unl_labels, unl_scores = neighbours(index, queries, depth)
        return estimate_shift(y, dev_parts.neighbor_labels, dev_parts.neighbor_scores, unl_labels, unl_scores,
                              len(index.labels), self.dev_weights)

    def _rank_votes(self, index: ExampleIndex, labels: tuple[str, ...]) -> tuple[Trial, ...]:
        """Every vote setting's leave-one-out accuracy and log-loss over ``vote_dev_size`` training queries (each
        query's own copy excluded from its neighbours, as for the dev queries). No LM call."""
        queries = index.dataset.sample(min(self.vote_dev_size, len(index)), seed=self.seed)
        grid = list(itertools.product(map(int, self.knn_ks), self.temperatures))
        return tuple(leave_one_out_vote_trials(index, queries.examples, labels, grid))


def _shift_json(shift: Shift) -> dict[str, Any]:
    return {"n_unlabeled": shift.n_unlabeled, "prior_tv": shift.prior_tv, "dev_similarity": shift.dev_similarity,
            "unlabeled_similarity": shift.unlabeled_similarity, "weighting": shift.weighting,
            "description": shift.describe()}
