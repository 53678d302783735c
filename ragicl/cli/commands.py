"""The commands: each reads its typed settings (:mod:`ragicl.cli.settings`), checks what it will write and
load before any work, and calls the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path

from .._exceptions import RagiclError
from .checks import (
    UsageError,
    check_factory,
    check_finetuned,
    check_input_path,
    check_lm,
    check_output_dir,
    check_output_file,
    check_test_labels,
    k_value,
)
from .predlog import PredictionsLog
from .settings import BestOptions, DataOptions, EvalOptions, PromptOptions, lm_spec
from .systems import build_systems, system_names, warn_seconds_cap, warn_small_budget

logger = logging.getLogger("ragicl")


def dataset_name(path: str | os.PathLike) -> str:
    p = Path(path)
    return p.parent.name if p.stem in {"train", "test", "dev", "validation"} else p.stem


def cmd_index_build(args: argparse.Namespace) -> int:
    from ..index.core import build_and_save
    from ..index.embed import get_embedder
    from .ray import check_single_process_build, index_build

    data = DataOptions.from_args(args)
    out = args.out or str(Path("indexes") / dataset_name(args.data[0]))
    if args.ray:
        return index_build(args.data, out, data=data, embedder=args.embedder, factory=args.factory,
                           address=args.ray, workers=args.workers, shard_size=args.shard_size,
                           batch_size=args.batch_size)
    check_single_process_build(args.data, out, workers=args.workers, shard_size=args.shard_size)
    check_output_dir(out, "--out", marker="manifest.json")
    dataset = data.read(args.data[0])
    embedder = get_embedder(args.embedder, device=args.device, batch_size=args.batch_size)
    check_factory(args.factory, len(dataset), embedder.dimension)  # .dimension loads the model: fails early
    index = build_and_save(dataset, out, embedder=embedder, factory=args.factory, device=args.device,
                           batch_size=args.batch_size, lexical=args.bm25)
    print(f"built {out}: {len(index)} examples, dim {index.dimension}, factory {index.factory!r}, "
          f"embedder {index.embedder.name}")
    return 0


def train_config(args: argparse.Namespace):
    """The ``ragicl finetune`` options as a TrainConfig (validated there: a TrainConfigError is a RagiclError)."""
    from ..training.config import TrainConfig

    return TrainConfig(mode=args.mode, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, seed=args.seed, objective=args.objective, dev_fraction=args.dev_fraction,
                       patience=args.patience, eval_every=args.eval_every,
                       checkpoint_every=args.checkpoint_every, resume=args.resume,
                       engine=getattr(args, "engine", "ragicl"))


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..training.reference import train_reference

    config = train_config(args)
    check_output_dir(args.out, "--out")
    if args.index:
        check_input_path(args.index, "--index", "an index folder made by `ragicl index build`")
    lm = lm_spec(args, scoring=False)
    if lm.resolved_engine != "transformers":
        raise UsageError(f"--lm {lm.model!r} would run on {lm.resolved_engine}; fine-tuning trains a transformers "
                         "model. Fix: pass the model's hub id or folder (the reference can then be compared with "
                         "a GGUF or served copy of the base through `ragicl eval`).")
    check_lm(lm)
    base = lm.build() if lm.to_json() != {"model": lm.model} else lm.model  # loading options only when given
    train = DataOptions.from_args(args).read(args.train, name=dataset_name(args.train))
    template = PromptOptions.from_args(args).template_for(train)
    if args.aux_fewshot:
        from ..index.core import ExampleIndex
        from ..training.auxloss import train_with_fewshot_aux

        if not args.index:
            raise RagiclError("--aux-fewshot needs --index: the index (built over the training set) that "
                              "the few-shot prompts are retrieved from, e.g. `ragicl index build` first.")
        aux = train_with_fewshot_aux(train, ExampleIndex.load(args.index), lm=base, template=template,
                                     k=args.aux_fewshot, lambda0=args.aux_lambda, schedule=args.aux_schedule,
                                     config=config, out=args.out)
        result = aux.finetune
    else:
        result = train_reference(train, lm=base, template=template, out=args.out, config=config,
                                 reuse=not args.force)
    if result.converged:
        status = f"converged (early stopping; dev loss {result.dev_loss:.3f}, dev accuracy {result.dev_accuracy:.3f})"
    elif args.steps is not None:
        status = "NOT converged: fast run of a fixed number of steps (--steps); omit --steps to train to convergence"
    else:
        status = (f"NOT converged: stopped by the {result.stop_reason} limit while the dev loss was still "
                  "improving; raise --epochs")
    print(f"fine-tuned {lm.model} ({result.mode}, {result.steps} steps, {result.examples_seen} examples seen) in "
          f"{result.seconds:.0f} s -> {result.path}; loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}; "
          f"{status}")
    return 0


def _check_eval_outputs(opts: EvalOptions, best: BestOptions) -> None:
    if opts.workers is not None and not opts.ray:
        raise UsageError(f"--workers {opts.workers} applies to --ray; received it without. Fix: add "
                         "--ray auto, or drop --workers.")
    for option, path in (("--json", opts.json), ("--report", opts.report), ("--predictions", opts.predictions)):
        if path:
            check_output_file(path, option)
    if opts.report:
        from ..evaluation.html_report import report_format

        try:
            report_format(opts.report)
        except ValueError as err:
            raise UsageError(f"--report {opts.report!r}: {err}") from None
    if opts.rescore:
        if not opts.predictions:
            raise UsageError(f"--rescore {opts.rescore[0]!r} applies to --predictions FILE (systems saved there are "
                             "reused unless named); received it without. Fix: add --predictions FILE, or drop "
                             "--rescore.")
        unknown = [n for n in opts.rescore if n not in system_names(opts, best)]
        if unknown:
            raise UsageError(f"--rescore {unknown[0]!r} is not a system of this run; expected one of "
                             f"{system_names(opts, best)} (quote names with spaces: --rescore 'ragicl best').")
    if opts.finetuned:
        check_finetuned(opts.finetuned)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation.compare import compare
    from ..index.core import ExampleIndex
    from ..training.checkpoint import base_mismatch_note

    opts, best, prompt, lm = (EvalOptions.from_args(args), BestOptions.from_args(args),
                              PromptOptions.from_args(args), lm_spec(args))
    _check_eval_outputs(opts, best)
    check_lm(lm)
    index = ExampleIndex.load(args.index)
    template = prompt.template_for(index.dataset)
    test = DataOptions.from_args(args).read(args.test, name=dataset_name(args.test))
    check_test_labels(test, index, args.test, args.index)
    if test.task == "classification":  # a test set may hold some of the index's labels: scored over all
        test = dataclasses.replace(test, labels=tuple(index.labels))
    notes = []
    if lm.resolved_engine != "transformers":
        notes.append(f"LM: {lm.describe()}")
    if opts.finetuned and (mismatch := base_mismatch_note(opts.finetuned, lm.model)):
        logger.warning(mismatch)
        notes.append(mismatch)
    if opts.n and opts.n < len(test):
        notes.append(f"test set sampled: {opts.n} of {len(test)} examples (seed {opts.seed})")
        test = test.sample(opts.n, seed=opts.seed)
    if opts.k == 0:
        notes.append("--k 0: zero-shot only (no demonstrations)")
    log = (PredictionsLog(opts.predictions, lm=lm, opts=opts, best=best, prompt=prompt, index=index, test=test)
           if opts.predictions else None)
    reuse = log.start(notes) if log else {}
    tuned: dict = {}  # the tuner's TuneResult, when "ragicl best" is tuned in this run (for --report)
    if opts.ray:
        from .ray import eval_systems

        systems = eval_systems(index, template, lm=lm, opts=opts, best=best, prompt=prompt, notes=notes,
                               reuse=reuse, tuned=tuned)
    else:
        systems = build_systems(index, template, lm=lm, opts=opts, best=best, prompt=prompt, notes=notes,
                                reuse=reuse, tuned=tuned, unlabeled=test)
    report = compare(test, systems, reference="fine-tuned" if opts.finetuned else None, notes=notes,
                     on_result=(lambda r: log.add(r, notes)) if log else None)
    print(report.table())
    if opts.json:
        from .._atomic import write_json_atomic

        data = report.to_json()
        if tuned.get("result") is not None:  # what the tuner searched, skipped and chose, and why
            data["tune"] = tune_summary(tuned["result"])
        write_json_atomic(opts.json, data)
        print(f"wrote {opts.json}")
    if opts.report:
        import shlex
        import sys

        from ..evaluation.html_report import write_report_file

        result = tuned.get("result")
        write_report_file(report, opts.report, gold=[ex.label for ex in test.examples],
                          tune=result.to_json() if result is not None else None,
                          command=shlex.join(["ragicl", *sys.argv[1:]]))
        print(f"wrote {opts.report}")
    return 0


def tune_summary(result) -> dict:
    """``eval --json``'s ``tune``: the :class:`~ragicl.estimators.tune.TuneResult` without its per-setting
    trials (thousands; ``ragicl tune --json`` and ``eval --report`` keep them): the choice, the rule and why, the
    configurations searched and skipped (with LM tokens and the reason), the LM budget and tokens used, the
    seconds cap, whether the search is reproducible, and the plain systems' dev accuracy."""
    data = result.to_json()
    data["n_trials"] = len(data.pop("trials"))
    data.pop("vote_trials")
    return data


