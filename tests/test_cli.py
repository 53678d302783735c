"""The ``ragicl`` command line, run in-process on tiny real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATASETS, dataset_path

from ragicl.cli import build_parser, main


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
                 "--max-prompt-tokens", "256", "--lm", smollm_path, "--json", str(report),
                 "--dev-size", "8", "--tune-budget", "0"])
    assert code == 0
    table = capsys.readouterr().out
    assert "zero-shot" in table and "retrieved-2" in table and "random-2" in table and "ragicl best" in table
    data = json.loads(report.read_text())
    assert data["n"] == 4 and [s["name"] for s in data["systems"]] == [
        "zero-shot", "random-2", "retrieved-2", "kNN vote k=8", "kNN vote k=32", "ragicl best"]
    chosen = [n for n in data["notes"] if n.startswith("ragicl best = ")]
    assert len(chosen) == 1 and "8 dev queries from the training set" in chosen[0]
    # --tune-budget 0 (LM tokens): the plain systems only, the rest skipped for the budget, said in the JSON
    tuned = data["tune"]
    assert tuned["lm_budget"] == 0 and tuned["reproducible"] is True and "of an LM budget of 0" in chosen[0]
    assert [(s["k"], s["candidates"]) for s in tuned["searched"]] == [(0, None), (2, None)]
    assert tuned["skipped"] and all(s["reason"].startswith("lm_budget") for s in tuned["skipped"])
    # --vote-dev-size: the vote's settings chosen first on leave-one-out training queries, said in the note
    assert main(["eval", "--index", str(out), "--test", str(tiny_sst2), "--n", "4", "--k", "2", "--no-vote",
                 "--max-prompt-tokens", "256", "--lm", smollm_path, "--json", str(tmp_path / "loo.json"),
                 "--dev-size", "8", "--tune-budget", "0", "--vote-dev-size", "30"]) == 0
    capsys.readouterr()
    loo = [n for n in json.loads((tmp_path / "loo.json").read_text())["notes"] if n.startswith("ragicl best = ")]
    assert len(loo) == 1 and "on 30 leave-one-out training queries" in loo[0]
    # the plain rows alone, on request
    assert main(["eval", "--index", str(out), "--test", str(tiny_sst2), "--n", "4", "--k", "2", "--no-best",
                 "--no-vote", "--max-prompt-tokens", "256", "--lm", smollm_path, "--json", str(report)]) == 0
    capsys.readouterr()
    plain = json.loads(report.read_text())
    assert [s["name"] for s in plain["systems"]] == ["zero-shot", "random-2", "retrieved-2"]
    for a, b in zip(plain["systems"], data["systems"]):  # the new rows change nothing in the old ones
        assert a["accuracy"]["estimate"] == b["accuracy"]["estimate"]


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["index", "build", str(tmp_path / "missing.jsonl"), "--embedder", "hash-64"]) == 2
    err = capsys.readouterr().err
    assert "missing.jsonl" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["index", "build", str(empty), "--out", str(tmp_path / "x"), "--embedder", "hash-64"]) == 2
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written



def _fails(argv, capsys, *expected):
    """main(argv) exits 2 with one `ragicl: error:` message naming each of `expected`, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "ragicl: error:" in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def _argparse_fails(argv, capsys, *expected):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err


@pytest.fixture()
def hash_index(tmp_path, tiny_sst2):
    out = tmp_path / "idx"
    assert main(["index", "build", str(tiny_sst2), "--out", str(out), "--embedder", "hash-64"]) == 0
    return out


