"""Exact top-k inner-product search with the selection fused into the matrix product (Triton). EXPERIMENTAL.

EXPERIMENTAL: the kernel has only run under Triton's interpreter (``TRITON_INTERPRET=1``) on a CPU; no GPU
has compiled or run it yet. :class:`~ragicl.index.torch_search.TorchExactSearch` uses it only when asked
(``topk="fused"``, with a logged warning), never by default, until a GPU run has checked it against faiss
(``scripts/gpu/device_run.sh fused``, which also runs ``test_compiled_kernel_on_cuda_matches_faiss``).

``torch.topk(q @ db.T)`` writes the ``Q x N`` score matrix to memory and reads it back; at ``Q=1000``,
``N=1e7`` that costs several times the product itself. :func:`fused_topk` never materialises it:

* stage 1, a Triton kernel: one program per block of ``BLOCK_M`` queries x one *slab* of the database.
  It walks its slab in tiles of ``BLOCK_N`` rows, computes each ``BLOCK_M x BLOCK_N`` tile of the product
  in registers (``tl.dot``, float32 accumulation; ``input_precision="ieee"`` for float32 inputs, so no
  TF32), and keeps a running per-query top-``K_PAD`` (``k`` padded to a power of two, at most
  :data:`MAX_K`) in registers, merged with a tile only when some score of the tile beats a query's current
  k-th. It writes ``K_PAD`` candidates per (query, slab) and nothing else;
* stage 2, torch: the best ``k`` of the ``slabs x K_PAD`` candidates of each query.

Scores and positions travel as one int64 *key*: the float32 score mapped to an order-preserving int32 in
the high half, ``2**32 - 1 - position`` in the low half. The key order is "higher score first, then lower
position", so equal scores come out by position, deterministically, on every device and slab split
(``-0.0`` is folded into ``+0.0`` first). The database must hold fewer than ``2**31`` rows.

When the kernel cannot run (no Triton, or tensors not on CUDA and ``TRITON_INTERPRET`` unset) the same
keys are computed by a chunked pure-torch path, :func:`reference_topk`, with identical results up to float
summation order. With ``TRITON_INTERPRET=1`` in the environment *before triton is first imported* (Triton
decorates its own library functions at import) the kernel runs on CPU tensors through Triton's
interpreter: that is how the tests check it without a GPU (in a subprocess, see tests/test_fused_topk.py).

Precision: the kernel computes in the inputs' dtype with float32 accumulation. For bfloat16/float16 inputs
the scores are approximate; :class:`~ragicl.index.torch_search.TorchExactSearch` uses this as its
candidate generator and certifies the result with its float32 re-rank and error bound.

>>> import torch
>>> db = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
>>> s, p = fused_topk(torch.eye(2), db, k=2)
>>> p.tolist(), [[round(float(v), 2) for v in row] for row in s]
([[0, 3], [2, 1]], [[1.0, 1.0], [1.0, 0.8]])
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["MAX_K", "fused_topk", "kernel_runs_on", "reference_topk", "triton_available"]

MAX_K = 64  # the running top-k lives in registers: k is padded to a power of two up to this
_LOW = (1 << 32) - 1
_KERNELS: dict[bool, Any] = {}


def triton_available() -> bool:
    """Whether ``import triton`` works here (the GPU image has it; ``pip install ragicl[kernels]``)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except (ImportError, RuntimeError, OSError):  # missing, or a broken install failing at import
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def kernel_runs_on(t: Any) -> bool:
    """Whether :func:`fused_topk` runs the Triton kernel for tensor ``t`` (else the torch reference)."""
    if not triton_available():
        return False
    return bool(t.is_cuda) or _interpreting()


# ---------------------------------------------------------------------------------------------- keys
def pack_keys(scores: Any, positions: Any) -> Any:
    """int64 keys ordering (score desc, position asc) for float32 ``scores`` and int64 ``positions``."""
    import torch

    bits = (scores.float() + 0.0).view(torch.int32)  # + 0.0: -0.0 → +0.0
    skey = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (skey.to(torch.int64) << 32) | (_LOW - positions.to(torch.int64))


