"""The ``ragicl`` command line.

    ragicl index build DATA [--out indexes/NAME] [--embedder ...] [--factory Flat]
    ragicl finetune --train DATA --out DIR [--steps 100] [--mode full|attention|value|lora] [--objective labels|gold]
    ragicl eval --index indexes/NAME --test DATA [--finetuned DIR] [--k 16] [--n 200] [--json out.json]
    ragicl demo            # the main job: the whole comparison on SST-2 with the default models

Every command logs progress to stderr and prints its result (a summary or a table) to stdout.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ._exceptions import RagiclError

logger = logging.getLogger("ragicl")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-fields", default=None,
                   help="comma-separated input field names (default: from meta.json or inferred)")
    p.add_argument("--label-field", default="label")
    p.add_argument("--output-field", default=None, help="output field, for generation datasets")


def _read(path: str, args: argparse.Namespace, name: str | None = None):
    from .data import read_dataset

    fields = args.input_fields.split(",") if getattr(args, "input_fields", None) else None
    return read_dataset(path, input_fields=fields, label_field=args.label_field,
                        output_field=args.output_field, name=name)


def _template(args: argparse.Namespace, dataset):
    from .template import PromptTemplate

    if getattr(args, "template", None):
        return PromptTemplate(example=args.template.encode().decode("unicode_escape"),
                              instruction=args.instruction or "")
    base = PromptTemplate.default(dataset.input_fields)
    if getattr(args, "instruction", None):
        from dataclasses import replace

        base = replace(base, instruction=args.instruction)
    return base


def cmd_index_build(args: argparse.Namespace) -> int:
    from .index import build_and_save

    fields = args.input_fields.split(",") if args.input_fields else None
    out = args.out or str(Path("indexes") / _dataset_name(args.data))
    index = build_and_save(args.data, out, embedder=args.embedder, factory=args.factory,
                           device=args.device, batch_size=args.batch_size, input_fields=fields,
                           label_field=args.label_field, output_field=args.output_field)
    print(f"built {out}: {len(index)} examples, dim {index.dimension}, factory {index.factory!r}, "
          f"embedder {index.embedder.name}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .reference import train_reference

    train = _read(args.train, args, name=_dataset_name(args.train))
    if args.aux_fewshot:
        from .auxloss import train_with_fewshot_aux
        from .index import ExampleIndex

        if not args.index:
            raise RagiclError("--aux-fewshot needs --index: the index (built over the training set) that "
                              "the few-shot prompts are retrieved from, e.g. `ragicl index build` first.")
        aux = train_with_fewshot_aux(train, ExampleIndex.load(args.index), lm=args.lm,
                                     template=_template(args, train), k=args.aux_fewshot,
                                     lambda0=args.aux_lambda, schedule=args.aux_schedule, mode=args.mode,
                                     steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                     seed=args.seed, out=args.out, objective=args.objective)
        result = aux.finetune
    else:
        result = train_reference(train, lm=args.lm, template=_template(args, train), out=args.out,
                                 mode=args.mode, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                 seed=args.seed, reuse=not args.force, objective=args.objective)
    print(f"fine-tuned {args.lm} ({result.mode}, {result.steps} steps) in {result.seconds:.0f} s -> "
          f"{result.path}; loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}")
    return 0


def _systems(args: argparse.Namespace, index, test, finetuned: str | None, template):
    from .classifier import ICLClassifier
    from .lm import TransformersLM

    lm = TransformersLM(args.lm, batch_size=args.batch_size)
    common = {"template": template, "max_prompt_tokens": args.max_prompt_tokens, "seed": args.seed}
    systems = {
        "zero-shot": ICLClassifier(lm, k=0, **common).fit(index),
        f"random-{args.k}": ICLClassifier(lm, k=args.k, selection="random", **common).fit(index),
        f"retrieved-{args.k}": ICLClassifier(lm, k=args.k, selection=args.selection, **common).fit(index),
    }
    if finetuned:
        systems["fine-tuned"] = ICLClassifier(finetuned, k=0, batch_size=args.batch_size,
                                              **common).fit(index)
    return systems


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import compare
    from .index import ExampleIndex

    index = ExampleIndex.load(args.index)
    test = _read(args.test, args, name=_dataset_name(args.test))
    notes = []
    if args.n and args.n < len(test):
        notes.append(f"test set sampled: {args.n} of {len(test)} examples (seed {args.seed})")
        test = test.sample(args.n, seed=args.seed)
    template = _template(args, index.dataset)
    systems = _systems(args, index, test, args.finetuned, template)
    report = compare(test, systems, reference="fine-tuned" if args.finetuned else None, notes=notes)
    print(report.table())
    if args.json:
        report.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: index SST-2, fine-tune briefly, compare zero-shot / random-k / retrieved-k /
    fine-tuned on a sample of the test set, print the table and write JSON."""
    from .data import read_dataset
    from .evaluate import compare
    from .index import ExampleIndex
    from .reference import train_reference
    from .template import PromptTemplate

    t_start = time.perf_counter()
    data_dir = Path(args.data_dir) / args.dataset
    if not (data_dir / "train.jsonl").exists():
        raise RagiclError(f"no {data_dir}/train.jsonl: pass --data-dir pointing at a folder with "
                          f"{args.dataset}/train.jsonl and test.jsonl (the repo expects ../shared/datasets).")
    train_full = read_dataset(data_dir / "train.jsonl", name=args.dataset)
    train = train_full.sample(args.n_train, seed=args.seed) if args.n_train else train_full
    test_full = read_dataset(data_dir / "test.jsonl", name=args.dataset, labels=train.labels)
    test = test_full.sample(args.n, seed=args.seed)
    out_dir = Path(args.out)
    index_dir = Path(args.index_dir) if args.index_dir else Path("indexes") / args.dataset
    index = None
    if (index_dir / "manifest.json").exists():
        index = ExampleIndex.load(index_dir)
        if index.manifest.get("dataset_fingerprint") != train.fingerprint():
            index = None
    if index is None:
        index = ExampleIndex.build(train)
        index.save(index_dir)
    try:
        template = PromptTemplate.for_dataset(args.dataset)
    except ValueError:
        template = PromptTemplate.default(train.input_fields)
    ft = train_reference(train, lm=args.lm, template=template, out=out_dir / f"finetuned-{args.dataset}",
                         steps=args.steps, batch_size=args.ft_batch_size, seed=args.seed)
    ft_path, ft_steps, ft_seconds = ft.path, ft.steps, ft.seconds
    del ft  # it holds the trained model; evaluation reloads the checkpoint from disk
    gc.collect()
    args.template = None
    systems = _systems(args, index, test, str(ft_path), template)
    notes = [(f"test set sampled: {len(test)} of {len(test_full)} examples (seed {args.seed}) to fit the "
             "time budget; intervals are bootstrap 95%"),
             (f"fine-tuned reference: {args.lm}, full fine-tune, {ft_steps} steps x {args.ft_batch_size} "
             f"examples ({ft_steps * args.ft_batch_size} of {len(train)} seen once at most), "
             f"{ft_seconds:.0f} s — deliberately short for this machine"),
             (f"index: {len(index)} examples, {index.embedder.name}, factory {index.factory!r}; "
             f"k={args.k}, max_prompt_tokens={args.max_prompt_tokens}")]
    report = compare(test, systems, reference="fine-tuned", notes=notes)
    print(report.table())
    report.to_json(out_dir / f"report-{args.dataset}.json")
    print(f"wrote {out_dir / f'report-{args.dataset}.json'}; total {time.perf_counter() - t_start:.0f} s")
    return 0


