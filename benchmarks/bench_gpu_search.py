#!/usr/bin/env python
"""Exact search on a GPU against the machine's measured ceilings: torch paths and faiss-gpu side by side.

Batched exact inner-product search of ``Q`` queries over ``N`` vectors is a ``(Q x d) @ (d x N)`` matrix
product (``2·N·d·Q`` FLOPs) followed by a top-k. This benchmark measures, in one process:

* **ceilings** of the device, measured (METHOD: datasheet rates are leads): the best large square matmul
  in bfloat16, float32 with TF32 and plain float32, a device-to-device copy (bytes read + written), and
  the bare matrix product of the search's own shape (no top-k) in bfloat16;
* **methods**, each on the same synthetic clustered unit vectors (``d=384`` like all-MiniLM-L6-v2):
  ``TorchExactSearch`` (bfloat16 storage, certified float32 re-rank; the library's faiss-free GPU path)
  with ``topk="torch"`` at its default and other chunk sizes, the same without re-rank, in float32; the
  fused top-k (``ragicl/index/_fused_topk.py``: selection inside a Triton matmul kernel) alone and inside
  ``TorchExactSearch(topk="fused")`` in bf16 (certified) and float32, and the defaults; a naive
  ``topk(q @ db.T)`` on the whole score matrix, and faiss-gpu ``GpuIndexFlatIP`` (float32 and float16
  storage) plus ``ExampleIndex`` on faiss-gpu when faiss has GPU support;
* for each: seconds (CUDA events, median of ``--repeat`` after a warm-up), achieved TFLOP/s, the share of
  the bfloat16 ceiling (tensor cores) and of the ceiling of the unit it runs on, and agreement of the ids
  with the exact float32 result.

Runs on CPU too (small ``N``) so the script itself is tested without a GPU::

    python benchmarks/bench_gpu_search.py --n 1000000 10000000 --queries 1000 --json out.json   # GPU
    python benchmarks/bench_gpu_search.py --device cpu --n 20000 --queries 100                  # smoke
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import _bench_common as bc
import numpy as np


def synthetic(n: int, d: int, n_clusters: int, device: str, seed: int, centers: Any = None) -> tuple[Any, Any]:
    """Clustered unit vectors generated on the device (fast for N = 1e7): center + isotropic noise."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    if centers is None:
        centers = torch.randn(n_clusters, d, generator=g, device=device)
        centers /= centers.norm(dim=1, keepdim=True)
    out = torch.empty(n, d, device=device)
    step = 1 << 20
    for s in range(0, n, step):
        m = min(step, n - s)
        x = torch.randn(m, d, generator=g, device=device) / math.sqrt(d)
        x += centers[torch.randint(0, len(centers), (m,), generator=g, device=device)]
        out[s:s + m] = x / x.norm(dim=1, keepdim=True)
    return out, centers


def timer(device: str) -> Callable[[Callable[[], Any], int], tuple[float, Any]]:
    """``time(fn, repeat)`` → (median seconds after one warm-up, last result): CUDA events on a GPU."""
    import torch

    def run(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
        result = fn()
        times = []
        for _ in range(repeat):
            if device.startswith("cuda"):
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                result = fn()
                stop.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(stop) / 1e3)
            else:
                t = time.perf_counter()
                result = fn()
                times.append(time.perf_counter() - t)
        return statistics.median(times), result

    return run


