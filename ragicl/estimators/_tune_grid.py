"""The tuner's grid and its arithmetic, without the LM: which prompt configurations a search scores
(:func:`lm_configs`, :func:`retriever_configs`), every mixing setting's answers on the dev labels from one scored
configuration (:func:`grid_answers`, the same arithmetic as :func:`~ragicl.estimators.fusion.combine`), the
vote alone on leave-one-out training queries, the output temperature, and the comparisons the result reports
(each retriever's best dev accuracy, the choice against the best plain system)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..index.core import ExampleIndex
from ..prompt.step import MANY_SHOT
from ..stats import bootstrap_ci
from ._tune_result import Trial
from ._tune_rules import Answers
from .fusion import FusionParts, _softmax_masked, calibrate, combine, knn_distribution, neighbours, sharpen

TUNABLE_SELECTIONS = ("topk", "balanced", "mmr", "dpp", "votek")
OUTPUT_TEMPERATURES = tuple(float(2.0 ** (-e / 4)) for e in range(-4, 17))  # 2 … 1/16, quarter octaves, 1 exact


def lm_configs(ks: Sequence[int | str], candidates: Sequence[int | None], label_aware: Sequence[bool],
               n_labels: int, max_full_labels: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The prompt configurations of a search: the plain ones (zero-shot, then retrieved-k over every label
    for each ``k``), always scored, and the others of the grid (candidate labels, label-aware order), in grid
    order. A candidate count of at least ``n_labels`` is every label; every label with a label-aware order
    is left out above ``max_full_labels`` labels (the candidate sets are what such tasks need)."""
    ks = [k if k == MANY_SHOT else int(k) for k in ks]
    plain = [{"k": 0, "candidates": None, "label_aware": False}]
    plain += [{"k": k, "candidates": None, "label_aware": False} for k in dict.fromkeys(ks) if k != 0]
    extras: list[dict[str, Any]] = []
    for k, cand, aware in itertools.product(dict.fromkeys(ks), dict.fromkeys(candidates), dict.fromkeys(label_aware)):
        cand = None if cand is None or cand >= n_labels else int(cand)
        cfg = {"k": k, "candidates": cand, "label_aware": bool(aware)}
        if (aware and k == 0) or cfg in plain or cfg in extras or (cand is None and n_labels > max_full_labels):
            continue
        extras.append(cfg)
    return plain, extras


def retriever_configs(ks: Sequence[int | str], candidates: Sequence[int | None],
                      retrievers: Sequence[tuple[str, str]], n_labels: int, max_full_labels: int
                      ) -> list[dict[str, Any]]:
    """The prompt configurations of the other retrievers (``(search, selection)`` pairs): each ``k`` (not
    zero-shot, which retrieves nothing) with each candidate-label count, in the natural prompt order; every
    label is left out above ``max_full_labels`` labels, as for the label-aware order."""
    ks = [k if k == MANY_SHOT else int(k) for k in ks]
    out: list[dict[str, Any]] = []
    for (search, selection), k, cand in itertools.product(retrievers, dict.fromkeys(ks), dict.fromkeys(candidates)):
        cand = None if cand is None or cand >= n_labels else int(cand)
        cfg = {"k": k, "candidates": cand, "label_aware": False, "search": search, "selection": selection}
        if k == 0 or cfg in out or (cand is None and n_labels > max_full_labels):
            continue
        out.append(cfg)
    return out


def retriever_name(search: str, selection: str) -> str:
    """``"dense"``, ``"bm25"``, ``"dense+mmr"``: how a prompt's demonstrations are found and chosen."""
    return search if selection == "topk" else f"{search}+{selection}"


def grid_answers(parts: FusionParts, y: np.ndarray, cfg: Mapping[str, Any], prior: np.ndarray,
                 vote_grid: Sequence[tuple[int, float | None]], weights: Sequence[float], calibrations: Sequence[str],
                 *, keep_vote: bool, lm_tokens: int = 0, mix: bool = True) -> list[tuple[Answers, Trial]]:
    """Every mixing setting of one scored prompt configuration on the dev labels ``y``: its answers (for the
    rules) and its trial (accuracy, log-loss). The same arithmetic as :func:`combine`, each vote and calibrated
    LM distribution computed once. The vote alone (weight 1) only with ``keep_vote``; the LM alone (weight
    0) once, with the first vote setting; ``mix=False``: no weight strictly between 0 and 1."""
    p_knn = {v: knn_distribution(parts.neighbor_labels, parts.neighbor_scores, parts.n_labels, k=int(v[0]),
                                 temperature=v[1], smoothing=0.5) for v in vote_grid}
    p_lm = _softmax_masked(parts.lm_logp)
    cal = {c: calibrate(p_lm, c, prior) for c in calibrations}
    rows = np.arange(len(y))
    out = []
    for (knn_k, temp), w, c in itertools.product(vote_grid, weights, calibrations):
        w = float(w)
        if (w >= 1.0 and (c != calibrations[0] or not keep_vote)) or (w <= 0.0 and (knn_k, temp) != vote_grid[0]):
            continue  # the vote alone: calibration is moot, one copy kept; the LM alone: the vote is moot
        if not mix and 0.0 < w < 1.0:
            continue
        p = p_knn[(knn_k, temp)] if w >= 1.0 else (1.0 - w) * cal[c] + w * p_knn[(knn_k, temp)]
        params = {**cfg, "knn_k": int(knn_k), "knn_temperature": temp, "knn_weight": w,
                  "calibration": "none" if w >= 1.0 else c}
        pred, p_gold = p.argmax(1), p[rows, y]
        cost = (0 if w >= 1.0 else lm_tokens, int(knn_k), w)
        out.append((Answers(params, pred, p_gold, cost),
                    Trial(params, float(np.mean(pred == y)), _log_loss(p, y), 0.0)))
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
    return (cfg["k"], cfg["candidates"], cfg["label_aware"], cfg.get("search"), cfg.get("selection"))


def _retriever(cfg: Mapping[str, Any], own: tuple[str, str]) -> tuple[str, str]:
    return (cfg.get("search", own[0]), cfg.get("selection", own[1]))


def retriever_accuracies(trials: Sequence[Trial], own: tuple[str, str]) -> dict[str, float]:
    """The best dev accuracy of the settings that score the LM with each retriever (by
    :func:`retriever_name`, the tuner's own first); the vote alone and zero-shot retrieve no demonstration."""
    out: dict[str, float] = {}
    for t in trials:
        if float(t.params["knn_weight"]) >= 1.0 or not t.params["k"]:
            continue
        name = retriever_name(*_retriever(t.params, own))
        out[name] = max(out.get(name, 0.0), t.accuracy)
    mine = retriever_name(*own)
    return {mine: out[mine], **out} if mine in out else out


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(p.argmax(1) == y))


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


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
