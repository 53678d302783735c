"""experiments/run_best.py builds the `ragicl eval` command a researcher would type, options passed through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _scripts import load_script

import ragicl.cli
from ragicl.evaluation.compare import Gap, Report, SystemResult
from ragicl.evaluation.stats import Interval

SYSTEMS = ("zero-shot", "retrieved-8", "kNN vote k=8", "ragicl best")


def _iv(x: float) -> Interval:
    return Interval(x, x - 0.1, x + 0.1, 0.95, "percentile-bootstrap")


def _system(name: str, acc: float) -> SystemResult:
    """A system scored on 2 queries in 0.2 s (0.1 s/query)."""
    return SystemResult(name, 2, _iv(acc), acc, 0.2, np.empty((0,)))


def _run(tmp_path: Path, *extra: str) -> int:
    """run_best.py on dataset 'toy' whose index already exists (so only `ragicl eval` is called)."""
    index = tmp_path / "indexes" / "toy"
    index.mkdir(parents=True)
    (index / "manifest.json").write_text("{}")
    return load_script("run_best").main(["--datasets", "toy", "--data-dir", str(tmp_path),
                                         "--index-root", str(tmp_path / "indexes"), "--out", str(tmp_path / "out"),
                                         *extra])


@pytest.fixture
def eval_calls(monkeypatch) -> list[list[str]]:
    """Stands in for `ragicl eval`: records each command and writes a report with every system at 0.5."""
    calls: list[list[str]] = []

    def fake_main(argv):
        calls.append(list(argv))
        report = Report("toy", 2, ("a", "b"), tuple(_system(n, 0.5) for n in SYSTEMS), (), None)
        report.to_json(argv[argv.index("--json") + 1])  # the JSON the real eval writes
        return 0

    monkeypatch.setattr(ragicl.cli, "main", fake_main)
    return calls


def test_run_best_passes_lm_ray_and_rescore_to_eval(tmp_path, eval_calls):
    assert _run(tmp_path, "--ray", "local", "--workers", "2", "--rescore", "ragicl best", "--lm", "gemma-3-270m") == 0
    (cmd,) = eval_calls  # the eval alone: the index exists
    assert cmd[0] == "eval"
    assert cmd[cmd.index("--lm") + 1] == "gemma-3-270m"
    assert cmd[cmd.index("--ray") + 1] == "local" and cmd[cmd.index("--workers") + 1] == "2"
    assert cmd[cmd.index("--rescore") + 1] == "ragicl best"
    assert "| ragicl best | 0.500 [0.400, 0.600] |" in (tmp_path / "out" / "RESULTS.md").read_text()


def test_run_best_without_ray_runs_in_process(tmp_path, eval_calls):
    assert _run(tmp_path) == 0
    assert "--ray" not in eval_calls[0] and "--workers" not in eval_calls[0]
    assert "--lm" not in eval_calls[0]  # eval's default LM


def test_run_best_workers_without_ray_is_refused_by_eval(tmp_path, capsys):
    assert _run(tmp_path, "--workers", "2") != 0  # the real `ragicl eval`
    assert "--workers 2 applies to --ray" in capsys.readouterr().err
    assert not (tmp_path / "out" / "toy.json").exists()


def test_run_best_table_carries_tv_to_the_reference_with_its_interval():
    """With a reference scored, the Markdown table (the library's report_markdown) has issue 13's TV column
    (with CI) and agreement; a reference that did not converge is flagged in it."""
    systems = tuple(_system(n, a) for n, a in [("zero-shot", 0.5), ("retrieved-8", 0.7), ("kNN vote k=8", 0.65),
                                                ("ragicl best", 0.75), ("fine-tuned", 0.8)])
    gaps = tuple(Gap(n, "fine-tuned", _iv(t), {"q90": 0.5}, 0.6, np.empty((0,)), {0.1: _iv(0.3)})
                 for n, t in [("zero-shot", 0.4), ("retrieved-8", 0.2), ("kNN vote k=8", 0.3), ("ragicl best", 0.15)])
    report = Report("toy", 10, ("a", "b"), systems, gaps, "fine-tuned").to_json()
    text = load_script("run_best").table(report)
    assert ("| system | accuracy [95% CI] | macro-F1 | TV to fine-tuned [95% CI] | TV q90 | share TV>0.1 [CP 95%] "
            "| agree | s/query |") in text
    assert ("| ragicl best | 0.750 [0.650, 0.850] | 0.750 | 0.150 [0.050, 0.250] | 0.500 | 0.300 [0.200, 0.400] "
            "| 0.600 | 0.100 |") in text
    assert "| fine-tuned | 0.800 [0.700, 0.900] | 0.800 | (reference) |" in text
    assert "- TV to fine-tuned: ragicl best − retrieved-8: -0.050" in text
    assert "- share of the zero-shot → fine-tuned gap closed: 0.83" in text
    without = load_script("run_best").table({**report, "reference": None, "gaps": []})
    assert "TV to" not in without and "| ragicl best | 0.750 [0.650, 0.850] | 0.750 | 0.100 |" in without
    still_falling = {**report, "reference_training": {"note": "reference 'fine-tuned' not converged: dev loss "
                                                               "still falling at step 40"}}
    flagged = load_script("run_best").table(still_falling)
    assert "| fine-tuned | 0.800 [0.700, 0.900] | 0.800 | (reference, not converged) |" in flagged
    assert "dev loss still falling at step 40" in flagged