def test_index_build_user_errors_fail_before_the_work(tmp_path, tiny_sst2, capsys, monkeypatch):
    build = ["index", "build", str(tiny_sst2), "--embedder", "hash-64", "--out"]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    _fails(build + [str(a_file / "idx")], capsys, "is under", "which is a file")
    _fails(build + [str(a_file)], capsys, "is a file")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "NOTES.md").write_text("mine")
    _fails(build + [str(folder)], capsys, "not a ragicl output", "refusing")
    assert (folder / "NOTES.md").read_text() == "mine"
    out = str(tmp_path / "new")
    _fails(build + [out, "--factory", "IVF9999,Flat"], capsys, "9999 IVF lists", "only 40 examples", "Fix:")
    _fails(build + [out, "--factory", "garbage"], capsys, "'garbage' is not a valid faiss", "could not parse")
    _argparse_fails(build + [out, "--batch-size", "0"], capsys, "positive integer")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an unknown embedder fails at once, before embedding
    _fails(["index", "build", str(tiny_sst2), "--out", out, "--embedder", "no-such-embedder"], capsys,
           "embedder 'no-such-embedder' cannot be loaded", "hash-64")
    assert not (tmp_path / "new").exists()
    # -v: the same error with its traceback
    assert main(["-v", "index", "build", str(tiny_sst2), "--embedder", "hash-64", "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ragicl: error:" in err


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes through permissions; POSIX permissions needed")
def test_unwritable_out_is_refused(tmp_path, tiny_sst2, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        _fails(["index", "build", str(tiny_sst2), "--embedder", "hash-64", "--out", str(locked / "idx")],
               capsys, "not writable")
    finally:
        locked.chmod(0o755)


def test_eval_user_errors(tmp_path, tiny_sst2, hash_index, capsys, monkeypatch, smollm_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = ["eval", "--index", str(hash_index), "--test", str(tiny_sst2), "--lm", smollm_path]
    _argparse_fails(base + ["--n", "-5"], capsys, "--n", "positive integer")
    _argparse_fails(base + ["--k", "-1"], capsys, "--k", "integer >= 0 or 'max'")
    _argparse_fails(base + ["--max-prompt-tokens", "0"], capsys, "--max-prompt-tokens", "positive integer")
    _argparse_fails(base + ["--batch-size", "0"], capsys, "positive integer")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    _fails(base + ["--json", str(a_file / "r.json")], capsys, "--json", "which is a file")
    _fails(base + ["--json", str(tmp_path)], capsys, "is a folder")
    _fails(base + ["--finetuned", str(tmp_path / "no-ckpt")], capsys, "--finetuned", "does not exist")
    _fails(["eval", "--index", str(hash_index), "--test", str(tiny_sst2), "--lm", "no-such-lm"], capsys,
           "--lm 'no-such-lm' cannot be loaded")
    _fails(base + ["--template", "Review: {text}"], capsys, "does not end with {label}")
    other = _write_jsonl(tmp_path / "other.jsonl", [{"text": "so good", "label": "good"},
                                                    {"text": "so bad", "label": "bad"}])
    _fails(base + ["--test", str(other)], capsys, "['bad', 'good']", "does not have", "Fix:")
    _fails(["eval", "--index", str(tmp_path / "no-index"), "--test", str(tiny_sst2)], capsys, "no-index")


def test_eval_k0_is_zero_shot_only(tiny_sst2, hash_index, capsys, smollm_path):
    assert main(["eval", "--index", str(hash_index), "--test", str(tiny_sst2), "--n", "2", "--k", "0",
                 "--max-prompt-tokens", "256", "--lm", smollm_path, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot" in out and "random-0" not in out and "retrieved-0" not in out
    assert "--k 0: zero-shot only" in out


def test_eval_notes_a_reference_from_another_base(tmp_path, tiny_sst2, hash_index, capsys, smollm_path):
    ref = tmp_path / "ref"  # the default LM's files, labelled as fine-tuned from gemma-3-270m
    ref.mkdir()
    for f in Path(smollm_path).iterdir():
        (ref / f.name).symlink_to(f)
    (ref / "ragicl_finetune.json").write_text(json.dumps({"base": "gemma-3-270m", "converged": True}))
    assert main(["eval", "--index", str(hash_index), "--test", str(tiny_sst2), "--n", "2", "--k", "0",
                 "--max-prompt-tokens", "256", "--lm", smollm_path, "--device", "cpu", "--finetuned", str(ref),
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "the reference was fine-tuned from gemma-3-270m, while the ICL systems use" in out
    assert "--lm gemma-3-270m" in out
    assert any("fine-tuned from gemma-3-270m" in n for n in json.loads((tmp_path / "r.json").read_text())["notes"])


def test_eval_many_shot_k_max(tiny_sst2, hash_index, capsys, smollm_path):
    assert main(["eval", "--index", str(hash_index), "--test", str(tiny_sst2), "--n", "2", "--k", "max",
                 "--max-prompt-tokens", "128", "--lm", smollm_path, "--device", "cpu", "--no-best",
                 "--no-vote"]) == 0
    out = capsys.readouterr().out
    assert "retrieved-max" in out and "random-max" in out
    _argparse_fails(["eval", "--index", str(hash_index), "--test", str(tiny_sst2), "--k", "lots"], capsys, "--k")


def test_finetune_user_errors_before_training(tmp_path, tiny_sst2, capsys, smollm_path):
    base = ["finetune", "--train", str(tiny_sst2), "--lm", smollm_path]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    _fails(base + ["--out", str(a_file / "ft")], capsys, "--out", "which is a file")
    _argparse_fails(base + ["--out", str(tmp_path / "ft"), "--steps", "0"], capsys, "--steps")
    _argparse_fails(base + ["--out", str(tmp_path / "ft"), "--batch-size", "0"], capsys, "--batch-size")
    _argparse_fails(base + ["--out", str(tmp_path / "ft"), "--lr", "-1"], capsys, "--lr")
    assert not (tmp_path / "ft").exists()


def test_version_help_and_device_options(capsys):
    from ragicl import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"ragicl {__version__}"
    for argv in (["--help"], ["index", "build", "--help"], ["eval", "--help"], ["finetune", "--help"],
                 ["demo", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "usage: ragicl" in text
    assert "--device" in text  # demo's help
    parser = build_parser()
    for action in _all_actions(parser):
        if action.dest not in {"help", "version", "command", "index_command"} and action.option_strings:
            assert action.help, f"{action.option_strings} has no help"


def _all_actions(parser):
    import argparse

    for action in parser._actions:
        action.container = parser
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_actions(sub)


def test_a_real_process_reports_errors_without_traceback_or_faiss_noise(tmp_path, tiny_sst2):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "ragicl.cli", "index", "build", str(tiny_sst2), "--out",
                           str(tmp_path / "idx"), "--embedder", "hash-64", "--factory", "IVF9999,Flat"],
                          check=False, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "ragicl: error: --factory 'IVF9999,Flat'" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ragicl.cli", "index", "build", str(tiny_sst2), "--out",
                           str(tmp_path / "idx"), "--embedder", "hash-64"],
                          check=False, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "swigfaiss" not in proc.stderr and "ModuleNotFoundError" not in proc.stderr
    assert "INFO ragicl" in proc.stderr  # ragicl's own progress is still logged

@pytest.mark.slow
def test_demo_runs_the_whole_comparison_small(tmp_path, capsys, monkeypatch, smollm_path):
    dataset_path("sst2", "train")
    monkeypatch.chdir(tmp_path)
    code = main(["demo", "--data-dir", str(SHARED_DATASETS), "--n-train", "60", "--n", "6", "--steps", "2",
                 "--ft-batch-size", "4", "--k", "2", "--max-prompt-tokens", "256", "--dev-size", "12",
                 "--tune-budget", "0", "--out", str(tmp_path / "runs"), "--index-dir", str(tmp_path / "idx")])
    assert code == 0
    out = capsys.readouterr().out
    for name in ("zero-shot", "retrieved-2", "kNN vote k=32", "ragicl best", "fine-tuned",
                 "(reference", "test set sampled"):
        assert name in out
    assert "random-2" not in out  # only with --random
    data = json.loads((tmp_path / "runs" / "report-sst2.json").read_text())
    names = [s["name"] for s in data["systems"]]
    assert names == ["zero-shot", "retrieved-2", "kNN vote k=8", "kNN vote k=32", "ragicl best", "fine-tuned"]
    assert data["reference"] == "fine-tuned" and len(data["gaps"]) == len(names) - 1 == 5
    assert all(0.0 <= g["tv"]["estimate"] <= 1.0 for g in data["gaps"])
    # it ends with the full protocol's commands, on this run's data and index
    tail = out[out.index("The full protocol"):]
    assert f"ragicl finetune --train {SHARED_DATASETS / 'sst2' / 'train.jsonl'} --out refs/sst2   #" in tail
    assert f"ragicl eval --index {tmp_path / 'idx'} " in tail and "--n 500 --k 8 --dev-size 200" in tail


def test_demo_defaults_fit_two_cores_and_random_is_optional():
    """The demo's defaults (what the README times): 150 queries, k=4, a 16 x 8 reference, the tuner on 100 dev
    queries with the plain systems' LM passes only (0 extra LM tokens); eval keeps its own defaults."""
    from ragicl.cli.main import build_parser

    demo = build_parser().parse_args(["demo"])
    assert (demo.n, demo.k, demo.steps, demo.ft_batch_size, demo.dev_size, demo.tune_budget, demo.random) == \
        (150, 4, 16, 8, 100, 0, False)
    given = build_parser().parse_args(["demo", "--random", "--dev-size", "200", "--tune-budget", "600k"])
    assert (given.random, given.dev_size, given.tune_budget) == (True, 200, 600_000)
    evals = build_parser().parse_args(["eval", "--index", "i", "--test", "t"])
    assert (evals.k, evals.dev_size, evals.tune_budget) == (16, 150, "auto")


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
    from ragicl.models import finetuned_model_path

    assert (finetuned_model_path(aux_out) / "config.json").exists()  # the current model version
    assert json.loads((aux_out / "ragicl_finetune.json").read_text())["objective"] == "gold"
