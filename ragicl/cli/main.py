"""ragicl: retrieval in-context learning vs fine-tuning, from your shell.

    ragicl index build DATA... [--out indexes/NAME] [--embedder ...] [--factory Flat] [--ray auto|ADDRESS]
    ragicl finetune --train DATA --out DIR [--epochs 10 | --steps N] [--mode full|attention|value|lora] [--objective labels|gold]
    ragicl eval --index indexes/NAME --test DATA [--finetuned DIR] [--k 16|max] [--n 200] [--json out.json] [--report r.html] [--predictions p.json] [--ray auto]
    ragicl eval ... --lm Qwen/Qwen2.5-7B --lm-url http://localhost:8000/v1   # the LM behind a vLLM/SGLang/llama.cpp server
    ragicl tune --index indexes/NAME [--ks 4,8,16,max] [--tune-budget TOKENS]   # pick "ragicl best" on training dev data
    ragicl demo            # the main job: the whole comparison on SST-2 with the default models

Every command logs progress to stderr and prints its result (a summary or a table) to stdout. A user error
(a bad option value, an unusable path or dataset, an unknown model) ends the run with exit status 2 and one
``ragicl: error: ...`` line on stderr; ``-v`` adds the traceback. Outputs are checked before the work starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .._exceptions import RagiclError
from .checks import non_negative_int, positive_float, positive_int, report_error
from .commands import cmd_demo, cmd_eval, cmd_finetune, cmd_index_build, cmd_tune
from .options import (
    SEARCHES,
    TUNABLE_SELECTIONS,
    best_args,
    data_args,
    demo_args,
    eval_args,
    index_build_args,
    lm_args,
    prompt_args,
)

logger = logging.getLogger("ragicl")

EPILOG = """examples:
  ragicl index build ../shared/datasets/sst2/train.jsonl --out indexes/sst2
  ragicl finetune --train ../shared/datasets/sst2/train.jsonl --out runs/ft-sst2 --steps 100
  ragicl eval --index indexes/sst2 --test ../shared/datasets/sst2/test.jsonl --n 200 --k 8 \\
      --finetuned runs/ft-sst2 --json runs/report.json
  ragicl index build 'data/shards/*.parquet' --out indexes/big --ray auto    # distributed, on Ray
  ragicl eval --index indexes/big --test test.jsonl --k max --ray auto          # many-shot, fanned out
  ragicl demo

