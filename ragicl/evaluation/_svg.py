"""Hand-written inline SVG charts for the HTML report: no JavaScript, no external files, no matplotlib.

Every function returns one ``<svg>`` element as a string, with every piece of text escaped
(:func:`esc`), a ``<title>`` per mark (the browser's own tooltip) and a ``role="img"`` with an
``aria-label``. Two kinds of chart:

* :func:`interval_bars` — horizontal bars with their 95% interval as a whisker, one row per system (one
  or several series per row);
* :func:`line_chart` — points joined by lines with the interval as a shaded band (the gap curves).

>>> svg = interval_bars([Row("a<b", [Bar(0.5, 0.4, 0.6)])], title="accuracy")
>>> svg.startswith("<svg") and "a&lt;b" in svg and "<b" not in svg.replace("<b>", "")
True
>>> nice_ticks(0.0, 1.0)
[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
>>> [_tick_text(t, 0.25) for t in nice_ticks(-0.2, 1.0)]
['-0.25', '0.00', '0.25', '0.50', '0.75', '1.00']
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

#: colours of the kinds of rows/series (colour-blind safe, readable on white)
COLOURS = {"plain": "#4c78a8", "best": "#e45756", "reference": "#54575c"}
#: colours of the series of a chart with several bars per row
SERIES_COLOURS = ("#4c78a8", "#72b7b2", "#f58518", "#b279a2")
FONT = 12  # px, axis and row labels
CHAR_W = 6.6  # average width of one character at FONT px, for the label margin


def esc(text: object) -> str:
    """``text`` as safe HTML/SVG text (``& < > " '`` escaped)."""
    return html.escape(str(text), quote=True)


def fmt(v: object, digits: int = 3) -> str:
    """A number for a label: ``digits`` decimals, ``n/a`` for NaN/None; anything else as escaped text."""
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a" if v is None else esc(v)
    return "n/a" if math.isnan(f) else f"{f:.{digits}f}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (about ``n`` of them)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    ticks, t = [], start
    while t <= hi + step * 1e-6:
        ticks.append(round(t, 10))
        t += step
    if ticks[-1] < hi - 1e-12:
        ticks.append(round(t, 10))
    return ticks


def truncate(label: str, width: int) -> str:
    """``label`` cut to ``width`` characters with an ellipsis (the full text goes in a ``<title>``)."""
    return label if len(label) <= width else label[: max(width - 1, 1)] + "…"


@dataclass(frozen=True)
class Bar:
    """One value with its interval (``low``/``high`` may be None: no whisker)."""

    estimate: float
    low: float | None = None
    high: float | None = None
    note: str = ""  # extra tooltip text


@dataclass(frozen=True)
class Row:
    """One labelled row of bars: one :class:`Bar` (or None: not available) per series."""

    label: str
    bars: Sequence[Bar | None]
    kind: str = "plain"  # plain | best | reference: the colour of a one-series chart
    tooltip: str = ""


@dataclass(frozen=True)
class Series:
    """One line of a :func:`line_chart`: y values with intervals at the chart's x positions."""

    name: str
    points: Sequence[Bar]
    colour: str = COLOURS["plain"]


@dataclass
class _Axis:
    lo: float
    hi: float
    x0: float
    x1: float
    log2: bool = False
    ticks: list[float] = field(default_factory=list)

    def __call__(self, v: float) -> float:
        if self.log2:
            lo, hi, v = math.log2(self.lo), math.log2(self.hi), math.log2(max(v, 1e-300))
        else:
            lo, hi = self.lo, self.hi
        return self.x0 + (v - lo) / ((hi - lo) or 1.0) * (self.x1 - self.x0)


def _open(width: float, height: float, label: str, css_class: str) -> str:
    return (f'<svg class="{css_class}" viewBox="0 0 {width:.0f} {height:.0f}" '
            f'width="{width:.0f}" height="{height:.0f}" role="img" aria-label="{esc(label)}">'
            f"<title>{esc(label)}</title>")


def _tick_text(v: float, step: float) -> str:
    if abs(v) >= 1000 and float(v).is_integer():
        return f"{v:,.0f}"
    digits = 0  # as many decimals as the step needs: ticks every 0.25 read 0.25, 0.50, ...
    while digits < 6 and abs(round(step, digits) - step) > 1e-9 * max(abs(step), 1e-12):
        digits += 1
    return f"{v:.{digits}f}"


def interval_bars(rows: Sequence[Row], *, title: str, series: Sequence[str] = (), xlabel: str = "",
                  domain: tuple[float, float] | None = None, marks: Sequence[tuple[float, str]] = (),
                  width: int = 760, css_class: str = "chart") -> str:
    """Horizontal bars, one row per :class:`Row`, each bar with its interval as a whisker and its value.

    ``series`` names the bars of each row (a legend is drawn when there are two or more); ``domain`` fixes
    the x range (default: 0 to the largest upper bound, widened to include negatives); ``marks`` are
    labelled vertical reference lines (e.g. ``(1.0, "fine-tuned")``).
    """
    n_series = max([len(r.bars) for r in rows] + [1])
    label_w = min(max((len(r.label) for r in rows), default=4), 28) * CHAR_W + 16
    bar_h, gap = (16 if n_series == 1 else 12), 10
    row_h = bar_h * n_series + gap
    legend_h = 22 if n_series > 1 and series else 0
    top, bottom = 8 + legend_h, 40
    height = top + row_h * max(len(rows), 1) + bottom
    values = [v for r in rows for b in r.bars if b is not None
              for v in (b.estimate, b.low, b.high) if v is not None and math.isfinite(v)]
    values += [m for m, _ in marks]
    lo, hi = domain if domain is not None else (min([0.0, *values]), max([0.0, *values]) or 1.0)
    ticks = nice_ticks(lo, hi)
    ax = _Axis(ticks[0], ticks[-1], label_w, width - 62, ticks=ticks)
    out = [_open(width, height, title, css_class)]
    if legend_h:
        x = label_w
        for i, name in enumerate(series):
            colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
            out.append(f'<rect x="{x:.1f}" y="6" width="12" height="12" fill="{colour}"/>'
                       f'<text x="{x + 16:.1f}" y="16" class="legend">{esc(name)}</text>')
            x += 16 + len(name) * CHAR_W + 18
    plot_bottom = top + row_h * max(len(rows), 1)
    for t in ticks:  # grid and x axis
        x = ax(t)
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{plot_bottom}" class="grid"/>'
                   f'<text x="{x:.1f}" y="{plot_bottom + 15}" class="tick" text-anchor="middle">'
                   f"{_tick_text(t, ticks[1] - ticks[0] if len(ticks) > 1 else 1)}</text>")
    if xlabel:
        out.append(f'<text x="{(ax.x0 + ax.x1) / 2:.1f}" y="{height - 6}" class="axis-label" '
                   f'text-anchor="middle">{esc(xlabel)}</text>')
    if ax.lo < 0 < ax.hi:
        out.append(f'<line x1="{ax(0):.1f}" y1="{top - 4}" x2="{ax(0):.1f}" y2="{plot_bottom}" class="zero"/>')
    for value, name in marks:
        x = ax(value)
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{plot_bottom}" class="mark">'
                   f"<title>{esc(name)}</title></line>"
                   f'<text x="{x + 3:.1f}" y="{top + 6}" class="mark-label">{esc(name)}</text>')
    for i, row in enumerate(rows):
        y = top + i * row_h + gap / 2
        mid = y + bar_h * n_series / 2
        out.append(f'<text x="{label_w - 8:.1f}" y="{mid + 4:.1f}" class="row-label row-{esc(row.kind)}" '
                   f'text-anchor="end"><title>{esc(row.label)}</title>{esc(truncate(row.label, 28))}</text>')
        for j, bar in enumerate(row.bars):
            by = y + j * bar_h
            if bar is None or not math.isfinite(bar.estimate):
                out.append(f'<text x="{ax(0) + 4:.1f}" y="{by + bar_h - 4:.1f}" class="na">n/a</text>')
                continue
            colour = (COLOURS.get(row.kind, COLOURS["plain"]) if n_series == 1
                      else SERIES_COLOURS[j % len(SERIES_COLOURS)])
            x0, x1 = sorted((ax(max(ax.lo, min(0.0, ax.hi))), ax(bar.estimate)))
            tip = f"{row.label}" + (f" — {series[j]}" if j < len(series) else "") + f": {fmt(bar.estimate)}"
            if bar.low is not None and bar.high is not None:
                tip += f" [{fmt(bar.low)}, {fmt(bar.high)}] (95% interval)"
            tip += f". {bar.note}" if bar.note else ""
            tip += f". {row.tooltip}" if row.tooltip else ""
            out.append(f'<g class="bar"><title>{esc(tip)}</title>'
                       f'<rect x="{x0:.1f}" y="{by + 1:.1f}" width="{max(x1 - x0, 1.0):.1f}" height="{bar_h - 2}" '
                       f'fill="{colour}" rx="2"/>')
            end = ax(bar.estimate)
            if bar.low is not None and bar.high is not None:
                wl, wh, wy = ax(bar.low), ax(bar.high), by + bar_h / 2
                out.append(f'<line x1="{wl:.1f}" y1="{wy:.1f}" x2="{wh:.1f}" y2="{wy:.1f}" class="whisker"/>'
                           f'<line x1="{wl:.1f}" y1="{wy - 4:.1f}" x2="{wl:.1f}" y2="{wy + 4:.1f}" class="whisker"/>'
                           f'<line x1="{wh:.1f}" y1="{wy - 4:.1f}" x2="{wh:.1f}" y2="{wy + 4:.1f}" class="whisker"/>')
                end = max(end, wh)
            out.append(f'<text x="{end + 5:.1f}" y="{by + bar_h - 4:.1f}" class="value">{fmt(bar.estimate)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def line_chart(x: Sequence[float], series: Sequence[Series], *, title: str, xlabel: str, ylabel: str,
               log2_x: bool = False, x_labels: Sequence[str] | None = None, width: int = 370,
               height: int = 250, css_class: str = "chart") -> str:
    """Points joined by a line per :class:`Series`, each point's interval as a shaded band.

    ``log2_x`` spaces x on a log2 scale (budgets, data sizes); ``x_labels`` replaces the tick texts (the
    ticks are then the x values themselves).
    """
    left, right, top, bottom = 52, 14, 26, 42
    xs = [float(v) for v in x]
    log2_x = log2_x and all(v > 0 for v in xs)
    lo_x, hi_x = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if hi_x == lo_x:
        lo_x, hi_x = (lo_x / 2, hi_x * 2) if log2_x else (lo_x - 1, hi_x + 1)
    ax = _Axis(lo_x, hi_x, left, width - right, log2=log2_x)
    ys = [v for s in series for p in s.points for v in (p.estimate, p.low, p.high)
          if v is not None and math.isfinite(v)]
    yticks = nice_ticks(min(ys, default=0.0), max(ys, default=1.0), 4)
    ay = _Axis(yticks[0], yticks[-1], height - bottom, top)
    out = [_open(width, height, title, css_class),
           f'<text x="{left}" y="14" class="chart-title">{esc(title)}</text>']
    for t in yticks:
        y = ay(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
                   f"{_tick_text(t, yticks[1] - yticks[0] if len(yticks) > 1 else 1)}</text>")
    tick_xs = xs if (x_labels is not None or log2_x or len(xs) <= 8) else nice_ticks(lo_x, hi_x)
    labels = list(x_labels) if x_labels is not None else [f"{v:g}" for v in tick_xs]
    for v, text in zip(tick_xs, labels):
        out.append(f'<text x="{ax(v):.1f}" y="{height - bottom + 15}" class="tick" text-anchor="middle">'
                   f"{esc(text)}</text>")
    out.append(f'<text x="{(left + width - right) / 2:.1f}" y="{height - 6}" class="axis-label" '
               f'text-anchor="middle">{esc(xlabel)}</text>'
               f'<text x="12" y="{(top + height - bottom) / 2:.1f}" class="axis-label" text-anchor="middle" '
               f'transform="rotate(-90 12 {(top + height - bottom) / 2:.1f})">{esc(ylabel)}</text>')
    for s in series:
        pts = [(ax(xv), p) for xv, p in zip(xs, s.points) if p is not None and math.isfinite(p.estimate)]
        band = [(px, p) for px, p in pts if p.low is not None and p.high is not None]
        if len(band) > 1:
            poly = [f"{px:.1f},{ay(p.high):.1f}" for px, p in band]
            poly += [f"{px:.1f},{ay(p.low):.1f}" for px, p in reversed(band)]
            out.append(f'<polygon points="{" ".join(poly)}" fill="{s.colour}" class="band"/>')
        if len(pts) > 1:
            line = " ".join(f"{px:.1f},{ay(p.estimate):.1f}" for px, p in pts)
            out.append(f'<polyline points="{line}" fill="none" stroke="{s.colour}" class="line"/>')
        for (px, p), xv in zip(pts, xs):
            tip = f"{s.name} at {xv:g}: {fmt(p.estimate)}"
            if p.low is not None and p.high is not None:
                tip += f" [{fmt(p.low)}, {fmt(p.high)}]"
                out.append(f'<line x1="{px:.1f}" y1="{ay(p.low):.1f}" x2="{px:.1f}" y2="{ay(p.high):.1f}" '
                           f'stroke="{s.colour}" class="whisker-thin"/>')
            out.append(f'<circle cx="{px:.1f}" cy="{ay(p.estimate):.1f}" r="3.5" fill="{s.colour}">'
                       f"<title>{esc(tip)}</title></circle>")
    out.append("</svg>")
    return "".join(out)
