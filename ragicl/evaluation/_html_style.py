"""The page around the HTML report: its head (charset, viewport, the Content-Security-Policy) and its CSS.

The policy forbids every script and every load from outside the file (``default-src 'none'``), allowing only
the inline stylesheet and ``data:`` images: whatever a label holds, the page cannot run code or reach the
network. Fonts are the reader's system fonts.
"""

from __future__ import annotations

from ._svg import COLOURS, esc

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

CSS = f"""
:root {{ --ink:#1f2328; --muted:#59636e; --line:#d8dee4; --bg:#ffffff; --panel:#f6f8fa;
  --best:{COLOURS["best"]}; --ref:{COLOURS["reference"]}; --plain:{COLOURS["plain"]}; }}
* {{ box-sizing:border-box; }}
body {{ margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }}
main {{ max-width:1180px; margin:0 auto; padding:24px 28px 40px; }}
header h1 {{ margin:0 0 4px; font-size:24px; }}
.sub {{ margin:0; color:var(--muted); }}
h2 {{ font-size:18px; margin:32px 0 10px; padding-bottom:4px; border-bottom:1px solid var(--line); }}
h3 {{ font-size:14px; margin:0 0 6px; }}
h4 {{ font-size:13px; margin:16px 0 6px; }}
.cards {{ display:flex; flex-wrap:wrap; gap:12px; margin:16px 0 0; }}
.card {{ background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:10px 14px; min-width:190px; }}
.card .k {{ color:var(--muted); font-size:12px; }}
.card .v {{ font-size:20px; font-weight:600; font-variant-numeric:tabular-nums; }}
.ci {{ color:var(--muted); font-weight:400; font-size:.85em; white-space:nowrap; }}
.scroll {{ overflow-x:auto; }}
table {{ border-collapse:collapse; font-variant-numeric:tabular-nums; }}
th, td {{ padding:5px 10px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }}
th:first-child, td:first-child, th.t, td.t {{ text-align:left; }}
thead th {{ font-size:12px; color:var(--muted); font-weight:600; vertical-align:bottom; }}
table.results tbody th {{ font-weight:600; }}
table.results tr.best {{ background:#fdf0ef; }}
table.results tr.best th {{ color:var(--best); }}
table.results tr.reference {{ background:var(--panel); }}
table.results tr.reference th {{ color:var(--ref); }}
table.compact td, table.compact th {{ padding:3px 8px; font-size:13px; }}
table.compact tr.chosen {{ background:#fdf0ef; font-weight:600; }}
.muted {{ color:var(--muted); }}
.grid {{ display:grid; grid-template-columns:repeat(auto-fill,minmax(520px,1fr)); gap:18px; }}
figure {{ margin:0 0 16px; padding:12px 14px; border:1px solid var(--line); border-radius:8px; background:#fff; }}
figcaption {{ color:var(--muted); font-size:12px; margin-top:4px; }}
svg.chart {{ max-width:100%; height:auto; display:block; }}
svg text {{ font:12px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif; fill:var(--ink); }}
svg .tick, svg .axis-label, svg .mark-label, svg .na {{ fill:var(--muted); font-size:11px; }}
svg .chart-title {{ font-weight:600; }}
svg .value {{ font-size:11px; fill:var(--ink); }}
svg .row-best {{ fill:var(--best); font-weight:600; }}
svg .row-reference {{ fill:var(--ref); font-weight:600; }}
svg .grid {{ stroke:#eaeef2; stroke-width:1; }}
svg .zero {{ stroke:#8c959f; stroke-width:1; }}
svg .mark {{ stroke:var(--ref); stroke-width:1.5; stroke-dasharray:4 3; }}
svg .whisker {{ stroke:#1f2328; stroke-width:1.3; }}
svg .whisker-thin {{ stroke-width:1.2; }}
svg .band {{ opacity:.16; }}
svg .line {{ stroke-width:2; }}
.pair {{ display:flex; flex-wrap:wrap; gap:12px; }}
table.confusion td {{ text-align:center; min-width:34px; padding:4px 6px; border:1px solid #eef1f4; }}
table.confusion th.col {{ vertical-align:bottom; padding:4px 2px; }}
table.confusion th.col span {{ writing-mode:vertical-rl; transform:rotate(180deg); display:inline-block;
  max-height:130px; }}
td.recall {{ position:relative; min-width:140px; text-align:left; }}
.minibar {{ display:inline-block; height:10px; border-radius:2px; vertical-align:middle; max-width:100px; }}
td.recall .num {{ margin-left:6px; }}
section ul {{ padding-left:20px; }}
section li {{ margin:3px 0; }}
footer {{ margin-top:36px; color:var(--muted); font-size:12px; border-top:1px solid var(--line); padding-top:10px; }}
code {{ background:var(--panel); padding:1px 4px; border-radius:4px; white-space:pre-wrap; }}
@media print {{ .grid {{ display:block; }} figure {{ break-inside:avoid; }} }}
"""


def page(title: str, css: str, body: str) -> str:
    """A whole HTML document: escaped ``title``, the policy, ``css`` inline, ``body`` inside ``<main>``."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="generator" content="ragicl">'
            f"<title>{esc(title)}</title><style>{css}</style></head>\n<body><main>{body}</main></body></html>\n")
