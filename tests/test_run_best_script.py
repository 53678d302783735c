"""scripts/run_best.py builds the `ragicl eval` command a researcher would type, options passed through."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import ragicl.cli

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("run_best", ROOT / "scripts" / "run_best.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_best_passes_ray_and_rescore_to_eval(tmp_path, monkeypatch):
    index = tmp_path / "indexes" / "toy"
    index.mkdir(parents=True)
    (index / "manifest.json").write_text("{}")  # an existing index: no build
    calls: list[list[str]] = []

    def fake_main(argv):
        calls.append(list(argv))
        out = Path(argv[argv.index("--json") + 1])
        acc = {"estimate": 0.5, "low": 0.4, "high": 0.6}
        out.write_text(json.dumps({"dataset": "toy", "n": 2, "labels": ["a", "b"], "notes": [], "systems": [
            {"name": n, "accuracy": acc, "macro_f1": 0.5, "seconds_per_query": 0.1}
            for n in ("zero-shot", "retrieved-8", "kNN vote k=8", "ragicl best")]}))
        return 0

    monkeypatch.setattr(ragicl.cli, "main", fake_main)
    rc = _load_script().main(["--datasets", "toy", "--data-dir", str(tmp_path), "--index-root",
                              str(tmp_path / "indexes"), "--out", str(tmp_path / "out"), "--ray", "local",
                              "--workers", "2", "--rescore", "ragicl best"])
    assert rc == 0
    (cmd,) = calls  # the eval alone: the index exists
    assert cmd[0] == "eval"
    assert cmd[cmd.index("--ray") + 1] == "local" and cmd[cmd.index("--workers") + 1] == "2"
    assert cmd[cmd.index("--rescore") + 1] == "ragicl best"
    assert "| ragicl best | 0.500 [0.400, 0.600] |" in (tmp_path / "out" / "RESULTS.md").read_text()


def test_run_best_without_ray_runs_in_process(tmp_path, monkeypatch):
    index = tmp_path / "indexes" / "toy"
    index.mkdir(parents=True)
    (index / "manifest.json").write_text("{}")
    calls: list[list[str]] = []

    def fake_main(argv):
        calls.append(list(argv))
        Path(argv[argv.index("--json") + 1]).write_text(json.dumps(
            {"dataset": "toy", "n": 2, "labels": ["a", "b"], "notes": [], "systems": []}))
        return 0

    monkeypatch.setattr(ragicl.cli, "main", fake_main)
    assert _load_script().main(["--datasets", "toy", "--data-dir", str(tmp_path), "--index-root",
                                str(tmp_path / "indexes"), "--out", str(tmp_path / "out")]) == 0
    assert "--ray" not in calls[0] and "--workers" not in calls[0]


def test_run_best_workers_without_ray_is_refused_by_eval(tmp_path, capsys):
    index = tmp_path / "indexes" / "toy"
    index.mkdir(parents=True)
    (index / "manifest.json").write_text("{}")
    rc = _load_script().main(["--datasets", "toy", "--data-dir", str(tmp_path), "--index-root",
                              str(tmp_path / "indexes"), "--out", str(tmp_path / "out"), "--workers", "2"])
    assert rc != 0
    assert "--workers 2 applies to --ray" in capsys.readouterr().err
    assert not (tmp_path / "out" / "toy.json").exists()