def ceilings(device: str, size: int, repeat: int) -> dict[str, float]:
    """Measured FLOP/s of large square matmuls (bf16, tf32, fp32) and copy bytes/s, on fresh random data."""
    import torch

    time_it = timer(device)
    out: dict[str, float] = {}
    cases = [("bfloat16", torch.bfloat16, "highest"), ("tf32", torch.float32, "high"),
             ("float32", torch.float32, "highest")]
    if not device.startswith("cuda"):
        cases = [("float32", torch.float32, "highest")]
    saved = torch.get_float32_matmul_precision()
    for name, dtype, precision in cases:
        torch.set_float32_matmul_precision(precision)
        mats = [torch.randn(size, size, device=device).to(dtype) for _ in range(4)]  # rotate: not one buffer
        i = iter(range(10**9))

        def mm(mats=mats, i=i):
            j = next(i)
            return torch.mm(mats[j % 4], mats[(j + 1) % 4])

        secs, _ = time_it(mm, repeat)
        out[f"{name} matmul TFLOP/s"] = 2 * size**3 / secs / 1e12
        del mats
    torch.set_float32_matmul_precision(saved)
    src = torch.randn(1 << 28, device=device) if device.startswith("cuda") else torch.randn(1 << 24)
    dst = torch.empty_like(src)
    secs, _ = time_it(lambda: dst.copy_(src), repeat)
    out["copy TB/s (read+write)"] = 2 * src.numel() * 4 / secs / 1e12
    return out


