"""Links in the documentation point somewhere: no page, image or heading a reader clicks on is missing.

Two checks, on README.md and every docs/**/*.md: each relative markdown link (``[text](target)``,
``![alt](target)``, ``[label]: target``) outside code resolves to an existing file, and its ``#anchor`` (if
any) to a heading of the target page; and each repository path to a page that the text names in prose or in
code (``docs/guide/SCALE.md``), and that the library's docstrings and messages name, exists. Moving a page
without fixing what points at it fails here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.DOTALL | re.MULTILINE)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
# a path of this repository naming a page under docs/, or a README
NAMED_PAGE = re.compile(r"(?<![\w./-])((?:docs/[\w./-]+?\.md)|(?:[\w-]+/)?README\.md)(?![\w/-])")
SOURCES = sorted([*(ROOT / "ragicl").rglob("*.py"), *(ROOT / "tests").glob("*.py"), ROOT / "pyproject.toml"])


def _prose(text: str) -> str:
    """The text with fenced code blocks and code spans blanked (line numbers kept)."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))
    return CODE_SPAN.sub(blank, FENCE.sub(blank, text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page's headings give (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    for m in HEADING.finditer(text):
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of every markdown link in the page's prose."""
    text = _prose(page.read_text(encoding="utf-8"))
    found = [(m.start(), m.group(1)) for m in INLINE_LINK.finditer(text)]
    found += [(m.start(), m.group(1)) for m in REFERENCE_LINK.finditer(text)]
    return sorted((text[:at].count("\n") + 1, target) for at, target in found)


def broken_links(page: Path) -> list[str]:
    """What is wrong with the page's relative links, one line each (empty when nothing is)."""
    problems = []
    for line, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        where = f"{page.relative_to(ROOT)}:{line}: ({target})"
        if not dest.exists():
            problems.append(f"{where} points to {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}, "
                            "which does not exist")
        elif anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            problems.append(f"{where}: {dest.name} has no heading with anchor #{anchor}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    problems = broken_links(page)
    assert not problems, "broken links (fix the path, or the heading it names):\n" + "\n".join(problems)


def test_named_pages_exist():
    """``docs/guide/SCALE.md`` in a docstring, an error message or a page's prose is a page that exists."""
    missing = []
    for source in [*PAGES, *SOURCES]:
        for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            for name in NAMED_PAGE.findall(line):
                if "/" in name and not name.startswith("docs/"):  # a README of another folder, relative to it
                    continue
                if not (ROOT / name).exists():
                    missing.append(f"{source.relative_to(ROOT)}:{n} names {name}")
    assert not missing, "pages named but missing (moved? fix the path):\n" + "\n".join(missing)


def test_the_checks_catch_what_they_are_for(tmp_path, monkeypatch):
    """A missing file, a missing heading and a link inside code (not a link) on a page made for the test."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# A page\n\n## Its second part, `code` and all\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text("See [ok](there.md#its-second-part-code-and-all), [gone](missing.md), "
                    "[bad anchor](there.md#nowhere), [web](https://example.org/x.md).\n\n"
                    "```\n[in code](nothing.md)\n```\nand `[span](nothing.md)`.\n\n[ref]: ../docs/gone-too.md\n")
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert "missing.md" in problems[0] and "#nowhere" in problems[1] and "gone-too.md" in problems[2]
    assert anchors(tmp_path / "docs" / "there.md") == {"a-page", "its-second-part-code-and-all"}
