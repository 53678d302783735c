#!/usr/bin/env python
"""Distributed build benchmark: Ray Data at 1 and 2 workers against the single-process build, same work.

Generates ``--n`` short labeled texts (a few words each, written as ``--files`` Parquet files), then:

1. **single process**: ``read_dataset`` per file + ``ExampleIndex.build`` (embed + index) + ``save``;
2. **Ray, w workers** (for each ``--workers``): ``build_distributed`` on a local cluster
   (``ray.init(num_cpus=--cpus)``, started once, not timed), then ``load_sharded`` (assembly in one
   process) and a search of ``--queries`` queries on the sharded index (fan-out + exact merge).

Per stage it reports examples/s: *read* (Ray: rows / the summed seconds of the read tasks, i.e. per
worker-second), *embed*, *write* (Parquet + faiss + sidecar per shard), *wall* (the whole build, driver
clock), *assemble* (``load_sharded``), *search* (queries/s). The Ray overhead is the Ray build's wall time
minus the single-process build's at 1 worker (same embedder, same rows).

Examples::

    python benchmarks/bench_distributed.py --n 100000 --embedder all-MiniLM-L6-v2   # the real embedder
    python benchmarks/bench_distributed.py --n 1000000 --embedder hash-64           # later stages
    python benchmarks/bench_distributed.py --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import tempfile
import time
from pathlib import Path

from _bench_common import print_environment, print_table, save_json, setup_logging

WORDS = ["the", "a", "film", "plot", "actor", "scene", "great", "dull", "slow", "fast", "funny", "sad",
         "music", "story", "ending", "long", "short", "bright", "dark", "quiet", "loud", "old", "new", "kind",
         "cruel", "warm", "cold", "simple", "clever"]


def generate(folder: Path, n: int, files: int, seed: int = 0) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    paths = []
    per = -(-n // files)
    for f in range(files):
        m = min(per, n - f * per)
        rows = {"text": [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(m)],
                "label": [rng.choice(("pos", "neg")) for _ in range(m)]}
        path = folder / f"part-{f:03d}.parquet"
        pq.write_table(pa.table(rows), str(path), row_group_size=10_000)
        paths.append(path)
    return paths


def single_process(paths: list[Path], embedder: str, out: Path, queries: list[str]) -> dict:
    from ragicl import ExampleIndex, read_dataset
    from ragicl.types import Dataset

    t0 = time.perf_counter()
    parts = [read_dataset(p) for p in paths]
    examples = (ex for part in parts for ex in part.examples)  # ids = global row numbers, as Ray's build
    ds = Dataset(tuple(dataclasses.replace(ex, id=str(i)) for i, ex in enumerate(examples)),
                 parts[0].input_fields, "classification", parts[0].labels)
    t1 = time.perf_counter()
    index = ExampleIndex.build(ds, embedder=embedder, device="cpu", show_progress=False)
    t2 = time.perf_counter()
    index.save(out)
    t3 = time.perf_counter()
    index.search(queries, k=10)
    t4 = time.perf_counter()
    n = len(ds)
    return {"system": "single process", "workers": 1, "read/s": n / (t1 - t0), "embed+index/s": n / (t2 - t1),
            "write/s": n / (t3 - t2), "wall s": t3 - t0, "wall/s": n / (t3 - t0), "assemble s": 0.0,
            "search q/s": len(queries) / (t4 - t3)}


def distributed(paths: list[Path], embedder: str, out: Path, queries: list[str], workers: int,
                shard_size: int) -> dict:
    from ragicl.distributed import build_distributed, load_sharded

    t0 = time.perf_counter()
    build_distributed(paths, out, embedder=embedder, workers=workers, shard_size=shard_size, load=False,
                      batch_size=64)
    t1 = time.perf_counter()
    index = load_sharded(out, device="cpu")
    t2 = time.perf_counter()
    index.search(queries, k=10)
    t3 = time.perf_counter()
    m = index.sharded_manifest
    stage, n = m["build"]["stage_seconds"], m["count"]
    return {"system": "ray", "workers": workers, "read/s": n / max(stage["read_s"], 1e-9),
            "embed+index/s": n / max(stage["embed_s"], 1e-9), "write/s": n / max(stage["write_s"], 1e-9),
            "wall s": t1 - t0, "wall/s": n / (t1 - t0), "assemble s": t2 - t1,
            "search q/s": len(queries) / (t3 - t2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--embedder", default="all-MiniLM-L6-v2")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cpus", type=int, default=2, help="num_cpus of the local Ray cluster")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=None, help="default: n / 20")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument("--quick", action="store_true", help="n=2000, hash-64")
    ap.add_argument("--json", default=None)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.n, args.embedder = 2000, "hash-64"
    setup_logging(args.verbose)
    env = print_environment("cpu")
    shard_size = args.shard_size or max(1000, args.n // 20)
    tmp = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    try:
        (tmp / "data").mkdir()
        paths = generate(tmp / "data", args.n, args.files)
        queries = [" ".join(random.Random(i).choices(WORDS, k=6)) for i in range(args.queries)]
        rows = []
        if not args.skip_single:
            rows.append(single_process(paths, args.embedder, tmp / "single", queries))
        from ragicl.distributed import connect

        connect("local", num_cpus=args.cpus)
        for w in args.workers:
            rows.append(distributed(paths, args.embedder, tmp / f"ray-{w}", queries, w, shard_size))
        base = next((r for r in rows if r["system"] == "single process"), None)
        for r in rows:
            r["overhead s"] = (r["wall s"] - base["wall s"]) if base and r["system"] == "ray" else 0.0
        print_table(rows, title=f"build of {args.n} texts, {args.embedder}, shards of {shard_size}, "
                                f"local Ray cluster of {args.cpus} CPUs")
        save_json(args.json, {"env": env, "args": vars(args), "rows": rows})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
