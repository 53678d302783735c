"""Is the kNN vote's setting better chosen on many leave-one-out training queries than on the tuner's 200?

For each dataset: the vote settings of ``FusionTuner``'s grid (``knn_k`` × temperature, add-0.5 smoothing) are
scored (a) on the tuner's dev queries (``dev_size`` drawn from the training set, seed 0), (b) leave-one-out
on ``--loo`` training queries (``FusionTuner(vote_dev_size=...)``'s ranking) and (c) on the test sample of
``ragicl eval --n N --seed 0``. Each row says which setting (a) and (b) pick and that setting's test accuracy,
beside the better of the plain k=8 and k=32 votes on the test set (the "best kNN vote" of docs/results/best.md).
No LM is loaded; an index is built (default embedder) unless ``--index-root`` holds one::

    python experiments/vote_selection.py --datasets sst2,subj,mr --data-dir ../shared/datasets --index-root indexes
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ragicl import ExampleIndex, read_dataset
from ragicl.estimators.tune import FusionTuner, leave_one_out_vote_trials

_TUNER = FusionTuner()  # the grid is the tuner's default one
GRID = [(int(k), t) for k, t in itertools.product(_TUNER.knn_ks, _TUNER.temperatures)]


def vote_accuracies(index: ExampleIndex, examples: Sequence, labels: Sequence[str]) -> dict[str, float]:
    """Accuracy of every vote setting (``"k,temperature"``) over ``examples`` (their own copies excluded)."""
    trials = leave_one_out_vote_trials(index, list(examples), labels, GRID)
    return {f"{k},{t}": trial.accuracy for (k, t), trial in zip(GRID, trials)}


def pick(acc: dict[str, float]) -> str:
    """The setting with the best accuracy; ties to the smaller k (the tuner's cost order), then grid order."""
    return min(acc, key=lambda c: (-acc[c], int(c.split(",")[0])))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="sst2,subj,mr,trec,cr,agnews,banking77,rte,sst5,cb")
    ap.add_argument("--data-dir", default="../shared/datasets")
    ap.add_argument("--index-root", default=None, help="folder of saved indexes named after the datasets")
    ap.add_argument("--n", type=int, default=500, help="test queries (seed 0), as ragicl eval --n")
    ap.add_argument("--dev-size", type=int, default=200)
    ap.add_argument("--loo", type=int, default=4000, help="leave-one-out training queries")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        saved = Path(args.index_root or "", name)
        if args.index_root and (saved / "manifest.json").exists():
            index = ExampleIndex.load(saved, device="cpu")
        else:
            index = ExampleIndex.build(read_dataset(Path(args.data_dir, name, "train.jsonl")), device="cpu")
        labels = tuple(index.labels)
        test = read_dataset(Path(args.data_dir, name, "test.jsonl"))
        test = test.sample(min(args.n, len(test)), seed=0)
        dev = vote_accuracies(index, index.dataset.sample(min(args.dev_size, len(index)), seed=0).examples, labels)
        loo = vote_accuracies(index, index.dataset.sample(min(args.loo, len(index)), seed=0).examples, labels)
        on_test = vote_accuracies(index, test.examples, labels)
        row = {"dataset": name, "dev_pick": pick(dev), "dev_pick_test": on_test[pick(dev)],
               "loo_pick": pick(loo), "loo_pick_test": on_test[pick(loo)],
               "best_plain_vote_test": max(on_test["8,None"], on_test["32,None"])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    diff = [r["loo_pick_test"] - r["dev_pick_test"] for r in rows]
    print(f"leave-one-out pick - dev pick, test accuracy: mean {np.mean(diff):+.4f} over {len(rows)} datasets; "
          f"better on {sum(d > 0 for d in diff)}, equal on {sum(d == 0 for d in diff)}, worse on "
          f"{sum(d < 0 for d in diff)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
