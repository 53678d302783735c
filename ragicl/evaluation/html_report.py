"""One self-contained HTML report of an evaluation: open it in any browser, no server, no network.

:func:`write_html_report` renders a :class:`~ragicl.evaluation.compare.Report` (from :func:`~ragicl.evaluation.
compare.compare`, or back from ``ragicl eval --json`` through ``Report.from_json``) as a single HTML file:

* the results table (accuracy, macro-F1, TV to the fine-tuned reference with intervals, agreement, cost);
* accuracy bars and TV bars with their 95% intervals;
* the share of the zero-shot → fine-tuned gap each system closes (accuracy and TV), with paired bootstrap
  intervals when the per-query distributions are known;
* the per-label confusion of "ragicl best" against the fine-tuned model (the labels in the most
  disagreements only, above 12 labels), and per-label recall of both with gold labels;
* the tuner's choice and its best trials (``tune=``), the gap curves (``curves=``), the notes.

Charts are inline SVG drawn here (:mod:`ragicl.evaluation._svg`; matplotlib is not needed); every string
from the data (dataset, labels, system names, notes) is escaped, and a Content-Security-Policy forbids
scripts and any load from outside the file. The per-query distributions come from the report itself (a
fresh ``compare``) or from ``predictions=`` (the ``ragicl eval --predictions`` record); without them the
confusion and the intervals of the gap closed are left out, and the page says so. :func:`write_report_file`
picks HTML or Markdown from the file's suffix (:func:`report_format` checks it before a long run).

>>> import tempfile, pathlib
>>> from ragicl.evaluation.compare import Report
>>> r = Report("toy", 0, ("a", "b"), (), (), None)
>>> p = write_html_report(r, pathlib.Path(tempfile.mkdtemp()) / "r.html")
>>> p.read_text().startswith("<!DOCTYPE html>")
True
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import _atomic
from ._html_data import (
    BEST,
    Confusion,
    confusion,
    curve_dicts,
    distributions,
    focus_labels,
    gap_closed,
    top_pairs,
    tune_dict,
)
from ._html_style import CSS, page
from ._svg import COLOURS, Bar, Row, Series, esc, fmt, interval_bars, line_chart, truncate
from .compare import Report

logger = logging.getLogger(__name__)

__all__ = ["render_html", "report_format", "write_html_report", "write_markdown_report", "write_report_file"]

CONFUSION_LABELS = 12  # above this many labels, the confusion shows the labels in the most disagreements
PER_LABEL_ROWS = 15  # above this many labels, the per-label table shows those where the systems differ most
GRID_WIDTH = 540  # px, the charts shown two a row
EPSILON = 0.1  # the ε of the "share of queries with TV > ε" column (as report_markdown)


def _kind(report: Report, name: str) -> str:
    return "reference" if name == report.reference else "best" if name == BEST else "plain"


def _iv(iv: Any) -> str:
    return f"{fmt(iv.estimate)} <span class=ci>[{fmt(iv.low)}, {fmt(iv.high)}]</span>"


def _results_table(report: Report) -> str:
    gaps = {g.system: g for g in report.gaps}
    head = ["system", "accuracy [95% CI]", "macro-F1"]
    if report.reference is not None:
        head += [f"TV to {report.reference} [95% CI]", "TV q90", f"share TV &gt; {EPSILON:g} [CP 95%]", "agreement"]
    head.append("s / query")
    out = ["<table class=results><thead><tr>" + "".join(f"<th>{h if '&' in h else esc(h)}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for s in report.systems:
        cells = [f"<th scope=row>{esc(s.name)}</th>", f"<td>{_iv(s.accuracy)}</td>", f"<td>{fmt(s.macro_f1)}</td>"]
        if report.reference is not None:
            g = gaps.get(s.name)
            if g is None:
                label = report.reference_label() if s.name == report.reference else ""
                cells.append(f"<td colspan=4 class=muted>{esc(label)}</td>")
            else:
                exceed = g.exceed.get(EPSILON)
                cells += [f"<td>{_iv(g.tv)}</td>", f"<td>{fmt(g.tv_quantiles.get('q90', float('nan')))}</td>",
                          f"<td>{_iv(exceed) if exceed is not None else 'n/a'}</td>", f"<td>{fmt(g.agreement)}</td>"]
        cells.append(f"<td>{s.seconds_per_query:.3f}</td>")
        out.append(f"<tr class=\"{_kind(report, s.name)}\">" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _bars(report: Report) -> list[str]:
    acc_rows = [Row(s.name, [Bar(s.accuracy.estimate, s.accuracy.low, s.accuracy.high)], _kind(report, s.name))
                for s in report.systems]
    hi = max([s.accuracy.high for s in report.systems] + [0.0])
    figures = [_figure("Accuracy", interval_bars(acc_rows, title="Accuracy with 95% interval", xlabel=
                       "accuracy on the test queries (bootstrap 95% interval)",
                       domain=(0.0, 1.0 if hi > 0.5 else max(hi, 0.1)), width=GRID_WIDTH), "fig-accuracy",
                       "Share of test queries each system labels correctly; the whisker is the 95% interval.")]
    if report.reference is not None and report.gaps:
        tv_rows = [Row(g.system, [Bar(g.tv.estimate, g.tv.low, g.tv.high, f"agreement {fmt(g.agreement)}")],
                       _kind(report, g.system)) for g in report.gaps]
        figures.append(_figure(
            f"Distance to {report.reference} (total variation)",
            interval_bars(tv_rows, title=f"Mean TV to {report.reference}", xlabel=
                          f"mean TV to {report.reference}'s label distributions (lower is closer)", width=GRID_WIDTH), "fig-tv",
            f"Per query, half the L1 distance between a system's label distribution and {report.reference}'s, "
            "averaged over the test queries; 0 means the same distributions."))
    return figures


def _figure(heading: str, svg: str, fig_id: str, caption: str) -> str:
    return (f'<figure id="{fig_id}"><h3>{esc(heading)}</h3>{svg}<figcaption>{esc(caption)}</figcaption></figure>')


def _gap_section(report: Report, rows: list, note: str | None) -> str:
    if not rows:
        return f"<p class=muted>{esc(note)}.</p>" if note else ""
    chart_rows = []
    for r in rows:
        bars = [Bar(s.estimate, s.low, s.high) if s is not None else None for s in (r.accuracy, r.tv)]
        chart_rows.append(Row(r.system, bars, _kind(report, r.system)))
    vals = [v for r in rows for s in (r.accuracy, r.tv) if s is not None
            for v in (s.estimate, s.low, s.high) if v is not None and math.isfinite(v)]
    lo, hi = min([0.0, *vals]), max([1.0, *vals])
    svg = interval_bars(chart_rows, title="Share of the zero-shot to fine-tuned gap closed",
                        series=["accuracy gap closed", "TV gap closed"], domain=(max(lo, -2.0), min(hi, 3.0)),
                        marks=[(1.0, report.reference or "reference")], xlabel="share of the gap closed (0 = "
                        "zero-shot, 1 = as good as / as close as the fine-tuned model)")
    has_iv = any(s is not None and s.low is not None for r in rows for s in (r.accuracy, r.tv))
    caption = ("Accuracy: (accuracy − zero-shot's) / (fine-tuned's − zero-shot's). TV: 1 − TV / zero-shot's TV, "
               "both TV to the fine-tuned model. ")
    caption += ("Whiskers: paired percentile bootstrap 95% over the test queries (none where the denominator is "
                "not clearly above 0)." if has_iv else "No intervals: the per-query distributions (and gold "
                "labels) were not given (pass predictions=, or ragicl eval --predictions).")
    out = _figure("Share of the gap closed", svg, "fig-gap-closed", caption)
    return out + (f"<p class=muted>{esc(note)}.</p>" if note else "")


def _heat(count: int, total: int, diagonal: bool | None) -> str:
    """Cell colour: green on the diagonal (agreement), red off it, grey for the "other" block (None)."""
    if count == 0:
        return ""
    share = min(1.0, count / max(total, 1))
    alpha = 0.12 + 0.78 * math.sqrt(share)
    rgb = "84,160,120" if diagonal else "140,149,159" if diagonal is None else "228,87,86"
    ink = ";color:#fff" if alpha > 0.55 else ""
    return f' style="background:rgba({rgb},{alpha:.2f}){ink}"'


def _confusion_section(report: Report, conf: Confusion | None, why: str) -> str:
    if conf is None:
        return f"<p class=muted>{esc(why)}</p>"
    m, labels = conf.matrix, conf.labels
    shown = focus_labels(m, CONFUSION_LABELS)
    rest = [i for i in range(len(labels)) if i not in shown]
    vs = f"{conf.system} vs {conf.against}"
    rows_name = "the gold label" if conf.against == "gold" else f"{conf.against}'s label"
    out = [(f"<p>Rows: {esc(rows_name)}; columns: {esc(conf.system)}'s label; each cell counts test queries "
            f"(diagonal: the two agree). {int(m.trace())} of {int(m.sum())} queries agree "
            f"({m.trace() / max(m.sum(), 1):.1%}).</p>")]
    if rest:
        out.append(f"<p class=muted>{len(labels)} labels: shown are the {len(shown)} in the most disagreements; "
                   f"the other {len(rest)} are summed under “other”.</p>")
    total = int(m.sum())

    def cell(c: int, diag: bool | None, tip: str) -> str:
        return f'<td title="{esc(tip)}"{_heat(c, total, diag)}>{c if c else ""}</td>'

    head = "".join(f'<th class=col title="{esc(labels[j])}"><span>{esc(truncate(labels[j], 16))}</span></th>'
                   for j in shown) + ("<th class=col><span>other</span></th>" if rest else "")
    out.append(f'<div class=scroll><table class=confusion aria-label="{esc(vs)}"><thead><tr><th></th>{head}'
               "</tr></thead><tbody>")
    for i in shown + ([None] if rest else []):  # type: ignore[list-item]
        name = labels[i] if i is not None else "other"
        src = [i] if i is not None else rest
        cells = []
        for j in shown:
            c = int(m[src, j].sum())
            cells.append(cell(c, i == j, f"{rows_name} {name} → {conf.system} {labels[j]}: {c}"))
        if rest:
            c = int(m[src][:, rest].sum())
            cells.append(cell(c, None if i is None else False, f"{rows_name} {name} → {conf.system} other: {c}"))
        out.append(f'<tr><th scope=row title="{esc(name)}">{esc(truncate(name, 24))}</th>{"".join(cells)}</tr>')
    out.append("</tbody></table></div>")
    pairs = top_pairs(m, 10)
    if pairs:
        out.append(f"<h4>Most frequent disagreements</h4><table class=compact><thead><tr><th>{esc(rows_name)}</th>"
                   f"<th class=t>{esc(conf.system)} says</th><th>queries</th></tr></thead><tbody>")
        out += [f"<tr><td>{esc(labels[i])}</td><td class=t>{esc(labels[j])}</td><td>{c}</td></tr>" for i, j, c in pairs]
        out.append("</tbody></table>")
    if conf.per_label:
        out.append(_per_label(conf))
    return "".join(out)


def _per_label(conf: Confusion) -> str:
    rows = list(conf.per_label)
    ref = conf.against if conf.against != "gold" else None
    note = ""
    if len(rows) > PER_LABEL_ROWS:
        key = (lambda r: -abs(r[2] - r[3])) if ref else (lambda r: r[2])
        rows = sorted(rows, key=key)[:PER_LABEL_ROWS]
        note = (f" ({PER_LABEL_ROWS} of {len(conf.per_label)} labels: " +
                ("those where the two differ most)" if ref else "those with the lowest recall)"))

    def bar(v: float | None, colour: str) -> str:
        if v is None:
            return "<td></td>"
        return (f'<td class=recall><span class=minibar style="width:{v * 100:.0f}px;background:{colour}"></span>'
                f"<span class=num>{v:.2f}</span></td>")

    head = f"<th>label</th><th>gold queries</th><th>recall of {esc(conf.system)}</th>"
    head += f"<th>recall of {esc(ref)}</th>" if ref else ""
    body = "".join(f"<tr><td>{esc(lab)}</td><td>{n}</td>{bar(r_s, COLOURS['best'])}"
                   + (bar(r_r, COLOURS["reference"]) if ref else "") + "</tr>" for lab, n, r_s, r_r in rows)
    return (f"<h4>Per label, against the gold labels{esc(note)}</h4><table class=compact><thead><tr>{head}</tr>"
            f"</thead><tbody>{body}</tbody></table>")


def _value(v: Any) -> str:
    """A parameter value as escaped text (None, i.e. JSON null, as an em dash)."""
    return "—" if v is None else esc(v)


def _mapping(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _tune_section(tune: Mapping[str, Any], top: int) -> str:
    """What the tuner chose, why, against the plain systems, and its best ``top`` trials; every key optional."""
    params = _mapping(tune.get("params"))
    out = []
    if params:
        out.append("<table class=compact><tbody>" + "".join(
            f"<tr><th scope=row>{esc(k)}</th><td>{_value(v)}</td></tr>" for k, v in params.items()) + "</tbody></table>")
    if tune.get("reason"):
        out.append(f"<p>{esc(tune['reason'])}</p>")
    baselines = _mapping(tune.get("baselines"))
    if isinstance(tune.get("dev_accuracy"), (int, float)) and baselines:
        rows = [Row("chosen setting", [Bar(float(tune["dev_accuracy"]))], "best")]
        rows += [Row(str(k), [Bar(float(v))], "plain") for k, v in baselines.items() if isinstance(v, (int, float))]
        out.append(_figure("Dev accuracy: the choice against the plain systems", interval_bars(
            rows, title="dev accuracy of the choice and the plain systems", domain=(0.0, 1.0),
            xlabel=f"accuracy on {tune.get('n_dev', '?')} dev queries from the training set"), "fig-tune",
            "The tuner never sees the test queries: it chooses on held-out training examples."))
    trials = [t for t in tune.get("trials") or [] if isinstance(t, Mapping)] if isinstance(
        tune.get("trials"), list) else []
    if trials:
        ranked = sorted(trials, key=lambda t: (-_number(t.get("accuracy"), 0.0), _number(t.get("log_loss"), math.inf)))
        keys = list(dict.fromkeys(k for t in ranked[:top] for k in _mapping(t.get("params"))))
        head = "<th>#</th><th>dev accuracy</th><th>dev log-loss</th>" + "".join(f"<th>{esc(k)}</th>" for k in keys)
        body = []
        for i, t in enumerate(ranked[:top], 1):
            p = _mapping(t.get("params"))
            chosen = bool(params) and all(params.get(k) == v for k, v in p.items())
            body.append(f"<tr{' class=chosen' if chosen else ''}><td>{i}</td><td>{fmt(t.get('accuracy'))}</td>"
                        f"<td>{fmt(t.get('log_loss'))}</td>" + "".join(f"<td>{_value(p.get(k))}</td>" for k in keys)
                        + "</tr>")
        out.append(f"<h4>Best {min(top, len(ranked))} of {len(ranked)} settings tried</h4><div class=scroll>"
                   f"<table class=compact><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
    skipped = tune.get("skipped")
    if isinstance(skipped, list) and skipped:
        out.append(f"<p class=muted>{len(skipped)} setting(s) not tried within the time budget.</p>")
    return "".join(out) or "<p class=muted>The tuner result holds nothing to show.</p>"


def _number(v: Any, default: float) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(f) else f


def _curve_section(title: str, c: Mapping[str, Any]) -> str:
    meta = c.get("meta") or {}
    knob = meta.get("knob")
    is_data = bool(meta.get("n_index"))
    x = [float(v) for v in (meta["n_index"] if is_data else c["x"])]
    xlabel = "indexed examples n" if is_data else str(meta.get("xlabel", "x"))

    def pts(key: str) -> list[Bar]:
        return [Bar(float(iv["estimate"]), iv.get("low"), iv.get("high")) for iv in c[key]]

    log2 = is_data or knob == "budget"
    tv = line_chart(x, [Series("mean TV", pts("tv"), COLOURS["best"])], title="mean TV to the reference",
                    xlabel=xlabel, ylabel="mean TV", log2_x=log2)
    acc = line_chart(x, [Series("accuracy", pts("accuracy"), COLOURS["plain"])], title="accuracy",
                     xlabel=xlabel, ylabel="accuracy", log2_x=log2)
    extra = ""
    if meta.get("skipped_budgets"):
        extra = "<p class=muted>Skipped budgets (the longest query alone needs more tokens): " + esc(", ".join(
            f"{b} (needs {n})" for b, n in meta["skipped_budgets"].items())) + "</p>"
    return (f'<figure class=curve><h3>{esc(title)}</h3><div class=pair>{tv}{acc}</div><figcaption>Points: '
            "estimates; bands and whiskers: 95% intervals over the test queries.</figcaption>"
            f"{extra}</figure>")


def _summary(report: Report, gaps_rows: list) -> str:
    by = {s.name: s for s in report.systems}
    cards = []
    focus = by.get(BEST) or (max((s for s in report.systems if s.name != report.reference),
                                 key=lambda s: s.accuracy.estimate, default=None))
    if focus is not None:
        cards.append((f"{focus.name}: accuracy", _iv(focus.accuracy)))
    if report.reference in by:
        cards.append((f"{report.reference}: accuracy", _iv(by[report.reference].accuracy)))
    gap = next((g for g in report.gaps if focus is not None and g.system == focus.name), None)
    if gap is not None:
        cards.append((f"{focus.name}: TV to {report.reference}", _iv(gap.tv)))
    closed = next((r for r in gaps_rows if focus is not None and r.system == focus.name and r.accuracy), None)
    if closed is not None:
        s = closed.accuracy
        ci = f" <span class=ci>[{fmt(s.low, 2)}, {fmt(s.high, 2)}]</span>" if s.low is not None else ""
        cards.append(("share of the accuracy gap closed", f"{fmt(s.estimate, 2)}{ci}"))
    return "<div class=cards>" + "".join(f"<div class=card><div class=k>{esc(k)}</div><div class=v>{v}</div></div>"
                                         for k, v in cards) + "</div>"


def render_html(report: Report, *, tune: Any = None, curves: Any = None, predictions: Any = None,
                gold: Sequence[str] | None = None, title: str | None = None, command: str | None = None,
                top_trials: int = 10) -> str:
    """The report as one HTML document (a string); see :func:`write_html_report` for the arguments."""
    from .._version import __version__

    probs, gold_ids, data_notes = distributions(report, predictions, gold)
    tune_d = tune_dict(tune)
    curve_list = curve_dicts(curves)
    title = title or f"ragicl report: {report.dataset}"
    ref = report.reference
    sub = (f"{report.dataset} · {report.n} test queries · {len(report.labels)} labels · "
           + (f"reference: {ref}" if ref else "no fine-tuned reference (no TV columns)"))
    body = [f"<header><h1>{esc(title)}</h1><p class=sub>{esc(sub)}</p>"]
    training = report.reference_training or {}
    if training:
        bits = [text.format(fmt(training[k], 3) if k == "dev_accuracy" else training[k]) for k, text in (
            ("steps", "{} steps"), ("examples_seen", "{} examples seen"), ("dev_accuracy", "dev accuracy {}"))
            if training.get(k) is not None]
        bits.append("converged" if training.get("converged") else "not converged (see the notes)")
        body.append(f"<p class=sub>{esc(ref)} training: {esc(', '.join(bits))}</p>")
    gap_rows, gap_note = gap_closed(report, probs, gold_ids)
    body.append(_summary(report, gap_rows) + "</header>")
    body.append(f'<section id="results"><h2>Results</h2><div class=scroll>{_results_table(report)}</div></section>')
    body.append('<section id="figures"><h2>Figures</h2><div class=grid>' + "".join(_bars(report)) + "</div>"
                + (_gap_section(report, gap_rows, gap_note) if ref else "") + "</section>")
    conf = confusion(report, probs, gold_ids)
    why = ("Not available: the per-query label distributions were not given (pass predictions=, the file "
           "ragicl eval --predictions writes)." if not probs else
           "Not available: no reference and no gold labels to compare with.")
    heading = f"Per label: {conf.system} vs {conf.against}" if conf else "Per label"
    body.append(f'<section id="confusion"><h2>{esc(heading)}</h2>{_confusion_section(report, conf, why)}</section>')
    if tune_d is not None:
        body.append(f'<section id="tuning"><h2>How {esc(BEST)} was chosen</h2>{_tune_section(tune_d, top_trials)}'
                    "</section>")
    if curve_list:
        body.append('<section id="curves"><h2>Gap curves</h2>' + "".join(_curve_section(t, c) for t, c in curve_list)
                    + "</section>")
    notes = [*report.notes, *data_notes]
    if notes:
        body.append('<section id="notes"><h2>Notes</h2><ul>' + "".join(f"<li>{esc(n)}</li>" for n in notes)
                    + "</ul></section>")
    foot = f"Written by ragicl {esc(__version__)}; a single file: no script, nothing loaded from outside it."
    if command:
        foot += f"<br>Reproduce with: <code>{esc(command)}</code>"
    body.append(f"<footer>{foot}</footer>")
    return page(title, CSS, "".join(body))


def write_html_report(report: Report, path: str | os.PathLike, *, tune: Any = None, curves: Any = None,
                      predictions: Any = None, gold: Sequence[str] | None = None, title: str | None = None,
                      command: str | None = None, top_trials: int = 10) -> Path:
    """Write ``report`` as one self-contained HTML file at ``path`` (atomically, mode 0666 minus the umask).

    ``tune``: a :class:`~ragicl.estimators.tune.TuneResult` or its ``to_json()`` dict (the choice of
    "ragicl best" and its ``top_trials`` best trials). ``curves``: a :class:`~ragicl.evaluation.curves.Curve`,
    its ``to_json()`` dict, a list of them or a mapping title → curve. ``predictions``: a
    :class:`~ragicl.evaluation.predictions.Predictions` for the same queries (needed when ``report`` came
    from JSON: it has no per-query arrays); ``gold``: the test queries' gold labels in order (a
    ``Predictions`` brings its own). ``command`` is printed as the way to reproduce. Returns the path.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass a file name for the report, e.g. {path / 'report.html'}.")
    text = render_html(report, tune=tune, curves=curves, predictions=predictions, gold=gold, title=title,
                       command=command, top_trials=top_trials)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic.write_atomic(path, text)
    logger.info("wrote %s", path)
    return path


