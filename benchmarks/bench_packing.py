#!/usr/bin/env python
"""Selection + packing benchmark: ragicl vs LangChain selectors vs an OpenICL-style truncation loop.

On SST-2 (train = pool, test = queries), with the SmolLM2 tokenizer and a prompt budget of B tokens, each
system picks demonstrations from the same K nearest candidates (same MiniLM vectors) and builds a prompt:

* **ragicl**: ``Retriever(k=K).retrieve`` + ``Packer(max_prompt_tokens=B).pack_batch`` (exact token
  accounting from cached ids, skipping candidates that do not fit).
* **LangChain**: ``SemanticSimilarityExampleSelector`` over an ``InMemoryVectorStore`` (an ``Embeddings``
  wrapper around the same vectors) then ``LengthBasedExampleSelector(max_length=B)`` over the K selected,
  rendered with ``FewShotPromptTemplate``. Two length functions: LangChain's default (word count) and the
  SmolLM2 token count of each example.
* **OpenICL-style**: the same K candidates rendered into one prompt, re-tokenized, dropping the last
  (least similar) example until it fits (``PromptTemplate`` truncation loop of OpenICL's inferencers).

Reported per system: prompts/s and demonstrations/s (selection + packing; query embedding excluded for
all: vectors are precomputed, embedding time is printed once), how often the prompt **overflows** the real
budget (SmolLM2 token count of the final text > B), how often it **under-fills** it (an unused candidate's
block would still have fit), mean tokens and examples. A second table times ragicl's packing alone (the
examples tokenized once at ``fit``) on one core, in prompts/s (wall) and prompts per CPU-second (process
time, which a loaded machine inflates less): ``pack_batch`` on raw queries (query blocks tokenized inside
the call), ``Packer.prepare`` alone (that query tokenization), and ``pack_batch`` on prepared queries
(packing with pre-tokenized queries).

Examples::

    python benchmarks/bench_packing.py --quick
    python benchmarks/bench_packing.py --budget 256 512 --k 32
    python benchmarks/bench_packing.py --systems ragicl      # skip the slow LangChain / OpenICL baselines
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import _bench_common as bc
import numpy as np


class LangChainEmbeddings:
    """Factory of a langchain ``Embeddings`` over a :class:`bc.CachedEmbedder` (same vectors as ragicl)."""

    @staticmethod
    def make(cached: bc.CachedEmbedder) -> Any:
        from langchain_core.embeddings import Embeddings

        class _Emb(Embeddings):
            def embed_documents(self, texts: list[str]) -> list[list[float]]:
                return cached.encode(texts).tolist()

            def embed_query(self, text: str) -> list[float]:
                return cached.encode([text])[0].tolist()

        return _Emb()


def block_lengths(tok: Any, template: Any, examples: Sequence[Any]) -> np.ndarray:
    """Tokens each example adds to a prompt as a block after the separator (SmolLM2 tokenizer)."""
    texts = [template.separator + template.render_example(ex) for ex in examples]
    return np.array([len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]], dtype=np.int64)


def audit(tok: Any, texts: Sequence[str], used: Sequence[set[int]], cands: Sequence[Sequence[int]],
          blocks: np.ndarray, budget: int) -> dict[str, float]:
    """Overflow/under-fill rates of final prompt texts against the real token budget."""
    lengths = [len(ids) for ids in tok(list(texts), add_special_tokens=True)["input_ids"]]
    over = under = 0
    for n_tok, chosen, cand in zip(lengths, used, cands):
        if n_tok > budget:
            over += 1
            continue
        slack = budget - n_tok
        unused = [c for c in cand if c not in chosen]
        if unused and int(blocks[unused].min()) <= slack:
            under += 1
    n = max(1, len(texts))
    return {"overflow %": 100 * over / n, "under-fill %": 100 * under / n,
            "mean tokens": float(np.mean(lengths)), "max tokens": int(max(lengths)),
            "mean examples": float(np.mean([len(u) for u in used]))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, nargs="+", default=[256, 512], help="prompt token budgets")
    parser.add_argument("--k", type=int, default=32, help="candidates per query (K)")
    parser.add_argument("--queries", type=int, default=None, help="test queries (default: all 1,821)")
    parser.add_argument("--train", type=int, default=None, help="pool size (default: all 6,920)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats of the pack-only loop")
    parser.add_argument("--systems", nargs="+", default=["ragicl", "langchain", "openicl"],
                        choices=["ragicl", "langchain", "openicl"],
                        help="systems to compare (ragicl always runs: the others reuse its retrieval)")
    parser.add_argument("--quick", action="store_true", help="pool 2,000, 150 queries, budget 256 (<60 s)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.budget, args.queries, args.train, args.repeat = [256], args.queries or 150, args.train or 2000, 1
    bc.setup_logging()
    info = bc.print_environment("cpu")

    import torch
    from langchain_core.example_selectors import LengthBasedExampleSelector, SemanticSimilarityExampleSelector
    from langchain_core.prompts import FewShotPromptTemplate
    from langchain_core.prompts import PromptTemplate as LCPromptTemplate
    from langchain_core.vectorstores import InMemoryVectorStore
    from transformers import AutoTokenizer

    from ragicl.data import read_dataset
    from ragicl.index.core import ExampleIndex
    from ragicl.models import DEFAULT_EMBEDDER, DEFAULT_LM, resolve_lm
    from ragicl.prompt.pack import Packer
    from ragicl.prompt.retrieve import Retriever
    from ragicl.prompt.template import PromptTemplate

    torch.set_num_threads(1)  # packing is single-threaded; keep the per-core figure honest
    train = read_dataset(bc.dataset_file("sst2", "train"))
    test = read_dataset(bc.dataset_file("sst2", "test"))
    if args.train:
        train = train.sample(args.train, seed=0)
    if args.queries:
        test = test.sample(args.queries, seed=0)
    tok = AutoTokenizer.from_pretrained(resolve_lm(DEFAULT_LM))
    template = PromptTemplate.for_dataset("sst2")

    texts_train = [ex.text() for ex in train]
    texts_test = [ex.text() for ex in test]
    v_train, s_train = bc.sst2_embeddings(texts_train, "sst2-train")
    v_test, s_test = bc.sst2_embeddings(texts_test, "sst2-test")
    print(f"# pool {len(train):,}, queries {len(test):,}, K={args.k}; MiniLM embedding (CPU, done once, "
          f"excluded below): pool {s_train:.1f} s, queries {s_test:.1f} s "
          f"({(len(train) + len(test)) / max(1e-9, s_train + s_test):.0f} texts/s)")
    vectors = {t: v for t, v in zip(texts_train, v_train)} | {t: v for t, v in zip(texts_test, v_test)}
    cached = bc.CachedEmbedder(DEFAULT_EMBEDDER, vectors, v_train.shape[1])

    index = ExampleIndex.build(train, embedder=cached, factory="Flat", device="cpu", show_progress=False)
    blocks = block_lengths(tok, template, index.examples)
    lc_examples = [{"text": ex.inputs["text"], "label": template.verbalize(ex.label)} for ex in index.examples]
    lc_prompt = LCPromptTemplate(input_variables=["text", "label"], template="Review: {text}\nSentiment: {label}")
    t = time.perf_counter()
    semantic = SemanticSimilarityExampleSelector.from_examples(
        lc_examples, LangChainEmbeddings.make(cached), InMemoryVectorStore, k=args.k,
        input_keys=["text"]) if "langchain" in args.systems else None
    lc_setup = time.perf_counter() - t
    position_of = {ex["text"]: i for i, ex in enumerate(lc_examples)}
    token_len = (lambda s: len(tok(s, add_special_tokens=False)["input_ids"]))

    results, pack_rows = [], []
    for budget in args.budget:
        t = time.perf_counter()
        packer = Packer(tok, template, max_prompt_tokens=budget).fit(index.examples, labels=train.labels)
        fit_s = time.perf_counter() - t
        n_q = len(test)

        # ---- ragicl: retrieve + pack
        retriever = Retriever(k=args.k)
        t0 = time.perf_counter()
        retrieved = retriever.retrieve(index, list(test))
        t1 = time.perf_counter()
        prompts = packer.pack_batch(list(test), [r.positions for r in retrieved])
        t2 = time.perf_counter()
        cands = [list(r.positions) for r in retrieved]
        retrieve_s = t1 - t0
        ids_of = {ex.id: i for i, ex in enumerate(index.examples)}
        used = [{ids_of[i] for i in p.included} for p in prompts]
        exact = np.mean([list(p.token_ids) == tok(p.text)["input_ids"] for p in prompts])
        row = {"budget": budget, "system": "ragicl Retriever + Packer", "prompts/s": n_q / (t2 - t0),
               "demos/s": sum(len(u) for u in used) / (t2 - t0),
               "select ms/q": 1e3 * (t1 - t0) / n_q, "pack ms/q": 1e3 * (t2 - t1) / n_q}
        row |= audit(tok, [p.text for p in prompts], used, cands, blocks, budget)
        row["ids = tokenizer(text)"] = f"{100 * exact:.0f}%"
        results.append(row)

        # ---- LangChain: semantic + length-based (word count default, token count)
        lc_runs = (("words (default)", None), ("SmolLM2 tokens", token_len)) if "langchain" in args.systems else ()
        for label, length_fn in lc_runs:
            texts_out, used_lc, cands_lc = [], [], []
            sel_s = pack_s = 0.0
            for ex in test:
                t0 = time.perf_counter()
                picked = semantic.select_examples({"text": ex.inputs["text"]})
                t1 = time.perf_counter()
                kwargs = {"get_text_length": length_fn} if length_fn else {}
                length = LengthBasedExampleSelector(examples=picked, example_prompt=lc_prompt, max_length=budget,
                                                    **kwargs)
                chosen = length.select_examples({"text": ex.inputs["text"]})
                few = FewShotPromptTemplate(examples=chosen, example_prompt=lc_prompt, prefix="",
                                            suffix="Review: {text}\nSentiment:", input_variables=["text"],
                                            example_separator="\n\n")
                texts_out.append(few.format(text=ex.inputs["text"]))
                t2 = time.perf_counter()
                sel_s += t1 - t0
                pack_s += t2 - t1
                used_lc.append({position_of[c["text"]] for c in chosen})
                cands_lc.append([position_of[c["text"]] for c in picked])
            total = sel_s + pack_s
            row = {"budget": budget, "system": f"LangChain Semantic + LengthBased ({label})",
                   "prompts/s": n_q / total, "demos/s": sum(len(u) for u in used_lc) / total,
                   "select ms/q": 1e3 * sel_s / n_q, "pack ms/q": 1e3 * pack_s / n_q}
            row |= audit(tok, texts_out, used_lc, cands_lc, blocks, budget)
            results.append(row)

        # ---- OpenICL-style: same candidates, render all, drop the last until it fits (re-tokenizing)
        texts_out, used_oi, retok = [], [], 0
        t0 = time.perf_counter()
        for ex, cand in zip(test, cands) if "openicl" in args.systems else ():
            chosen = list(cand)  # most similar first, as OpenICL's TopkRetriever returns them
            cue = template.render_query(ex.inputs)
            while True:
                text = template.separator.join([template.render_example(index.examples[c]) for c in chosen]
                                               + [cue])
                retok += 1
                if len(tok(text)["input_ids"]) <= budget or not chosen:
                    break
                chosen.pop()
            texts_out.append(text)
            used_oi.append(set(chosen))
        oi_s = time.perf_counter() - t0
        total = retrieve_s + oi_s  # same retrieval as ragicl, then the truncation loop
        row = {"budget": budget, "system": "OpenICL-style drop-last + re-tokenize", "prompts/s": n_q / total,
               "demos/s": sum(len(u) for u in used_oi) / total, "select ms/q": 1e3 * retrieve_s / n_q,
               "pack ms/q": 1e3 * oi_s / n_q}
        if "openicl" in args.systems:
            row |= audit(tok, texts_out, used_oi, cands, blocks, budget)
            row["tokenizer calls/q"] = retok / n_q
            results.append(row)

        # ---- packing alone, examples tokenized at fit (one core)
        queries, cand_lists = list(test), [r.positions for r in retrieved]
        def batch(packer: Any = packer, queries: list = queries, cand_lists: list = cand_lists) -> Any:
            return packer.pack_batch(queries, cand_lists)

        def single(packer: Any = packer, queries: list = queries, cand_lists: list = cand_lists) -> Any:
            return [packer.pack(q, c) for q, c in zip(queries, cand_lists)]

        t_batch, _ = bc.timeit(batch, repeat=args.repeat)
        t_single, _ = bc.timeit(single, repeat=args.repeat)
        cpu_batch, _ = bc.timeit(batch, repeat=args.repeat, clock=time.process_time)
        per_core = n_q / cpu_batch
        row = {"budget": budget, "fit s (tokenize pool)": fit_s, "fast path": "yes" if packer.fast_ else "no",
               "query encoder": getattr(packer, "encoder_", "backend"),
               "pack_batch prompts/s (wall)": n_q / t_batch, "pack_batch prompts/CPU-s": per_core,
               "pack() loop prompts/s (wall)": n_q / t_single}
        if hasattr(packer, "prepare"):  # query tokenization apart from packing
            def prepare(packer: Any = packer, queries: list = queries) -> Any:
                return packer.prepare(queries)

            prepared = packer.prepare(queries)

            def packed(packer: Any = packer, prepared: list = prepared, cand_lists: list = cand_lists) -> Any:
                return packer.pack_batch(prepared, cand_lists)

            cpu_prepare, _ = bc.timeit(prepare, repeat=args.repeat, clock=time.process_time)
            t_packed, _ = bc.timeit(packed, repeat=args.repeat)
            cpu_packed, again = bc.timeit(packed, repeat=args.repeat, clock=time.process_time)
            assert again == prompts, "packing prepared queries changed the prompts"
            row |= {"prepare (tokenize queries) queries/CPU-s": n_q / cpu_prepare,
                    "pack_batch(prepared) prompts/s (wall)": n_q / t_packed,
                    "pack_batch(prepared) prompts/CPU-s": n_q / cpu_packed}
        row |= {"target /core": 20_000, "met (incl. query tokenization)": "yes" if per_core >= 20_000 else "no"}
        if "pack_batch(prepared) prompts/CPU-s" in row:
            row["met (pre-tokenized queries)"] = "yes" if row["pack_batch(prepared) prompts/CPU-s"] >= 20_000 else "no"
        row["load"] = bc.load_average()
        pack_rows.append(row)

    if "langchain" in args.systems:
        print(f"# LangChain vector store setup (cached vectors): {lc_setup:.2f} s")
    bc.print_table(results, f"Selection + packing on SST-2 test ({len(test)} queries), K={args.k}")
    for row in results:
        if row["system"].startswith("ragicl"):
            for other in (r for r in results if r["budget"] == row["budget"] and r is not row):
                print(f"# budget {row['budget']}: ragicl is {row['prompts/s'] / other['prompts/s']:.1f}x the "
                      f"prompts/s of {other['system']}")
    bc.print_table(pack_rows, "ragicl packing alone (examples tokenized once at fit), 1 core")
    print(f"\n# load at end: {bc.load_average()}")
    bc.save_json(args.json, {"env": info, "args": vars(args), "results": results, "packing": pack_rows})


if __name__ == "__main__":
    main()