def unpack_keys(keys: Any) -> tuple[Any, Any]:
    """Inverse of :func:`pack_keys`: ``(scores float32, positions int64)``."""
    import torch

    skey = (keys >> 32).to(torch.int32)
    bits = skey ^ ((skey >> 31) & 0x7FFFFFFF)
    return bits.view(torch.float32), _LOW - (keys & _LOW)


def _check(q: Any, db: Any, k: int) -> None:
    if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
        raise ValueError(f"expected queries (Q, d) and database (N, d) with the same d, got {tuple(q.shape)} "
                         f"and {tuple(db.shape)}.")
    if q.dtype != db.dtype:
        raise ValueError(f"queries ({q.dtype}) and database ({db.dtype}) must share a dtype; cast one.")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= db.shape[0]:
        raise ValueError(f"k must be an integer in 1..N={db.shape[0]}, got {k!r}.")
    if db.shape[0] >= 1 << 31:
        raise ValueError(f"the database has {db.shape[0]:,} rows; the fused top-k takes fewer than 2**31 "
                         "(positions are int32 in the kernel). Fix: use topk='torch' or split the database.")


# ---------------------------------------------------------------------------------------------- torch
def reference_topk(q: Any, db: Any, k: int, chunk_size: int = 65_536) -> tuple[Any, Any]:
    """Pure torch, same contract as :func:`fused_topk`: float32 products, ties by position."""
    import torch

    _check(q, db, k)
    best: Any = None
    for start in range(0, db.shape[0], chunk_size):
        chunk = db[start:start + chunk_size]
        s = q.float() @ chunk.float().T  # bf16/fp16 products are exact in float32, like the kernel's
        pos = torch.arange(start, start + chunk.shape[0], device=q.device)
        keys = pack_keys(s, pos.expand_as(s))
        keys = torch.topk(keys, min(k, keys.shape[1]), dim=1).values
        best = keys if best is None else torch.topk(torch.cat([best, keys], 1), k, dim=1).values
    return unpack_keys(best)


