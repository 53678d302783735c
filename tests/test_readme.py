"""The README's tour runs as written, in an empty folder, and its two commands are the ones that exist.

The tour is the README's one ```python block. It runs from a fresh folder whose ``../shared/datasets`` is the
shared dataset folder (as in a clone beside ``../shared``), so every other folder it reads it must make itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
SHARED = ROOT.parent / "shared"


def tour() -> str:
    blocks = [code for lang, code in FENCE.findall(README.read_text(encoding="utf-8")) if lang == "python"]
    assert len(blocks) == 1, f"the README should hold one ```python block (the tour), found {len(blocks)}"
    return blocks[0]


def test_tour_reads_only_what_it_makes_or_the_shared_datasets():
    """Every relative path in the tour is ../shared/... or a folder the tour writes before it reads it."""
    code = tour()
    for m in re.finditer(r"""["']((?:\.\./|[\w.-]+/)[\w./-]*)["']""", code):
        path = m.group(1)
        if path.startswith("../shared/datasets/"):
            assert (ROOT / path).exists() or (SHARED / path.removeprefix("../shared/")).exists(), path
            continue
        first = code.index(f'"{path}"')
        before = code[:first].rstrip()
        assert before.endswith((".save(", "out=")), f"the tour uses {path!r} before making it: {code[first-60:first]}"
    assert len(code.strip().splitlines()) <= 20, "keep the tour short (about 15 lines)"


def test_the_two_commands_exist():
    text = README.read_text(encoding="utf-8")
    first = FENCE.search(text)
    assert first and first.group(1) == "bash", "the README opens with the two commands"
    assert first.group(2).split("\n")[:2] == [
        "bash scripts/setup.sh && .venv/bin/ragicl demo    # set up .venv, then the main job (SST-2, built-in defaults)",
        "bash .ci/run                                       # set up, then run the tests"]
    assert (ROOT / "scripts" / "setup.sh").is_file() and (ROOT / ".ci" / "run").is_file()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash scripts/setup.sh" in ci and "pytest" in ci
    assert len(text.splitlines()) < 150, "the README is a front door: under 150 lines"


@pytest.mark.slow
def test_tour_runs_as_written(tmp_path, monkeypatch, capsys):
    if not (SHARED / "datasets" / "sst2" / "train.jsonl").exists():
        pytest.skip(f"shared datasets not found at {SHARED / 'datasets'}")
    (tmp_path / "shared").symlink_to(SHARED, target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "readme_tour"}
    exec(compile(tour(), "README.md (tour)", "exec"), namespace)  # noqa: S102
    assert (work / "indexes" / "sst2" / "manifest.json").is_file()
    assert (work / "runs" / "ft-sst2" / "ragicl_finetune.json").is_file()
    report = namespace["report"]
    assert [s.name for s in report.systems] == ["zero-shot", "retrieved-4", "kNN vote k=32", "fine-tuned"]
    assert report.reference == "fine-tuned" and len(report.gaps) == 3
    assert all(s.n == 100 for s in report.systems)
    printed = capsys.readouterr().out
    assert "retrieved-4" in printed and "fine-tuned" in printed
    p = namespace["p"]
    assert 0 < p.prompt.n_tokens <= 1024 and len(p.prompt.included) == 4
    assert namespace["clf"].predict(["a gripping, beautifully shot film"])[0] in {"negative", "positive"}
