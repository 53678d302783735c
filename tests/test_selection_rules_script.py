"""experiments/tune_scores.py + experiments/selection_rules.py: every configuration scored once on dev and test, then each
rule's choice re-derived from the saved dev scores is the tuner's own choice, and scored on the test queries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _scripts import load_script

from ragicl import ICLClassifier, PromptTemplate
from ragicl.estimators._tune_rules import choose
from ragicl.estimators.baselines import KNNVoteClassifier
from ragicl.estimators.tune import FusionTuner

TEMPLATE = PromptTemplate(example="Question: {text}\nType: {label}")
GRID = {"dev_size": 12, "ks": (2,), "candidates": (None, 2), "label_aware": (False, True), "knn_ks": (4, 8),
        "temperatures": (None, 0.05), "weights": (0.0, 0.5, 1.0), "calibrations": ("none", "batch", "prior")}


@pytest.mark.slow
def test_rules_rederived_from_saved_scores_are_the_tuners_choices(trec, smollm_lm, tmp_path):
    scores_script, rules_script = load_script("tune_scores"), load_script("selection_rules")
    index, test = trec
    queries = list(test.examples)
    folder = tmp_path / "trec"
    scores_script.score_all(index, queries, FusionTuner(smollm_lm, TEMPLATE, **GRID), folder, {"dataset": "trec"})
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["plain"] == ["k0-all-plain", "k2-all-plain"] and len(meta["extras"]) == 3
    assert len(list(folder.glob("*.npz"))) == 2 * 5
    saved = sorted(p.stat().st_mtime_ns for p in folder.glob("*.npz"))
    scores_script.score_all(index, queries, FusionTuner(smollm_lm, TEMPLATE, **GRID), folder)  # resumes: nothing new
    assert sorted(p.stat().st_mtime_ns for p in folder.glob("*.npz")) == saved
    for rule in ("best", "crossfit", "one-se"):
        tuner = FusionTuner(smollm_lm, TEMPLATE, rule=rule, **GRID)
        res = tuner.fit(index).result_
        scores = rules_script.Scores(folder, tuner)
        answers, priors, skipped = scores.answers()
        got = answers[choose(answers, scores.y_dev, rule).index].params
        assert dict(got) == {k: v for k, v in res.params.items() if k != "output_temperature"}, rule
        assert not skipped and len(answers) == len(res.trials)
        # on the test queries the rebuilt choice is the tuner's estimator (float noise of batch composition)
        est = tuner.best_estimator_.set_params(output_temperature=1.0)
        np.testing.assert_allclose(scores.test_distribution(got, priors), est.predict_proba(queries), atol=1e-4)
    # the plain systems on the test queries are the classifiers themselves
    plain = scores.plain_on_test()
    gold = [ex.label for ex in queries]
    icl = ICLClassifier(smollm_lm, TEMPLATE, k=2).fit(index)
    assert plain["retrieved-2"].tolist() == [p == g for p, g in zip(icl.predict(queries), gold)]
    vote = KNNVoteClassifier(k=8).fit(index)
    assert plain["kNN vote k=8"].tolist() == [p == g for p, g in zip(vote.predict(queries), gold)]
    # an LM budget re-derives the choice of a budgeted search
    budget = sum(scores.dev[rules_script._key(c)][1] for c in scores.configs[:2])
    answers, _, skipped = scores.answers(budget)
    assert len(skipped) == 3
    res = FusionTuner(smollm_lm, TEMPLATE, lm_budget=budget, **GRID).fit(index).result_
    assert dict(answers[choose(answers, scores.y_dev, "best").index].params) == {
        k: v for k, v in res.params.items() if k != "output_temperature"}
    # main: a table of every rule, and the JSON
    out = tmp_path / "rules.json"
    assert rules_script.main(["--scores", str(tmp_path), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["dataset"] for r in rows] == ["trec"] and rows[0]["target"] in ("retrieved-2", "kNN vote k=8",
                                                                             "kNN vote k=32")
    best = rows[0]["rules"]["best|none|no zero-shot mix"]
    assert best["minus_target"] == pytest.approx(best["test_accuracy"] - rows[0]["target_accuracy"])
    assert len(rows[0]["rules"]) == 4 * 4 * 2  # rules x dev weightings x grids
    assert meta["grid"]["calibrations"] == ["none", "batch", "prior"]  # main searched the grid of the scores
