#!/usr/bin/env python
"""Fine-tuning step cost with a step's batch run as one padded pass or as passes of similar lengths.

A training step pads every prompt of a pass to the pass's longest. ``ragicl.training.trainer.plan_passes``
orders the batch by length and cuts it where the padded tokens saved outweigh the cost of one more
pass (``PASS_OVERHEAD_TOKENS``, in tokens of one row); the loss and gradient are the same. This script
trains the same model (a fresh copy each run) on the same batches (same seed) with each overhead setting,
in interleaved rounds, and prints per setting the padded tokens per step (exact, from the plan), the wall
and CPU seconds per step (median over rounds) and the ratio to the single padded pass.

Example::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_finetune_padding.py --datasets sst2,rte --steps 3 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import SHARED_DATASETS, print_environment, setup_logging
from run_experiments import _template

from ragicl.data import read_dataset
from ragicl.lm.hf import TransformersLM
from ragicl.training import trainer
from ragicl.training.reference import train_reference

SETTINGS = {"one pass": 1e9, "overhead 256": 256.0, "overhead 128": 128.0, "overhead 64": 64.0,
            "overhead 16": 16.0, "overhead 0": 0.0}


def _padded_tokens(calls: list[tuple[list[int], int, int]], overhead: float) -> float:
    """Mean padded prompt tokens per step (per prompt row) over the recorded ``plan_passes`` calls
    (lengths, max_rows, rows_per_example), planned again with ``overhead``."""
    total = 0
    for batch, max_rows, rows in calls:
        for part in trainer.plan_passes(batch, max_rows, overhead, rows):
            total += len(part) * max(batch[i] for i in part)
    return total / len(calls)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="sst2,rte")
    p.add_argument("--data-dir", default=str(SHARED_DATASETS))
    p.add_argument("--lm", default="SmolLM2-135M-Instruct")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    setup_logging()
    print_environment()
    lm = TransformersLM(args.lm, show_progress=False).load()
    for name in args.datasets.split(","):
        train = read_dataset(Path(args.data_dir) / name / "train.jsonl", name=name).sample(2000, seed=0)
        template = _template(name, train)
        # each step's (prompt lengths, max_rows, rows_per_example): the same batches in every run
        seen: list[tuple[list[int], int, int]] = []
        original = trainer.plan_passes

        def spy(lengths, max_rows, overhead, rows_per_example=1, seen=seen, original=original):  # type: ignore[no-untyped-def]
            seen.append((list(lengths), max_rows, rows_per_example))
            return original(lengths, max_rows, overhead, rows_per_example)

        times: dict[str, list[tuple[float, float]]] = {s: [] for s in SETTINGS}
        for _ in range(args.rounds):
            for setting, overhead in SETTINGS.items():
                trainer.PASS_OVERHEAD_TOKENS["cpu"] = overhead
                trainer.plan_passes = spy
                with tempfile.TemporaryDirectory() as out:
                    cpu0, t0 = time.process_time(), time.perf_counter()
                    res = train_reference(train, lm=lm, template=template, out=out, steps=args.steps,
                                          batch_size=args.batch_size, reuse=False)
                    times[setting].append(((time.perf_counter() - t0) / res.steps,
                                           (time.process_time() - cpu0) / res.steps))
                trainer.plan_passes = original
        batches = seen[:args.steps]
        real = sum(sum(lengths) for lengths, _, _ in batches) / len(batches)
        base = statistics.median(w for w, _ in times["one pass"])
        print(f"\n{name}: {args.steps} steps x batch {args.batch_size}, {args.rounds} rounds; "
              f"{real:.0f} real prompt tokens per step")
        print(f"{'setting':<24}{'padded tok/step':>16}{'s/step wall':>13}{'CPU-s/step':>12}{'speed-up':>10}")
        for setting, overhead in SETTINGS.items():
            wall = statistics.median(w for w, _ in times[setting])
            cpu = statistics.median(c for _, c in times[setting])
            print(f"{setting:<24}{_padded_tokens(batches, overhead):>16.0f}{wall:>13.2f}{cpu:>12.2f}"
                  f"{base / wall:>9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
