#!/usr/bin/env python
"""What scoring EVERY label costs on many-label tasks (issue 37): retrieved-k over all labels vs candidate sets.

Prompts are real retrieved-k prompts: Banking77 test queries packed by ``ICLClassifier`` (``--k`` nearest
training examples of a ``--train-sample`` index, default embedder). The label sets are Banking77's labels:

* **50**: the first 50 of its 77 label names (sorted);
* **77**: all of them;
* **150**: the 77, plus 73 names made by joining two of them ("card_arrival or pin_blocked": label i joined
  with label i + 1, for the first 73): longer, multi-token answers, like a large intent set's.

For each set the same prompts are scored by ``TransformersLM.score_continuations`` (what
``ICLClassifier.label_logprobs`` and ``FusionClassifier`` call): the prompt once with its KV cache, then every
label's tokens after the first on re-indexed copies of that cache; against the first 4 and 16 labels of the
set (what a candidate set scores), the prompt pass alone (1 single-token label), and the naive way (prompt +
label as one sequence, one row per label: ``ragicl.lm.scoring.concat_scores``) on ``--naive`` queries.
Timed in process CPU seconds (other processes on a loaded machine do not inflate them) and wall seconds,
the best of ``--repeat`` calls, per query; the LM tokens column is the tuner's unit (``FusionPlan.lm_tokens``)::

    OMP_NUM_THREADS=1 python benchmarks/bench_all_labels.py --queries 8 --naive 2
"""

from __future__ import annotations

import argparse
import time

import _bench_common as bc
import numpy as np


def label_sets(names: list[str]) -> dict[int, list[str]]:
    joined = [f"{names[i]} or {names[i + 1]}" for i in range(150 - len(names))]
    return {50: names[:50], 77: names, 150: names + joined}


def _clocks(fn, repeat: int) -> tuple[float, float]:
    """Best CPU seconds (``time.process_time``: other processes on a loaded machine do not inflate them) and
    the wall seconds of that call, over ``repeat`` calls."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        fn()
        best = min(best, (time.process_time() - c, time.perf_counter() - w))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--naive", type=int, default=2, help="queries scored the naive way (0: skip)")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--train-sample", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    bc.setup_logging()
    env = bc.print_environment()
    import torch

    from ragicl import ExampleIndex, ICLClassifier, PromptTemplate, read_dataset
    from ragicl.lm.hf import TransformersLM
    from ragicl.lm.scoring import concat_scores

    train = read_dataset(bc.SHARED_DATASETS / "banking77" / "train.jsonl").sample(args.train_sample, seed=0)
    test = read_dataset(bc.SHARED_DATASETS / "banking77" / "test.jsonl").sample(args.queries, seed=0)
    index = ExampleIndex.build(train, device="cpu", show_progress=False)
    lm = TransformersLM("SmolLM2-135M-Instruct", show_progress=False).load()
    icl = ICLClassifier(lm, PromptTemplate.default(index.dataset.input_fields), k=args.k).fit(index)
    prompts = [list(p.token_ids) for p in icl.prompts(list(test.examples))]
    names = sorted(index.labels)
    rows = []
    lm.score_continuations(prompts[:1], [icl.packer_.answer_ids(names[0])])  # warm up
    title = (f"Scoring every label, SmolLM2-135M, {len(prompts)} retrieved-{args.k} Banking77 prompts of "
             f"{np.mean([len(p) for p in prompts]):.0f} tokens on average")
    for size, labels in label_sets(names).items():
        conts = [icl.packer_.answer_ids(label) for label in labels]
        print(f"# {size} labels: {np.mean([len(c) for c in conts]):.2f} answer tokens per label on average",
              flush=True)
        for scored, what in ((size, f"all {size} labels"), (16, "16 candidates"), (4, "4 candidates"),
                             (1, "prompt pass only")):
            sub = conts[:scored] if scored > 1 else [conts[0][:1]]
            cpu, wall = _clocks(lambda sub=sub: lm.score_continuations(prompts, sub), args.repeat)
            lm_tokens = sum(map(len, prompts)) + len(prompts) * sum(len(c) - 1 for c in sub)
            rows.append({"label set": size, "scored": what, "label tokens": sum(map(len, sub)),
                         "LM tokens/query": lm_tokens / len(prompts), "CPU s/query": cpu / len(prompts),
                         "wall s/query": wall / len(prompts)})
            print(rows[-1], flush=True)
        if args.naive:
            few = prompts[: args.naive]
            with torch.inference_mode():
                cpu, wall = _clocks(lambda few=few, conts=conts: concat_scores(lm.model, few, conts, lm._pad_id), 1)
            rows.append({"label set": size, "scored": f"all {size}, naive (prompt + label, one row each)",
                         "label tokens": sum(map(len, conts)),
                         "LM tokens/query": sum(len(p) + len(c) for p in few for c in conts) / len(few),
                         "CPU s/query": cpu / len(few), "wall s/query": wall / len(few)})
            print(rows[-1], flush=True)
    bc.print_table(rows, title)
    bc.save_json(args.json, {"environment": env, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