def write_markdown_report(report: Report, path: str | os.PathLike, *, tune: Any = None, curves: Any = None,
                          title: str | None = None, command: str | None = None, top_trials: int = 10) -> Path:
    """Write ``report`` as one Markdown file: the table (:func:`~ragicl.evaluation.report.report_markdown`),
    the notes, the tuner's choice and trials, the curves' tables. Atomic, mode 0666 minus the umask."""
    from .report import curve_markdown, markdown_table, report_markdown

    parts = [f"# {title or f'ragicl report: {report.dataset}'}", "",
             f"{report.dataset}: {report.n} test queries, {len(report.labels)} labels", "", report_markdown(report)]
    footnote = (report.reference_training or {}).get("note")  # report_markdown prints it under the table
    notes = [n for n in report.notes if n != footnote]
    if notes:
        parts += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    tune_d = tune_dict(tune)
    if tune_d:
        parts += ["", f"## How {BEST} was chosen", "", f"Chosen: {_md_params(_mapping(tune_d.get('params')))}"]
        if tune_d.get("reason"):
            parts += ["", str(tune_d["reason"])]
        trials = sorted((t for t in tune_d.get("trials") or [] if isinstance(t, Mapping)),
                        key=lambda t: (-_number(t.get("accuracy"), 0.0), _number(t.get("log_loss"), math.inf)))
        if trials:
            parts += ["", markdown_table(["dev accuracy", "dev log-loss", "setting"],
                                         [[fmt(t.get("accuracy")), fmt(t.get("log_loss")),
                                           _md_params(_mapping(t.get("params")))] for t in trials[:top_trials]])]
    for name, c in curve_dicts(curves):
        from .curves import Curve
        from .stats import Interval

        curve = Curve(tuple(c["x"]), tuple(Interval(**iv) for iv in c["tv"]),
                      tuple(Interval(**iv) for iv in c["accuracy"]), c.get("meta") or {})
        parts += ["", f"## {name}", "", curve_markdown(curve)]
    if command:
        parts += ["", "Reproduce with:", "", "```", command, "```"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic.write_atomic(path, "\n".join(parts) + "\n")
    return path


def _md_params(p: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items()).replace("|", "\\|")


def report_format(path: str | os.PathLike) -> str:
    """``"html"`` or ``"md"`` from ``path``'s suffix (``.html``/``.htm``, ``.md``/``.markdown``, any case); any
    other suffix is a ``ValueError`` naming the choices. Cheap: call it before a long run to fail early."""
    suffix = Path(path).suffix.lower()
    if suffix in (".html", ".htm"):
        return "html"
    if suffix in (".md", ".markdown"):
        return "md"
    raise ValueError(f"report file {str(path)!r} has suffix {suffix or '(none)'!r}; expected .html (a "
                     "self-contained page) or .md (Markdown), e.g. report.html.")


def write_report_file(report: Report, path: str | os.PathLike, **options: Any) -> Path:
    """:func:`write_html_report` or :func:`write_markdown_report` (which ignores ``predictions``/``gold``),
    chosen by :func:`report_format` from the suffix of ``path``."""
    if report_format(path) == "html":
        return write_html_report(report, path, **options)
    options = {k: v for k, v in options.items() if k not in ("predictions", "gold")}
    return write_markdown_report(report, path, **options)
