"""The command line's options, declared once per group and added to the commands that use them.

A command gets exactly the groups that apply to it (``ragicl tune --help`` lists no test-set options), and
the same option means the same thing everywhere (one ``--device`` type, one set of ``--lm`` options).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
from typing import Any

from ..estimators._tune_rules import RULES
from ..estimators.tune import FusionTuner
from ..estimators.vote import VOTE_KS
from ..models import DEFAULT_EMBEDDER, DEFAULT_LM
from .checks import device_value, k_value, non_negative_int, positive_float, positive_int

ESCAPES_HELP = r"\n, \t and \r are a newline, a tab and a carriage return, \\ a backslash; any Unicode is kept"
TEMPLATE_HELP = r"example format ending in {label}, e.g. 'Review: {text}\nSentiment: {label}'; " + ESCAPES_HELP
DEVICE_HELP = "where the models run: auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps (default auto)"
#: ``--tune-budget``'s default: (k tried + this) full-length prompts per dev query (settings.BestOptions.lm_budget)
AUTO_BUDGET = "auto"
AUTO_EXTRA_PROMPTS = 3
_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def default_tune(name: str) -> Any:
    """The library's default of a :class:`FusionTuner` parameter (the CLI follows it)."""
    return inspect.signature(FusionTuner.__init__).parameters[name].default


def lm_tokens_value(text: str) -> int | str | None:
    """argparse type of ``--tune-budget``: LM tokens (``600000``, ``600_000``, ``600k``, ``1.5M``), ``none``
    (no limit) or ``auto`` (the default). Seconds (``600s``; a fraction such as ``600.0``; it used to be
    seconds) are refused with what changed, and so is the ambiguous ``m`` (million or minutes?).

    >>> lm_tokens_value("1.5M"), lm_tokens_value("600k"), lm_tokens_value("0"), lm_tokens_value("none")
    (1500000, 600000, 0, None)
    """
    raw = text.strip().replace("_", "").replace(",", "")
    if raw.lower() in ("none", "all"):
        return None
    if raw.lower() == AUTO_BUDGET:
        return AUTO_BUDGET
    changed = ("--tune-budget counts LM tokens (prompt + label tokens scored) since the search became "
               "machine-independent, no longer seconds; for a time limit use --tune-max-seconds SECONDS")
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([kKMG]?)", raw)
    if match is None:
        if re.fullmatch(r"[\d.]+\s*m", raw):
            raise argparse.ArgumentTypeError(f"got {text!r}: write M for millions of LM tokens (e.g. 1.5M); "
                                             f"{changed}.")
        if re.fullmatch(r"[\d.]+\s*(s|sec|secs|seconds?|min|mins|minutes?|h|hours?)", raw.lower()):
            raise argparse.ArgumentTypeError(f"got {text!r}: {changed}.")
        raise argparse.ArgumentTypeError(f"expected a number of LM tokens (e.g. 600000, 600k, 1.5M), 'auto' or "
                                         f"'none', got {text!r}.")
    number, suffix = match.groups()
    value = float(number) * _SUFFIX[suffix.lower()]
    if value != int(value) or (not suffix and "." in number):
        raise argparse.ArgumentTypeError(f"got {text!r}, a fraction: {changed}. Expected a whole number of LM "
                                         "tokens, e.g. 600000 or 600k.")
    return int(value)


def data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data files")
    g.add_argument("--input-fields", default=None,
                   help="comma-separated input field names (default: from meta.json or inferred)")
    g.add_argument("--label-field", default="label", help="the label column (default: label)")
    g.add_argument("--output-field", default=None,
                   help="target column of a generation dataset (makes the task generation)")


def prompt_args(p: argparse.ArgumentParser, *, budget: bool = True) -> None:
    g = p.add_argument_group("prompt")
    g.add_argument("--template", default=None, help=TEMPLATE_HELP)
    g.add_argument("--instruction", default=None, help=f"text placed before the demonstrations; {ESCAPES_HELP}")
    if budget:
        g.add_argument("--max-prompt-tokens", type=positive_int, default=1024,
                       help="token budget of each whole prompt, in the LM's own tokens; demonstrations that do "
                            "not fit are dropped (default 1024)")


