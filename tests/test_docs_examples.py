"""The runnable examples in docs/guide/integrations/*.md: every ```python block of a page, run in order.

A page's blocks share one namespace (later blocks may use names from earlier ones) and run from the
repository root, where ``../shared/datasets`` is the dataset folder, so the examples cannot rot.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "guide" / "integrations").glob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
# optional dependency each page needs
NEEDS = {"langchain": "langchain_core", "lm_eval": "lm_eval"}
logger = logging.getLogger(__name__)


def blocks(page: Path, language: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced block in ``language``."""
    text = page.read_text(encoding="utf-8")
    return [(text[:m.start()].count("\n") + 2, m.group(2)) for m in FENCE.finditer(text)
            if m.group(1) == language]


def test_every_integration_page_has_a_runnable_example():
    assert {p.stem for p in PAGES} >= set(NEEDS)
    for page in PAGES:
        assert blocks(page, "python"), f"{page.name} has no ```python example"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_docs_example_runs(page, monkeypatch, sst2_train_path):
    if page.stem in NEEDS:
        pytest.importorskip(NEEDS[page.stem])
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    start = time.perf_counter()
    for line, code in blocks(page, "python"):
        exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)  # noqa: S102
    elapsed = time.perf_counter() - start
    logger.info("%s example ran in %.1f s (keep docs examples small: no timing is asserted, per the project's "
                "rule that tests hold on any machine)", page.name, elapsed)


def test_lm_eval_page_shows_the_tested_task_yaml():
    """The YAML on the page is the task file ragicl ships and tests/test_lm_eval.py runs."""
    shown = blocks(ROOT / "docs" / "guide" / "integrations" / "lm_eval.md", "yaml")
    shipped = (ROOT / "ragicl" / "integrations" / "lmeval_tasks" / "ragicl_sst2.yaml").read_text(encoding="utf-8")
    assert [code for _, code in shown] == [shipped]
