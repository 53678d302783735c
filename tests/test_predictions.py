"""Saved per-query predictions: the file format, and ``ragicl eval --predictions`` resuming and growing a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import dataset_path

from ragicl._exceptions import DataError
from ragicl.cli import main
from ragicl.estimators.baselines import KNNVoteClassifier
from ragicl.estimators.classifier import ICLClassifier
from ragicl.evaluation.predictions import (
    Predictions,
    SavedSystem,
    load_predictions,
    reusable_systems,
    save_predictions,
)
from ragicl.types import Dataset, Example


def _toy(n: int = 3) -> Dataset:
    exs = tuple(Example(str(i), {"text": f"t{i}"}, "pos" if i % 2 else "neg") for i in range(n))
    return Dataset(exs, ("text",), "classification", ("neg", "pos"), name="toy")


def test_round_trip_is_exact_and_keeps_settings(tmp_path):
    probs = np.random.default_rng(0).dirichlet([1, 1], size=3)
    p = Predictions.for_test(_toy(), {"lm": "m"}).with_system("x", probs, 1.25, "src").with_notes(["a note"])
    save_predictions(tmp_path / "p.json", p)
    q = load_predictions(tmp_path / "p.json")
    assert np.array_equal(q.probs["x"], probs)  # JSON floats round-trip exactly
    assert (q.ids, q.gold, q.labels) == (("0", "1", "2"), ("neg", "pos", "neg"), ("neg", "pos"))
    assert q.seconds == {"x": 1.25} and q.sources == {"x": "src"} and q.notes == ("a note",)
    assert q.settings["lm"] == "m" and q.settings["test_fingerprint"] == _toy().fingerprint()
    assert q.mismatch(p) is None
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        p.with_system("y", np.ones((2, 2)), 0.0)


def test_another_run_is_refused_and_sources_decide_reuse(tmp_path):
    base = Predictions.for_test(_toy(), {"k": "8"}).with_system("a", np.full((3, 2), 0.5), 1.0) \
        .with_system("fine-tuned", np.full((3, 2), 0.5), 2.0, "ckpt#1")
    same = Predictions.for_test(_toy(), {"k": "8"})
    reuse = reusable_systems(base, same, {"fine-tuned": "ckpt#1"}, "p.json")
    assert set(reuse) == {"a", "fine-tuned"} and reuse["a"].recorded_seconds == 1.0
    # a retrained checkpoint (another source) is scored again, the rest reused
    assert set(reusable_systems(base, same, {"fine-tuned": "ckpt#2"}, "p.json")) == {"a"}
    with pytest.raises(DataError, match=r"settings k: saved '8', now '4'"):
        reusable_systems(base, Predictions.for_test(_toy(), {"k": "4"}), {}, "p.json")
    with pytest.raises(DataError, match="different test sample"):
        reusable_systems(base, Predictions.for_test(_toy(4), {"k": "8"}), {}, "p.json")
    # a setting of "ragicl best" alone (its tuning budget) re-tunes it and reuses the rest
    tuned = Predictions.for_test(_toy(), {"k": "8", "tune_budget": 300, "dev_size": 200}) \
        .with_system("a", np.full((3, 2), 0.5), 1.0).with_system("ragicl best", np.full((3, 2), 0.5), 3.0)
    now = Predictions.for_test(_toy(), {"k": "8", "tune_budget": 900, "dev_size": 200})
    assert set(reusable_systems(tuned, now, {}, "p.json")) == {"a"}
    assert set(reusable_systems(tuned, tuned, {}, "p.json")) == {"a", "ragicl best"}
    loo = Predictions.for_test(_toy(), {"k": "8", "tune_budget": 300, "dev_size": 200, "vote_dev_size": 2000})
    assert set(reusable_systems(tuned, loo, {}, "p.json")) == {"a"}  # --vote-dev-size re-tunes it alone
    with pytest.raises(ValueError, match="cover 3 queries, asked for 2"):
        SavedSystem("a", ("neg", "pos"), np.ones((3, 2)), 0.0).predict_proba([1, 2])


def test_damaged_or_foreign_files_say_what_to_do(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a readable predictions file"):
        load_predictions(bad)
    bad.write_text(json.dumps({"dataset": "x"}))
    with pytest.raises(DataError, match="expected 'ragicl-predictions/1'"):
        load_predictions(bad)
    bad.write_text(json.dumps({"format": "ragicl-predictions/1", "labels": ["a"], "queries": [{"id": 1}],
                               "systems": {}}))
    with pytest.raises(DataError, match="damaged predictions file"):
        load_predictions(bad)


@pytest.mark.parametrize("change, message", [
    ({"systems": []}, "'systems' holds list, expected a JSON object"),
    ({"settings": [1, 2]}, "'settings' holds list, expected a JSON object"),
    ({"queries": {"0": "a"}}, "'queries' holds dict, expected a JSON list"),
    ({"labels": [1, 2]}, "'labels' must be distinct strings"),
    ({"labels": ["a", "a"]}, "'labels' must be distinct strings"),
    ({"notes": "one"}, "'notes' holds str"),
    ({"notes": [3]}, "'notes' must be strings"),
    ({"systems": {"x": [0.5]}}, "damaged predictions file"),
    ({"systems": {"x": {"probs": [[0.5, 0.5]], "seconds": "soon"}}}, "damaged predictions file"),
])
def test_a_file_of_the_wrong_shape_is_a_data_error(tmp_path, change, message):
    """Before issue 35 these raised AttributeError/TypeError (a traceback from `ragicl eval`)."""
    good = {"format": "ragicl-predictions/1", "dataset": "x", "labels": ["a", "b"],
            "queries": [{"id": "0", "gold": "a"}], "settings": {}, "notes": [],
            "systems": {"x": {"probs": [[0.5, 0.5]], "seconds": 1.0}}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(good))
    assert load_predictions(path).probs["x"].shape == (1, 2)
    path.write_text(json.dumps({**good, **change}))
    with pytest.raises(DataError, match=message):
        load_predictions(path)
    path.write_text('{"format": "ragicl-predictions/1", "labels": ' + "[" * 50_000 + "]" * 50_000 + "}")
    with pytest.raises(DataError, match="not a readable predictions file"):
        load_predictions(path)


@pytest.fixture()
def tiny(tmp_path):
    rows = [json.loads(line) for line in dataset_path("sst2", "train").read_text().splitlines()[:40]]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["index", "build", str(train), "--out", str(tmp_path / "idx"), "--embedder", "hash-64"]) == 0
    return train, tmp_path / "idx"


def _count_calls(monkeypatch, cls):
    calls = []
    original = cls.predict_proba

    def counted(self, queries):
        calls.append(len(queries))
        return original(self, queries)

    monkeypatch.setattr(cls, "predict_proba", counted)
    return calls


def test_eval_resumes_and_adds_a_reference_without_rescoring(tiny, tmp_path, capsys, monkeypatch, smollm_path):
    train, idx = tiny
    preds, report = tmp_path / "preds.json", tmp_path / "report.json"
    cmd = ["eval", "--index", str(idx), "--test", str(train), "--n", "4", "--k", "2", "--no-best",
           "--max-prompt-tokens", "256", "--lm", smollm_path, "--device", "cpu", "--predictions", str(preds)]

    # 1. a run interrupted at the first kNN vote keeps the three LM systems it finished
    def crash(self, queries):
        raise RuntimeError("killed")

    with monkeypatch.context() as m:
        m.setattr(KNNVoteClassifier, "predict_proba", crash)
        with pytest.raises(RuntimeError, match="killed"):
            main(cmd)
    saved = load_predictions(preds)
    assert list(saved.probs) == ["zero-shot", "random-2", "retrieved-2"] and len(saved.ids) == 4

    # 2. the rerun scores only what is missing; the LM systems come from the file, unchanged
    lm_calls = _count_calls(monkeypatch, ICLClassifier)
    assert main([*cmd, "--json", str(report)]) == 0
    assert lm_calls == []
    out = capsys.readouterr().out
    assert "reused from" in out and "zero-shot, random-2, retrieved-2" in out
    first = json.loads(report.read_text())
    assert [s["name"] for s in first["systems"]] == ["zero-shot", "random-2", "retrieved-2", "kNN vote k=8",
                                                      "kNN vote k=32"]
    full = load_predictions(preds)
    for name in saved.probs:
        assert np.array_equal(full.probs[name], saved.probs[name])
        assert full.seconds[name] == saved.seconds[name]  # the time it took when it was scored
    assert not any(n.startswith("reused from") for n in full.notes)

    # 3. a reference added later: only it is scored; the gap uses the saved distributions. The "fine-tuned"
    #    folder here is the base LM itself, so its zero-shot distributions equal the saved zero-shot ones.
    assert main([*cmd, "--finetuned", smollm_path, "--json", str(report)]) == 0
    capsys.readouterr()
    assert lm_calls == [4]
    data = json.loads(report.read_text())
    gaps = {g["system"]: g for g in data["gaps"]}
    assert gaps["zero-shot"]["agreement"] == 1.0
    probs, probs_seconds = load_predictions(preds).probs, load_predictions(preds).seconds
    # same model and prompts scored in another batch: equal up to float32 rounding of log-probabilities
    assert np.abs(probs["zero-shot"] - probs["fine-tuned"]).max() < 1e-4
    assert gaps["zero-shot"]["tv"]["estimate"] < 1e-4

    # 4. other settings with the same file: refused, the file untouched
    before = preds.read_bytes()
    assert main([*cmd[:cmd.index("--k") + 1], "3", *cmd[cmd.index("--k") + 2:]]) == 2
    err = capsys.readouterr().err
    assert "holds predictions of another evaluation" in err and "k: saved '2', now '3'" in err
    assert preds.read_bytes() == before

    # 5. --rescore scores a saved system again (e.g. after a change to its code) and keeps the rest; a saved
    #    note about the old one (as "ragicl best = <choice>") is dropped with it
    held = load_predictions(preds)
    save_predictions(preds, held.with_notes([*held.notes, "retrieved-2 = an old choice"]))
    assert main([*cmd, "--finetuned", smollm_path, "--rescore", "retrieved-2"]) == 0
    capsys.readouterr()
    assert lm_calls == [4, 4]
    again = load_predictions(preds)
    assert sorted(again.probs) == sorted(probs) and again.seconds["zero-shot"] == probs_seconds["zero-shot"]
    np.testing.assert_allclose(again.probs["retrieved-2"], probs["retrieved-2"], atol=1e-4)  # same prompts
    assert "retrieved-2 = an old choice" not in again.notes and again.notes
    for argv, why in (([*cmd, "--rescore", "ragicl best"], "not a system of this run"),  # --no-best
                      ([*cmd[:-2], "--rescore", "zero-shot"], "applies to --predictions")):
        assert main(argv) == 2
        assert why in capsys.readouterr().err
