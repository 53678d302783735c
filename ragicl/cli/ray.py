"""The Ray side of the command line: ``ragicl index build ... --ray`` and ``ragicl eval ... --ray``.

Called by :mod:`ragicl.cli.commands` with typed settings once the arguments are checked; Ray is imported only
when these run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..distributed._ray import connect
from ..distributed.predict import DistributedClassifier
from ..distributed.sharded import is_sharded
from ..estimators.vote import VOTE_KS, vote_name
from ..lm.factory import LMSpec
from .checks import UsageError, check_output_dir
from .settings import BestOptions, DataOptions, EvalOptions, PromptOptions


def check_single_process_build(data: Sequence[str], out: str, *, workers: int | None,
                               shard_size: int | None) -> None:
    """``ragicl index build`` without ``--ray``: ``UsageError`` for what needs it (several files, Ray-only
    flags) and for an ``--out`` holding a sharded index (a single-process save would replace it)."""
    if len(data) > 1:
        raise UsageError(f"received {len(data)} data files ({', '.join(data[:3])}"
                         f"{', ...' if len(data) > 3 else ''}); a single-process build reads one. Fix: "
                         "add --ray auto (or --ray local) to build a sharded index from several files, or "
                         "pass one file.")
    for flag, value in (("--workers", workers), ("--shard-size", shard_size)):
        if value is not None:
            raise UsageError(f"{flag} {value} applies to a distributed build; received it without --ray. "
                             f"Fix: add --ray auto, or drop {flag}.")
    if is_sharded(out):
        raise UsageError(f"--out {out!r} holds a sharded index (built with --ray); a single-process build "
                         "would replace it. Fix: rebuild it with --ray, or choose another --out.")


def index_build(files: Sequence[str], out: str, *, data: DataOptions, embedder: str, factory: str, address: str,
                workers: int | None, shard_size: int | None, batch_size: int) -> int:
    """``ragicl index build ... --ray ADDRESS``: a sharded index built on a Ray cluster (resumable)."""
    import json

    from ..distributed.build import build_distributed

    if (Path(out) / "manifest.json").is_file() and not (Path(out) / "plan.json").is_file():
        raise UsageError(f"--out {out!r} holds a single-process index; a --ray build writes a sharded folder "
                         "and would replace it. Fix: choose another --out, or remove the old index.")
    if not (Path(out) / "plan.json").is_file():  # an unfinished build there resumes
        check_output_dir(out, "--out", marker="plan.json")
    fields = list(data.input_fields) if data.input_fields else None
    path = build_distributed(list(files), out, embedder=embedder, factory=factory, address=address,
                             workers=workers, shard_size=shard_size or 50_000, batch_size=batch_size,
                             input_fields=fields, label_field=data.label_field, output_field=data.output_field,
                             load=False)
    manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    print(f"built {out}: {manifest['count']} examples in {len(manifest['shards'])} shards (on Ray), dim "
          f"{manifest['dimension']}, factory {manifest['factory']!r}, embedder {manifest['embedder']}")
    return 0


def eval_systems(index: Any, template: Any, *, lm: LMSpec, opts: EvalOptions, best: BestOptions,
                 prompt: PromptOptions, notes: list[str], reuse: Mapping[str, Any] | None = None,
                 tuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """``eval --ray``: the LM-scored systems as :class:`~ragicl.distributed.DistributedClassifier` (Ray actors
    load the index and the LM once each and score the test set in batches); kNN votes stay local (no LM);
    "ragicl best" is tuned in this process on dev queries, then scored on the actors as a fusion. A name in
    ``reuse`` (saved predictions) takes that object instead (a reused "ragicl best" is not tuned again). The
    actors build the LM from its spec (a server LM: each actor talks to the server)."""
    from ..estimators.baselines import KNNVoteClassifier
    from .systems import finetuned_spec, tune_best

    connect(opts.ray)  # fails now (ClusterError, with the fix) rather than at the first system
    kw = {"address": opts.ray, "workers": opts.workers, "lm_batch_size": lm.batch_size, "template": template,
          "max_prompt_tokens": prompt.max_prompt_tokens, "seed": opts.seed}
    remote_lm: Any = lm.model if lm.resolved_engine == "transformers" and lm.to_json() == {"model": lm.model} else lm
    systems = {"zero-shot": DistributedClassifier(opts.index, remote_lm, k=0, **kw).fit()}
    if opts.k != 0:
        systems[f"random-{opts.k}"] = DistributedClassifier(opts.index, remote_lm, k=opts.k, selection="random",
                                                            **kw).fit()
        systems[f"retrieved-{opts.k}"] = DistributedClassifier(opts.index, remote_lm, k=opts.k, **opts.retrieval,
                                                               **kw).fit()
    if best.vote:
        for k in VOTE_KS:
            systems[vote_name(k, None)] = KNNVoteClassifier(k=k).fit(index)
    reuse = reuse or {}
    if best.best and opts.k != 0 and "ragicl best" in reuse:
        systems["ragicl best"] = reuse["ragicl best"]
    elif best.best and opts.k != 0:  # tuned here on dev queries (few), then the test set fans out like the rest
        params = tune_best(index, template, lm=lm, opts=opts, best=best, prompt=prompt, notes=notes,
                           tuned=tuned).get_params()
        for local in ("lm", "device", "show_progress", "batch_size"):
            params.pop(local)
        systems["ragicl best"] = DistributedClassifier(opts.index, remote_lm, estimator="fusion",
                                                       **{**kw, **params}).fit()
    if opts.finetuned:
        ft: Any = finetuned_spec(lm, opts.finetuned)
        ft = ft.model if ft.to_json() == {"model": ft.model} else ft
        systems["fine-tuned"] = DistributedClassifier(opts.index, ft, k=0, **kw).fit()
    notes.append(f"--ray {opts.ray}: LM scoring fanned out over Ray actors")
    return {name: reuse.get(name, system) for name, system in systems.items()}