def lm_args(p: argparse.ArgumentParser, *, what: str = "base LM that scores the labels", serve: bool = True,
            scoring: bool = True) -> None:
    """--lm and how it runs: transformers in process (default), llama.cpp in process, or a server."""
    if serve:
        g = p.add_argument_group("language model", "Which LM and which engine runs it. Default: transformers in "
                                 "this process; a .gguf file runs on llama.cpp; --lm-url talks to a server.")
        g.add_argument("--lm", default=DEFAULT_LM,
                       help=f"{what}: short name, hub id, folder, .gguf file, or with --lm-url the served model's "
                            f"id (default {DEFAULT_LM})")
    else:
        g = p.add_argument_group("language model")
        g.add_argument("--lm", default=DEFAULT_LM, help=f"{what}: short name, hub id or folder (default {DEFAULT_LM})")
    engines = ["auto", "transformers", "llama.cpp", "server"] if serve else ["auto", "transformers"]
    g.add_argument("--lm-engine", default="auto", choices=engines,
                   help=("what runs the LM: auto (a server with --lm-url, llama.cpp for .gguf, else transformers); "
                         "llama.cpp also runs the default models by name, from their packaged GGUF files")
                   if serve else "what runs the LM (fine-tuning: transformers)")
    g.add_argument("--device", type=device_value, default="auto", help=DEVICE_HELP)
    if scoring:
        g.add_argument("--batch-size", type=positive_int, default=None,
                       help="most prompts per LM forward pass (default: as many as the device's token budget holds)")
    t = p.add_argument_group("transformers options (large models)")
    t.add_argument("--dtype", default="auto", help="weights dtype: auto (bf16 on CUDA, float32 on CPU), float32, "
                   "bfloat16, float16")
    t.add_argument("--device-map", default=None, help="'auto' shards the model over the GPUs (accelerate)")
    t.add_argument("--load-in-8bit", action="store_true", help="bitsandbytes 8-bit weights (CUDA)")
    t.add_argument("--load-in-4bit", action="store_true", help="bitsandbytes 4-bit weights (CUDA)")
    t.add_argument("--attn-implementation", default=None, help="eager, sdpa or flash_attention_2")
    t.add_argument("--quantization-config", default=None, metavar="JSON",
                   help="a transformers quantization config as JSON (e.g. bitsandbytes or GPTQ settings)")
    t.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="more from_pretrained keyword arguments, e.g. '{\"revision\": \"main\"}'")
    if not serve:
        return
    c = p.add_argument_group("llama.cpp options (GGUF files)")
    c.add_argument("--n-ctx", type=positive_int, default=None,
                   help="context window (default: the GGUF's training context, at most 8192)")
    c.add_argument("--n-threads", type=positive_int, default=None, help="CPU threads (default: llama.cpp's)")
    c.add_argument("--n-batch", type=positive_int, default=None, help="tokens per llama.cpp decode call (default 512)")
    c.add_argument("--n-gpu-layers", type=int, default=0, help="layers offloaded to the GPU (-1: all; default 0)")
    s = p.add_argument_group("LM server (vLLM, SGLang, TGI, llama.cpp, Ollama, OpenAI; docs/guide/SERVERS.md)")
    s.add_argument("--lm-url", default=None, metavar="URL",
                   help="OpenAI-compatible API root, e.g. http://localhost:8000/v1; the API key is read from "
                        "$RAGICL_API_KEY or $OPENAI_API_KEY")
    s.add_argument("--lm-tokenizer", default=None,
                   help="tokenizer the prompts are counted with, for a server or llama.cpp (default: the model's "
                        "own; for llama.cpp also llama or hf)")
    s.add_argument("--lm-concurrency", type=positive_int, default=8, help="requests in flight (default 8)")
    s.add_argument("--lm-timeout", type=positive_float, default=120.0, help="seconds per request (default 120)")
    s.add_argument("--lm-retries", type=non_negative_int, default=8,
                   help="retries of a failed request, with backoff (default 8)")
    s.add_argument("--lm-route", default="auto", choices=["auto", "prompt_logprobs", "echo", "top_logprobs", "chat"],
                   help="how labels are scored (default auto: probe the server, use the best route that passes)")
    s.add_argument("--lm-chat", action="store_true", help="a chat-only server (/v1/chat/completions)")
    s.add_argument("--lm-cache", default="on", metavar="on|off|FILE",
                   help="on-disk cache of answers: a rerun sends no request (default on: $RAGICL_CACHE)")
    s.add_argument("--lm-context-length", type=positive_int, default=None,
                   help="the served model's context length, when the server does not report it")


def eval_args(p: argparse.ArgumentParser, *, k: int = 16) -> None:
    g = p.add_argument_group("systems")
    g.add_argument("--k", type=k_value, default=k,
                   help=f"demonstrations per prompt (default {k}); 0 runs the zero-shot system only; 'max' packs "
                        "as many as --max-prompt-tokens holds (many-shot)")
    retrieval_args(g)
    g.add_argument("--seed", type=int, default=0, help="seed of test sampling, random-k and tuning (default 0)")


