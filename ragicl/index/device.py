"""Where an :class:`~ragicl.index.core.ExampleIndex` searches: CPU faiss, faiss-gpu, or torch on CUDA.

Private (used by ``ExampleIndex``). ``device="auto"`` picks faiss-gpu when faiss has GPU support and sees
a GPU; with faiss-cpu on a CUDA machine a ``Flat`` index searches through :mod:`ragicl.index.torch_search`
instead (the seam :func:`torch_searcher`, replaced in tests); otherwise everything stays on CPU.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .._exceptions import require

logger = logging.getLogger("ragicl.index.core")


def torch_searcher(vectors: np.ndarray, factory: str, device: str, fp16: bool, faiss: Any) -> Any:
    """The torch exact-search seam (``ragicl.index.torch_search``) for CUDA without faiss-gpu, or ``None``."""
    try:
        from .torch_search import maybe_torch_search
    except ImportError:  # torch (or the module) missing: faiss on CPU it is
        return None
    return maybe_torch_search(vectors, factory=factory, device=device, fp16=fp16, faiss_module=faiss)


def to_device(cpu_index: Any, *, device: str, factory: str, fp16: bool,
              embeddings: np.ndarray | None) -> tuple[Any, str]:
    """``(searcher, backend)`` for ``cpu_index`` on ``device``: ``"cpu"``, ``"faiss-gpu"`` or ``"torch"``."""
    faiss = require("faiss", "cpu", "faiss-cpu")
    name = str(device).lower()
    if name not in {"auto", "cpu", "gpu"} and not name.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}.")
    if name == "cpu":
        return cpu_index, "cpu"
    has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if not has_gpu:  # faiss-cpu: exact (Flat) search can still run on CUDA through torch
        vectors = (np.zeros((0, cpu_index.d), np.float32) if embeddings is None
                   else np.array(embeddings, dtype=np.float32))  # writable copy of the memmap
        searcher = torch_searcher(vectors, factory, name, fp16, faiss)
        if searcher is not None:
            logger.info("faiss has no GPU support: exact search runs on %s through torch", searcher.device)
            return searcher, "torch"
    if name == "auto" and not has_gpu:
        return cpu_index, "cpu"
    if not has_gpu:
        raise ValueError(f"device={device!r} but faiss has no GPU support or sees no GPU. Fix: "
                         "pip uninstall faiss-cpu && pip install 'ragicl[gpu]', or use device='cpu'.")
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = bool(fp16)
    try:
        return faiss.index_cpu_to_all_gpus(cpu_index, co=options), "faiss-gpu"
    except RuntimeError as err:  # e.g. HNSW has no GPU version
        logger.warning("faiss index %r cannot run on GPU (%s); searching on CPU", factory, err)
        return cpu_index, "cpu"


def to_cpu(searcher: Any, backend: str) -> Any:
    """The CPU faiss index behind ``searcher`` (what is saved): a copy for GPU backends."""
    if backend == "torch":
        return searcher.to_faiss()
    if backend == "faiss-gpu":
        return require("faiss", "cpu", "faiss-cpu").index_gpu_to_cpu(searcher)
    return searcher
