"""A FAISS index from a factory string, trained on (a sample of) the vectors it will hold.

Private (used by ``ExampleIndex.build`` / ``from_vectors``). The metric is inner product: on unit vectors,
cosine similarity.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .._exceptions import require

logger = logging.getLogger("ragicl.index.core")


def new_faiss_index(factory: str, vectors: np.ndarray, *, train_size: int = 100_000, seed: int = 0) -> Any:
    """An empty CPU index of ``factory`` for ``vectors``' width, trained on them (a ``train_size`` sample).

    ``ValueError`` for a factory string faiss does not know, or one it cannot train on this many vectors
    (with the fix: fewer IVF lists, or ``"Flat"``).
    """
    faiss = require("faiss", "cpu", "faiss-cpu")
    try:
        cpu = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ValueError(f"invalid faiss factory string {factory!r}: {str(err).strip()[:200]}. "
                         "Expected e.g. 'Flat', 'IVF256,Flat', 'HNSW32', 'IVF256,PQ16'.") from err
    ivf = faiss.try_extract_index_ivf(cpu)
    ivf = faiss.downcast_index(ivf) if ivf is not None else None
    if ivf is not None and hasattr(ivf, "do_polysemous_training"):
        # The factory enables polysemous training for IVF-PQ; it costs minutes and nothing here uses
        # polysemous codes (measured: >100 s to train on 20k vectors with it).
        ivf.do_polysemous_training = False
    if not cpu.is_trained:
        sample = vectors
        if len(vectors) > train_size:
            rng = np.random.default_rng(seed)
            sample = vectors[np.sort(rng.choice(len(vectors), train_size, replace=False))]
        logger.info("training %s on %d vectors", factory, len(sample))
        try:
            cpu.train(sample)
        except RuntimeError as err:
            raise ValueError(f"could not train faiss factory {factory!r} on {len(sample)} vectors: "
                             f"{str(err).strip()[:200]}. Fix: use fewer IVF lists (about n/39, e.g. "
                             f"'IVF{max(1, len(sample) // 39)},Flat') or 'Flat'.") from err
    return cpu


def ivf_nprobe(index: Any) -> int | None:
    """The probe count of ``index``'s IVF part, or ``None`` when it has none (Flat, HNSW)."""
    faiss = require("faiss", "cpu", "faiss-cpu")
    try:
        return int(faiss.extract_index_ivf(index).nprobe)
    except RuntimeError:  # not an IVF index
        return None
