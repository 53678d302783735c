"""The kNN-vote rows' TV to the fine-tuned reference under other add-α smoothings, from a saved predictions file.

``KNNVoteClassifier`` (the "kNN vote k=K" rows of ``ragicl eval``) adds ``smoothing`` (0.5) to every label's
neighbour count, so a row is ``p = (c + 0.5) / (K + 0.5 L)`` over ``L`` labels. On many-label tasks that spreads
most of the mass over labels no neighbour has (77 labels, 8 neighbours: a unanimous vote gives its label
8.5 / 46.5 = 0.18), and the TV to a confident reference measures the smoothing more than the vote. This script
recovers the counts ``c`` from the saved rows, smooths them again with each α asked for, and prints the TV to
the reference with a bootstrap interval, and its paired difference to a chosen system's TV (default "ragicl
best"). No model is loaded::

    python experiments/vote_smoothing.py runs/best/banking77.predictions.json --alphas 0.5 1/L 0
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

import numpy as np

from ragicl import load_predictions
from ragicl.evaluation.stats import bootstrap_ci

SAVED_SMOOTHING = 0.5  # KNNVoteClassifier's default, which `ragicl eval` uses for its vote rows


def vote_counts(p: np.ndarray, k: int, smoothing: float = SAVED_SMOOTHING) -> np.ndarray:
    """The neighbour counts behind add-``smoothing`` vote rows ``p`` over ``k`` neighbours (rows need not all
    have ``k``: each row's total is recovered from its own smallest entry only when ``smoothing`` > 0).

    >>> p = (np.array([[6.0, 2.0, 0.0]]) + 0.5) / (8 + 1.5)
    >>> vote_counts(p, 8).tolist()
    [[6.0, 2.0, 0.0]]
    """
    n_labels = p.shape[1]
    c = p * (k + smoothing * n_labels) - smoothing
    if not (np.allclose(c, np.round(c), atol=1e-6) and np.all(np.round(c) >= 0)):
        raise ValueError(f"these rows are not add-{smoothing} vote counts over {k} neighbours; pass the "
                         "smoothing the rows were saved with (--saved-smoothing)")
    return np.round(c)


def resmooth(counts: np.ndarray, alpha: float) -> np.ndarray:
    """Add-``alpha`` label distribution from neighbour ``counts`` (uniform where a row has no mass).

    >>> resmooth(np.array([[6.0, 2.0, 0.0]]), 0.0).round(3).tolist()
    [[0.75, 0.25, 0.0]]
    """
    out = counts + alpha
    total = out.sum(1, keepdims=True)
    return np.divide(out, total, out=np.full_like(out, 1.0 / out.shape[1]), where=total > 0)


def parse_alpha(text: str, n_labels: int) -> float:
    """``"0.5"`` → 0.5; ``"1/L"`` (or ``"2/L"``) → that share of the label count."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*/\s*L\s*", text)
    value = float(m.group(1)) / n_labels if m else float(text)
    if not value >= 0:
        raise ValueError(f"alpha must be >= 0, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("predictions", help="file written by `ragicl eval --predictions` with a fine-tuned row")
    ap.add_argument("--alphas", nargs="+", default=["0.5", "1/L", "0"],
                    help="smoothings to try: numbers or N/L (N divided by the label count)")
    ap.add_argument("--reference", default="fine-tuned", help="the system TV is measured to")
    ap.add_argument("--against", default="ragicl best", help="system whose TV each vote is paired with")
    ap.add_argument("--saved-smoothing", type=float, default=SAVED_SMOOTHING,
                    help="the smoothing the vote rows were saved with (default 0.5)")
    args = ap.parse_args(argv)
    pred = load_predictions(args.predictions)
    if args.reference not in pred.probs:
        print(f"{args.predictions} has no {args.reference!r} row (it has {sorted(pred.probs)}); run `ragicl eval "
              f"--predictions {args.predictions} --finetuned DIR` first", file=sys.stderr)
        return 2
    ref = pred.probs[args.reference]
    n_labels = len(pred.labels)
    other = pred.probs.get(args.against)
    other_tv = None if other is None else 0.5 * np.abs(other - ref).sum(1)
    votes = sorted((int(m.group(1)), name) for name in pred.probs
                   if (m := re.fullmatch(r"kNN vote k=(\d+)", name)))
    if not votes:
        print(f"{args.predictions} has no 'kNN vote k=K' rows", file=sys.stderr)
        return 2
    for k, name in votes:
        counts = vote_counts(pred.probs[name], k, args.saved_smoothing)
        for text in args.alphas:
            alpha = parse_alpha(text, n_labels)
            q = resmooth(counts, alpha)
            tv = 0.5 * np.abs(q - ref).sum(1)
            iv = bootstrap_ci(tv)
            line = (f"{name} alpha={text} ({alpha:.4g}): TV {tv.mean():.3f} [{iv.low:.3f}, {iv.high:.3f}], "
                    f"mean top probability {q.max(1).mean():.3f}")
            if other_tv is not None:
                d = bootstrap_ci(other_tv - tv)
                line += f"; {args.against} - this {d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
