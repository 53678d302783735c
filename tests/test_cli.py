"""The ``ragicl`` command line, run in-process on tiny real data."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATASETS, dataset_path

from ragicl.cli import main


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def tiny_sst2(tmp_path):
    rows = [json.loads(line) for line in dataset_path("sst2", "train").read_text().splitlines()[:40]]
    return _write_jsonl(tmp_path / "train.jsonl", rows)


def test_index_build_then_eval(tmp_path, tiny_sst2, capsys, smollm_path):
    out = tmp_path / "indexes" / "tiny"
    assert main(["index", "build", str(tiny_sst2), "--out", str(out), "--embedder", "hash-64"]) == 0
    assert "built" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 40 and manifest["factory"] == "Flat"
    report = tmp_path / "report.json"
    code = main(["eval", "--index", str(out), "--test", str(tiny_sst2), "--n", "4", "--k", "2",
                 "--max-prompt-tokens", "256", "--lm", smollm_path, "--json", str(report)])
    assert code == 0
    table = capsys.readouterr().out
    assert "zero-shot" in table and "retrieved-2" in table and "random-2" in table
    data = json.loads(report.read_text())
    assert data["n"] == 4 and {s["name"] for s in data["systems"]} == {"zero-shot", "random-2", "retrieved-2"}


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["index", "build", str(tmp_path / "missing.jsonl"), "--embedder", "hash-64"]) == 2
    err = capsys.readouterr().err
    assert "missing.jsonl" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["index", "build", str(empty), "--out", str(tmp_path / "x"), "--embedder", "hash-64"]) == 2
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written


@pytest.mark.slow
def test_demo_runs_the_whole_comparison_small(tmp_path, capsys, monkeypatch, smollm_path):
    dataset_path("sst2", "train")
    monkeypatch.chdir(tmp_path)
    code = main(["demo", "--data-dir", str(SHARED_DATASETS), "--n-train", "60", "--n", "6", "--steps", "2",
                 "--ft-batch-size", "4", "--k", "2", "--max-prompt-tokens", "256",
                 "--out", str(tmp_path / "runs"), "--index-dir", str(tmp_path / "idx")])
    assert code == 0
    out = capsys.readouterr().out
    for name in ("zero-shot", "random-2", "retrieved-2", "fine-tuned", "(reference)", "test set sampled"):
        assert name in out
    data = json.loads((tmp_path / "runs" / "report-sst2.json").read_text())
    assert data["reference"] == "fine-tuned" and len(data["gaps"]) == 3
    assert all(0.0 <= g["tv"]["estimate"] <= 1.0 for g in data["gaps"])


@pytest.mark.slow
def test_finetune_modes_and_aux_fewshot_from_the_cli(tmp_path, tiny_sst2, capsys, smollm_path):
    out = tmp_path / "ft-value"
    assert main(["finetune", "--train", str(tiny_sst2), "--out", str(out), "--lm", smollm_path,
                 "--mode", "value", "--steps", "1", "--batch-size", "2"]) == 0
    meta = json.loads((out / "ragicl_finetune.json").read_text())
    assert meta["mode"] == "value" and meta["steps"] == 1 and "objective" not in meta
    gold = tmp_path / "ft-gold"
    assert main(["finetune", "--train", str(tiny_sst2), "--out", str(gold), "--lm", smollm_path,
                 "--mode", "value", "--objective", "gold", "--steps", "1", "--batch-size", "2"]) == 0
    assert json.loads((gold / "ragicl_finetune.json").read_text())["objective"] == "gold"
    stamp = json.loads((gold / "ragicl_reference.json").read_text())
    assert stamp["settings"]["objective"] == "gold"
    # same settings but the default objective: not the gold checkpoint, so it trains again (label loss)
    assert main(["finetune", "--train", str(tiny_sst2), "--out", str(gold), "--lm", smollm_path,
                 "--mode", "value", "--steps", "1", "--batch-size", "2"]) == 0
    assert "objective" not in json.loads((gold / "ragicl_reference.json").read_text())["settings"]
    assert main(["finetune", "--train", str(tiny_sst2), "--out", str(tmp_path / "x"), "--lm", smollm_path,
                 "--aux-fewshot", "2", "--steps", "1"]) == 2
    assert "--aux-fewshot needs --index" in capsys.readouterr().err
    index = tmp_path / "idx"
    assert main(["index", "build", str(tiny_sst2), "--out", str(index), "--embedder", "hash-64"]) == 0
    aux_out = tmp_path / "ft-aux"
    assert main(["finetune", "--train", str(tiny_sst2), "--out", str(aux_out), "--lm", smollm_path,
                 "--aux-fewshot", "2", "--index", str(index), "--steps", "2", "--batch-size", "2",
                 "--objective", "gold"]) == 0
    assert "fine-tuned" in capsys.readouterr().out
    assert (aux_out / "config.json").exists()
    assert json.loads((aux_out / "ragicl_finetune.json").read_text())["objective"] == "gold"
