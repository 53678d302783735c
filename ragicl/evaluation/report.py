"""Markdown + JSON reports of experiments: tables of systems, gaps, curves, costs, and the machine.

:func:`report_markdown` renders a :class:`ragicl.evaluation.compare.Report` as a Markdown table (accuracy,
macro-F1, TV to the reference with its bootstrap interval, the share of queries with TV > ε with
Clopper–Pearson intervals, agreement, seconds per query); :func:`curve_markdown` a :class:`ragicl.evaluation.curves.
Curve`; :func:`write_report` writes one Markdown file (images linked beside it, or embedded as data URIs
with ``embed_images=True`` so the single file is self-contained) and a JSON file with every number.

>>> print(markdown_table(["a", "b"], [[1, "x"]]))
| a | b |
|---|---|
| 1 | x |
"""

from __future__ import annotations

import base64
import logging
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._atomic import write_json_atomic
from .compare import Report

logger = logging.getLogger(__name__)

__all__ = ["curve_markdown", "machine_info", "markdown_table", "report_markdown", "write_report"]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (cells converted with ``str``, ``|`` escaped)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report_markdown(report: Report, *, epsilon: float = 0.1) -> str:
    """One row per system: accuracy [95% CI], macro-F1, TV to the reference [95% CI], q90 of TV,
    share with TV > ``epsilon`` [Clopper–Pearson 95%], argmax agreement, seconds per query (without a
    reference, no TV / agreement columns). A reference that did not finish training (see
    :func:`ragicl.evaluation.compare.reference_training`) gets a footnote."""
    gaps = {g.system: g for g in report.gaps}
    with_gap = report.reference is not None
    rows = []
    for s in report.systems:
        row = [s.name, str(s.accuracy), f"{s.macro_f1:.3f}"]
        g = gaps.get(s.name)
        if with_gap and g is None:  # the reference itself (or a system compare gave no gap)
            row += [report.reference_label() if s.name == report.reference else ""] * 4
        elif with_gap:
            iv = g.exceed.get(epsilon)
            row += [str(g.tv), f"{g.tv_quantiles.get('q90', float('nan')):.3f}", str(iv) if iv is not None else "n/a",
                    f"{g.agreement:.3f}"]
        rows.append([*row, f"{s.seconds_per_query:.3f}"])
    head = ["system", "accuracy [95% CI]", "macro-F1"]
    if with_gap:
        head += [f"TV to {report.reference} [95% CI]", "TV q90", f"share TV>{epsilon:g} [CP 95%]", "agree"]
    table = markdown_table([*head, "s/query"], rows)
    note = (report.reference_training or {}).get("note")
    return table + (f"\n\n\\* {note}" if note else "")


def curve_markdown(curve: Any) -> str:
    """The points of a :class:`ragicl.evaluation.curves.Curve` as a Markdown table."""
    n_index = curve.meta.get("n_index")
    headers = [curve.meta.get("xlabel", "x")] + (["n indexed"] if n_index else []) + [
        "mean TV [95% CI]", "accuracy [95% CI]"]
    rows = []
    for i, x in enumerate(curve.x):
        xs = f"{x:g}" if curve.meta.get("knob") != "data_fraction" else f"1/{round(1 / x)}" if x < 1 else "1"
        rows.append([xs] + ([n_index[i]] if n_index else []) + [str(curve.tv[i]), str(curve.accuracy[i])])
    table = markdown_table(headers, rows)
    skipped = curve.meta.get("skipped_budgets")
    if skipped:
        table += ("\n\nSkipped budgets (the longest test query alone needs more tokens): "
                  + ", ".join(f"{b} (needs {n})" for b, n in skipped.items()))
    return table


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured: CPU, cores, load, Python/torch versions, GPU if any."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        from .._machine import cpu_count, cpu_model_name

        info["cpu"], info["cores"] = cpu_model_name(), cpu_count()
    except Exception:  # noqa: BLE001 — informational only
        info["cores"] = os.cpu_count()
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def _image(path: Path, out_dir: Path, embed: bool) -> str:
    if embed:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{path.stem}](data:image/png;base64,{data})"
    try:
        rel = path.resolve().relative_to(out_dir.resolve())
    except ValueError:
        rel = path
    return f"![{path.stem}]({rel.as_posix()})"


def write_report(out_dir: str | os.PathLike, *, title: str, sections: Sequence[tuple[str, str]],
                 images: Mapping[str, str | os.PathLike] | None = None, results: Mapping[str, Any] | None = None,
                 command: str | None = None, machine: Mapping[str, Any] | None = None,
                 embed_images: bool = False, name: str = "report") -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.md`` and ``<out_dir>/<name>.json``; returns both paths.

    ``sections`` are (heading, Markdown body) pairs; ``images`` maps a caption to a PNG path (linked
    relative to ``out_dir``, or embedded when ``embed_images``); ``results`` is the JSON payload (the
    command and machine are added to it).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = dict(machine) if machine is not None else machine_info()
    parts = [f"# {title}", ""]
    if command:
        parts += ["Reproduce with:", "", "```", command, "```", ""]
    parts += [f"Machine: {', '.join(f'{k}={v}' for k, v in machine.items())}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.rstrip(), ""]
    if images:
        parts += ["## Figures", ""]
        for caption, path in images.items():
            parts += [f"**{caption}**", "", _image(Path(path), out, embed_images), ""]
    md = out / f"{name}.md"
    md.write_text("\n".join(parts), encoding="utf-8")
    payload = {"title": title, "command": command, "machine": machine, **(dict(results) if results else {})}
    js = out / f"{name}.json"
    write_json_atomic(js, payload)
    logger.info("wrote %s and %s", md, js)
    return md, js
