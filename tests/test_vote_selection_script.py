"""experiments/vote_selection.py: scores the tuner's vote grid leave-one-out, with the tuner's own function."""

from __future__ import annotations

import numpy as np
import pytest
from _scripts import load_script

from ragicl import ExampleIndex, KNNVoteClassifier
from ragicl.data import from_records
from ragicl.estimators.tune import FusionTuner


def _script():
    return load_script("vote_selection")


def test_vote_accuracies_are_the_tuners_leave_one_out_rows():
    script = _script()
    labels = ["a", "b", "c"]
    train = from_records([{"text": f"item {i} word{i % 5} tag{i % 3}", "label": labels[(i // 2) % 3]}
                          for i in range(150)])
    index = ExampleIndex.build(train, embedder="hash-32")
    queries = list(index.dataset.sample(60, seed=0).examples)
    acc = script.vote_accuracies(index, queries, labels)
    tuner = FusionTuner()
    assert len(acc) == len(tuner.knn_ks) * len(tuner.temperatures)  # the tuner's whole default grid
    for k in tuner.knn_ks:  # the plain (untempered) rows are KNNVoteClassifier's, own copy excluded
        knn = KNNVoteClassifier(k=k).fit(index)
        expected = np.mean([p == ex.label for p, ex in zip(knn.predict(queries), queries)])
        assert acc[f"{k},None"] == pytest.approx(expected)
    # the same ranking FusionTuner(vote_dev_size=60) uses
    ranked = FusionTuner(vote_dev_size=60)._rank_votes(index, tuple(labels))
    assert [t.accuracy for t in ranked] == list(acc.values())


def test_pick_prefers_accuracy_then_the_smaller_k():
    script = _script()
    assert script.pick({"8,None": 0.7, "32,None": 0.8, "16,0.05": 0.8}) == "16,0.05"
    assert script.pick({"8,None": 0.9, "32,None": 0.8}) == "8,None"
