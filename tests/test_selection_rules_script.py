"""scripts/selection_rules.py: rebuilds tuner trials on a test set from one LM pass, and scores selection rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _scripts import load_script

from ragicl import FusionClassifier, PromptTemplate
from ragicl.estimators.fusion import _softmax_masked
from ragicl.estimators.tune import FusionTuner


def _script():
    return load_script("selection_rules")


def _trial(k: int, w: float, acc: float, ll: float, **extra) -> dict:
    params = {"k": 8, "candidates": None, "label_aware": False, "knn_k": k, "knn_temperature": None,
              "knn_weight": w, "calibration": "none", **extra}
    return {"params": params, "accuracy": acc, "log_loss": ll}


def test_each_rule_picks_by_hand():
    script = _script()
    trials = [_trial(8, 0.0, 0.80, 0.45),             # retrieved-8: the best plain system
              _trial(32, 1.0, 0.70, 0.60),            # kNN vote k=32
              _trial(32, 0.4, 0.83, 0.50),            # the best dev accuracy
              _trial(64, 0.1, 0.81, 0.40)]            # the lowest dev log-loss
    result = {"params": trials[2]["params"], "trials": trials,
              "gain_over_plain": {"difference": 0.03, "low": -0.01, "high": 0.07}}
    got = script.picks(result)
    assert got["accuracy"].params == trials[2]["params"]
    assert got["fallback"].params == trials[0]["params"]  # its interval includes 0: the plain system
    assert got["log-loss"].params == trials[3]["params"]
    result["gain_over_plain"] = {"difference": 0.03, "low": 0.005, "high": 0.07}
    assert script.picks(result)["fallback"].params == trials[2]["params"]  # above 0: the choice stays
    result["gain_over_plain"] = None  # the choice is the plain system itself
    assert script.picks(result)["fallback"].params == trials[2]["params"]
    with pytest.raises(ValueError, match="vote_dev_size"):
        script.picks({**result, "vote_trials": [trials[1]]})
    assert script.rebuildable(trials[0]["params"], 8)
    assert not script.rebuildable({**trials[0]["params"], "label_aware": True}, 8)
    assert not script.rebuildable({**trials[0]["params"], "calibration": "prior"}, 8)
    assert not script.rebuildable(trials[0]["params"], 4)


TEMPLATE = PromptTemplate(example="Question: {text}\nType: {label}")


@pytest.mark.slow
def test_rebuilt_trials_are_the_classifiers_own_distributions(trec, smollm_lm, smollm_path, tmp_path):
    """Every trial of a real tuning run, rebuilt from the k-shot pass over every label, is the distribution
    FusionClassifier gives with those settings (its candidates scored in their own LM pass); main runs end
    to end on a saved index, with the LM scoring the test queries itself."""
    script = _script()
    index, test = trec
    queries = list(test.examples)
    tuner = FusionTuner(smollm_lm, TEMPLATE, dev_size=16, ks=(2,), candidates=(None, 2), label_aware=(False,),
                        knn_ks=(4, 8), temperatures=(None, 0.05), weights=(0.0, 0.5, 1.0),
                        calibrations=("none", "batch")).fit(index)
    result = tuner.result_.to_json()
    full = FusionClassifier(smollm_lm, TEMPLATE, k=2, candidates=None, label_aware=False).fit(index)
    parts = script.parts_on_test(index, queries, _softmax_masked(full.parts(queries).lm_logp))
    scored = {}
    for t in result["trials"]:
        p = t["params"]
        fc = FusionClassifier(smollm_lm, TEMPLATE, **p).fit(index, icl=full.icl_)
        if p["candidates"] not in scored:
            scored[p["candidates"]] = fc.parts(queries)
        np.testing.assert_allclose(script.trial_distribution(parts, p), fc.mix(scored[p["candidates"]]),
                                   atol=1e-4)
    assert len(scored) == 2  # both candidate settings were tried and checked
    labels = tuple(index.labels)
    gold = np.array([labels.index(ex.label) for ex in queries])
    rows = script.evaluate(result, parts, gold, 2)
    choice = {k: v for k, v in result["params"].items() if k != "output_temperature"}
    assert rows["accuracy"]["params"] == choice and rows["accuracy"]["dev_accuracy"] == result["dev_accuracy"]
    for row in rows.values():  # every pick is rebuildable here: a test accuracy out of 10 queries
        assert row["test_accuracy"] is not None and 10 * row["test_accuracy"] == pytest.approx(
            round(10 * row["test_accuracy"]))
    # main, on files
    index.save(tmp_path / "index")
    (tmp_path / "tune.json").write_text(json.dumps(result))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({**ex.inputs, "label": ex.label}) + "\n"
                                                 for ex in queries))
    out = tmp_path / "rules.json"
    assert script.main(["--tune", str(tmp_path / "tune.json"), "--index", str(tmp_path / "index"), "--test",
                        str(tmp_path / "test.jsonl"), "--n", "10", "--lm", smollm_path, "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert set(saved) == {"accuracy", "fallback", "log-loss"} and saved["accuracy"]["params"] == choice
    with pytest.raises(SystemExit, match="--predictions"):
        script.main(["--tune", str(tmp_path / "tune.json"), "--index", str(tmp_path / "index"), "--test",
                     str(tmp_path / "test.jsonl")])
