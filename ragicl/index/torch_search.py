"""Exact inner-product search with torch: the GPU path for machines whose faiss has no GPU support.

:class:`TorchExactSearch` answers the same question as ``faiss.IndexFlatIP``: the ``k`` database vectors
with the largest inner product with each query, best first, as ``(scores float32 (Q, k), positions int64
(Q, k))``, padded with position ``-1`` and score ``-FLT_MAX`` (faiss's padding) when the database holds
fewer than ``k`` vectors. Batched exact search is a matrix product followed by a top-k, so it runs at the
accelerator's matmul speed:

* the database is stored once on the device in the compute dtype (``dtype="auto"``: bfloat16 on CUDA,
  float32 on CPU);
* the search is chunked over the database (``chunk_size`` rows per matrix product, with a running top-k
  merge) and over the queries (``query_batch`` rows at a time), so the score matrix never exceeds
  ``query_batch x chunk_size`` elements;
* in reduced precision (bf16/fp16) the top ``rerank`` candidates of each query are re-scored exactly in
  float32 and re-sorted, and the result is **certified**: with unit roundoff ``u`` of the compute dtype, a
  reduced-precision score is within ``B = (3u + d·2⁻²³)·‖q‖·max‖x‖`` of the exact one, so when the lowest
  candidate's reduced score plus ``B`` is at most the exact k-th score, no vector outside the candidates can
  beat the k-th result. Queries that fail the check are searched again with 4x more candidates, and in
  exact float32 as a last resort. The ids therefore equal faiss's up to exact ties, and the scores are
  float32 inner products.

Everything falls back to CPU when CUDA is absent (``device="auto"``). See :func:`maybe_torch_search` for
the seam :class:`ragicl.index.core.ExampleIndex` uses when asked for a GPU that faiss cannot drive.

>>> import numpy as np
>>> db = np.array([[1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32)
>>> scores, positions = TorchExactSearch(db, device="cpu").search(np.eye(2, dtype=np.float32), k=2)
>>> positions.tolist(), [[round(float(v), 2) for v in row] for row in scores]
([[0, 1], [2, 1]], [[1.0, 0.6], [1.0, 0.8]])
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._exceptions import check_positive_int

logger = logging.getLogger(__name__)

__all__ = ["TorchExactSearch", "maybe_torch_search", "resolve_device", "resolve_dtype"]

FLT_MAX = float(np.finfo(np.float32).max)
_UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 2.0**-24}


def resolve_device(device: str = "auto") -> str:
    """Where an exact search runs: the package's one resolver (:func:`ragicl._device.resolve_device`), with
    ``"gpu"`` read as ``"cuda"``; an exact search runs on the CPU or a CUDA GPU only."""
    from .._device import DeviceError
    from .._device import resolve_device as resolve

    name = "cuda" if str(device).lower() == "gpu" else str(device).lower()
    resolved = resolve(name)
    if resolved not in ("cpu",) and not resolved.startswith("cuda"):
        raise DeviceError(f"device={device!r}: an exact torch search runs on 'cpu' or 'cuda[:N]'. Fix: pass one "
                          "of those, or 'auto'.")
    return resolved


def resolve_dtype(dtype: Any, device: str) -> Any:
    """``"auto"`` → bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on CPU; names or dtypes."""
    import torch

    if dtype == "auto" or dtype is None:
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}.")
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    key = str(dtype).removeprefix("torch.").lower()
    if key not in names:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(names)} (or a torch.dtype), got {dtype!r}.")
    return names[key]


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def _exact_matmul(device: str) -> Iterator[None]:
    """On CUDA: no TF32 and no reduced-precision split-K reductions inside the block (restored after)."""
    import torch

    if not device.startswith("cuda"):
        yield
        return
    matmul = torch.backends.cuda.matmul
    saved_precision = torch.get_float32_matmul_precision()
    saved_bf16 = getattr(matmul, "allow_bf16_reduced_precision_reduction", None)
    saved_fp16 = getattr(matmul, "allow_fp16_reduced_precision_reduction", None)
    try:
        torch.set_float32_matmul_precision("highest")
        if saved_bf16 is not None:
            matmul.allow_bf16_reduced_precision_reduction = False
        if saved_fp16 is not None:
            matmul.allow_fp16_reduced_precision_reduction = False
        yield
    finally:
        torch.set_float32_matmul_precision(saved_precision)
        if saved_bf16 is not None:
            matmul.allow_bf16_reduced_precision_reduction = saved_bf16
        if saved_fp16 is not None:
            matmul.allow_fp16_reduced_precision_reduction = saved_fp16


class TorchExactSearch:
    """Exact maximum-inner-product search on a torch device, with faiss ``IndexFlatIP`` semantics.

    Args:
        vectors: ``(n, d)`` database, a numpy array or a torch tensor (any float dtype, any device).
        device: ``"auto"`` (CUDA if torch sees one, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: compute/storage dtype of the database: ``"auto"`` (bfloat16 on CUDA, float32 on CPU),
            ``"float32"``, ``"bfloat16"``, ``"float16"`` (float16 needs vectors of moderate norm, e.g. unit).
        chunk_size: database rows per matrix product (default 262,144 on CUDA, 65,536 on CPU).
        query_batch: queries per block (default 4,096 on CUDA, 1,024 on CPU). Peak extra memory is about
            ``query_batch x chunk_size`` scores.
        rerank: in reduced precision, how many candidates per query are re-scored exactly in float32
            (default ``max(2k, k + 32)``); ``0`` returns the raw reduced-precision top-k (approximate).
        certify: check the rounding-error bound after re-ranking and widen the search for queries it does not
            certify (see the module docstring). Only used with ``rerank``.
        exact_copy: where the float32 copy used for re-ranking lives in reduced precision: ``"device"``,
            ``"host"`` (CPU memory; saves device memory, slower re-rank) or ``"auto"`` (device when it uses
            less than half the free device memory).
        topk: how each top-k is selected: ``"auto"`` (the default) and ``"torch"``: matrix product per
            chunk, then ``torch.topk`` (the path measured on an H100 against faiss); ``"fused"``:
            EXPERIMENTAL, :mod:`ragicl.index._fused_topk` (selection fused into the product by a Triton
            kernel, the score matrix never stored; a pure-torch equivalent where the kernel cannot run).
            The kernel has only run under Triton's CPU interpreter, never compiled on a GPU, so it is an
            explicit opt-in that logs a warning; ``"auto"`` will not pick it until a GPU run has checked
            it against faiss (``scripts/gpu/device_run.sh fused``).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> db = rng.standard_normal((1000, 16)).astype(np.float32)
    >>> s = TorchExactSearch(db, device="cpu", dtype="bfloat16")
    >>> scores, pos = s.search(db[:3], k=5)
    >>> scores.dtype, pos.dtype, pos.shape
    (dtype('float32'), dtype('int64'), (3, 5))
    """

    def __init__(self, vectors: Any, device: str = "auto", dtype: Any = "auto", chunk_size: int | None = None,
                 *, query_batch: int | None = None, rerank: int | None = None, certify: bool = True,
                 exact_copy: str = "auto", topk: str = "auto") -> None:
        import torch

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        on_cuda = self.device.startswith("cuda")
        self.chunk_size = check_positive_int("chunk_size", chunk_size if chunk_size is not None
                                             else (262_144 if on_cuda else 65_536))
        self.query_batch = check_positive_int("query_batch", query_batch if query_batch is not None
                                              else (4_096 if on_cuda else 1_024))
        if rerank is not None and (isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0):
            raise ValueError(f"rerank must be None (automatic), 0 (off) or a positive integer, got {rerank!r}.")
        if exact_copy not in ("auto", "device", "host"):
            raise ValueError(f"exact_copy must be 'auto', 'device' or 'host', got {exact_copy!r}.")
        self.rerank = rerank
        self.certify = bool(certify)
        self.exact_copy = exact_copy
        if topk not in ("auto", "fused", "torch"):
            raise ValueError(f"topk must be 'auto', 'fused' or 'torch', got {topk!r}.")
        if topk == "fused":
            logger.warning("TorchExactSearch(topk='fused') uses the EXPERIMENTAL fused Triton top-k kernel: it "
                           "has only run under TRITON_INTERPRET=1 on a CPU, never compiled on a GPU. Check it "
                           "against faiss (scripts/gpu/device_run.sh fused) before relying on it; topk='auto' "
                           "uses the measured torch path.")
        self.topk = topk
        self.reduced = self.dtype != torch.float32
        self._unit = _UNIT_ROUNDOFF[_dtype_name(self.dtype)]
        x = self._as_matrix(vectors, "vectors")
        self._d = int(x.shape[1])
        self._db = torch.empty((0, self._d), dtype=self.dtype, device=self.device)
        self._exact: Any = None  # float32 copy for re-ranking (reduced precision only)
        self._max_norm = 0.0
        self.add(x)
        logger.debug("TorchExactSearch: %d x %d on %s (%s)", self.ntotal, self._d, self.device, self.dtype)

    # ------------------------------------------------------------------ faiss-like surface
    def __repr__(self) -> str:
        return (f"TorchExactSearch({self.ntotal} x {self._d}, device={self.device!r}, "
                f"dtype={_dtype_name(self.dtype)!r})")

    def __len__(self) -> int:
        return self.ntotal

    @property
    def ntotal(self) -> int:
        """Number of database vectors (faiss's name)."""
        return int(self._db.shape[0])

    @property
    def d(self) -> int:
        """Dimension (faiss's name)."""
        return self._d

    is_trained = True  # faiss duck typing: an exact index needs no training

    @property
    def metric(self) -> str:
        return "inner_product"

    def _as_matrix(self, x: Any, what: str) -> Any:
        """A 2-D float32 CPU or device tensor view of ``x`` (numpy or torch), validated."""
        import torch

        if isinstance(x, torch.Tensor):
            t = x.detach()
        elif isinstance(x, np.ndarray) or hasattr(x, "__array__"):
            arr = np.asarray(x)
            if arr.dtype.kind != "f":
                raise TypeError(f"{what} must be a floating-point array, got dtype {arr.dtype}.")
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        else:
            raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(x).__name__}.")
        if t.ndim == 1 and what == "queries":
            t = t.reshape(1, -1)
        if t.ndim != 2:
            raise ValueError(f"{what} must be a 2-D (n, d) matrix, got shape {tuple(t.shape)}.")
        if not t.is_floating_point():
            raise TypeError(f"{what} must be floating point, got {t.dtype}.")
        if hasattr(self, "_d") and t.shape[1] != self._d:
            raise ValueError(f"{what} have dimension {t.shape[1]}; this index holds {self._d}-dimensional "
                             "vectors. Fix: embed them with the model the index was built with.")
        return t.float() if t.dtype != torch.float32 else t

    def add(self, vectors: Any) -> None:
        """Append vectors (``(m, d)``, numpy or torch) at positions ``ntotal .. ntotal + m - 1``."""
        import torch

        x = self._as_matrix(vectors, "vectors")
        if x.shape[0] == 0:
            return
        if not bool(torch.isfinite(x).all()):
            raise ValueError("vectors contain NaN or infinite values; expected finite embeddings.")
        self._max_norm = max(self._max_norm, float(x.norm(dim=1).max()))
        stored = x.to(device=self.device, dtype=self.dtype)
        if stored.data_ptr() == x.data_ptr():
            stored = stored.clone()  # never alias the caller's array
        self._db = stored if self.ntotal == 0 else torch.cat([self._db, stored])
        if self.reduced:
            exact = x.to(device=self._exact_device(x), dtype=torch.float32)
            if exact.data_ptr() == x.data_ptr():
                exact = exact.clone()  # never alias the caller's array
            self._exact = exact if self._exact is None else torch.cat([self._exact.to(exact.device), exact])

    def _exact_device(self, x: Any) -> str:
        import torch

        if self.exact_copy != "auto":
            return self.device if self.exact_copy == "device" else "cpu"
        if not self.device.startswith("cuda"):
            return "cpu"
        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        needed = (self.ntotal + 0) * self._d * 4 + x.numel() * 4
        return self.device if needed < free / 2 else "cpu"

    def reconstruct_n(self, start: int = 0, n: int | None = None) -> np.ndarray:
        """Database vectors ``start .. start + n - 1`` as float32 numpy (exact copy when one is kept)."""
        source = self._exact if self._exact is not None else self._db
        stop = self.ntotal if n is None else start + n
        return source[start:stop].float().cpu().numpy()

    def to_faiss(self) -> Any:
        """A CPU ``faiss.IndexFlatIP`` holding the same vectors in float32 (for saving)."""
        from .._exceptions import require

        faiss = require("faiss", "cpu", "faiss-cpu")
        index = faiss.IndexFlatIP(self._d)
        if self.ntotal:
            index.add(np.ascontiguousarray(self.reconstruct_n()))
        return index

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` largest inner products per query, best first: ``(scores (Q, k) float32, positions (Q,
        k) int64)``; positions ``-1`` with score ``-FLT_MAX`` pad rows when ``k`` exceeds :attr:`ntotal`."""
        import torch

        k = check_positive_int("k", k)
        q = self._as_matrix(queries, "queries")
        n_q, n = int(q.shape[0]), self.ntotal
        scores = np.full((n_q, k), -FLT_MAX, dtype=np.float32)
        positions = np.full((n_q, k), -1, dtype=np.int64)
        kk = min(k, n)
        if n_q == 0 or kk == 0:
            return scores, positions
        with torch.inference_mode(), _exact_matmul(self.device):
            for start in range(0, n_q, self.query_batch):
                block = q[start:start + self.query_batch].to(self.device, torch.float32)
                s, p = self._search_block(block, kk)
                scores[start:start + len(block), :kk] = s.cpu().numpy()
                positions[start:start + len(block), :kk] = p.cpu().numpy()
        return order_ties(scores, positions)

    def _search_block(self, q: Any, k: int) -> tuple[Any, Any]:
        if not self.reduced:
            return self._topk(q, self._db, k)
        if self.rerank == 0:
            s, p = self._topk(q.to(self.dtype), self._db, k)
            return s.float(), p
        depth = min(self.ntotal, max(k, self.rerank if self.rerank is not None else max(2 * k, k + 32)))
        return self._rerank_certified(q, k, depth)

    def _rerank_certified(self, q: Any, k: int, depth: int) -> tuple[Any, Any]:
        """Reduced-precision top-``depth``, exact re-rank to top-``k``, widen queries not certified."""
        import torch

        n = self.ntotal
        out_s = torch.empty((q.shape[0], k), dtype=torch.float32, device=q.device)
        out_p = torch.empty((q.shape[0], k), dtype=torch.long, device=q.device)
        todo = torch.arange(q.shape[0], device=q.device)
        bound = self._error_bound(q) if self.certify else None
        while len(todo):
            qt = q[todo]
            if depth >= n:  # the candidate set would be everything: plain exact float32 search
                s, p = self._exact_topk(qt, k)
                out_s[todo], out_p[todo] = s, p
                break
            red_s, cand = self._topk(qt.to(self.dtype), self._db, depth)
            s, p = self._rescore(qt, cand, k)
            if bound is None:
                out_s[todo], out_p[todo] = s, p
                break
            ok = red_s[:, -1].float() + bound[todo] <= s[:, -1]
            done = todo[ok]
            out_s[done], out_p[done] = s[ok], p[ok]
            todo = todo[~ok]
            if len(todo):
                logger.debug("%d queries not certified at depth %d; widening", len(todo), depth)
            depth = min(n, depth * 4)
        return out_s, out_p

    def _error_bound(self, q: Any) -> Any:
        """Per query, a bound on |reduced-precision score − exact score| over the whole database."""
        u = self._unit
        slack = 3.0 * u + 3.0 * u * u + self._d * 2.0**-23
        q_norm = q.norm(dim=1)
        tiny = self._d * 2.0**-24 * (q_norm + self._max_norm)  # float16 subnormals, fp32 norms
        return (slack * q_norm * self._max_norm + tiny) * 1.01

    def _rescore(self, q: Any, cand: Any, k: int) -> tuple[Any, Any]:
        """Exact float32 scores of candidate positions ``cand (B, c)``; the best ``k``, sorted."""
        import torch

        exact = self._exact
        cand_dev = cand.to(exact.device)
        vecs = exact[cand_dev.reshape(-1)].reshape(cand.shape[0], cand.shape[1], self._d)
        s = (vecs * q.to(exact.device).unsqueeze(1)).sum(-1)  # elementwise: no TF32, no bf16
        best, order = torch.topk(s, k, dim=1)
        return best.to(q.device), torch.gather(cand_dev, 1, order).to(q.device)

    def _exact_topk(self, q: Any, k: int) -> tuple[Any, Any]:
        """Exact float32 search over the float32 copy (wherever it lives)."""
        dev = self._exact.device
        s, p = self._topk(q.to(dev), self._exact, k)
        return s.to(q.device), p.to(q.device)

    def _topk(self, q: Any, db: Any, k: int) -> tuple[Any, Any]:
        """Top-``k`` of ``q @ db.T`` (in ``q``'s dtype), chunked over ``db`` with a running merge."""
        import torch

        if self._use_fused(db, k):
            from ._fused_topk import fused_topk

            return fused_topk(q, db, k)  # float32 scores (reduced inputs: float32 products)
        best_s: Any = None
        best_p: Any = None
        n = int(db.shape[0])
        for start in range(0, n, self.chunk_size):
            chunk = db[start:start + self.chunk_size]
            s = q @ chunk.T
            kc = min(k, s.shape[1])
            cs, cp = torch.topk(s, kc, dim=1)
            cp = cp + start
            if best_s is None:
                best_s, best_p = cs, cp
            else:
                merged_s = torch.cat([best_s, cs], dim=1)
                merged_p = torch.cat([best_p, cp], dim=1)
                km = min(k, merged_s.shape[1])
                best_s, order = torch.topk(merged_s, km, dim=1)
                best_p = torch.gather(merged_p, 1, order)
        return best_s, best_p

    def _use_fused(self, db: Any, k: int) -> bool:
        """Only on request: ``"auto"`` is the torch path until the kernel has run on a GPU (see ``topk``)."""
        return self.topk == "fused"


def order_ties(scores: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted best first and, among exactly equal scores, by ascending position (padding last).

    A top-k returns equal scores in an order that depends on the kernel and the device; this makes the order
    of the returned rows a function of the scores alone, so one backend gives the same list every time.
    """
    order = np.lexsort((positions, -scores), axis=-1)
    return np.take_along_axis(scores, order, -1), np.take_along_axis(positions, order, -1)


def maybe_torch_search(vectors: Any, *, factory: str = "Flat", device: str = "auto", fp16: bool = False,
                       faiss_module: Any = None) -> TorchExactSearch | None:
    """The torch GPU searcher :class:`~ragicl.index.core.ExampleIndex` should use instead of faiss, or ``None``.

    Returns a :class:`TorchExactSearch` on CUDA when all hold: the factory is exact (``"Flat"``), a CUDA
    device is requested (``"cuda"``/``"cuda:N"``/``"gpu"``) or available (``"auto"``), and faiss has no GPU
    support (no ``StandardGpuResources`` or no GPU visible to it). Otherwise ``None``: keep the faiss index
    (CPU, or faiss-gpu). ``fp16=True`` stores float16 instead of bfloat16 (results are re-ranked and
    certified in float32 either way).
    """
    import torch

    if factory.replace(" ", "").lower() not in ("flat", "idmap,flat"):
        return None
    name = str(device).lower()
    if name == "cpu":
        return None
    if not torch.cuda.is_available():
        if name == "auto":
            return None
        resolve_device(device)  # raises the explicit "no CUDA" error
    if faiss_module is None:
        from .._exceptions import require

        faiss_module = require("faiss", "cpu", "faiss-cpu")
    if hasattr(faiss_module, "StandardGpuResources") and faiss_module.get_num_gpus() > 0:
        return None
    target = "cuda" if name in ("auto", "gpu") else name
    return TorchExactSearch(vectors, device=target, dtype="float16" if fp16 else "auto")
