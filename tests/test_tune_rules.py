"""The tuner's selection rules and dev-query weights (ragicl.estimators._tune_rules), on hand-made answers."""

from __future__ import annotations

import numpy as np
import pytest

from ragicl.estimators._tune_rules import (
    CROSSFIT_SPLITS,
    Answers,
    choose,
    distance_weights,
    estimate_shift,
    kind,
    plain_name,
    prior_weights,
)

N = 40
Y = np.arange(N) % 2


def _params(w: float, knn_k: int = 8, temp=None, k: int = 8, **extra) -> dict:
    return {"k": k, "candidates": None, "label_aware": False, "knn_k": knn_k, "knn_temperature": temp,
            "knn_weight": w, "calibration": "none", **extra}


def _answers(params: dict, right: np.ndarray, cost: int = 0, sure: float = 0.8) -> Answers:
    """Answers right on the queries where ``right`` is True (gold probability ``sure``), wrong elsewhere (0.2)."""
    right = np.asarray(right, dtype=bool)
    return Answers(params, np.where(right, Y, 1 - Y), np.where(right, sure, 0.2), (cost,))


def test_kinds_and_plain_names():
    assert kind(_params(1.0)) == "vote" and kind(_params(0.0)) == "plain" and kind(_params(0.5)) == "fusion"
    assert kind(_params(0.0, calibration="batch")) == "fusion" and kind(_params(0.0, candidates=4)) == "fusion"
    assert kind(_params(0.0, label_aware=True)) == "fusion"
    assert plain_name(_params(0.0)) == "retrieved-8" and plain_name(_params(0.0, k=0)) == "zero-shot"
    assert plain_name(_params(1.0, 32, 0.05)) == "kNN vote k=32 weighted" and plain_name(_params(1.0, 64)) is None
    assert plain_name(_params(0.5)) is None


def test_best_takes_accuracy_then_log_loss_then_cost():
    base = np.arange(N) < 30
    a = [_answers(_params(0.0), base, cost=5), _answers(_params(0.5), base, cost=9, sure=0.9),
         _answers(_params(0.3), base, cost=1, sure=0.9), _answers(_params(1.0), np.arange(N) < 20)]
    got = choose(a, Y, "best")
    assert got.index == 2 and got.rule == "best" and "log-loss" in got.reason  # same accuracy, surer, cheaper
    with pytest.raises(ValueError, match="rule must be"):
        choose(a, Y, "luck")
    with pytest.raises(ValueError, match="nothing to choose"):
        choose([], Y)


def test_one_se_prefers_the_simpler_system_within_one_standard_error():
    vote = _answers(_params(1.0), np.arange(N) < 28)
    plain = _answers(_params(0.0), np.arange(N) < 20)
    # one query ahead of the vote, disagreeing with it on five: within one standard error of the difference
    close = _answers(_params(0.5), (np.arange(N) < 26) | ((np.arange(N) >= 28) & (np.arange(N) < 31)))
    got = choose([vote, plain, close], Y, "one-se")
    assert got.index == 0 and "the plain systems" in got.reason and "one standard error" in got.reason
    far = _answers(_params(0.5), np.arange(N) < 38)  # ten queries ahead, SE ~0.05: well outside
    got = choose([vote, plain, far], Y, "one-se")
    assert got.index == 2 and "nothing simpler" in got.reason
    # a vote setting outside the plain ones (k=64) is the next simplest set
    wide = _answers(_params(1.0, knn_k=64), (np.arange(N) < 36) | (np.arange(N) >= 39))
    got = choose([plain, wide, far], Y, "one-se")
    assert got.index == 1 and "the votes and plain systems" in got.reason
    # the standard error is of the paired difference: disagreeing on many queries makes it wide
    swap = _answers(_params(0.5), np.arange(N) >= 9)  # 31 right, disagrees with the vote on 21 queries
    d = (np.mean(np.arange(N) >= 9) - np.mean(np.arange(N) < 28))
    se = np.std((np.arange(N) >= 9).astype(float) - (np.arange(N) < 28)) / np.sqrt(N)
    assert d <= se and choose([vote, plain, swap], Y, "one-se").index == 0