SELECTIONS = ["topk", "balanced", "mmr", "dpp", "votek", "mdl"]
SEARCHES = ("dense", "bm25", "hybrid")
TUNABLE_SELECTIONS = ("topk", "balanced", "mmr", "dpp", "votek")  # FusionTuner's; MDL scores with the LM itself


def name_list(option: str, valid: tuple[str, ...]):
    """argparse type of a comma-separated list of names among ``valid`` (a tuple, duplicates dropped).

    >>> name_list("--tune-search", SEARCHES)("dense, bm25")
    ('dense', 'bm25')
    """
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        bad = [n for n in names if n not in valid]
        if not names or bad:
            raise argparse.ArgumentTypeError(
                f"got {text!r}{f' ({bad[0]!r} is not one)' if bad else ''}: expected a comma-separated list of "
                f"{', '.join(valid)}, e.g. {option} {','.join(valid[:2])}")
        return names
    return parse


def retrieval_args(g) -> None:
    """How demonstrations are found and chosen (the retrieve stage; docs/DESIGN.md, Retrieval)."""
    g.add_argument("--selection", default="topk", choices=SELECTIONS,
                   help="how retrieved-k chooses among the candidates: topk (most similar), balanced (round-robin "
                        "over labels), mmr (similar but diverse), dpp (determinantal point process), votek "
                        "(diverse, representative pool), mdl (the candidate prompt of lowest label entropy under "
                        "the LM; slower); default topk")
    g.add_argument("--search", default="dense", choices=["dense", "bm25", "hybrid"],
                   help="how candidates are found: dense (the FAISS index, default), bm25 (lexical), hybrid (both, "
                        "reciprocal-rank fusion); BM25 is built in memory unless the index saved one (--bm25)")
    g.add_argument("--rerank", default=None, metavar="MODEL",
                   help="re-order the candidates with this cross-encoder (hub id or folder), e.g. "
                        "cross-encoder/ms-marco-MiniLM-L-6-v2")


def best_args(p: argparse.ArgumentParser, *, toggles: bool = True) -> None:
    """Options of the tuned 'ragicl best' (and, with ``toggles``, the switches of the tuned and vote rows)."""
    g = p.add_argument_group("ragicl best (tuned on dev queries from the training set)")
    if toggles:
        g.add_argument("--no-best", dest="best", action="store_false",
                       help="skip the tuned 'ragicl best' system (tuning scores dev queries with the LM)")
        g.add_argument("--no-vote", dest="vote", action="store_false",
                       help=f"skip the kNN-vote rows (k = {', '.join(map(str, VOTE_KS))}; no LM)")
    g.add_argument("--dev-size", type=positive_int, default=150,
                   help="dev queries drawn from the index's training examples (default 150)")
    g.add_argument("--tune-budget", type=lm_tokens_value, default=AUTO_BUDGET, metavar="TOKENS",
                   help="LM work the search may spend, in LM tokens scored (prompt + label tokens), counted "
                        "before anything runs: the same search and choice on any machine (it used to be "
                        "seconds; for a time limit use --tune-max-seconds). E.g. 600000, 600k, 1.5M; none = "
                        "every configuration; 0 = the plain systems only. The plain systems (zero-shot, "
                        "retrieved-k over every label) are always scored, the kNN votes cost no LM call; the "
                        "other prompt configurations (candidate labels, label-aware order) are tried cheapest "
                        "first while they fit. Default auto = (number of k tried + "
                        f"{AUTO_EXTRA_PROMPTS}) x --dev-size x --max-prompt-tokens, room for the plain systems "
                        f"and {AUTO_EXTRA_PROMPTS} more configurations of full-length prompts: 614,400 at "
                        "eval's defaults, which holds every configuration of k=16 when the prompts are short "
                        "(SST-2, TREC, Banking77) and about 3 beyond the plain ones when they are full")
    g.add_argument("--tune-max-seconds", type=positive_float, default=None, metavar="S",
                   help="optional wall-clock cap on the search (default none). A configuration that would pass it "
                        "is skipped, with a warning, and the result is marked NOT reproducible: another "
                        "machine may search more and choose otherwise")
    g.add_argument("--tune-rule", default=None, choices=list(RULES),
                   help="how the choice is made from the dev answers: best (best dev accuracy), one-se (the best "
                        "of the simplest set, plain systems then votes, within one standard error of the best), fallback (the best "
                        "plain system unless the best setting beats it outside the dev noise), crossfit (the "
                        f"set that chooses best on held-out halves of the dev queries); default "
                        f"{default_tune('rule')}, the library's. eval gives the tuner the test inputs (never "
                        f"their labels) only when its default dev_weights uses them: it is "
                        f"{default_tune('dev_weights')!r}, so they are "
                        f"{'' if default_tune('dev_weights') != 'none' else 'not '}given")
    g.add_argument("--tune-search", type=name_list("--tune-search", SEARCHES), default=None, metavar="LIST",
                   help="let the tuner choose how demonstrations are found too: a comma-separated list of "
                        f"{', '.join(SEARCHES)} (default: --search only). --search makes the plain systems; each "
                        "other one is tried with each k and candidate-label count, within --tune-budget (auto "
                        "grows by one retrieved-k per other retriever), and the report gives each one's best dev "
                        "accuracy")
    g.add_argument("--tune-selection", type=name_list("--tune-selection", TUNABLE_SELECTIONS), default=None,
                   metavar="LIST",
                   help="the same for how demonstrations are chosen among the candidates: a comma-separated list "
                        f"of {', '.join(TUNABLE_SELECTIONS)} (default: --selection only); every pair with "
                        "--tune-search is tried")
    g.add_argument("--vote-dev-size", type=positive_int, default=None,
                   help="choose the kNN vote's size and temperature first, without the LM, by leave-one-out "
                        "accuracy over this many training queries (default: jointly on the dev queries)")


