#!/usr/bin/env python
"""Build and save the indexes of several dataset files in one go (``ragicl index build`` builds one).

    python scripts/build_index.py ../shared/datasets/*/train.jsonl     # -> indexes/sst2, indexes/trec, ...
    python scripts/build_index.py data.csv --input-fields question,context --out indexes/qa \
        --factory IVF64,Flat --embedder all-MiniLM-L6-v2 --device auto --batch-size 128

Each file goes to ``indexes/<dataset folder name>`` (``--out`` only with a single file); a folder that is
already a built index of the same file is skipped with ``--skip-built``. One failure does not stop the others;
the exit status is 2 if any failed.

Shows progress bars and prints a summary: count, dimension, factory, embedder, fingerprint, size on disk,
seconds.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

try:
    import ragicl  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def dataset_name(path: str) -> str:
    """``../shared/datasets/sst2/train.jsonl`` → ``sst2``; ``data/reviews.csv`` → ``reviews``."""
    p = Path(path)
    return p.parent.name if p.stem in {"train", "test", "dev", "validation"} else p.stem


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from ragicl.cli.checks import positive_int
    from ragicl.models import DEFAULT_EMBEDDER

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="+", help="dataset files: .jsonl, .json, .csv or .parquet (meta.json beside is used)")
    p.add_argument("--out", default=None, help="index folder, with one file only (default: indexes/<dataset name>)")
    p.add_argument("--skip-built", action="store_true", help="skip a file whose index folder already exists")
    p.add_argument("--input-fields", default=None, help="comma-separated input fields (default: meta/inferred)")
    p.add_argument("--label-field", default="label", help="the label column (default: label)")
    p.add_argument("--output-field", default=None, help="target field of a generation dataset")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER, help="sentence-transformers name/path, or hash-64")
    p.add_argument("--factory", default="Flat", help="faiss index_factory string: Flat, IVF256,Flat, HNSW32")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the embedder runs")
    p.add_argument("--batch-size", type=positive_int, default=64, help="texts per embedding batch")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="the full traceback on errors")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("ragicl").setLevel(logging.WARNING if args.quiet else logging.INFO)
    from ragicl._exceptions import RagiclError
    from ragicl.cli.checks import check_output_dir, report_error
    from ragicl.index.core import build_and_save

    if args.out and len(args.data) > 1:
        print(f"error: --out names one folder but {len(args.data)} files were given; drop --out (each goes to "
              "indexes/<dataset name>) or build one file at a time", file=sys.stderr)
        return 2
    outs = [args.out or str(Path("indexes") / dataset_name(d)) for d in args.data]
    if len(set(outs)) < len(outs):
        dup = sorted({o for o in outs if outs.count(o) > 1})
        print(f"error: several files map to the same index folder {dup}; build them one at a time with --out",
              file=sys.stderr)
        return 2
    failed = 0
    for data, out in zip(args.data, outs):
        if args.skip_built and (Path(out) / "manifest.json").exists():
            print(f"skipped {out} (already built)")
            continue
        start = time.perf_counter()
        try:
            check_output_dir(out, "--out", marker="manifest.json")  # before the embedding work
            index = build_and_save(
                data, out, embedder=args.embedder, factory=args.factory, device=args.device,
                batch_size=args.batch_size, label_field=args.label_field, output_field=args.output_field,
                input_fields=args.input_fields.split(",") if args.input_fields else None,
                show_progress=not args.quiet)
        except (RagiclError, ValueError, OSError) as err:  # user input: one line per file, exit 2 at the end
            report_error(err, args.verbose)
            failed += 1
            continue
        s = index.summary()
        print(f"built {out}\n"
              f"  examples     {s['count']}\n"
              f"  dimension    {s['dimension']}\n"
              f"  factory      {s['factory']} ({s['device']})\n"
              f"  embedder     {s['embedder']}\n"
              f"  fingerprint  {s['fingerprint'][:16]}\n"
              f"  size on disk {(s['bytes_on_disk'] or 0) / 1e6:.1f} MB\n"
              f"  seconds      {time.perf_counter() - start:.1f}")
    return 2 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
