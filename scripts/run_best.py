#!/usr/bin/env python
"""'ragicl best' against the plain systems on several datasets, through the CLI a new user runs.

For each dataset: ``ragicl index build`` on its training set (skipped when the index exists), then
``ragicl eval --n N --k K --json ...``, which scores zero-shot, random-k, retrieved-k, the kNN votes (k = 8
and 32) and "ragicl best" (tuned on dev queries drawn from the training set, never the test set), and a
fine-tuned reference when ``--finetuned-root`` holds ``<root>/<dataset>``. Then one Markdown table of every
report, with the share of the zero-shot → best-plain gap and the best-vs-vote margins. Every system's
per-query distributions go to ``<out>/<dataset>.predictions.json``: a rerun resumes from it, and a rerun
with a reference trained later scores only the reference.

    python scripts/run_best.py --datasets trec,sst2,agnews --n 200 --k 8 --out runs/best
    python scripts/run_best.py --datasets banking77 --n 500 --ray local --workers 2   # test queries on every core
    python scripts/run_best.py --datasets cb --lm gemma-3-270m --finetuned-root refs-gemma --out runs/best-gemma
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _ci(x: dict) -> str:
    return f"{x['estimate']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"


def _row(s: dict, gaps: dict[str, dict] | None, reference: str | None) -> str:
    cells = [s["name"], _ci(s["accuracy"]), f"{s['macro_f1']:.3f}"]
    if gaps is not None:  # a reference was scored: TV to it (with its CI) and top-label agreement
        gap = gaps.get(s["name"])
        if s["name"] == reference:
            cells += ["(reference)", ""]
        elif gap:
            cells += [_ci(gap["tv"]), f"{gap['agreement']:.3f}"]
        else:
            cells += ["", ""]
    cells.append(f"{s['seconds_per_query']:.3f}")
    return "| " + " | ".join(cells) + " |"


def table(report: dict) -> str:
    """Markdown table of one eval report (with TV to the reference when one was scored), targets checked."""
    by = {s["name"]: s for s in report["systems"]}
    reference = report.get("reference")
    gaps = {g["system"]: g for g in report.get("gaps") or []} if reference else None
    head = ["system", "accuracy [95% CI]", "macro-F1"]
    if gaps is not None:
        head += [f"TV to {reference} [95% CI]", "agree"]
    head.append("s/query")
    lines = [f"### {report['dataset']} ({report['n']} test queries, {len(report['labels'])} labels)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [_row(s, gaps, reference) for s in report["systems"]]
    best = by.get("ragicl best")
    if best:
        acc = best["accuracy"]["estimate"]
        votes = {k: v["accuracy"]["estimate"] for k, v in by.items() if k.startswith("kNN vote")}
        retrieved = {k: v["accuracy"]["estimate"] for k, v in by.items() if k.startswith("retrieved-")}
        lines.append("")
        for name, other in {**votes, **retrieved}.items():
            lines.append(f"- ragicl best − {name}: {acc - other:+.3f}")
        zero = by.get("zero-shot", {}).get("accuracy", {}).get("estimate")
        ref = by.get(reference or "fine-tuned", {}).get("accuracy", {}).get("estimate")
        if zero is not None and ref is not None and ref > zero:
            lines.append(f"- share of the zero-shot → {reference or 'fine-tuned'} gap closed: "
                         f"{(acc - zero) / (ref - zero):.2f}")
        if gaps and "ragicl best" in gaps:
            tv = gaps["ragicl best"]["tv"]["estimate"]
            for name in {**votes, **retrieved}:
                if name in gaps:
                    lines.append(f"- TV to {reference}: ragicl best − {name}: "
                                 f"{tv - gaps[name]['tv']['estimate']:+.3f}")
    lines += ["", *[f"> {n}" for n in report.get("notes", [])], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="trec,sst2,agnews,cr,subj,rte,banking77")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--tune-budget", type=int, default=300)
    p.add_argument("--dev-size", type=int, default=150)
    p.add_argument("--finetuned-root", default=None)
    p.add_argument("--out", default="runs/best")
    p.add_argument("--index-root", default="indexes")
    p.add_argument("--lm", default=None,
                   help="the LM every system uses (ragicl eval --lm; default: eval's own). Fine-tune the "
                        "references under --finetuned-root from it (eval notes one that is not); give this run "
                        "its own --out")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="score the test queries on Ray actors (ragicl eval --ray), e.g. 'local' to use every core")
    p.add_argument("--workers", type=int, default=None, help="with --ray: scoring actors (ragicl eval --workers)")
    p.add_argument("--rescore", action="append", default=[], metavar="SYSTEM",
                   help="score this system again though the saved predictions hold it (ragicl eval --rescore)")
    args = p.parse_args(argv)
    from ragicl.cli import main as ragicl

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for name in [d for d in args.datasets.split(",") if d]:
        data = Path(args.data_dir) / name
        index = Path(args.index_root) / name
        t0 = time.perf_counter()
        if not (index / "manifest.json").exists():
            rc = ragicl(["index", "build", str(data / "train.jsonl"), "--out", str(index)])
            if rc:
                return rc
        cmd = ["eval", "--index", str(index), "--test", str(data / "test.jsonl"), "--n", str(args.n),
               "--k", str(args.k), "--tune-budget", str(args.tune_budget), "--dev-size", str(args.dev_size),
               "--json", str(out / f"{name}.json"), "--predictions", str(out / f"{name}.predictions.json")]
        for system in args.rescore:
            cmd += ["--rescore", system]
        if args.lm:
            cmd += ["--lm", args.lm]
        if args.ray:
            cmd += ["--ray", args.ray]
        if args.workers is not None:  # passed on even without --ray: ragicl eval says why that is wrong
            cmd += ["--workers", str(args.workers)]
        if args.finetuned_root and (Path(args.finetuned_root) / name).exists():
            cmd += ["--finetuned", str(Path(args.finetuned_root) / name)]
        rc = ragicl(cmd)
        if rc:
            return rc
        report = json.loads((out / f"{name}.json").read_text())
        parts.append(table(report) + f"\n(wall time {time.perf_counter() - t0:.0f} s)\n")
        (out / "RESULTS.md").write_text("\n".join(parts))
        print(parts[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