def test_fallback_takes_the_plain_system_when_the_interval_includes_zero():
    plain = _answers(_params(0.0), np.arange(N) < 28)
    near = _answers(_params(0.5), np.arange(N) < 30)
    assert choose([plain, near], Y, "fallback").index == 0
    clear = _answers(_params(0.5), np.arange(N) < 39)
    assert choose([plain, clear], Y, "fallback").index == 1


def test_crossfit_measures_the_optimism_of_a_large_grid():
    """Many fusion settings that are noise around the vote: the best of them wins on the whole dev set by
    luck, and loses on held-out halves, so cross-fitting keeps to the votes. A setting right on all queries but
    two survives the held-out halves."""
    rng = np.random.default_rng(1)
    vote_right = rng.random(N) < 0.75
    answers = [_answers(_params(1.0), vote_right)]
    for i in range(60):
        flip = rng.random(N) < 0.25
        answers.append(_answers(_params(0.1 + i / 100), vote_right ^ flip))
    best = choose(answers, Y, "best")
    assert best.index != 0 and np.mean(answers[best.index].pred == Y) > np.mean(vote_right)  # lucky
    got = choose(answers, Y, "crossfit")
    assert got.index == 0 and "the plain systems did best" in got.reason
    assert f"{2 * CROSSFIT_SPLITS} halves" in got.reason
    assert choose(answers, Y, "crossfit").index == got.index  # seeded: the same every time
    answers.append(_answers(_params(0.6), np.arange(N) >= 2))  # right on all queries but two
    got = choose(answers, Y, "crossfit")
    assert got.index == len(answers) - 1 and "every setting" in got.reason


def test_prior_weights_follow_the_votes_label_shift():
    y = np.array([0, 0, 0, 1])
    dev_vote = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]])  # the vote says 0 for 3 of 4 dev queries
    unl_vote = np.array([[1.0, 0.0], [0.0, 1.0]])  # ... and for half of the unlabeled queries
    w = prior_weights(y, dev_vote, unl_vote)
    eps = 0.5 / 4
    ratio = np.array([(0.5 + eps) / (0.75 + eps), (0.5 + eps) / (0.25 + eps)])
    expected = ratio[y] / ratio[y].mean()
    np.testing.assert_allclose(w, expected)
    assert w.mean() == pytest.approx(1.0) and w[3] > w[0]  # the label the user's queries hold more of counts more


def test_distance_weights_follow_the_similarity_to_the_index():
    dev = np.array([0.9, 0.9, 0.9, 0.5])  # dev queries mostly close to an indexed example
    unl = np.array([0.5, 0.5, 0.5, 0.9])  # the user's mostly far
    w = distance_weights(dev, unl, bins=2)
    assert w[3] > w[0] and w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(w[:3], w[0])
    same = distance_weights(dev, dev, bins=2)
    np.testing.assert_allclose(same, 1.0)  # no shift, equal weights
    clipped = distance_weights(np.array([0.9] * 99 + [0.1]), np.array([0.1] * 50 + [0.9] * 50), bins=2)
    assert clipped.max() / clipped.min() <= 25 + 1e-9  # clipped to [1/5, 5] of the mean


def test_estimate_shift_describes_and_weighs():
    rng = np.random.default_rng(0)
    dev_labels = np.tile([0, 1], (20, 16))
    dev_scores = np.sort(rng.random((20, 32)), axis=1)[:, ::-1]
    unl_labels, unl_scores = np.zeros((10, 32), dtype=np.int64), dev_scores[:10] * 0.5
    y = np.arange(20) % 2
    none = estimate_shift(y, dev_labels, dev_scores, unl_labels, unl_scores, 2)
    assert none.weights is None and none.prior_tv == pytest.approx(0.5) and none.n_unlabeled == 10
    assert none.unlabeled_similarity < none.dev_similarity and "TV 0.500" in none.describe()
    both = estimate_shift(y, dev_labels, dev_scores, unl_labels, unl_scores, 2, "both")
    assert both.weights.shape == (20,) and both.weights.mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weighting"):
        estimate_shift(y, dev_labels, dev_scores, unl_labels, unl_scores, 2, "all")
    weighted = choose([_answers(_params(1.0), np.arange(N) < 28)], Y, "best", weights=np.ones(N))
    assert "weighted dev accuracy" in weighted.reason