def group_max_search(q: Any, db: Any, k: int, chunk: int, group: int) -> tuple[Any, Any]:
    """Prototype two-stage exact top-k: per chunk, scores → max per group of ``group`` columns → top-k
    groups → top-k inside them (the top-k elements lie in the k groups with the largest maxima)."""
    import torch

    n = db.shape[0]
    best_s = best_p = None
    for start in range(0, n, chunk):
        c = db[start:start + chunk]
        s = q @ c.T
        m = s.shape[1]
        g = group if m % group == 0 else 1
        gm = s.view(s.shape[0], m // g, g).amax(-1)
        kg = min(k, gm.shape[1])
        _, gi = torch.topk(gm, kg, dim=1)
        cols = (gi.unsqueeze(-1) * g + torch.arange(g, device=s.device)).reshape(s.shape[0], -1)
        cs = torch.gather(s, 1, cols)
        kk = min(k, cs.shape[1])
        ts, ti = torch.topk(cs, kk, dim=1)
        tp = torch.gather(cols, 1, ti) + start
        if best_s is None:
            best_s, best_p = ts, tp
        else:
            ms, mp = torch.cat([best_s, ts], 1), torch.cat([best_p, tp], 1)
            best_s, o = torch.topk(ms, min(k, ms.shape[1]), dim=1)
            best_p = torch.gather(mp, 1, o)
    return best_s, best_p


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ceiling-size", type=int, default=8192)
    parser.add_argument("--chunks", type=int, nargs="*", default=[65_536, 262_144, 1_048_576],
                        help="TorchExactSearch chunk sizes to compare (the default is 262,144 on CUDA)")
    parser.add_argument("--group", type=int, default=64, help="group width of the two-stage prototype")
    parser.add_argument("--naive-max-bytes", type=float, default=24e9,
                        help="skip the one-shot topk(q @ db.T) when its score matrix is larger")
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--example-index-max-n", type=int, default=2_000_000,
                        help="time ExampleIndex on faiss-gpu up to this N (it builds N Example objects)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    bc.setup_logging()

    import torch

    dev = args.device
    info = bc.print_environment(dev)
    time_it = timer(dev)
    ceil = ceilings(dev, args.ceiling_size if dev.startswith("cuda") else 1024, args.repeat)
    print("# ceilings (measured here): " + ", ".join(f"{k} {v:.4g}" for k, v in ceil.items()))
    bf16_ceiling = ceil.get("bfloat16 matmul TFLOP/s", ceil["float32 matmul TFLOP/s"]) * 1e12
    unit_ceiling = {"bf16": bf16_ceiling, "fp16": bf16_ceiling,
                    "tf32": ceil.get("tf32 matmul TFLOP/s", 0) * 1e12 or None,
                    "fp32": ceil["float32 matmul TFLOP/s"] * 1e12}
    faiss = None
    if not args.no_faiss:
        try:
            import faiss as _faiss

            if hasattr(_faiss, "StandardGpuResources") and _faiss.get_num_gpus() > 0:
                faiss = _faiss
            print(f"# faiss {_faiss.__version__}, GPUs visible to faiss: "
                  f"{_faiss.get_num_gpus() if hasattr(_faiss, 'get_num_gpus') else 0}")
        except ImportError as exc:
            print(f"# faiss not importable ({exc}): faiss rows skipped")
    from ragicl.index._fused_topk import kernel_runs_on, triton_available

    fused_kernel = kernel_runs_on(torch.empty(1, device=dev))
    print(f"# fused top-k: {'Triton kernel' if fused_kernel else 'torch fallback (no Triton kernel here)'}"
          f" (triton importable: {triton_available()})")
    info["fused top-k Triton kernel"] = str(fused_kernel)
    rows: list[dict[str, Any]] = []
    for n in args.n:
        rows += measure_size(n, args, time_it, faiss, bf16_ceiling, unit_ceiling)
        gc.collect()
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
    bc.print_table(rows, f"Exact search on {info.get('device')}: Q={args.queries}, d={args.d}, k={args.k}")
    bc.save_json(args.json, {"env": info, "args": vars(args), "ceilings": ceil, "rows": rows})


def measure_size(n: int, args: argparse.Namespace, time_it: Callable[..., tuple[float, Any]], faiss: Any,
                 bf16_ceiling: float, unit_ceiling: dict[str, float | None]) -> list[dict[str, Any]]:
    """Every method at database size ``n``: the truth, the bare product, then each method built, timed and
    freed in turn (at N = 1e7 one bf16 index with its float32 re-rank copy is 23 GB)."""
    import torch
    from _hardware import search_flops

    from ragicl.index._fused_topk import fused_topk
    from ragicl.index.torch_search import TorchExactSearch

    dev = args.device
    rows: list[dict[str, Any]] = []
    db, centers = synthetic(n, args.d, max(16, n // 100), dev, seed=0)
    q, _ = synthetic(args.queries, args.d, 0, dev, seed=1, centers=centers)
    flops = search_flops(n, args.d, args.queries)
    k = args.k
    with torch.inference_mode():
        # exact float32 truth (plain fp32 matmul, chunked) and the bare bf16 product of this shape
        ref = TorchExactSearch(db, device=dev, dtype="float32", topk="torch")
        t_ref, (_, ref_p) = time_it(lambda ref=ref: ref.search(q, k), max(1, args.repeat // 2))
        del ref
        gc.collect()
        db_bf = db.to(torch.bfloat16)
        q_bf = q.to(torch.bfloat16)
        step = 262_144
        out = torch.empty(args.queries, step, dtype=torch.bfloat16, device=dev)

        def bare() -> None:
            for s in range(0, n, step):
                c = db_bf[s:s + step]
                torch.mm(q_bf, c.T, out=out[:, :c.shape[0]])

        t_bare, _ = time_it(bare, args.repeat)
    rows.append(_row(n, args, "bare bf16 matmul of this shape (no top-k)", "bf16", t_bare, flops,
                     bf16_ceiling, unit_ceiling, None, None))
    rows.append(_row(n, args, "TorchExactSearch float32 (reference)", "fp32", t_ref, flops, bf16_ceiling,
                     unit_ceiling, ref_p, ref_p))
    # each method is built right before it is timed and freed after (at N = 1e7 one bf16 index with its
    # float32 re-rank copy is 23 GB; several at once would not fit)
    methods: dict[str, tuple[str, Callable[[], Callable[[], Any]]]] = {}

    def torch_search(**kw: Any) -> Callable[[], Callable[[], Any]]:
        def make() -> Callable[[], Any]:
            s = TorchExactSearch(db, device=dev, **kw)
            return lambda: s.search(q, k)
        return make

    for chunk in args.chunks:
        methods[f"TorchExactSearch bf16 + certified re-rank, chunk {chunk:,}"] = (
            "bf16", torch_search(dtype="bfloat16", chunk_size=chunk, topk="torch"))
    methods["TorchExactSearch bf16, no re-rank (approximate)"] = ("bf16", torch_search(dtype="bfloat16",
                                                                                        rerank=0, topk="torch"))
    # the fused top-k (ragicl/index/_fused_topk.py): Triton kernel on CUDA, its torch equivalent elsewhere
    methods["fused top-k kernel alone, bf16 candidates (approximate)"] = (
        "bf16", lambda: lambda: [t.cpu().numpy() for t in fused_topk(q_bf, db_bf, k)])
    methods["TorchExactSearch bf16 + certified re-rank, fused top-k"] = (
        "bf16", torch_search(dtype="bfloat16", topk="fused"))
    methods["TorchExactSearch float32, fused top-k"] = ("fp32", torch_search(dtype="float32", topk="fused"))
    methods["TorchExactSearch defaults (topk=auto)"] = ("bf16" if dev.startswith("cuda") else "fp32",
                                                        torch_search())
    for chunk in args.chunks:
        methods[f"prototype group-max top-k (group {args.group}), chunk {chunk:,}"] = (
            "bf16", lambda chunk=chunk: lambda: [t.float().cpu().numpy() for t in
                                                 group_max_search(q_bf, db_bf, k, chunk, args.group)])
    if args.queries * n * 2 <= args.naive_max_bytes:
        methods["naive topk(q @ db.T), whole score matrix"] = (
            "bf16", lambda: lambda: [t.float().cpu().numpy() for t in torch.topk(q_bf @ db_bf.T, k, dim=1)])
    q_np = q.cpu().numpy()
    if faiss is not None:
        def faiss_flat(fp16: bool) -> Callable[[], Callable[[], Any]]:
            def make() -> Callable[[], Any]:
                res = faiss.StandardGpuResources()
                cfg = faiss.GpuIndexFlatConfig()
                cfg.useFloat16 = fp16
                index = faiss.GpuIndexFlatIP(res, args.d, cfg)
                index.add(db.cpu().numpy())
                return lambda: (res, index.search(q_np, k))[1]
            return make

        methods["faiss-gpu GpuIndexFlatIP float32"] = ("fp32", faiss_flat(False))
        methods["faiss-gpu GpuIndexFlatIP float16"] = ("fp16", faiss_flat(True))
        if n <= args.example_index_max_n:
            def example_index() -> Callable[[], Any]:
                from ragicl.index.core import ExampleIndex
                from ragicl.types import Dataset, Example

                db_np = db.cpu().numpy()
                examples = tuple(Example(id=str(i), inputs={"text": f"d{i}"}) for i in range(n))
                ds = Dataset(examples, ("text",), task="classification", labels=(), name="synthetic")
                ei = ExampleIndex.from_vectors(db_np, ds, embedder=bc.RowEmbedder(db_np, q_np), factory="Flat",
                                               device=dev, batch_size=1 << 22, show_progress=False)
                return lambda: ei.search_vectors(q_np, k)

            methods["ragicl ExampleIndex.search_vectors on faiss-gpu (float32)"] = ("fp32", example_index)
    for name, (unit, make) in methods.items():
        try:
            fn = make()
            secs, result = time_it(fn, args.repeat)
        except torch.OutOfMemoryError as exc:
            print(f"# {name}: out of memory ({str(exc)[:80]})")
            continue
        finally:
            fn = None
            gc.collect()
            if dev.startswith("cuda"):
                torch.cuda.empty_cache()
        pos = result[1] if isinstance(result, (tuple, list)) else result.positions
        rows.append(_row(n, args, name, unit, secs, flops, bf16_ceiling, unit_ceiling, np.asarray(pos), ref_p))
        print(f"# N={n:,} {name}: {1e3 * secs:.2f} ms", flush=True)
    return rows


def _row(n: int, args: argparse.Namespace, name: str, unit: str, secs: float, flops: float, bf16: float,
         units: dict[str, float | None], pos: np.ndarray | None, ref_p: np.ndarray | None) -> dict[str, Any]:
    own = units.get(unit)
    agree = bc.recall_at_k(pos, ref_p) if pos is not None and ref_p is not None else None
    return {"N": n, "method": name, "ms": 1e3 * secs, "queries/s": args.queries / secs,
            "TFLOP/s": flops / secs / 1e12, "% bf16 ceiling": 100 * flops / secs / bf16,
            "unit": unit, "% own-unit ceiling": 100 * flops / secs / own if own else None,
            "recall vs fp32": agree}


if __name__ == "__main__":
    main()
