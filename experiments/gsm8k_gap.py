#!/usr/bin/env python
"""GSM8K end to end: retrieval ICL vs. a fine-tuned reference, exact match and TV distances.

    python experiments/gsm8k_gap.py                                   # defaults below
    python experiments/gsm8k_gap.py --n 10 --n-train 500 --k 2 --ft-steps 10 --max-new-tokens 96 \
        --json runs/gsm8k_gap.json
    python experiments/gsm8k_gap.py --finetuned runs/ft-gsm8k         # reuse a checkpoint

Steps: index ``--n-train`` training questions (seeded sample) with the embedder; fine-tune the base LM
with ``finetune_lm`` on the zero-shot prompts of those examples, target = ``ICLGenerator.target_ids``
(answer + the next-demonstration cue, exactly what a demonstration shows), unless ``--finetuned`` is
given; then ``generation_gap`` on the first ``--n`` test questions: base + k retrieved demonstrations
vs. the fine-tuned model zero-shot, same template, same stop rule. Prints the report table.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import ragicl  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gsm8k"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from ragicl.models import DEFAULT_EMBEDDER, DEFAULT_LM

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATA), help="folder with train.jsonl, test.jsonl, meta.json")
    p.add_argument("--lm", default=DEFAULT_LM)
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER, help="sentence-transformers name/path, or hash-64")
    p.add_argument("--n", type=int, default=20, help="test questions (the first n)")
    p.add_argument("--n-train", type=int, default=2000, help="training questions indexed and fine-tuned on")
    p.add_argument("--k", type=int, default=4, help="retrieved demonstrations")
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--n-samples", type=int, default=1, help="Monte-Carlo sequences per test question")
    p.add_argument("--sample-from", default="reference", choices=["reference", "system"])
    p.add_argument("--finetuned", default=None, help="fine-tuned checkpoint to use instead of training one")
    p.add_argument("--save-finetuned", default=None, help="folder to save the fine-tuned model in")
    p.add_argument("--ft-steps", type=int, default=30)
    p.add_argument("--ft-batch", type=int, default=8)
    p.add_argument("--ft-lr", type=float, default=1e-4)
    p.add_argument("--ft-mode", default="full", choices=["full", "attention", "value", "lora"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the report (with every output) here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import torch

    from ragicl import ExampleIndex, read_dataset
    from ragicl.estimators.generation import ICLGenerator, generation_gap
    from ragicl.lm.hf import TransformersLM
    from ragicl.training.finetune import finetune_lm

    show = False if args.quiet else None
    t_all = time.perf_counter()
    train = read_dataset(Path(args.data) / "train.jsonl", name="gsm8k").sample(args.n_train, seed=args.seed)
    test = read_dataset(Path(args.data) / "test.jsonl", name="gsm8k")
    test = test.subset(range(min(args.n, len(test))), name=f"gsm8k-test[:{args.n}]")
    settings = {"max_prompt_tokens": args.max_prompt_tokens, "max_new_tokens": args.max_new_tokens,
                    "show_progress": show}
    base = TransformersLM(args.lm, show_progress=show).load()

    t0 = time.perf_counter()
    index = ExampleIndex.build(train, embedder=args.embedder, show_progress=show)
    t_index = time.perf_counter() - t0
    icl = ICLGenerator(base, k=args.k, **settings).fit(index)

    t0 = time.perf_counter()
    if args.finetuned:
        tuned, ft_note = TransformersLM(args.finetuned, show_progress=show).load(), f"checkpoint {args.finetuned}"
    else:
        zero = ICLGenerator(base, k=0, template=icl.template_, **settings).fit(train)
        prompts = [list(p.token_ids) for p in zero.prompts(list(train.examples))]
        targets = [zero.target_ids(ex.output or "") for ex in train.examples]
        result = finetune_lm(base, prompts, targets, mode=args.ft_mode, steps=args.ft_steps,
                             batch_size=args.ft_batch, lr=args.ft_lr, seed=args.seed,
                             out=args.save_finetuned, show_progress=show)
        tuned = result.lm
        ft_note = (f"finetune_lm {args.ft_mode}, {args.ft_steps} steps x {args.ft_batch}, lr {args.ft_lr}: "
                   f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}")
    t_ft = time.perf_counter() - t0
    reference = ICLGenerator(tuned, k=0, template=icl.template_, **settings).fit(train)

    report = generation_gap(test, icl, reference, n_samples=args.n_samples, sample_from=args.sample_from,
                            names=(f"base+{args.k}-shot", "fine-tuned"), seed=args.seed, show_progress=show)
    print()
    print(report.table())
    print(f"reference: {ft_note}")
    print(f"index: {len(train)} train questions embedded with {args.embedder} in {t_index:.1f} s; "
          f"fine-tuning {t_ft:.1f} s; total {time.perf_counter() - t_all:.1f} s")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {'cuda' if torch.cuda.is_available() else 'cpu'}")
    if args.json:
        report.to_json(args.json)
        print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
