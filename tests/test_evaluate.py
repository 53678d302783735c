"""The evaluator on controlled systems: known distributions in, known TV/accuracy out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ragicl._exceptions import DataError
from ragicl.evaluate import compare, gap
from ragicl.types import Dataset, Example


class FixedSystem:
    """A classifier whose distributions are given: the evaluator must report exactly what follows."""

    def __init__(self, probs, classes=("negative", "positive")):
        self.probs = np.asarray(probs, dtype=float)
        self.classes_ = classes
        self.seen = None

    def predict_proba(self, queries):
        self.seen = list(queries)
        return self.probs[: len(queries)]


def _test_set(labels):
    exs = tuple(Example(id=str(i), inputs={"text": f"t{i}"}, label=lab) for i, lab in enumerate(labels))
    return Dataset(exs, ("text",), "classification", ("negative", "positive"), name="toy")


def test_compare_reports_accuracy_tv_and_agreement(tmp_path):
    test = _test_set(["negative", "positive", "positive", "negative"])
    ft = FixedSystem([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.6, 0.4]])
    icl = FixedSystem([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.6, 0.4]])
    report = compare(test, {"icl": icl, "fine-tuned": ft}, n_boot=500)
    assert report.system("fine-tuned").accuracy.estimate == 1.0
    assert report.system("icl").accuracy.estimate == 0.75
    (g,) = report.gaps
    assert g.system == "icl" and g.reference == "fine-tuned"
    np.testing.assert_allclose(g.tv_per_query, [0.2, 0.0, 0.5, 0.0])
    assert g.tv.estimate == pytest.approx(0.175)
    assert g.tv.low <= 0.175 <= g.tv.high
    assert g.agreement == 0.75
    assert icl.seen[0].id == "0"  # systems receive Examples (ids let retrieval exclude the query)
    text = report.table()
    assert "icl" in text and "0.175" in text
    report.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["gaps"][0]["tv"]["estimate"] == pytest.approx(0.175)
    assert [s["name"] for s in data["systems"]] == ["icl", "fine-tuned"]


def test_table_without_reference_has_no_gap_columns():
    test = _test_set(["negative", "positive"])
    report = compare(test, {"icl": FixedSystem([[0.7, 0.3], [0.2, 0.8]])}, reference=None, n_boot=50)
    head = report.table().splitlines()[1]
    assert "TV" not in head and "agree" not in head and "s/query" in head
    assert "icl" in report.table() and report.gaps == ()


def test_gap_is_zero_for_identical_systems():
    p = np.array([[0.3, 0.7], [0.5, 0.5]])
    g = gap(p, p, n_boot=100)
    assert g.tv.estimate == 0 and g.agreement == 1.0


def test_compare_rejects_bad_input():
    test = _test_set(["negative"])
    sys_ = FixedSystem([[0.5, 0.5]])
    with pytest.raises(DataError, match="empty"):
        compare(_test_set([]), {"a": sys_}, reference=None)
    with pytest.raises(ValueError, match="reference 'fine-tuned' is not among"):
        compare(test, {"a": sys_})
    with pytest.raises(ValueError, match="predicts labels"):
        compare(test, {"a": FixedSystem([[1.0, 0.0]], classes=("no", "yes"))}, reference=None)
    with pytest.raises(ValueError, match="differ in shape"):
        gap(np.ones((2, 2)) / 2, np.ones((3, 2)) / 2)
