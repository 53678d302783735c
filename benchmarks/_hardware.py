"""Device detection, peak FLOP/s ceilings and model-FLOPs utilisation, for the benchmarks.

GPU ceilings come from vendors' datasheets (dense tensor-core throughput, no sparsity); the CPU ceiling is
*measured*: the best rate of a large float32 matrix product on this machine (torch and numpy), which is what
a batched exact search or an LM forward pass could at most reach here.

>>> forward_flops(135_000_000, 1000)
270000000000.0
>>> round(mfu(2e12, 1.0, 4e12), 3)
0.5
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ragicl._machine import cpu_count, cpu_model_name

logger = logging.getLogger(__name__)

__all__ = ["GPU_PEAK_TFLOPS", "Ceiling", "cpu_model_name", "describe_device", "forward_flops",
           "gpu_peak_flops", "lm_forward_flops", "measure_matmul_flops", "mfu", "search_flops"]

# Dense peak TFLOP/s by (GPU name fragment, dtype), vendor datasheets. Matched in order, first hit wins, on
# torch.cuda.get_device_name(); "float32" is the non-tensor-core FP32 rate (TF32 off, as in exact search).
GPU_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9}),
    ("H100 PCIe", {"bfloat16": 756.0, "float16": 756.0, "float32": 51.2}),
    ("H100 NVL", {"bfloat16": 835.5, "float16": 835.5, "float32": 60.0}),
    ("H100", {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9}),  # SXM
    ("GH200", {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9}),
    ("A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}),
    ("L40S", {"bfloat16": 362.1, "float16": 362.1, "float32": 91.6}),
    ("L4", {"bfloat16": 121.0, "float16": 121.0, "float32": 30.3}),
    ("A10G", {"bfloat16": 70.0, "float16": 70.0, "float32": 35.0}),
    ("A10", {"bfloat16": 125.0, "float16": 125.0, "float32": 31.2}),
    ("RTX 4090", {"bfloat16": 165.2, "float16": 165.2, "float32": 82.6}),
    ("T4", {"float16": 65.0, "float32": 8.1}),
    ("V100", {"float16": 125.0, "float32": 15.7}),
)


def search_flops(n_database: int, dimension: int, n_queries: int) -> float:
    """FLOPs of a batched exact inner-product search (a matrix product): ``2 · N · d · Q``."""
    return 2.0 * n_database * dimension * n_queries


def forward_flops(n_params: int, n_tokens: int) -> float:
    """Approximate FLOPs of a transformer forward pass: ``2 · params · tokens`` (attention excluded)."""
    return 2.0 * n_params * n_tokens


def lm_forward_flops(n_params: int, n_embedding_params: int, n_layers: int, d_model: int,
                     lengths: list[int], logits_positions: int) -> float:
    """FLOPs of a causal LM forward pass over sequences of ``lengths`` tokens, counted as executed:

    * ``2 · (params − embedding params) · tokens`` for the transformer body (every weight matrix once per
      token; the embedding lookup is free);
    * ``2 · d_model · L²`` per layer and sequence for causal attention (``QKᵀ`` and ``AV``, half the square
      each);
    * ``2 · embedding params · logits_positions`` for the output head (``logits_to_keep=1`` computes it
      for one position per prompt, a plain forward for every token).

    >>> lm_forward_flops(100, 40, 2, 8, [10, 20], 2)
    19760.0
    """
    tokens = sum(lengths)
    body = 2.0 * (n_params - n_embedding_params) * tokens
    attention = 2.0 * n_layers * d_model * sum(length * length for length in lengths)
    return body + attention + 2.0 * n_embedding_params * logits_positions


def mfu(flops: float, seconds: float, peak_flops: float | None) -> float | None:
    """Model-FLOPs utilisation: achieved FLOP/s over the peak; ``None`` when there is no peak or time."""
    if not peak_flops or seconds <= 0:
        return None
    return flops / seconds / peak_flops


def gpu_peak_flops(dtype: str = "bfloat16", device: int | str = 0) -> tuple[float | None, str]:
    """Datasheet peak FLOP/s of a CUDA device for ``dtype`` and the GPU's name; ``(None, name)`` if unknown."""
    import torch

    if not torch.cuda.is_available():
        return None, "no CUDA device"
    name = torch.cuda.get_device_name(torch.device(device) if isinstance(device, str) else device)
    for fragment, table in GPU_PEAK_TFLOPS:
        if fragment.lower() in name.lower():
            value = table.get(dtype)
            return (value * 1e12 if value else None), name
    logger.warning("no datasheet peak for GPU %r; add it to GPU_PEAK_TFLOPS in benchmarks/_hardware.py", name)
    return None, name


@dataclass(frozen=True)
class Ceiling:
    """A FLOP/s ceiling and where it comes from (``"measured ..."`` or ``"datasheet ..."``)."""

    flops: float
    source: str


def measure_matmul_flops(size: int = 2048, repeats: int = 5, device: str = "cpu",
                         dtype: str = "float32") -> Ceiling:
    """Best achieved FLOP/s of a ``size x size`` matrix product (torch, and numpy on CPU), ``repeats`` runs.

    On CPU this is the measured ceiling the benchmarks compare against (no datasheet number for a shared
    virtual CPU is trustworthy). The result is the best of torch and numpy.
    """
    import numpy as np
    import torch

    flops = 2.0 * size**3
    best: dict[str, float] = {}
    tdtype = getattr(torch, dtype)
    a = torch.randn(size, size, device=device).to(tdtype)
    b = torch.randn(size, size, device=device).to(tdtype)
    for _ in range(repeats + 1):  # first run warms up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best["torch"] = min(best.get("torch", float("inf")), time.perf_counter() - t)
    if device == "cpu" and dtype == "float32":
        x = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
        y = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
        for _ in range(repeats + 1):
            t = time.perf_counter()
            x @ y
            best["numpy"] = min(best.get("numpy", float("inf")), time.perf_counter() - t)
    winner = min(best, key=best.__getitem__)
    rate = flops / best[winner]
    where = f"{cpu_count()} CPU threads" if device == "cpu" else device
    return Ceiling(rate, f"measured: best {size}x{size} {dtype} matmul ({winner}, {where})")


def describe_device(device: str = "cpu") -> str:
    """One line naming the machine: CPU model and core count, or the GPU name."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
        return "no CUDA device"
    return f"{cpu_model_name()} ({cpu_count()} cores)"