def index_build_args(b: argparse.ArgumentParser) -> None:
    b.add_argument("data", nargs="+",
                   help="dataset file: .jsonl, .json, .csv or .parquet; with --ray, several files, folders or "
                        "globs (e.g. data/*.parquet), read in sorted-path order")
    b.add_argument("--out", default=None,
                   help="index folder to write (default indexes/<dataset name>); a new folder, an empty one "
                        "or an existing index")
    b.add_argument("--embedder", default=DEFAULT_EMBEDDER,
                   help=f"sentence-transformers model: short name, hub id or folder (default "
                        f"{DEFAULT_EMBEDDER}); hash-64 is a fast fake for tests")
    b.add_argument("--factory", default="Flat",
                   help="faiss index_factory string, e.g. Flat (exact, default), IVF256,Flat, HNSW32; with --ray: "
                        "Flat or an IVF factory")
    b.add_argument("--device", type=device_value, default="auto", help="where the embedder (and faiss) run: "
                   "auto, cpu, cuda, cuda:N or mps (default auto)")
    b.add_argument("--batch-size", type=positive_int, default=64, help="texts per embedding batch (default 64)")
    b.add_argument("--bm25", action="store_true",
                   help="also build and save a BM25 (lexical) index, for --search bm25/hybrid")
    r = b.add_argument_group("distributed build (Ray)")
    r.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="build a sharded index on Ray: auto (the running cluster, else a local one), local, "
                        "host:port or ray://host:port; an interrupted build resumes (pip install 'ragicl[ray]')")
    r.add_argument("--workers", type=positive_int, default=None,
                   help="with --ray: embedding actors (default one per GPU, else half the CPUs)")
    r.add_argument("--shard-size", type=positive_int, default=None,
                   help="with --ray: rows per shard, the unit of work, resume and search (default 50000)")


def demo_args(d: argparse.ArgumentParser) -> None:
    d.add_argument("--dataset", default="sst2", help="dataset folder name under --data-dir (default sst2)")
    d.add_argument("--data-dir", default=os.environ.get("RAGICL_DATA", "../shared/datasets"),
                   help="folder of datasets, each with train.jsonl and test.jsonl (default $RAGICL_DATA or "
                        "../shared/datasets)")
    d.add_argument("--n", type=positive_int, default=150,
                   help="test examples (sampled with --seed; default 150: intervals about +-0.07 on accuracy)")
    d.add_argument("--n-train", type=positive_int, default=None, help="sample the training set (default: all)")
    d.add_argument("--index-dir", default=None, help="where the index is kept (default indexes/<dataset>)")
    d.add_argument("--steps", type=positive_int, default=16,
                   help="fine-tuning steps of the reference (default 16; a short, not converged reference)")
    d.add_argument("--ft-batch-size", type=positive_int, default=8, help="fine-tuning examples per step (default 8)")
    d.add_argument("--random", action="store_true",
                   help="also score random-k (k random training examples in the prompt; off by default: it "
                        "costs as much LM time as retrieved-k)")
    d.add_argument("--out", default="runs/demo", help="folder for the checkpoint and report (default runs/demo)")
