#!/usr/bin/env python
"""Fine-tuning step cost of the two classification objectives, side by side in one process.

* ``labels`` (default): cross-entropy of the softmax over every label's summed continuation log-prob. With
  C multi-token labels each example needs C (prompt, label) rows and a full-vocabulary softmax per label
  token (the prompt pass is shared).
* ``gold``: the summed NLL of the gold label's tokens alone, one row per example (plain supervised
  fine-tuning).

Both train the same model (fresh copy each) on the same zero-shot prompts for ``--steps`` steps of
``--batch-size``; the script prints seconds per step (wall and process CPU time), the losses and the ratio.
Banking77 (77 labels of 2–8 tokens) is where the difference matters; SST-2 (single-token labels) is where it
should not.

Example::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_finetune_objective.py --dataset banking77 --steps 3
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_experiments import _template

from ragicl.data import read_dataset
from ragicl.lm.hf import TransformersLM
from ragicl.training.reference import train_reference


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="banking77")
    p.add_argument("--data-dir", default="../shared/datasets")
    p.add_argument("--train-n", type=int, default=2000)
    p.add_argument("--lm", default="SmolLM2-135M-Instruct")
    p.add_argument("--mode", default="full")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-5)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    train = read_dataset(Path(args.data_dir) / args.dataset / "train.jsonl", name=args.dataset)
    train = train.sample(min(args.train_n, len(train)), seed=0)
    template = _template(args.dataset, train)
    lm = TransformersLM(args.lm, batch_size=args.batch_size, show_progress=False).load()
    rows = {}
    for objective in ("gold", "labels"):
        with tempfile.TemporaryDirectory() as out:
            cpu0 = time.process_time()
            res = train_reference(train, lm=lm, template=template, out=out, mode=args.mode, steps=args.steps,
                                  batch_size=args.batch_size, lr=args.lr, objective=objective, reuse=False)
            cpu = time.process_time() - cpu0
        rows[objective] = (res.seconds / res.steps, cpu / res.steps)
        print(f"{objective:>6}: {res.seconds / res.steps:7.2f} s/step wall, {cpu / res.steps:7.2f} CPU-s/step; "
              f"losses {', '.join(f'{x:.3f}' for x in res.losses)}")
    wall = rows["labels"][0] / rows["gold"][0]
    cpu = rows["labels"][1] / rows["gold"][1]
    print(f"{args.dataset}, {len(train.labels)} labels, {args.lm} ({args.mode}), batch {args.batch_size}: "
          f"labels / gold = {wall:.1f}x per step (wall), {cpu:.1f}x (CPU time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