def cmd_tune(args: argparse.Namespace) -> int:
    """``ragicl tune``: choose 'ragicl best' on dev queries from the index's training set, within the LM-token
    budget (``--tune-budget``; auto: ``(len(ks) + 3) x dev size x max prompt tokens``); print and save it."""
    from .._atomic import write_atomic
    from ..estimators.tune import FusionTuner
    from ..index.core import ExampleIndex

    if args.json:
        check_output_file(args.json, "--json")
    lm, prompt, best = lm_spec(args), PromptOptions.from_args(args), BestOptions.from_args(args)
    try:
        ks = tuple(k_value(k) for k in str(args.ks).split(",") if k.strip())
    except argparse.ArgumentTypeError:
        ks = ()
    if not ks:
        raise UsageError(f"--ks must be a comma-separated list of integers >= 0 or 'max' (many-shot), got "
                         f"{args.ks!r}.")
    check_lm(lm)
    index = ExampleIndex.load(args.index)
    template = prompt.template_for(index.dataset)
    warn_seconds_cap(best)
    kwargs = best.tuner_kwargs(len(ks), prompt.max_prompt_tokens, getattr(args, "search", "dense"), args.selection)
    tuner = FusionTuner(lm.build(), template, max_prompt_tokens=prompt.max_prompt_tokens, ks=ks, seed=args.seed,
                        **kwargs).fit(index)
    warn_small_budget(tuner.result_, best)
    print(tuner.result_.table())
    if args.json:
        write_atomic(args.json, json.dumps(tuner.result_.to_json(), indent=2).encode())
        print(f"wrote {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``ragicl demo`` (in :mod:`ragicl.cli.demo`)."""
    from .demo import run_demo

    return run_demo(args)
