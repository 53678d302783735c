#!/usr/bin/env python
"""End-to-end benchmark: queries/s of retrieved-k ICL on SST-2, stage by stage, vs a zero-shot pass.

Stages, each timed on the same test queries:

1. **embed**: ``SentenceTransformerEmbedder`` (all-MiniLM-L6-v2) encodes the query texts;
2. **search**: ``Retriever(k).retrieve`` over an ``ExampleIndex`` of the training set (query vectors from
   stage 1, so the model is not run twice; the pool's vectors are cached on disk between runs);
3. **pack**: ``Packer.pack_batch`` to ``--budget`` tokens (SmolLM2 tokenizer);
4. **score**: ``TransformersLM.score_continuations`` over the label set.

The **fine-tuned model at equal size** has the same architecture and is queried zero-shot (no retrieval,
no demonstrations), so its cost is timed as a zero-shot pack + scoring pass of the same model over the same
queries; the cost ratio ICL / fine-tuned is printed with the accuracies of both prompts (the base model's
zero-shot accuracy is not the fine-tuned one's; only its cost is).

Examples::

    python benchmarks/bench_end_to_end.py --quick
    python benchmarks/bench_end_to_end.py --queries 100 --k 16 --budget 512
    python benchmarks/bench_end_to_end.py --device cuda --queries 1821
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import _bench_common as bc
import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=100, help="SST-2 test queries")
    parser.add_argument("--train", type=int, default=None, help="pool size (default: all 6,920)")
    parser.add_argument("--k", type=int, default=16, help="demonstrations aimed for")
    parser.add_argument("--budget", type=int, default=512, help="prompt token budget")
    parser.add_argument("--batch-size", type=int, default=None, help="most prompts per LM pass (default: no cap)")
    parser.add_argument("--batch-tokens", default="auto",
                        help="padded token slots per LM pass: auto (the library default) or an int")
    parser.add_argument("--no-before", action="store_true",
                        help="skip the 'before' rows (count batches of 8 prompts, the pre-token-budget default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (embedder, index, LM)")
    parser.add_argument("--quick", action="store_true", help="pool 2,000, 8 queries, budget 128 (<60 s)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.queries, args.train, args.budget, args.k = 8, args.train or 2000, 128, 4
    bc.setup_logging()
    info = bc.print_environment(args.device)

    import torch

    from ragicl.data import read_dataset
    from ragicl.index.core import ExampleIndex
    from ragicl.index.embed import SentenceTransformerEmbedder
    from ragicl.lm.hf import TransformersLM
    from ragicl.models import DEFAULT_EMBEDDER
    from ragicl.prompt.pack import Packer
    from ragicl.prompt.retrieve import Retriever
    from ragicl.prompt.template import PromptTemplate

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    train = read_dataset(bc.dataset_file("sst2", "train"))
    if args.train:
        train = train.sample(args.train, seed=0)
    test = read_dataset(bc.dataset_file("sst2", "test")).sample(args.queries, seed=0)
    queries = list(test)
    texts_train = [ex.text() for ex in train]
    v_train, _ = bc.sst2_embeddings(texts_train, "sst2-train")

    embedder = SentenceTransformerEmbedder(device=args.device, batch_size=64, show_progress=False)
    embedder.load()
    embedder.encode(["warm-up"])
    batch_tokens = args.batch_tokens if args.batch_tokens == "auto" else int(args.batch_tokens)
    lm = TransformersLM(device=args.device, batch_size=args.batch_size, batch_tokens=batch_tokens).load()
    before = TransformersLM.from_model(lm.model, lm.tokenizer, batch_size=8, batch_tokens=None)
    template = PromptTemplate.for_dataset("sst2")
    packer = Packer(lm.tokenizer, template, max_prompt_tokens=args.budget).fit(train.examples,
                                                                               labels=train.labels)
    zero = Packer(lm.tokenizer, template, max_prompt_tokens=args.budget).fit(train.examples[:1],
                                                                             labels=train.labels)
    labels = [packer.answer_ids(lab) for lab in train.labels]
    lm.score_continuations([lm.tokenizer("warm-up")["input_ids"]], labels)
    print(f"# LM token budget per pass: {lm.token_budget} (batch_size cap {lm.batch_size})")

    stages: dict[str, float] = {}
    t = time.perf_counter()
    q_vec = embedder.encode([index_text for index_text in (ex.text() for ex in queries)])
    sync()
    stages["embed"] = time.perf_counter() - t

    vectors: dict[str, np.ndarray] = dict(zip(texts_train, v_train))
    vectors.update(zip((ex.text() for ex in queries), q_vec))
    cached = bc.CachedEmbedder(DEFAULT_EMBEDDER, vectors, v_train.shape[1])
    index = ExampleIndex.build(train, embedder=cached, factory="Flat", device=args.device, show_progress=False)
    retriever = Retriever(k=args.k)
    t = time.perf_counter()
    retrieved = retriever.retrieve(index, queries, n_candidates=2 * args.k)
    stages["search"] = time.perf_counter() - t

    t = time.perf_counter()
    prompts = packer.pack_batch(queries, [r.positions for r in retrieved])
    stages["pack"] = time.perf_counter() - t

    t = time.perf_counter()
    scores = lm.score_continuations([p.token_ids for p in prompts], labels)
    sync()
    stages["score"] = time.perf_counter() - t

    t = time.perf_counter()
    zero_prompts = zero.pack_batch(queries, [[] for _ in queries])
    zero_pack = time.perf_counter() - t
    t = time.perf_counter()
    zero_scores = lm.score_continuations([p.token_ids for p in zero_prompts], labels)
    sync()
    zero_score = time.perf_counter() - t

    before_rows: dict[str, float] = {}
    if not args.no_before:  # the same prompts through count batches of 8 (the default before issue 15)
        for name, batch in (("ICL score", prompts), ("zero-shot score", zero_prompts)):
            t = time.perf_counter()
            old = before.score_continuations([p.token_ids for p in batch], labels)
            sync()
            before_rows[name] = time.perf_counter() - t
            new = scores if name == "ICL score" else zero_scores
            if not np.allclose(old, new, rtol=0, atol=1e-3 * max(1.0, float(np.abs(new).max()))):
                raise SystemExit(f"{name}: count and token batching disagree (max diff "
                                 f"{float(np.abs(old - new).max()):.2e})")

    gold = np.array([train.labels.index(ex.label) for ex in queries])
    n = len(queries)
    total = sum(stages.values())
    zero_total = zero_pack + zero_score
    rows: list[dict[str, Any]] = []
    for name, secs in stages.items():
        rows.append({"stage": f"ICL {name}", "seconds": secs, "queries/s": n / secs,
                     "share of ICL time %": 100 * secs / total})
    rows.append({"stage": f"ICL total (k={args.k}, budget {args.budget})", "seconds": total,
                 "queries/s": n / total, "share of ICL time %": 100.0,
                 "mean prompt tokens": float(np.mean([p.n_tokens for p in prompts])),
                 "accuracy": float(np.mean(scores.argmax(1) == gold))})
    rows.append({"stage": "zero-shot pack + score (fine-tuned-model cost)", "seconds": zero_total,
                 "queries/s": n / zero_total, "share of ICL time %": 100 * zero_total / total,
                 "mean prompt tokens": float(np.mean([p.n_tokens for p in zero_prompts])),
                 "accuracy": float(np.mean(zero_scores.argmax(1) == gold))})
    for name, secs in before_rows.items():
        now = stages["score"] if name == "ICL score" else zero_score
        rows.append({"stage": f"{name}, before: count batches of 8", "seconds": secs, "queries/s": n / secs,
                     "after / before speed": secs / now})
    bc.print_table(rows, f"End to end on SST-2 ({n} test queries, pool {len(train):,}), {args.device}")
    print(f"# cost ratio ICL / fine-tuned model at equal size (zero-shot pass): {total / zero_total:.1f}x "
          f"(scoring alone: {stages['score'] / zero_score:.1f}x; prompt tokens "
          f"{np.mean([p.n_tokens for p in prompts]) / np.mean([p.n_tokens for p in zero_prompts]):.1f}x)")
    print(f"\n# load at end: {bc.load_average()}")
    bc.save_json(args.json, {"env": info, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
