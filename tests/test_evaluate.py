"""The evaluator on controlled systems: known distributions in, known TV/accuracy out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ragicl._exceptions import DataError
from ragicl.evaluation.compare import compare, gap
from ragicl.evaluation.report import report_markdown
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


def test_compare_keeps_each_note_once():
    """Notes repeat when a rerun brings a saved run's notes back beside the ones it adds again."""
    report = compare(_test_set(["negative", "positive"]), {"icl": FixedSystem([[0.7, 0.3], [0.2, 0.8]])},
                     reference=None, n_boot=50, notes=["sampled", "--ray local", "sampled"])
    assert report.notes == ("sampled", "--ray local")


def test_table_without_reference_has_no_gap_columns():
    test = _test_set(["negative", "positive"])
    report = compare(test, {"icl": FixedSystem([[0.7, 0.3], [0.2, 0.8]])}, reference=None, n_boot=50)
    head = report.table().splitlines()[1]
    assert "TV" not in head and "agree" not in head and "s/query" in head
    assert "icl" in report.table() and report.gaps == ()
    head = report_markdown(report).splitlines()[0]  # the Markdown table likewise
    assert "TV" not in head and "agree" not in head and "s/query" in head


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
        compare(test, {"a": sys_}, reference="fine-tuned")
    with pytest.raises(ValueError, match="predicts labels"):
        compare(test, {"a": FixedSystem([[1.0, 0.0]], classes=("no", "yes"))}, reference=None)
    with pytest.raises(ValueError, match="differ in shape"):
        gap(np.ones((2, 2)) / 2, np.ones((3, 2)) / 2)


class CheckpointSystem(FixedSystem):
    """A fixed system that, like ``ICLClassifier("runs/ft", k=0)``, scores with a checkpoint folder."""

    def __init__(self, probs, lm):
        super().__init__(probs)
        self.lm = lm


def _checkpoint(tmp_path, name, meta):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    if meta is not None:
        (folder / "ragicl_finetune.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("meta, expected", [
    ({"steps": 16, "batch_size": 8, "examples_seen": 128, "converged": False, "fast": True,
      "stop_reason": "steps"}, "not converged: fast reference, 16 steps x 8, 128 examples seen"),
    ({"steps": 40, "batch_size": 16, "converged": False, "fast": False, "stop_reason": "epochs",
      "dev_loss_still_falling": True, "examples_seen": 640}, "dev loss still falling at step 40"),
    ({"steps": 16, "batch_size": 8, "losses": [0.7]}, "fixed-step reference (no convergence record)"),
    ({"steps": 300, "batch_size": 16, "converged": True, "fast": False, "stop_reason": "early_stopping",
      "dev_loss": 0.21}, None),
    (None, None),
])
def test_report_flags_a_reference_that_did_not_converge(tmp_path, meta, expected):
    from ragicl.evaluation.report import report_markdown

    test = _test_set(["negative", "positive"])
    ft = CheckpointSystem([[0.9, 0.1], [0.2, 0.8]], str(_checkpoint(tmp_path, "ft", meta)))
    icl = FixedSystem([[0.7, 0.3], [0.4, 0.6]])
    report = compare(test, {"icl": icl, "fine-tuned": ft}, n_boot=50, notes=["sampled"])
    data = report.to_json()
    md = report_markdown(report)
    if expected is None:
        assert report.notes == ("sampled",) and "not converged" not in report.table() + md
        assert (data["reference_training"] is None) == (meta is None)
        if meta is not None:
            assert data["reference_training"]["converged"] is True
        return
    assert expected in report.notes[-1] and report.notes[0] == "sampled"
    assert "(reference, not converged)" in report.table() and expected in report.table()
    assert data["reference_training"]["converged"] is False and expected in data["reference_training"]["note"]
    assert expected in md and "(reference, not converged)" in md
    # a system other than the reference may be a checkpoint too: only the reference is flagged
    plain = compare(test, {"icl": ft, "ref": FixedSystem([[0.5, 0.5], [0.5, 0.5]])}, reference="ref", n_boot=50)
    assert plain.notes == () and plain.reference_training is None


def test_reference_record_is_found_from_a_loaded_lm(tmp_path):
    from ragicl.evaluation.compare import reference_training

    folder = _checkpoint(tmp_path, "ft", {"steps": 4, "batch_size": 2, "converged": False, "fast": True})

    class LoadedLM:  # a TransformersLM keeps the folder it was loaded from as model_name
        model_name = str(folder)

    record = reference_training("fine-tuned", CheckpointSystem([[0.5, 0.5]], LoadedLM()))
    assert record["path"] == str(folder) and "fast reference" in record["note"]
    assert reference_training("x", CheckpointSystem([[0.5, 0.5]], "SmolLM2-135M-Instruct")) is None


def test_a_test_set_with_some_of_the_labels_is_scored_over_all_of_them():
    """A test file holding only one of the index's labels is normal, not an error (issue 35)."""
    classes = ("negative", "neutral", "positive")
    exs = tuple(Example(str(i), {"text": f"t{i}"}, label="positive") for i in range(4))
    test = Dataset(exs, ("text",), "classification", ("positive",), name="pos-only")  # its own label set
    icl = FixedSystem([[0.1, 0.1, 0.8], [0.6, 0.1, 0.3], [0.2, 0.2, 0.6], [0.1, 0.5, 0.4]], classes=classes)
    ft = FixedSystem([[0.0, 0.0, 1.0]] * 4, classes=classes)
    report = compare(test, {"icl": icl, "fine-tuned": ft}, n_boot=50)
    assert report.labels == classes
    assert report.system("icl").accuracy.estimate == 0.5 and report.system("fine-tuned").accuracy.estimate == 1.0
    # F1s: positive 2*2/(4+2) = 2/3, negative and neutral 0 (predicted once each, never gold)
    assert report.system("icl").macro_f1 == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert report.system("fine-tuned").macro_f1 == 1.0  # labels neither gold nor predicted are left out
    (note,) = report.notes
    assert "holds 1 of the 3 labels (none of ['negative', 'neutral'])" in note and "macro-F1" in note
    assert note in report.table()
    # a gold label outside the systems' labels, or systems with different labels, are still errors
    with pytest.raises(DataError, match=r"test set has label\(s\) \['maybe'\].*predicts labels"):
        compare(Dataset((Example("0", {"text": "t"}, label="maybe"),), ("text",)), {"icl": icl}, reference=None)
    with pytest.raises(ValueError, match="system 'b' predicts labels.*same index"):
        compare(test, {"a": icl, "b": FixedSystem(icl.probs, classes=classes[::-1])}, reference=None)


def test_reference_auto_uses_a_fine_tuned_system_when_there_is_one():
    test = _test_set(["positive", "negative"])
    icl, ft = FixedSystem([[0.7, 0.3], [0.2, 0.8]]), FixedSystem([[0.6, 0.4], [0.4, 0.6]])
    assert compare(test, {"retrieved-4": icl}, n_boot=50).reference is None  # the tour's call: no TV columns
    assert compare(test, {"retrieved-4": icl, "fine-tuned": ft}, n_boot=50).reference == "fine-tuned"
    with pytest.raises(ValueError, match="not among the systems"):
        compare(test, {"retrieved-4": icl}, reference="fine-tuned")