def _dataset_name(path: str | os.PathLike) -> str:
    p = Path(path)
    return p.parent.name if p.stem in {"train", "test", "dev", "validation"} else p.stem


def _eval_args(p: argparse.ArgumentParser, k: int = 16) -> None:
    from .models import DEFAULT_LM

    p.add_argument("--lm", default=DEFAULT_LM, help="base LM: short name, hub id or path")
    p.add_argument("--k", type=int, default=k, help="demonstrations per prompt")
    p.add_argument("--selection", default="topk", choices=["topk", "balanced", "mmr"])
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    from .finetune import MODES, OBJECTIVES
    from .models import DEFAULT_EMBEDDER, DEFAULT_LM

    parser = argparse.ArgumentParser(prog="ragicl", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    index = sub.add_parser("index", help="build indexes").add_subparsers(dest="index_command", required=True)
    b = index.add_parser("build", help="embed a dataset and save a FAISS index")
    b.add_argument("data", help="dataset file: .jsonl, .json, .csv or .parquet")
    b.add_argument("--out", default=None, help="index folder (default indexes/<dataset name>)")
    b.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    b.add_argument("--factory", default="Flat", help="faiss index_factory string, e.g. Flat, IVF256,Flat, HNSW32")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b.add_argument("--batch-size", type=int, default=64)
    _add_data_args(b)
    b.set_defaults(func=cmd_index_build)

    f = sub.add_parser("finetune", help="fine-tune the base LM on a dataset (the reference)")
    f.add_argument("--train", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--lm", default=DEFAULT_LM)
    f.add_argument("--mode", default="full", choices=list(MODES))
    f.add_argument("--objective", default="labels", choices=list(OBJECTIVES),
                   help="labels: softmax over all labels (default); gold: the gold label's likelihood "
                        "alone (cheaper per step with many multi-token labels)")
    f.add_argument("--steps", type=int, default=100)
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--lr", type=float, default=5e-5)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--template", default=None, help=r"example format ending in {label}, e.g. 'Review: {text}\nSentiment: {label}'")
    f.add_argument("--instruction", default=None)
    f.add_argument("--force", action="store_true", help="train even if a matching checkpoint exists")
    f.add_argument("--aux-fewshot", type=int, default=0, metavar="K",
                   help="add the auxiliary K-shot loss (Lee, Sohn & Lee 2026) with shots retrieved from --index")
    f.add_argument("--index", default=None, help="index over the training set, for --aux-fewshot")
    f.add_argument("--aux-lambda", type=float, default=1.0, help="initial weight of the few-shot loss")
    f.add_argument("--aux-schedule", default="linear", choices=["linear", "cosine", "constant"],
                   help="how the few-shot loss weight is annealed to 0 over training")
    _add_data_args(f)
    f.set_defaults(func=cmd_finetune)

    e = sub.add_parser("eval", help="compare zero-shot, random-k, retrieved-k (and a fine-tuned model)")
    e.add_argument("--index", required=True)
    e.add_argument("--test", required=True)
    e.add_argument("--finetuned", default=None, help="fine-tuned checkpoint folder (the gap reference)")
    e.add_argument("--n", type=int, default=None, help="sample this many test examples")
    e.add_argument("--json", default=None, help="write the report as JSON here")
    e.add_argument("--template", default=None)
    e.add_argument("--instruction", default=None)
    _eval_args(e)
    _add_data_args(e)
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="the main job: the full comparison on SST-2 with the default models")
    d.add_argument("--dataset", default="sst2")
    d.add_argument("--data-dir", default=os.environ.get("RAGICL_DATA", "../shared/datasets"))
    d.add_argument("--n", type=int, default=200, help="test examples (sampled)")
    d.add_argument("--n-train", type=int, default=None, help="sample the training set (default: all of it)")
    d.add_argument("--index-dir", default=None, help="where the index is kept (default indexes/<dataset>)")
    d.add_argument("--steps", type=int, default=40, help="fine-tuning steps")
    d.add_argument("--ft-batch-size", type=int, default=16)
    d.add_argument("--out", default="runs/demo")
    _eval_args(d, k=8)  # 8 shots keeps the whole job under 15 minutes on 2 CPU cores
    d.set_defaults(func=cmd_demo, lm=DEFAULT_LM)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except (RagiclError, FileNotFoundError) as err:
        print(f"ragicl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