Data files are .jsonl/.json/.csv/.parquet with one labeled example per row; a meta.json beside them names
the input fields and labels, and a column named "id" gives the example ids. Exit status: 0 success,
2 user error (message on stderr; -v for the traceback)."""


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__
    from ..training.finetune import MODES, OBJECTIVES

    parser = argparse.ArgumentParser(prog="ragicl", description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging from ragicl, and the full traceback on errors")
    parser.add_argument("--version", action="version", version=f"ragicl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    index = sub.add_parser("index", help="build a FAISS index over a labeled dataset",
                           description="Index commands.").add_subparsers(dest="index_command", required=True,
                                                                         metavar="SUBCOMMAND")
    b = index.add_parser("build", help="embed a dataset and save a FAISS index",
                         description="Embed every example of DATA and save a searchable index folder "
                                     "(index.faiss, embeddings, examples, manifest.json) for `ragicl eval`.")
    index_build_args(b)
    data_args(b)
    b.set_defaults(func=cmd_index_build)

    f = sub.add_parser("finetune", help="fine-tune the base LM on a dataset (the reference)")
    f.add_argument("--train", required=True, help="training dataset (JSONL/CSV/Parquet; meta.json beside it is read)")
    f.add_argument("--out", required=True, help="folder for the fine-tuned model (checked before training)")
    f.add_argument("--mode", default="full", choices=list(MODES),
                   help="which weights train: full, attention, value (Lee et al. 2026) or lora (default full)")
    f.add_argument("--objective", default="labels", choices=list(OBJECTIVES),
                   help="labels: softmax over all labels (default); gold: the gold label's likelihood "
                        "alone (cheaper per step with many multi-token labels)")
    f.add_argument("--steps", type=positive_int, default=None,
                   help="FAST mode: exactly this many optimizer steps, no early stopping; the checkpoint is "
                        "labelled not converged (default: train to convergence)")
    f.add_argument("--epochs", type=positive_float, default=None,
                   help="most passes over the training data when training to convergence (default 10; "
                        "early stopping usually ends sooner)")
    f.add_argument("--dev-fraction", type=float, default=None,
                   help="share of the training data held out (seeded, stratified by label) to early-stop on; "
                        "default 0.1 (at most 1000 examples), 0 with --steps")
    f.add_argument("--patience", type=positive_int, default=3,
                   help="stop after this many dev evaluations without a lower dev loss (default 3); the best "
                        "weights are restored")
    f.add_argument("--eval-every", type=positive_int, default=None,
                   help="steps between dev evaluations (default: four per epoch, at most every 200 steps)")
    f.add_argument("--checkpoint-every", type=non_negative_int, default=None,
                   help="steps between resumable checkpoints in OUT/checkpoint (default: at each dev "
                        "evaluation; 0 disables). A rerun with the same data and settings resumes from it")
    f.add_argument("--no-resume", dest="resume", action="store_false",
                   help="ignore a checkpoint left in OUT by an interrupted run and start over")
    f.add_argument("--batch-size", type=positive_int, default=16, help="examples per optimizer step (default 16)")
    f.add_argument("--lr", type=positive_float, default=5e-5, help="peak learning rate (default 5e-5)")
    f.add_argument("--seed", type=int, default=0, help="seed of the data order, dev split and LoRA init")
    f.add_argument("--force", action="store_true", help="train even if a matching checkpoint exists")
    f.add_argument("--engine", default="ragicl", choices=["ragicl", "hf"],
                   help="what runs the training loop: ragicl (its own, default; resumable checkpoints) or hf "
                        "(transformers.Trainer: the same objective, schedule, early stopping and folder, with "
                        "Trainer's launchers for mixed precision and several GPUs; no resumable checkpoint yet)")
    f.add_argument("--aux-fewshot", type=non_negative_int, default=0, metavar="K",
                   help="add the auxiliary K-shot loss (Lee, Sohn & Lee 2026) with shots retrieved from --index")
    f.add_argument("--index", default=None, help="index over the training set, for --aux-fewshot")
    f.add_argument("--aux-lambda", type=float, default=1.0, help="initial weight of the few-shot loss")
    f.add_argument("--aux-schedule", default="linear", choices=["linear", "cosine", "constant"],
                   help="how the few-shot loss weight is annealed to 0 over training")
    prompt_args(f, budget=False)
    lm_args(f, what="base LM to fine-tune", serve=False, scoring=False)
    data_args(f)
    f.set_defaults(func=cmd_finetune)

    e = sub.add_parser("eval", help="compare zero-shot, random-k, retrieved-k, kNN votes, ragicl best (and a "
                       "fine-tuned model)",
                       description="Score a test set with the base LM zero-shot, with k random and with k "
                                   "retrieved demonstrations, the kNN votes and the tuned 'ragicl best' (and a "
                                   "fine-tuned checkpoint, the reference), then print accuracy, macro-F1 and the "
                                   "gap to the reference.")
    e.add_argument("--index", required=True, help="index folder made by `ragicl index build`")
    e.add_argument("--test", required=True, help="test dataset file with the same labels as the index")
    e.add_argument("--finetuned", default=None, help="fine-tuned checkpoint folder (the gap reference)")
    e.add_argument("--n", type=positive_int, default=None, help="sample this many test examples (default all)")
    out = e.add_argument_group("outputs")
    out.add_argument("--json", default=None, help="also write the report as JSON to this file")
    out.add_argument("--report", default=None, metavar="FILE",
                     help="also write the report for reading: FILE.html (one self-contained page with figures) "
                          "or FILE.md (Markdown)")
    out.add_argument("--predictions", default=None, metavar="FILE",
                     help="save every system's per-query label distributions to FILE (JSON) as each finishes; a "
                          "rerun with the same FILE and settings reuses the systems it holds (resume an "
                          "interrupted run, or add --finetuned later without re-scoring the rest)")
    out.add_argument("--rescore", action="append", default=None, metavar="SYSTEM",
                     help="with --predictions: score this system again even if FILE holds it (e.g. 'ragicl best' "
                          "after a change to the tuner); repeat for several")
    ray = e.add_argument_group("distributed scoring (Ray)")
    ray.add_argument("--ray", default=None, metavar="ADDRESS",
                     help="score the test set on Ray actors (each loads the index and LM once): auto, local, "
                          "host:port or ray://host:port; the index folder must be on storage every node sees")
    ray.add_argument("--workers", type=positive_int, default=None,
                     help="with --ray: scoring actors (default one per GPU, else half the CPUs)")
    eval_args(e)
    prompt_args(e)
    lm_args(e)
    best_args(e)
    data_args(e)
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("tune", help="choose 'ragicl best' (LM x kNN, candidates, calibration) on dev data",
                       description="Draw dev queries from the index's own training examples (never a test set), "
                                   "score them once per prompt configuration and pick the best setting of "
                                   "k, candidate labels, label-aware prompts, kNN vote size and temperature, the "
                                   "LM x kNN weight and the calibration. Prints what was chosen and why.")
    t.add_argument("--index", required=True, help="index folder made by `ragicl index build`")
    t.add_argument("--json", default=None, help="also write the choice and every trial as JSON to this file")
    t.add_argument("--ks", default="4,8,16", help="demonstrations per prompt to try, integers or 'max' (as many as "
                   "the budget holds); default 4,8,16")
    t.add_argument("--selection", default="topk", choices=list(TUNABLE_SELECTIONS),
                   help="how the plain systems' demonstrations are picked (default topk; --tune-selection tries "
                        "others too)")
    t.add_argument("--search", default="dense", choices=list(SEARCHES),
                   help="how the plain systems' candidates are found: dense (the FAISS index, default), bm25 or "
                        "hybrid (--tune-search tries others too)")
    t.add_argument("--seed", type=int, default=0, help="seed of the dev sample (default 0)")
    prompt_args(t)
    lm_args(t)
    best_args(t, toggles=False)
    t.set_defaults(func=cmd_tune)

    d = sub.add_parser("demo", help="the main job: the full comparison on SST-2 with the default models",
                       description="Index a dataset, fine-tune the base LM briefly, and compare zero-shot, "
                                   "retrieved-k, the kNN votes, ragicl best and fine-tuned (random-k with "
                                   "--random) on a test sample; writes <out>/report-<dataset>.json and prints "
                                   "the commands of the full protocol. Sized for 2 CPU cores: --k 4, "
                                   "--dev-size 100 and --tune-budget 0 (ragicl best mixes retrieved-k's LM "
                                   "distribution with the tuned kNN vote; no other prompt configuration) "
                                   "unless given.")
    demo_args(d)
    d.add_argument("--max-prompt-tokens", type=positive_int, default=1024,
                   help="token budget of each whole prompt (default 1024)")
    eval_args(d, k=4)  # 4 shots keeps the whole job short on 2 CPU cores
    lm_args(d, serve=True)
    best_args(d)
    # the tuner's search sized for 2 CPU cores (the help of --dev-size/--tune-budget shows eval's defaults)
    d.set_defaults(func=cmd_demo, dev_size=100, tune_budget=0)
    return parser


def _configure_logging(verbose: bool) -> None:
    """ragicl logs at INFO (DEBUG with -v); other libraries only at WARNING.

    faiss's loader logs at INFO that its optional AVX2/AVX512 builds failed to import (a
    ``ModuleNotFoundError`` for ``swigfaiss_avx2`` on a generic build) before it falls back: that is
    expected, so the root logger stays at WARNING and only the ``ragicl`` logger is lowered.
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("ragicl").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except (RagiclError, OSError, ValueError) as err:  # user input: one clear line (traceback with -v)
        return report_error(err, args.verbose)
    except (MemoryError, RecursionError) as err:  # sizes/nesting from the input: said once, with the fix
        return report_error(_resource_error(err), args.verbose, cause=err)
    except KeyboardInterrupt:
        print("ragicl: interrupted", file=sys.stderr)
        return 130


def _resource_error(err: BaseException) -> RagiclError:
    what = "ran out of memory" if isinstance(err, MemoryError) else "hit Python's recursion limit"
    detail = str(err) or type(err).__name__
    return RagiclError(f"{what} ({detail}). Fix: lower the sizes this run asked for (--k, --n, --batch-size, "
                       "--max-prompt-tokens, --dev-size), check that the data holds flat records, or use a "
                       "machine with more memory.")
