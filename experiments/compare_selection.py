"""Smoke comparison of the demonstration searches and selections of issue 39 (§4, small scale).

For one dataset: index a sample of its training rows (MiniLM by default, plus BM25), then for each method
pack ``k``-shot prompts for the first ``--queries`` test rows under the same exact token budget, score the
labels with the LM (SmolLM2-135M by default) and report accuracy, the paired difference to dense top-k with
a percentile-bootstrap 95% interval over the queries, and the cost per query (retrieval + packing, LM
scoring). TV to a converged reference is not computed here (it needs the fine-tuned reference: the full
500-query protocol of issue 39 §4 runs once the tuner work lands).

    .venv/bin/python experiments/compare_selection.py --dataset sst2 --queries 30 --out /tmp/sel.json
    .venv/bin/python experiments/compare_selection.py --dataset rte --methods topk,bm25,hybrid --queries 40

Methods: topk (dense, the baseline), bm25, hybrid (RRF 1:1), mmr, dpp, votek, mdl (over dense top-k
candidates), random, and ``rerank`` when ``--reranker`` names a cross-encoder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _bench_common import print_environment, print_table, save_json, setup_logging

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "topk": {}, "bm25": {"search": "bm25"}, "hybrid": {"search": "hybrid"}, "mmr": {"selection": "mmr"},
    "dpp": {"selection": "dpp"}, "votek": {"selection": "votek"}, "random": {"selection": "random"},
    "mdl": {}, "rerank": {},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="sst2", help="a folder of ../shared/datasets (default sst2)")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "datasets"))
    p.add_argument("--methods", default="topk,bm25,hybrid,mmr,dpp,votek,mdl,random")
    p.add_argument("--queries", type=int, default=30, help="test rows scored (the first N)")
    p.add_argument("--train-size", type=int, default=1000, help="training rows indexed (a seeded sample)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--max-prompt-tokens", type=int, default=512)
    p.add_argument("--mdl-samples", type=int, default=3)
    p.add_argument("--reranker", default=None, help="a cross-encoder hub id or folder (adds method 'rerank')")
    p.add_argument("--lm", default="SmolLM2-135M-Instruct")
    p.add_argument("--embedder", default="all-MiniLM-L6-v2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    env = print_environment("cpu", sys.argv if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from ragicl import ExampleIndex, read_dataset
    from ragicl.evaluation.stats import bootstrap_ci
    from ragicl.lm.hf import TransformersLM
    from ragicl.models import resolve_lm
    from ragicl.prompt.mdl import MDLStep
    from ragicl.prompt.retrieve import Retriever
    from ragicl.prompt.step import PromptStep, make_packer
    from ragicl.prompt.template import PromptTemplate

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.reranker and "rerank" not in methods:
        methods.append("rerank")
    unknown = [m for m in methods if m not in METHODS or (m == "rerank" and not args.reranker)]
    if unknown:
        p.error(f"unknown method(s) {unknown}; valid: {sorted(METHODS)} ('rerank' needs --reranker)")
    folder = Path(args.data_root) / args.dataset
    train = read_dataset(folder / "train.jsonl", name=args.dataset)
    if len(train) > args.train_size:
        train = train.sample(args.train_size, seed=args.seed)
    test = read_dataset(folder / "test.jsonl", name=args.dataset, labels=train.labels)
    test = test.subset(range(min(args.queries, len(test))))

    t0 = time.perf_counter()
    index = ExampleIndex.build(train, embedder=args.embedder, device="cpu")
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.build_lexical()
    t_bm25 = time.perf_counter() - t0
    lm = TransformersLM(resolve_lm(args.lm), device="cpu", show_progress=False).load()
    template = PromptTemplate.default(train)
    packer = make_packer(lm, template, index.examples, max_prompt_tokens=args.max_prompt_tokens,
                         labels=train.labels, index=index)
    answers = [packer.answer_ids(label) for label in train.labels]
    gold = np.array([train.labels.index(ex.label) for ex in test])
    queries = list(test)

    rows, correct = [], {}
    for name in methods:
        options = {"reranker": args.reranker} if name == "rerank" else METHODS[name]
        step = PromptStep(packer, Retriever(k=args.k, seed=args.seed, **options), index, args.k)
        t0 = time.perf_counter()
        if name == "mdl":
            prompts = MDLStep(step, lm, n_samples=args.mdl_samples, seed=args.seed)(queries)
        else:
            prompts = step(queries)
        t_select = time.perf_counter() - t0  # MDL's includes its own LM scoring of the candidate prompts
        t0 = time.perf_counter()
        scores = np.asarray(lm.score_continuations([pr.token_ids for pr in prompts], answers))
        t_score = time.perf_counter() - t0
        correct[name] = (scores.argmax(axis=1) == gold).astype(float)
        rows.append({"method": name, "accuracy": float(correct[name].mean()),
                     "shots": float(np.mean([len(pr.included) for pr in prompts])),
                     "tokens": float(np.mean([pr.n_tokens for pr in prompts])),
                     "select_s_per_query": t_select / len(queries), "score_s_per_query": t_score / len(queries)})
        print(f"# {name}: accuracy {rows[-1]['accuracy']:.3f} ({t_select + t_score:.0f} s)", file=sys.stderr, flush=True)
    if "topk" in correct:
        for row in rows:
            diff = correct[row["method"]] - correct["topk"]
            iv = bootstrap_ci(diff, n_boot=2000, seed=args.seed)
            row["vs_topk"] = f"{iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"
    print_table(rows, title=f"{args.dataset}: {len(queries)} test queries, {len(train)} indexed, k={args.k}, "
                            f"budget {args.max_prompt_tokens} tokens, LM {args.lm}")
    print(f"index build: embed {t_embed:.1f} s, BM25 {t_bm25:.2f} s")
    save_json(args.out, {"environment": env, "args": vars(args), "results": rows,
                         "index_build_s": {"embed": t_embed, "bm25": t_bm25},
                         "per_query_correct": {k: v.tolist() for k, v in correct.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
