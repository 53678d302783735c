"""LM × kNN fusion (candidate labels, label-aware prompts, calibration) and the dev-set tuner.

The mixing arithmetic is checked by hand; the end points are checked against the systems they must equal
(weight 1 = the kNN vote, weight 0 with every label = retrieved-k ICL) with the real default LM.
"""

from __future__ import annotations

import numpy as np
import pytest

from ragicl import ExampleIndex, ICLClassifier, PromptTemplate, read_dataset
from ragicl._exceptions import NotFittedError
from ragicl.estimators.baselines import KNNVoteClassifier
from ragicl.estimators.fusion import (
    FusionClassifier,
    FusionParts,
    calibrate,
    candidate_labels,
    combine,
    knn_distribution,
    label_aware_order,
    neighbours,
)
from ragicl.estimators.tune import FusionTuner, Trial, _plain_trials, _rank_key
from ragicl.index.embed import HashEmbedder

# ----------------------------------------------------------------------------- pure arithmetic


def test_knn_distribution_by_hand():
    labels = np.array([[0, 1, 1, -1]])
    scores = np.array([[0.9, 0.5, 0.4, -np.inf]])
    plain = knn_distribution(labels, scores, 3, k=4, temperature=None, smoothing=0.3)
    np.testing.assert_allclose(plain, [[1.3, 2.3, 0.3]] / np.float64(3.9))
    t = 0.1
    w = np.exp(np.array([0.9, 0.5, 0.4]) / t)
    w = 3 * w / w.sum()  # weights sum to the neighbour count
    weighted = knn_distribution(labels, scores, 3, k=4, temperature=t, smoothing=0.3)
    np.testing.assert_allclose(weighted, [[0.3 + w[0], 0.3 + w[1] + w[2], 0.3]] / (0.9 + w.sum()))
    only_first = knn_distribution(labels, scores, 3, k=1, temperature=None, smoothing=0.0)
    np.testing.assert_allclose(only_first, [[1.0, 0.0, 0.0]])


def test_candidates_top_mass_ties_by_label_order():
    p = np.array([[0.1, 0.4, 0.4, 0.1], [0.7, 0.1, 0.1, 0.1]])
    np.testing.assert_array_equal(candidate_labels(p, 2), [[False, True, True, False], [True, True, False, False]])
    assert candidate_labels(p, None).all() and candidate_labels(p, 9).all()


