"""ragicl: retrieval in-context learning vs fine-tuning, from your shell.

    ragicl index build DATA... [--out indexes/NAME] [--embedder ...] [--factory Flat] [--ray auto|ADDRESS]
    ragicl finetune --train DATA --out DIR [--epochs 10 | --steps N] [--mode full|attention|value|lora] [--objective labels|gold]
    ragicl eval --index indexes/NAME --test DATA [--finetuned DIR] [--k 16|max] [--n 200] [--json out.json] [--predictions p.json] [--ray auto]
    ragicl tune --index indexes/NAME [--ks 4,8,16,max] [--tune-budget S]   # pick "ragicl best" on training dev data
    ragicl demo            # the main job: the whole comparison on SST-2 with the default models

Every command logs progress to stderr and prints its result (a summary or a table) to stdout. A user error
(a bad option value, an unusable path or dataset, an unknown model) ends the run with exit status 2 and one
``ragicl: error: ...`` line on stderr; ``-v`` adds the traceback. Outputs are checked before the work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ._cli_checks import (
    UsageError,
    check_factory,
    check_finetuned,
    check_input_path,
    check_lm,
    check_output_dir,
    check_output_file,
    check_test_labels,
    k_value,
    non_negative_int,
    positive_float,
    positive_int,
    report_error,
    unescape,
)
from ._cli_systems import PredictionsLog, add_best_args, build_systems, system_names
from ._exceptions import RagiclError

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


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-fields", default=None,
                   help="comma-separated input field names (default: from meta.json or inferred)")
    p.add_argument("--label-field", default="label", help="the label column (default: label)")
    p.add_argument("--output-field", default=None,
                   help="target column of a generation dataset (makes the task generation)")


def _read(path: str, args: argparse.Namespace, name: str | None = None):
    from .data import read_dataset

    fields = args.input_fields.split(",") if getattr(args, "input_fields", None) else None
    return read_dataset(path, input_fields=fields, label_field=args.label_field,
                        output_field=args.output_field, name=name)


def _template(args: argparse.Namespace, dataset):
    from .prompt.template import PromptTemplate

    instruction = unescape(args.instruction) if getattr(args, "instruction", None) else ""
    if getattr(args, "template", None):
        template = PromptTemplate(example=unescape(args.template), instruction=instruction)
        template.validate(dataset.input_fields)
        return template
    base = PromptTemplate.default(dataset.input_fields)
    if instruction:
        from dataclasses import replace

        base = replace(base, instruction=instruction)
    return base


def cmd_index_build(args: argparse.Namespace) -> int:
    from .distributed._cli import check_single_process_build, index_build
    from .index.core import build_and_save
    from .index.embed import get_embedder

    out = args.out or str(Path("indexes") / _dataset_name(args.data[0]))
    if args.ray:
        return index_build(args, out)
    check_single_process_build(args, out)  # one file, no Ray-only flags, not over a sharded index
    check_output_dir(out, "--out", marker="manifest.json")
    dataset = _read(args.data[0], args)
    embedder = get_embedder(args.embedder, device=args.device, batch_size=args.batch_size)
    check_factory(args.factory, len(dataset), embedder.dimension)  # .dimension loads the model: fails early
    index = build_and_save(dataset, out, embedder=embedder, factory=args.factory, device=args.device,
                           batch_size=args.batch_size)
    print(f"built {out}: {len(index)} examples, dim {index.dimension}, factory {index.factory!r}, "
          f"embedder {index.embedder.name}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .training.reference import train_reference

    for option, value in (("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:  # --steps is None when training to convergence
            raise UsageError(f"{option} must be a positive integer (1 or more), got {value}.")
    check_output_dir(args.out, "--out")
    if args.index:
        check_input_path(args.index, "--index", "an index folder made by `ragicl index build`")
    check_lm(args.lm)
    train = _read(args.train, args, name=_dataset_name(args.train))
    template = _template(args, train)
    if args.aux_fewshot:
        from .index.core import ExampleIndex
        from .training.auxloss import train_with_fewshot_aux

        if not args.index:
            raise RagiclError("--aux-fewshot needs --index: the index (built over the training set) that "
                              "the few-shot prompts are retrieved from, e.g. `ragicl index build` first.")
        aux = train_with_fewshot_aux(train, ExampleIndex.load(args.index), lm=args.lm,
                                     template=template, k=args.aux_fewshot,
                                     lambda0=args.aux_lambda, schedule=args.aux_schedule,
                                     config=_train_config(args), out=args.out)
        result = aux.finetune
    else:
        result = train_reference(train, lm=args.lm, template=template, out=args.out,
                                 config=_train_config(args), reuse=not args.force)
    if result.converged:
        status = f"converged (early stopping; dev loss {result.dev_loss:.3f}, dev accuracy {result.dev_accuracy:.3f})"
    elif args.steps is not None:
        status = "NOT converged: fast run of a fixed number of steps (--steps); omit --steps to train to convergence"
    else:
        status = (f"NOT converged: stopped by the {result.stop_reason} limit while the dev loss was still "
                  "improving; raise --epochs")
    print(f"fine-tuned {args.lm} ({result.mode}, {result.steps} steps, {result.examples_seen} examples seen) in "
          f"{result.seconds:.0f} s -> {result.path}; loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}; "
          f"{status}")
    return 0


def _train_config(args: argparse.Namespace):
    """The ``ragicl finetune`` options as a TrainConfig (validated there: a TrainConfigError is a RagiclError)."""
    from .training.config import TrainConfig

    return TrainConfig(mode=args.mode, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, seed=args.seed, objective=args.objective, dev_fraction=args.dev_fraction,
                       patience=args.patience, eval_every=args.eval_every,
                       checkpoint_every=args.checkpoint_every, resume=args.resume)


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.compare import compare
    from .index.core import ExampleIndex

    if args.workers is not None and not args.ray:
        raise UsageError(f"--workers {args.workers} applies to --ray; received it without. Fix: add "
                         "--ray auto, or drop --workers.")
    if args.json:
        check_output_file(args.json, "--json")
    if args.predictions:
        check_output_file(args.predictions, "--predictions")
    if args.rescore:
        if not args.predictions:
            raise UsageError(f"--rescore {args.rescore[0]!r} applies to --predictions FILE (systems saved there are "
                             "reused unless named); received it without. Fix: add --predictions FILE, or drop "
                             "--rescore.")
        unknown = [n for n in args.rescore if n not in system_names(args)]
        if unknown:
            raise UsageError(f"--rescore {unknown[0]!r} is not a system of this run; expected one of "
                             f"{system_names(args)} (quote names with spaces: --rescore 'ragicl best').")
    if args.finetuned:
        check_finetuned(args.finetuned)
    check_lm(args.lm)
    index = ExampleIndex.load(args.index)
    template = _template(args, index.dataset)
    test = _read(args.test, args, name=_dataset_name(args.test))
    check_test_labels(test, index, args.test, args.index)
    if test.task == "classification":  # a test set may hold some of the index's labels: scored over all
        test = dataclasses.replace(test, labels=tuple(index.labels))
    from .training.checkpoint import base_mismatch_note

    notes = []
    if args.finetuned and (mismatch := base_mismatch_note(args.finetuned, args.lm)):
        logger.warning(mismatch)
        notes.append(mismatch)
    if args.n and args.n < len(test):
        notes.append(f"test set sampled: {args.n} of {len(test)} examples (seed {args.seed})")
        test = test.sample(args.n, seed=args.seed)
    if args.k == 0:
        notes.append("--k 0: zero-shot only (no demonstrations)")
    log = PredictionsLog(args.predictions, args, index, test) if args.predictions else None
    reuse = log.start(notes) if log else {}
    if args.ray:
        from .distributed._cli import eval_systems

        systems = eval_systems(args, index, template, notes, reuse)
    else:
        systems = build_systems(args, index, args.finetuned, template, notes, reuse)
    report = compare(test, systems, reference="fine-tuned" if args.finetuned else None, notes=notes,
                     on_result=(lambda r: log.add(r, notes)) if log else None)
    print(report.table())
    if args.json:
        report.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """``ragicl tune``: choose 'ragicl best' on dev queries from the index's training set; print and save it."""
    import json

    from .estimators.tune import FusionTuner
    from .index.core import ExampleIndex

    if args.json:
        check_output_file(args.json, "--json")
    check_lm(args.lm)
    index = ExampleIndex.load(args.index)
    template = _template(args, index.dataset)
    try:
        ks = tuple(k_value(k) for k in str(args.ks).split(",") if k.strip())
    except argparse.ArgumentTypeError:
        ks = ()
    if not ks:
        raise UsageError(f"--ks must be a comma-separated list of integers >= 0 or 'max' (many-shot), got "
                         f"{args.ks!r}.")
    tuner = FusionTuner(args.lm, template, max_prompt_tokens=args.max_prompt_tokens, selection=args.selection,
                        dev_size=args.dev_size, ks=ks, time_budget=args.tune_budget, batch_size=args.batch_size,
                        device=args.device, seed=args.seed, vote_dev_size=args.vote_dev_size).fit(index)
    print(tuner.result_.table())
    if args.json:
        from ._atomic import write_atomic

        write_atomic(args.json, json.dumps(tuner.result_.to_json(), indent=2).encode())
        print(f"wrote {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``ragicl demo`` (in :mod:`ragicl._cli_demo`)."""
    from ._cli_demo import run_demo

    return run_demo(args)


def _dataset_name(path: str | os.PathLike) -> str:
    p = Path(path)
    return p.parent.name if p.stem in {"train", "test", "dev", "validation"} else p.stem


ESCAPES_HELP = r"\n, \t and \r are a newline, a tab and a carriage return, \\ a backslash; any Unicode is kept"
TEMPLATE_HELP = r"example format ending in {label}, e.g. 'Review: {text}\nSentiment: {label}'; " + ESCAPES_HELP
DEVICE_HELP = "where the models run: auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps"


def _index_template_args(p: argparse.ArgumentParser, *, json_help: str) -> None:
    """--index, --json, --template, --instruction: the options eval and tune share."""
    p.add_argument("--index", required=True, help="index folder made by `ragicl index build`")
    p.add_argument("--json", default=None, help=json_help)
    p.add_argument("--template", default=None, help=TEMPLATE_HELP)
    p.add_argument("--instruction", default=None, help=f"text placed before the demonstrations; {ESCAPES_HELP}")


def _eval_args(p: argparse.ArgumentParser, k: int = 16) -> None:
    from .models import DEFAULT_LM

    p.add_argument("--lm", default=DEFAULT_LM,
                   help=f"base LM that scores the labels: short name, hub id or folder (default {DEFAULT_LM})")
    p.add_argument("--k", type=k_value, default=k,
                   help=f"demonstrations per prompt (default {k}); 0 runs the zero-shot system only; 'max' packs "
                        "as many as --max-prompt-tokens holds (many-shot)")
    p.add_argument("--selection", default="topk", choices=["topk", "balanced", "mmr"],
                   help="how the retrieved-k system picks demonstrations: topk (most similar), balanced "
                        "(round-robin over labels), mmr (similar but diverse); default topk")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=1024,
                   help="token budget of each whole prompt; demonstrations that do not fit are dropped "
                        "(default 1024)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="most prompts per LM forward pass (default: as many as the device's token budget holds)")
    p.add_argument("--seed", type=int, default=0, help="seed of test sampling and random-k (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_best_args(p)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .models import DEFAULT_EMBEDDER, DEFAULT_LM
    from .training.finetune import MODES, OBJECTIVES

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
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the embedder (and faiss) run; default auto")
    b.add_argument("--batch-size", type=positive_int, default=64, help="texts per embedding batch (default 64)")
    b.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="build a sharded index on Ray: auto (the running cluster, else a local one), local, "
                        "host:port or ray://host:port; an interrupted build resumes; actors use the cluster's GPUs "
                        "(--device is not used) (pip install 'ragicl[ray]')")
    b.add_argument("--workers", type=positive_int, default=None,
                   help="with --ray: embedding actors (default one per GPU, else half the CPUs)")
    b.add_argument("--shard-size", type=positive_int, default=None,
                   help="with --ray: rows per shard, the unit of work, resume and search (default 50000)")
    _add_data_args(b)
    b.set_defaults(func=cmd_index_build)

    f = sub.add_parser("finetune", help="fine-tune the base LM on a dataset (the reference)")
    f.add_argument("--train", required=True, help="training dataset (JSONL/CSV/Parquet; meta.json beside it is read)")
    f.add_argument("--out", required=True, help="folder for the fine-tuned model (checked before training)")
    f.add_argument("--lm", default=DEFAULT_LM, help=f"base LM name, hub id or folder (default {DEFAULT_LM})")
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
    f.add_argument("--template", default=None, help=TEMPLATE_HELP)
    f.add_argument("--instruction", default=None, help=f"text put before the examples of every prompt; {ESCAPES_HELP}")
    f.add_argument("--force", action="store_true", help="train even if a matching checkpoint exists")
    f.add_argument("--aux-fewshot", type=non_negative_int, default=0, metavar="K",
                   help="add the auxiliary K-shot loss (Lee, Sohn & Lee 2026) with shots retrieved from --index")
    f.add_argument("--index", default=None, help="index over the training set, for --aux-fewshot")
    f.add_argument("--aux-lambda", type=float, default=1.0, help="initial weight of the few-shot loss")
    f.add_argument("--aux-schedule", default="linear", choices=["linear", "cosine", "constant"],
                   help="how the few-shot loss weight is annealed to 0 over training")
    _add_data_args(f)
    f.set_defaults(func=cmd_finetune)

    e = sub.add_parser("eval", help="compare zero-shot, random-k, retrieved-k (and a fine-tuned model)",
                       description="Score a test set with the base LM zero-shot, with k random and with k "
                                   "retrieved demonstrations (and a fine-tuned checkpoint, the reference), "
                                   "then print accuracy, macro-F1 and the gap to the reference.")
    _index_template_args(e, json_help="also write the report as JSON to this file")
    e.add_argument("--test", required=True, help="test dataset file with the same labels as the index")
    e.add_argument("--finetuned", default=None, help="fine-tuned checkpoint folder (the gap reference)")
    e.add_argument("--n", type=positive_int, default=None, help="sample this many test examples (default all)")
    e.add_argument("--predictions", default=None, metavar="FILE",
                   help="save every system's per-query label distributions to FILE (JSON) as each finishes; a "
                        "rerun with the same FILE and settings reuses the systems it holds (resume an "
                        "interrupted run, or add --finetuned later without re-scoring the rest)")
    e.add_argument("--rescore", action="append", default=None, metavar="SYSTEM",
                   help="with --predictions: score this system again even if FILE holds it (e.g. 'ragicl best' "
                        "after a change to the tuner); repeat for several")
    e.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="score the test set on Ray actors (each loads the index and LM once): auto, local, "
                        "host:port or ray://host:port; the index folder must be on storage every node sees")
    e.add_argument("--workers", type=positive_int, default=None,
                   help="with --ray: scoring actors (default one per GPU, else half the CPUs)")
    _eval_args(e)
    _add_data_args(e)
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("tune", help="choose 'ragicl best' (LM x kNN, candidates, calibration) on dev data",
                       description="Draw dev queries from the index's own training examples (never a test set), "
                                   "score them once per prompt configuration and pick the best setting of "
                                   "k, candidate labels, label-aware prompts, kNN vote size and temperature, the "
                                   "LM x kNN weight and the calibration. Prints what was chosen and why.")
    _index_template_args(t, json_help="also write the choice and every trial as JSON to this file")
    t.add_argument("--ks", default="4,8,16", help="demonstrations per prompt to try, integers or 'max' (as many as the budget holds); "
                        "default 4,8,16")
    _eval_args(t)
    t.set_defaults(func=cmd_tune)

    d = sub.add_parser("demo", help="the main job: the full comparison on SST-2 with the default models",
                       description="Index a dataset, fine-tune the base LM briefly, and compare zero-shot, "
                                   "random-k, retrieved-k and fine-tuned on a test sample; writes "
                                   "<out>/report-<dataset>.json.")
    d.add_argument("--dataset", default="sst2", help="dataset folder name under --data-dir (default sst2)")
    d.add_argument("--data-dir", default=os.environ.get("RAGICL_DATA", "../shared/datasets"),
                   help="folder of datasets, each with train.jsonl and test.jsonl (default $RAGICL_DATA or "
                        "../shared/datasets)")
    d.add_argument("--n", type=positive_int, default=200, help="test examples (sampled; default 200)")
    d.add_argument("--n-train", type=positive_int, default=None,
                   help="sample the training set (default: all of it)")
    d.add_argument("--index-dir", default=None, help="where the index is kept (default indexes/<dataset>)")
    d.add_argument("--steps", type=positive_int, default=40, help="fine-tuning steps (default 40)")
    d.add_argument("--ft-batch-size", type=positive_int, default=16,
                   help="fine-tuning examples per step (default 16)")
    d.add_argument("--out", default="runs/demo", help="folder for the checkpoint and report (default runs/demo)")
    _eval_args(d, k=8)  # 8 shots keeps the whole job under 15 minutes on 2 CPU cores
    d.set_defaults(func=cmd_demo, lm=DEFAULT_LM)
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
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