# ---------------------------------------------------------------------------------------------- Triton
def _kernel() -> Any:
    """The jitted kernel, built on first use (``triton.jit`` returns an interpreted function when
    ``TRITON_INTERPRET`` is set; cached per setting)."""
    interpret = _interpreting()
    if interpret in _KERNELS:
        return _KERNELS[interpret]
    import triton
    import triton.language as tl

    @triton.jit
    def fused_topk_kernel(q_ptr, db_ptr, out_ptr, n_q, n_db, d, slab_rows,
                          stride_q, stride_db, stride_oq, stride_os,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          K_PAD: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_s = tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_q
        slab_start = pid_s * slab_rows
        slab_stop = tl.minimum(slab_start + slab_rows, n_db)
        key_min = -9223372036854775807 - 1
        kcols = tl.arange(0, K_PAD)
        # the running top-k, an unsorted set; distinct sentinels below every real key while not full
        best = tl.zeros((BLOCK_M, K_PAD), tl.int64) + (key_min + kcols.to(tl.int64))[None, :]
        thr = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # score of each row's worst kept key
        for start in range(slab_start, slab_stop, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < slab_stop
            acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for kd in range(0, d, BLOCK_D):
                dd = kd + tl.arange(0, BLOCK_D)
                d_ok = dd < d
                a = tl.load(q_ptr + rows.to(tl.int64)[:, None] * stride_q + dd[None, :],
                            mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                b = tl.load(db_ptr + cols.to(tl.int64)[None, :] * stride_db + dd[:, None],  # N·d > 2**31
                            mask=col_ok[None, :] & d_ok[:, None], other=0.0)
                if UPCAST:  # the interpreter's dot reads bfloat16 as raw uint16; exact in float32
                    a = a.to(tl.float32)
                    b = b.to(tl.float32)
                if IEEE:
                    acc = tl.dot(a, b, acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, b, acc)
            s = tl.where(col_ok[None, :], acc + 0.0, float("-inf"))  # + 0.0 folds -0.0 into +0.0
            # positions only grow along the slab, so a tie never displaces a kept key: strictly greater
            if tl.sum((tl.max(s, 1) > thr).to(tl.int32)) > 0:
                bits = s.to(tl.int32, bitcast=True)
                skey = bits ^ ((bits >> 31) & 0x7FFFFFFF)
                low = 4294967295 - cols.to(tl.int64)
                key = tl.where(col_ok[None, :], (skey.to(tl.int64) << 32) | low[None, :], key_min)
                lo = tl.min(best, 1)
                top = tl.max(key, 1)
                more = top > lo
                # insert the tile's best key in place of the worst kept one, row-wise, until none beats it
                while tl.sum(more.to(tl.int32)) > 0:
                    best = tl.where((best == lo[:, None]) & more[:, None], top[:, None], best)
                    key = tl.where(key == top[:, None], key_min, key)
                    lo = tl.min(best, 1)
                    top = tl.max(key, 1)
                    more = top > lo
                lo_key = (lo >> 32).to(tl.int32)
                lo_bits = lo_key ^ ((lo_key >> 31) & 0x7FFFFFFF)
                thr = tl.where(lo < key_min + K_PAD, float("-inf"), lo_bits.to(tl.float32, bitcast=True))
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * stride_oq + pid_s * stride_os + kcols[None, :], best,
                 mask=row_ok[:, None])

    _KERNELS[interpret] = fused_topk_kernel
    return fused_topk_kernel


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _n_slabs(n_q_blocks: int, n_tiles: int, device: Any) -> int:
    """Enough (query block, slab) programs to fill the device about 4 times over."""
    import torch

    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        want = max(1, -(-4 * sms // n_q_blocks))
    else:
        want = 2  # the interpreter: still exercise the slab merge
    return max(1, min(want, n_tiles))


def fused_topk(q: Any, db: Any, k: int, *, slabs: int | None = None, block_m: int | None = None,
               block_n: int | None = None, block_d: int | None = None) -> tuple[Any, Any]:
    """Top-``k`` of ``q @ db.T`` per row: ``(scores float32 (Q, k), positions int64 (Q, k))``, best first,
    equal scores by ascending position. ``q`` and ``db`` share a dtype (float32, bfloat16 or float16) and a
    device; ``1 <= k <= N``. Runs the Triton kernel when :func:`kernel_runs_on` says so (``k <= MAX_K``),
    else :func:`reference_topk`. ``slabs``/``block_*`` override the launch shape (tests, tuning)."""
    import torch

    _check(q, db, k)
    if k > MAX_K or not kernel_runs_on(q):
        return reference_topk(q, db, k)
    q, db = q.contiguous(), db.contiguous()
    n_q, d = q.shape
    n = db.shape[0]
    k_pad = max(_next_pow2(k), 2)
    bm = block_m or (64 if q.is_cuda else 32)
    bn = max(block_n or 128, k_pad)
    bd = block_d or (64 if d >= 64 else max(16, _next_pow2(d)))
    n_tiles = -(-n // bn)
    q_blocks = -(-n_q // bm)
    n_slab = max(1, min(slabs, n_tiles)) if slabs else _n_slabs(q_blocks, n_tiles, q.device)
    slab_rows = -(-n_tiles // n_slab) * bn
    n_slab = -(-n // slab_rows)
    out = torch.empty((n_q, n_slab, k_pad), dtype=torch.int64, device=q.device)
    _kernel()[(q_blocks, n_slab)](q, db, out, n_q, n, d, slab_rows, q.stride(0), db.stride(0), out.stride(0),
                                  out.stride(1), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, K_PAD=k_pad,
                                  IEEE=q.dtype == torch.float32,
                                  UPCAST=_interpreting() and q.dtype == torch.bfloat16)
    keys = torch.topk(out.reshape(n_q, n_slab * k_pad), k, dim=1).values
    return unpack_keys(keys)
