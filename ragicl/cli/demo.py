"""``ragicl demo``: the main job (index a dataset, fine-tune briefly, compare, write the report).

Sized to finish within minutes on 2 CPU cores (defaults: 150 test queries, k=4, a 16 x 8 reference, the tuner
on 100 dev queries with the plain systems' LM passes only): the same command on the same data gives the same
table on any machine (the tuner's budget is LM tokens, not seconds). It ends with the commands of the full
protocol (a converged reference, 500 test queries, the whole search)."""

from __future__ import annotations

import argparse
import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import RagiclError
from ..models import DEFAULT_LM
from .checks import check_lm, check_output_dir
from .settings import BestOptions, DataOptions, EvalOptions, PromptOptions, lm_spec

logger = logging.getLogger("ragicl.cli")


def run_demo(args: argparse.Namespace) -> int:
    """The main job: index the dataset, fine-tune briefly, compare zero-shot / retrieved-k / votes / ragicl
    best / fine-tuned (random-k with ``--random``) on a sample of the test set, print the table, write JSON and
    print the commands of the full protocol."""
    import dataclasses

    from ..evaluation.compare import compare
    from ..index.core import ExampleIndex
    from ..training.reference import train_reference
    from .systems import build_systems

    t_start = time.perf_counter()
    lm, best = lm_spec(args), BestOptions.from_args(args)
    prompt = dataclasses.replace(PromptOptions.from_args(args), template=None)
    data_dir = Path(args.data_dir) / args.dataset
    if not (data_dir / "train.jsonl").exists():
        raise RagiclError(f"no {data_dir}/train.jsonl: pass --data-dir pointing at a folder with "
                          f"{args.dataset}/train.jsonl and test.jsonl (the repo expects ../shared/datasets).")
    out_dir = check_output_dir(args.out, "--out")
    index_dir = Path(args.index_dir) if args.index_dir else Path("indexes") / args.dataset
    check_output_dir(index_dir, "--index-dir", marker="manifest.json")
    check_lm(lm)
    data = DataOptions()
    train_full = data.read(data_dir / "train.jsonl", name=args.dataset)
    train = train_full.sample(args.n_train, seed=args.seed) if args.n_train else train_full
    test_full = data.read(data_dir / "test.jsonl", name=args.dataset, labels=train.labels)
    test = test_full.sample(args.n, seed=args.seed)
    index = None
    if (index_dir / "manifest.json").exists():
        index = ExampleIndex.load(index_dir)
        if index.manifest.get("dataset_fingerprint") != train.fingerprint():
            index = None
    if index is None:
        index = ExampleIndex.build(train, device=lm.device)
        index.save(index_dir)
    template = prompt.template_for(train, preset=args.dataset)
    ft = train_reference(train, lm=lm.model, template=template, out=out_dir / f"finetuned-{args.dataset}",
                         steps=args.steps, batch_size=args.ft_batch_size, seed=args.seed)
    ft_path, ft_steps, ft_seconds = ft.path, ft.steps, ft.seconds
    del ft  # it holds the trained model; evaluation reloads the checkpoint from disk
    gc.collect()
    opts = EvalOptions(k=args.k, selection=args.selection, seed=args.seed, finetuned=str(out_dir /
                                                                                         f"finetuned-{args.dataset}"))
    notes = [(f"test set sampled: {len(test)} of {len(test_full)} examples (seed {args.seed}) to fit the "
             "time budget; intervals are bootstrap 95%"),
             (f"fine-tuned reference: {lm.model}, full fine-tune, {ft_steps} steps x {args.ft_batch_size} "
             f"examples ({ft_steps * args.ft_batch_size} of {len(train)} seen once at most), "
             f"{ft_seconds:.0f} s — deliberately short for this machine"),
             (f"index: {len(index)} examples, {index.embedder.name}, factory {index.factory!r}; "
             f"k={args.k}, max_prompt_tokens={prompt.max_prompt_tokens}")]
    del ft_path
    scorer = ScoreOnce(lm.build())
    systems = build_systems(index, template, lm=lm, opts=opts, best=best, prompt=prompt, notes=notes,
                            lm_object=scorer)
    if not getattr(args, "random", False):
        systems.pop(f"random-{args.k}", None)  # fitted (cheap: stores the index), never scored
    report = compare(test, systems, reference="fine-tuned", notes=notes)
    logger.info("LM: %d prompts scored, %d repeats answered from this run's memo", scorer.scored, scorer.repeats)
    print(report.table())
    report.to_json(out_dir / f"report-{args.dataset}.json")
    print(f"wrote {out_dir / f'report-{args.dataset}.json'}; total {time.perf_counter() - t_start:.0f} s")
    print(full_protocol(args, index_dir))
    return 0


class ScoreOnce:
    """The demo's LM, scoring each (prompt, labels) pair once per run; everything else is the LM's own.

    "ragicl best" keeps retrieved-k's prompts whenever the tuner keeps its k, every label and the plain order
    (always, at the demo's ``--tune-budget 0``), so its LM side on the test queries repeats retrieved-k's
    scoring: answered here, the same numbers without a second LM pass."""

    def __init__(self, lm: Any) -> None:
        self._lm = lm
        self._memo: dict[tuple[tuple[int, ...], tuple[tuple[int, ...], ...]], np.ndarray] = {}
        self.scored = 0
        self.repeats = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lm, name)

    def score_continuations(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *,
                            show_progress: bool | None = None) -> np.ndarray:
        conts = tuple(tuple(int(t) for t in c) for c in continuations)
        keys = [(tuple(int(t) for t in p), conts) for p in prompts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._memo))
        if todo:
            rows = self._lm.score_continuations([list(k[0]) for k in todo], [list(c) for c in conts],
                                                show_progress=show_progress)
            self._memo.update(zip(todo, np.asarray(rows, dtype=np.float64)))
        self.scored += len(todo)
        self.repeats += len(keys) - len(todo)
        if not keys:
            return np.zeros((0, len(conts)))
        return np.stack([self._memo[k] for k in keys])


def full_protocol(args: argparse.Namespace, index_dir: Path) -> str:
    """The commands that run this comparison as docs/results/classification.md does: the reference trained to
    convergence, 500 test queries, k=8, the tuner's whole search on 200 dev queries."""
    data = Path(args.data_dir) / args.dataset
    ref = Path("refs") / args.dataset
    lm = f" --lm {args.lm}" if getattr(args, "lm", None) not in (None, DEFAULT_LM) else ""
    return "\n".join([
        "The full protocol (docs/results/classification.md; hours on 2 CPU cores, minutes on a GPU):",
        f"  ragicl finetune --train {data / 'train.jsonl'} --out {ref}{lm}   # to convergence; a rerun resumes",
        (f"  ragicl eval --index {index_dir} --test {data / 'test.jsonl'} --finetuned {ref}{lm} --n 500 --k 8 "
         f"--dev-size 200 --json runs/{args.dataset}.json --report runs/{args.dataset}.html")])
