#!/usr/bin/env python
"""The fine-tuned reference trained by ragicl's own loop and by Hugging Face ``transformers.Trainer``
(``TrainConfig(engine="hf")``), side by side in one process: do they converge to the same dev loss?

For each seed, the same reference (``ragicl.train_reference``: the same data, template, model, settings and
seed, trained to convergence with early stopping) is trained once per engine. The script prints, per run, the
best dev loss and accuracy, the steps, whether early stopping ended it and the seconds; then, on the test
queries, each reference's accuracy and the mean total-variation distance between the two engines' label
distributions. The noise to compare the engines' dev-loss difference with is the spread across seeds of one
engine (a seed changes the dev split, the order and the initial state).

Example (the run in docs/BENCHMARKS.md §10)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_trainer_engine.py --dataset sst2 --train-n 400 \\
        --test-n 200 --seeds 0,1 --mode value --lr 2e-4 --json runs/trainer_engine.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import SHARED_DATASETS, print_environment, print_table, save_json, setup_logging

from ragicl import ICLClassifier, read_dataset
from ragicl.training.config import ENGINES, TrainConfig
from ragicl.training.reference import train_reference


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="sst2")
    p.add_argument("--data-dir", default=str(SHARED_DATASETS))
    p.add_argument("--train-n", type=int, default=400, help="training examples (seeded sample)")
    p.add_argument("--test-n", type=int, default=200, help="test queries scored by each reference")
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    p.add_argument("--lm", default="SmolLM2-135M-Instruct")
    p.add_argument("--mode", default="full")
    p.add_argument("--epochs", type=float, default=None, help="most epochs (default: TrainConfig's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: TrainConfig's)")
    p.add_argument("--out", default=None, help="keep the references here (default: a temporary folder)")
    p.add_argument("--json", default=None)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    print_environment(argv=argv)
    data = Path(args.data_dir) / args.dataset
    train = read_dataset(data / "train.jsonl", name=args.dataset).sample(args.train_n, seed=0)
    test = read_dataset(data / "test.jsonl", name=args.dataset).sample(args.test_n, seed=0)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    import numpy as np

    from ragicl.evaluation.stats import tv_distance

    rows, probs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for seed in seeds:
            for engine in ENGINES:
                t0 = time.perf_counter()
                # no resumable checkpoints for either: the hf engine writes none, and they are not the loop
                cfg = TrainConfig(mode=args.mode, seed=seed, epochs=args.epochs, engine=engine, checkpoint_every=0,
                                  **({"lr": args.lr} if args.lr else {}))
                res = train_reference(train, lm=args.lm, out=root / f"{engine}-{seed}", config=cfg, reuse=False,
                                      show_progress=False)
                seconds = time.perf_counter() - t0
                clf = ICLClassifier(str(res.path), k=0).fit(train)
                pr = clf.predict_proba(list(test.examples))
                probs[(engine, seed)] = pr
                gold = np.array([clf.classes_.index(ex.label) for ex in test.examples])
                rows.append({"seed": seed, "engine": engine, "steps": res.steps, "converged": res.converged,
                             "best dev loss": res.dev_loss, "dev accuracy": res.dev_accuracy,
                             "test accuracy": float((pr.argmax(1) == gold).mean()), "seconds": round(seconds, 1)})
    print_table(rows, title=f"{args.dataset}: {len(train)} training examples, {len(test)} test queries")
    dev = {e: [r["best dev loss"] for r in rows if r["engine"] == e] for e in ENGINES}
    pairs = [abs(a - b) for a, b in zip(dev["ragicl"], dev["hf"])]
    spread = {e: (max(v) - min(v)) if len(v) > 1 else float("nan") for e, v in dev.items()}
    tv = {s: float(tv_distance(probs[("ragicl", s)], probs[("hf", s)], axis=1).mean()) for s in seeds}
    summary = {"dev loss |ragicl - hf| per seed": pairs, "dev loss spread across seeds": spread,
               "mean TV between the engines' references on test, per seed": tv,
               "mean dev loss": {e: statistics.fmean(v) for e, v in dev.items()}}
    for key, value in summary.items():
        print(f"{key}: {value}")
    save_json(args.json, {"rows": rows, "summary": summary, "argv": sys.argv[1:]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