def test_candidate_set_size_adapts_to_the_neighbours_label_mass_and_keeps_what_it_must():
    from ragicl.estimators.fusion import labels_of_nearest

    p = np.array([[0.9, 0.05, 0.03, 0.02], [0.3, 0.3, 0.2, 0.2], [0.5, 0.3, 0.2, 0.0]])
    # the fewest top labels holding 80 % of the mass: 1 where the neighbours agree, 3 where they do not
    np.testing.assert_array_equal(candidate_labels(p, 1, mass=0.8).sum(1), [1, 3, 2])
    assert candidate_labels(p, 3, mass=0.8).sum(1).tolist() == [3, 3, 3]  # the count is a floor
    assert candidate_labels(p, 1, mass=1.0)[2].tolist() == [True, True, True, False]  # no label of zero mass
    keep = np.zeros_like(p, dtype=bool)
    keep[0, 3] = True
    got = candidate_labels(p, 1, keep=keep)
    assert got[0].tolist() == [True, False, False, True] and got[1:].sum() == 2  # kept, on top of the top 1
    nl = np.array([[2, 2, 0, -1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(labels_of_nearest(nl, 4, top=4), [[1, 0, 1, 0], [0, 1, 0, 0]])


def test_calibration_and_combine():
    p = np.array([[0.8, 0.2], [0.6, 0.4]])
    batch = calibrate(p, "batch")
    prior = p.mean(0)
    expected = (p / prior) / (p / prior).sum(1, keepdims=True)
    np.testing.assert_allclose(batch, expected)
    np.testing.assert_allclose(calibrate(p, "prior", np.array([0.5, 0.5])), p)
    assert calibrate(p, "none") is p
    with pytest.raises(ValueError, match="prior"):
        calibrate(p, "prior")
    with pytest.raises(ValueError, match="calibration must be"):
        calibrate(p, "zhao")
    parts = FusionParts(np.array([[np.log(0.8), np.log(0.2), -np.inf]]), np.array([[2, 2, 0]]), np.array([[0.9, 0.8, 0.1]]),
                        3, np.array([[True, True, False]]))
    vote = knn_distribution(parts.neighbor_labels, parts.neighbor_scores, 3, k=3, temperature=None)
    mixed = combine(parts, knn_k=3, knn_temperature=None, knn_weight=0.25)
    np.testing.assert_allclose(mixed, 0.75 * np.array([[0.8, 0.2, 0.0]]) + 0.25 * vote)
    np.testing.assert_allclose(combine(parts, knn_k=3, knn_temperature=None, knn_weight=1.0), vote)


def test_sharpen_keeps_the_argmax_and_zeros_and_fits_the_temperature_by_log_loss():
    from ragicl.estimators.fusion import sharpen
    from ragicl.estimators.tune import _log_loss, best_output_temperature

    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.0, 0.9], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_array_equal(sharpen(p, 1.0), p)
    s = sharpen(p, 0.5)  # squares, renormalized, by hand
    np.testing.assert_allclose(s[0], np.array([0.25, 0.09, 0.04]) / 0.38, rtol=1e-12)
    assert s[1, 1] == 0.0 and np.allclose(s.sum(1), 1.0) and np.allclose(s[2], 1 / 3)
    assert np.array_equal(sharpen(p, 0.1).argmax(1), p.argmax(1)) and np.allclose(sharpen(p, 8.0).sum(1), 1.0)
    # under-confident but right: sharpening lowers the log-loss; confidently wrong half the time: softening does
    right = np.array([[0.6, 0.4]] * 4)
    t, loss = best_output_temperature(right, np.zeros(4, dtype=int))
    assert t < 1.0 and loss < _log_loss(right, np.zeros(4, dtype=int))
    wrong = np.array([[0.99, 0.01]] * 4)
    t, loss = best_output_temperature(wrong, np.array([0, 1, 0, 1]))
    assert t > 1.0 and loss == min(_log_loss(sharpen(wrong, u), np.array([0, 1, 0, 1])) for u in (t, 1.0))
    # a tie (every temperature gives the same loss: uniform rows) keeps 1
    assert best_output_temperature(np.full((3, 2), 0.5), np.array([0, 1, 0]))[0] == 1.0
    with pytest.raises(ValueError, match="output_temperature"):
        FusionClassifier(output_temperature=0).fit(ExampleIndex.build(read_dataset(
            [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]), embedder=HashEmbedder(8), device="cpu"))


def test_label_aware_order_leads_with_each_candidate_label():
    label_of = np.array([0, 0, 1, 0, 2, 1])
    assert label_aware_order([0, 1, 3, 2, 4, 5], label_of, [1, 2], k=8) == [2, 4, 0, 1, 3, 5]
    assert label_aware_order([0, 1, 3, 2, 4, 5], label_of, [0, 1, 2], k=2) == [0, 2, 1, 3, 4, 5]
    assert label_aware_order([-1, 0], label_of, [0], k=1) == [0]


def test_rank_prefers_accuracy_then_log_loss_then_cost():
    a = Trial({"k": 16, "candidates": None, "knn_k": 8}, 0.8, 0.5, 1.0)
    b = Trial({"k": 4, "candidates": None, "knn_k": 8}, 0.8, 0.5, 1.0)
    c = Trial({"k": 4, "candidates": None, "knn_k": 8}, 0.8, 0.4, 1.0)
    d = Trial({"k": 4, "candidates": None, "knn_k": 8}, 0.9, 0.9, 1.0)
    assert sorted([a, b, c, d], key=_rank_key) == [d, c, b, a]


# ----------------------------------------------------------------------------- with the real LM

TEMPLATE = PromptTemplate(example="Question: {text}\nType: {label}")


@pytest.mark.slow
def test_end_points_equal_the_plain_systems(trec, smollm_lm):
    index, test = trec
    queries = list(test.examples)
    fc = FusionClassifier(smollm_lm, TEMPLATE, k=2, knn_k=8, knn_temperature=None, knn_weight=1.0,
                          candidates=None, label_aware=False).fit(index)
    vote = KNNVoteClassifier(k=8, smoothing=0.5).fit(index).predict_proba(queries)
    calls: list[int] = []
    real_scoring = fc.icl_.label_logprobs
    fc.icl_.label_logprobs = lambda *a, **k: calls.append(1) or real_scoring(*a, **k)  # type: ignore[method-assign]
    np.testing.assert_allclose(fc.predict_proba(queries), vote, rtol=1e-12)
    assert calls == []  # the vote alone: the LM is not run
    skipped = fc.parts(queries, score_lm=False).lm_logp  # uniform log-probabilities over the candidates
    np.testing.assert_allclose(np.logaddexp.reduce(skipped, axis=1), 0.0, atol=1e-12)
    assert calls == []
    fc.set_params(knn_weight=0.5)
    fc.predict_proba(queries[:1])
    assert calls  # the spy does see LM calls where the LM has weight
    del fc.icl_.label_logprobs
    fc.set_params(knn_weight=1.0)
    icl = ICLClassifier(smollm_lm, TEMPLATE, k=2).fit(index)
    fc.set_params(knn_weight=0.0)
    got, ref = fc.predict_proba(queries), icl.predict_proba(queries)
    assert [p.included for p in icl.prompts(queries)] == [p.included for p in fc.icl_.packer_.pack_batch(
        queries, [[int(x) for x in row if x >= 0] for row in neighbours(index, queries, 32)[0]], max_examples=2)]
    np.testing.assert_allclose(got, ref, atol=1e-5)  # same prompts, same scoring call: float noise only
    assert fc.predict(queries) == [fc.classes_[i] for i in got.argmax(1)]


@pytest.mark.slow
def test_candidates_score_only_plausible_labels_and_show_them(trec, smollm_lm):
    """A candidate set holds the top labels by kNN mass, and never drops a label of the VOTE_TOP nearest
    neighbours or of the prompt's demonstrations; only its labels are scored, each with the number full
    scoring gives; label-aware prompts demonstrate every candidate label."""
    from ragicl.estimators.fusion import CANDIDATE_POOL, CANDIDATE_TEMPERATURE, VOTE_TOP

    index, test = trec
    queries = list(test.examples)[:4]
    full = FusionClassifier(smollm_lm, TEMPLATE, k=3, knn_weight=0.0, label_aware=False).fit(index)
    few = FusionClassifier(smollm_lm, TEMPLATE, k=3, knn_weight=0.0, label_aware=False, candidates=2)
    few.fit(index, icl=full.icl_)
    pf, plan = full.parts(queries), few.plan(queries)
    pc = few.score(plan)
    assert len(index.labels) > 2 and np.array_equal(np.isfinite(pc.lm_logp), pc.candidates)
    positions, nl, ns = neighbours(index, queries, 32)
    top = candidate_labels(knn_distribution(nl, ns, len(index.labels), k=CANDIDATE_POOL,
                                            temperature=CANDIDATE_TEMPERATURE, smoothing=0.0), 2)
    for row, (mask, prompt) in enumerate(zip(pc.candidates, plan.prompts)):
        kept = set(np.flatnonzero(mask))
        assert set(np.flatnonzero(top[row])) <= kept  # the 2 with the most kNN mass
        assert {int(x) for x in nl[row, :VOTE_TOP] if x >= 0} <= kept  # every label the k=8 vote sees
        shown = {index.labels.index(index.examples[index.position_of(i)].label) for i in prompt.included}
        assert shown <= kept  # every label the prompt demonstrates
        assert kept == set(np.flatnonzero(top[row])) | {int(x) for x in nl[row, :VOTE_TOP] if x >= 0} | shown
    assert (pc.candidates.sum(1) < len(index.labels)).any()  # the sets do leave labels out
    # a candidate's score is the same number the full scoring gives for the same prompt
    np.testing.assert_allclose(pc.lm_logp[pc.candidates], pf.lm_logp[pc.candidates], atol=1e-4)
    probs = few.predict_proba(queries)
    assert np.all(probs[~pc.candidates] == 0.0) and np.allclose(probs.sum(1), 1.0)
    # label-aware: every candidate label is demonstrated in the prompt
    aware = FusionClassifier(smollm_lm, TEMPLATE, k=3, candidates=2, label_aware=True).fit(index, icl=full.icl_)
    aware_plan = aware.plan(queries)
    for q, row, prompt in zip(queries, positions, aware_plan.prompts):
        shown = {index.examples[index.position_of(i)].label for i in prompt.included}
        assert {index.labels[c] for c in np.flatnonzero(aware_plan.candidates[list(queries).index(q)])} >= shown
    for q, row, mask in zip(queries, positions, top):
        pool = label_aware_order([int(p) for p in row if p >= 0], index.label_ids, np.flatnonzero(mask), 3)
        prompt = aware.icl_.packer_.pack(q, pool, max_examples=3)
        shown = {index.examples[index.position_of(i)].label for i in prompt.included}
        assert {index.labels[c] for c in np.flatnonzero(mask)} <= shown


def test_errors_are_clear(trec):
    index, _ = trec
    with pytest.raises(NotFittedError):
        FusionClassifier().predict(["x"])
    with pytest.raises(ValueError, match="knn_weight"):
        FusionClassifier(knn_weight=1.5).fit(index)
    with pytest.raises(ValueError, match="calibration"):
        FusionClassifier(calibration="zhao").fit(index)
    with pytest.raises(TypeError, match="ExampleIndex"):
        FusionClassifier().fit(index.dataset)
    with pytest.raises(ValueError, match="(?i)invalid parameter"):
        FusionClassifier().set_params(kk=3)


@pytest.mark.slow
def test_tuner_picks_the_best_dev_setting_from_training_data_only(trec, smollm_lm):
    index, test = trec
    tuner = FusionTuner(smollm_lm, TEMPLATE, dev_size=16, ks=(2,), candidates=(None, 2), label_aware=(False,),
                        knn_ks=(4, 8), temperatures=(None, 0.05), weights=(0.0, 0.5, 1.0),
                        calibrations=("none", "batch", "prior"), rule="best").fit(index)
    res = tuner.result_
    assert res.n_dev == 16 and len(res.trials) > 0 and res.rule == "best"
    # the default rule is one-se with the zero-shot mix (chosen on shared datasets, docs/results/best.md)
    assert (FusionTuner().rule, FusionTuner().zero_shot_mix) == ("one-se", True)
    chosen = {k: v for k, v in res.params.items() if k != "output_temperature"}
    top = max(t.accuracy for t in res.trials)  # rule "best": the best dev accuracy, then the lowest log-loss
    best = [t for t in res.trials if dict(t.params) == chosen]
    assert len(best) == 1 and best[0].accuracy == top == res.dev_accuracy
    assert best[0].log_loss == pytest.approx(min(t.log_loss for t in res.trials if t.accuracy == top), abs=1e-9)
    assert res.dev_accuracy >= max(res.baselines.values())  # the plain systems are rows of the same grid
    assert {"zero-shot", "retrieved-2", "kNN vote k=8", "kNN vote k=32 weighted"} <= set(res.baselines)
    assert (res.prior is not None) == (res.params["calibration"] == "prior")
    est = tuner.best_estimator_
    assert est.knn_weight == res.params["knn_weight"] and est.k == res.params["k"] in (0, 2)
    # the output temperature was fitted for the chosen setting on dev log-loss: the best of its grid, never
    # worse than leaving the mixture as it is, and it changes no dev prediction
    t = res.params["output_temperature"]
    assert est.output_temperature == t and t in tuner.output_temperatures
    assert res.dev_log_loss_sharpened <= res.dev_log_loss + 1e-12
    dev = list(index.dataset.sample(16, seed=0).examples)
    parts = est.parts(dev)
    sharp, flat = est.mix(parts), est.set_params(output_temperature=1.0).mix(parts)
    assert np.array_equal(sharp.argmax(1), flat.argmax(1))
    est.set_params(output_temperature=t)
    assert est.predict_proba(list(test.examples)).shape == (len(test), len(index.labels))
    assert "chosen:" in res.table() and res.to_json()["params"] == dict(res.params)
    # the choice against the best plain system on the same dev queries: the difference of the two accuracies,
    # inside its paired interval, in the reason and the JSON
    if res.gain_over_plain is None:  # only when the choice is itself the best plain system
        assert chosen == dict(max(_plain_trials(res.trials).values(), key=lambda t: t.accuracy).params)
    else:
        d, lo, hi = res.gain_over_plain
        assert d == pytest.approx(res.dev_accuracy - max(res.baselines.values()), abs=1e-12) and lo <= d <= hi
        assert res.to_json()["gain_over_plain"] == {"difference": d, "low": lo, "high": hi}
        assert (f"the choice {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" in res.reason if (lo, hi) != (0.0, 0.0) else
                "the same answers as it on every dev query" in res.reason)
    # the dev queries came from the training set: each is an indexed example
    dev = index.dataset.sample(16, seed=0)
    assert all(index.position_of(ex.id) is not None for ex in dev.examples)


def test_many_label_tasks_keep_the_vote_alone_in_the_grid(trec, smollm_lm):
    """Above ``max_full_labels`` the other prompt configurations have candidate labels, but retrieved-k over
    every label and zero-shot are still scored; the vote alone (weight 1) is a row of the grid, once per vote
    setting, and the kNN votes are reported with the plain systems."""
    index = trec[0]
    n_labels = len(index.labels)
    tuner = FusionTuner(smollm_lm, TEMPLATE, dev_size=12, ks=(2,), candidates=(None, 2, 3), label_aware=(False,),
                        knn_ks=(8, 32), temperatures=(None,), weights=(0.0, 1.0), calibrations=("none",),
                        max_full_labels=n_labels - 1).fit(index)
    res = tuner.result_
    # retrieved-k over every label (and zero-shot) stays a candidate; candidate sets for the rest
    assert {t.params["candidates"] for t in res.trials} == {None, 2, 3}
    assert {(s["k"], s["candidates"]) for s in res.searched} == {(0, None), (2, None), (2, 2), (2, 3)}
    votes = [t for t in res.trials if t.params["knn_weight"] == 1.0]
    # one copy per vote setting, the weighted plain votes added to the grid
    assert sorted((t.params["knn_k"], t.params["knn_temperature"] or 0) for t in votes) == [
        (8, 0), (8, 0.05), (32, 0), (32, 0.05)]
    assert set(res.baselines) == {"zero-shot", "retrieved-2", "kNN vote k=8", "kNN vote k=32",
                                  "kNN vote k=8 weighted", "kNN vote k=32 weighted"}
    assert res.dev_accuracy >= max(res.baselines.values())
    assert "best plain system: " in res.reason and "nan" not in res.reason
    # each vote row is the vote itself: KNNVoteClassifier's majority over the same neighbours
    dev = list(index.dataset.sample(12, seed=0).examples)
    for t in [t for t in votes if t.params["knn_temperature"] is None]:
        knn = KNNVoteClassifier(k=t.params["knn_k"]).fit(index)
        assert t.accuracy == pytest.approx(np.mean([p == ex.label for p, ex in zip(knn.predict(dev), dev)]))


def test_vote_settings_chosen_first_on_leave_one_out_queries(trec, smollm_lm):
    """vote_dev_size: the vote's (knn_k, temperature) are ranked alone on many training queries (leave-one-out,
    no LM) and only the best enters the grid; the plain votes are still reported as rows of the dev queries."""
    index = trec[0]
    grid = {"ks": (2,), "candidates": (None,), "label_aware": (False,), "knn_ks": (4, 8, 32),
            "temperatures": (None, 0.05), "weights": (0.0, 0.5, 1.0), "calibrations": ("none",)}
    res = FusionTuner(smollm_lm, TEMPLATE, dev_size=12, vote_dev_size=500, **grid).fit(index).result_
    assert res.n_vote_dev == len(index) == 120  # capped at the index size
    assert len(res.vote_trials) == 6
    # each plain-vote row is KNNVoteClassifier's leave-one-out accuracy over the same queries
    queries = list(index.dataset.sample(120, seed=0).examples)
    for t in res.vote_trials:
        if t.params["knn_temperature"] is None:
            knn = KNNVoteClassifier(k=t.params["knn_k"]).fit(index)
            assert t.accuracy == pytest.approx(np.mean([p == ex.label for p, ex in zip(knn.predict(queries),
                                                                                      queries)]))
    best = min(res.vote_trials, key=_rank_key)
    chosen = (best.params["knn_k"], best.params["knn_temperature"])
    plain_votes = {(8, None), (32, None), (8, 0.05), (32, 0.05)}  # always in the grid besides the chosen one
    assert {(t.params["knn_k"], t.params["knn_temperature"]) for t in res.trials
            if t.params["knn_weight"] > 0} == {chosen} | plain_votes
    lm_alone = [t for t in res.trials if t.params["knn_weight"] == 0]
    assert {(t.params["knn_k"], t.params["knn_temperature"]) for t in lm_alone} == {chosen}  # it keeps the chosen
    assert {"retrieved-2", "kNN vote k=8", "kNN vote k=32"} <= set(res.baselines)
    assert "leave-one-out" in res.reason
    js = res.to_json()
    assert js["n_vote_dev"] == 120 and len(js["vote_trials"]) == 6
    plain = FusionTuner(smollm_lm, TEMPLATE, dev_size=12, **grid).fit(index).result_
    assert plain.n_vote_dev is None and not plain.vote_trials and "leave-one-out" not in plain.reason
    assert len({(t.params["knn_k"], t.params["knn_temperature"]) for t in plain.trials
                if t.params["knn_weight"] > 0}) == 6  # the grid holds the plain votes already
    with pytest.raises(ValueError, match="vote_dev_size"):
        FusionTuner(smollm_lm, TEMPLATE, vote_dev_size=0).fit(index)


# ----------------------------------------------------------------------------- many-shot (k="max")


@pytest.mark.slow
def test_many_shot_fills_the_budget(trec, smollm_lm):
    """k='max': as many demonstrations as the token budget holds. Each prompt stays within the budget and
    no further candidate of the retrieved pool would still fit (or the whole index is in the prompt);
    FusionClassifier and the tuner accept it too, and a bad k is a clear error."""
    index, test = trec
    queries = list(test.examples)[:4]
    budget = 256
    icl = ICLClassifier(smollm_lm, TEMPLATE, k="max", max_prompt_tokens=budget).fit(index)
    packer = icl.packer_
    shortest = min(len(packer._ids_sep[i]) for i in range(len(index)))
    assert icl.k_ == min(len(index), packer.budget_ // shortest) == packer.max_demonstrations
    eight = ICLClassifier(smollm_lm, TEMPLATE, k=8, max_prompt_tokens=budget).fit(index).prompts(queries)
    for prompt, few in zip(icl.prompts(queries), eight):
        assert prompt.n_tokens <= budget
        assert len(prompt.included) > len(few.included)  # many-shot shows more than k=8 at this budget
        # no excluded candidate is short enough for the room left: the budget, not a count, stopped it
        room = budget - prompt.n_tokens
        left = [index.position_of(i) for i in prompt.excluded]
        assert all(len(packer._ids_sep[p]) > room for p in left) or len(prompt.included) == len(index)
    fc = FusionClassifier(smollm_lm, TEMPLATE, k="max", max_prompt_tokens=budget, knn_weight=0.0,
                          label_aware=False).fit(index)
    assert fc.k_ == icl.k_
    np.testing.assert_allclose(fc.predict_proba(queries), icl.predict_proba(queries), atol=1e-5)
    tuner = FusionTuner(smollm_lm, TEMPLATE, max_prompt_tokens=budget, dev_size=8, ks=(2, "max"),
                        candidates=(None,), label_aware=(False,), knn_ks=(8,), temperatures=(None,),
                        weights=(0.0, 1.0), calibrations=("none",)).fit(index)
    assert {t.params["k"] for t in tuner.result_.trials} == {0, 2, "max"}  # zero-shot is always a candidate
    with pytest.raises(ValueError, match="'max'"):
        ICLClassifier(smollm_lm, TEMPLATE, k="many").fit(index)


def test_gain_over_plain_is_the_paired_difference_on_the_same_queries():
    """Hand-made parts: the LM right on queries 0-5, the vote (its one neighbour) right on 0-2 and 6-7; the
    mix at weight 0.5 follows whichever is surer. The difference is computed on the same queries, per query."""
    from ragicl.estimators.tune import Trial, _gain_over_plain, _key, _plain_trials

    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    lm_right = np.arange(8) < 6
    lm_pred = np.where(lm_right, y, 1 - y)
    lm_logp = np.log(np.where(np.eye(2)[lm_pred] == 1, 0.7, 0.3))
    vote_pred = np.where((np.arange(8) < 3) | (np.arange(8) >= 6), y, 1 - y)
    parts = FusionParts(lm_logp, vote_pred[:, None], np.ones((8, 1)), 2, np.ones((8, 2), dtype=bool))
    cfg = {"k": 2, "candidates": None, "label_aware": False, "calibration": "none", "knn_temperature": None,
           "knn_k": 1}
    trials = {w: Trial({**cfg, "knn_weight": w}, float(np.mean(combine(parts, knn_k=1, knn_temperature=None,
                                                                          knn_weight=w).argmax(1) == y)), 0.0, 0.0)
              for w in (0.0, 1.0)}
    plain = _plain_trials(list(trials.values()))
    assert set(plain) == {"retrieved-2"}  # a vote over one neighbour is not one of the reported plain votes
    scored, priors = {_key(cfg): parts}, {_key(cfg): np.full(2, 0.5)}
    assert _gain_over_plain(combine(parts, knn_k=1, knn_temperature=None, knn_weight=0.0), trials[0.0], plain,
                            scored, priors, y) is None  # the choice is the plain system itself
    vote_only = combine(parts, knn_k=1, knn_temperature=None, knn_weight=1.0)
    d, lo, hi = _gain_over_plain(vote_only, trials[1.0], plain, scored, priors, y)
    assert d == pytest.approx(5 / 8 - 6 / 8) and lo <= d <= hi
    # per query the two differ on queries 3-7 (-1, -1, -1, +1, +1): 8 queries cannot tell them apart
    assert lo < 0 < hi
    assert _gain_over_plain(vote_only, trials[1.0], {}, scored, priors, y) is None
