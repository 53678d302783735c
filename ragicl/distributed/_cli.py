"""The Ray side of the command line: ``ragicl index build ... --ray`` and ``ragicl eval ... --ray``.

Called by :mod:`ragicl.cli` once it has parsed and checked the arguments; Ray is imported only when these run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._cli_checks import UsageError, check_output_dir
from ._ray import connect
from .predict import DistributedClassifier
from .sharded import is_sharded


def check_single_process_build(args: argparse.Namespace, out: str) -> None:
    """``ragicl index build`` without ``--ray``: ``UsageError`` for what needs it (several files, Ray-only
    flags) and for an ``--out`` holding a sharded index (a single-process save would replace it)."""
    if len(args.data) > 1:
        raise UsageError(f"received {len(args.data)} data files ({', '.join(args.data[:3])}"
                         f"{', ...' if len(args.data) > 3 else ''}); a single-process build reads one. Fix: "
                         "add --ray auto (or --ray local) to build a sharded index from several files, or "
                         "pass one file.")
    for flag, value in (("--workers", args.workers), ("--shard-size", args.shard_size)):
        if value is not None:
            raise UsageError(f"{flag} {value} applies to a distributed build; received it without --ray. "
                             f"Fix: add --ray auto, or drop {flag}.")
    if is_sharded(out):
        raise UsageError(f"--out {out!r} holds a sharded index (built with --ray); a single-process build "
                         "would replace it. Fix: rebuild it with --ray, or choose another --out.")


def index_build(args: argparse.Namespace, out: str) -> int:
    """``ragicl index build ... --ray ADDRESS``: a sharded index built on a Ray cluster (resumable)."""
    from .build import build_distributed

    if (Path(out) / "manifest.json").is_file() and not (Path(out) / "plan.json").is_file():
        raise UsageError(f"--out {out!r} holds a single-process index; a --ray build writes a sharded folder "
                         "and would replace it. Fix: choose another --out, or remove the old index.")
    if not (Path(out) / "plan.json").is_file():  # an unfinished build there resumes
        check_output_dir(out, "--out", marker="plan.json")
    fields = args.input_fields.split(",") if args.input_fields else None
    path = build_distributed(args.data, out, embedder=args.embedder, factory=args.factory, address=args.ray,
                             workers=args.workers, shard_size=args.shard_size or 50_000,
                             batch_size=args.batch_size, input_fields=fields, label_field=args.label_field,
                             output_field=args.output_field, load=False)
    manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    print(f"built {out}: {manifest['count']} examples in {len(manifest['shards'])} shards (on Ray), dim "
          f"{manifest['dimension']}, factory {manifest['factory']!r}, embedder {manifest['embedder']}")
    return 0


def eval_systems(args: argparse.Namespace, index: Any, template: Any, notes: list[str],
                 reuse: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``eval --ray``: the LM-scored systems as :class:`~ragicl.distributed.DistributedClassifier` (Ray actors
    load the index and the LM once each and score the test set in batches); kNN votes stay local (no LM);
    "ragicl best" is tuned in this process on dev queries, then scored on the actors as a fusion. A name in
    ``reuse`` (saved predictions) takes that object instead (a reused "ragicl best" is not tuned again)."""
    from .._cli_systems import VOTE_KS
    from ..estimators.baselines import KNNVoteClassifier

    connect(args.ray)  # fails now (ClusterError, with the fix) rather than at the first system
    kw = {"address": args.ray, "workers": args.workers, "lm_batch_size": args.batch_size, "template": template,
          "max_prompt_tokens": args.max_prompt_tokens, "seed": args.seed}
    systems = {"zero-shot": DistributedClassifier(args.index, args.lm, k=0, **kw).fit()}
    if args.k > 0:
        systems[f"random-{args.k}"] = DistributedClassifier(args.index, args.lm, k=args.k, selection="random",
                                                            **kw).fit()
        systems[f"retrieved-{args.k}"] = DistributedClassifier(args.index, args.lm, k=args.k,
                                                               selection=args.selection, **kw).fit()
    if args.vote:
        for k in VOTE_KS:
            systems[f"kNN vote k={k}"] = KNNVoteClassifier(k=k).fit(index)
    reuse = reuse or {}
    if args.best and args.k > 0 and "ragicl best" in reuse:
        systems["ragicl best"] = reuse["ragicl best"]
    elif args.best and args.k > 0:  # tuned here on dev queries (few), then the test set fans out like the rest
        from .._cli_systems import tune_best

        params = tune_best(args, index, template, notes).get_params()
        for local in ("lm", "device", "show_progress", "batch_size"):
            params.pop(local)
        systems["ragicl best"] = DistributedClassifier(args.index, args.lm, estimator="fusion",
                                                       **{**kw, **params}).fit()
    if args.finetuned:
        systems["fine-tuned"] = DistributedClassifier(args.index, args.finetuned, k=0, **kw).fit()
    notes.append(f"--ray {args.ray}: LM scoring fanned out over Ray actors")
    return {name: reuse.get(name, system) for name, system in systems.items()}
