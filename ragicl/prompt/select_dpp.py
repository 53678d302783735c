"""DPP selection: a diverse, relevant subset of a query's candidates by a determinantal point process.

The OpenICL / CEIL formulation (Ye et al. 2023, "Compositional Exemplars for In-context Learning"): over
the query's ``m`` best candidates (unit vectors ``e_i``, query ``q``), the kernel is

    L_ij = r_i · s_ij · r_j,   r_i = exp(((q·e_i + 1)/2 − max_j (q·e_j + 1)/2) / (2·scale)),   s_ij = (e_i·e_j + 1)/2

(relevance ``r`` and similarity ``s`` both mapped into [0, 1]; a smaller ``scale`` weighs relevance
more), and the subset is the greedy MAP of the DPP (Chen et al. 2018, "Fast Greedy MAP Inference for
Determinantal Point Process to Improve Recommendation Diversity"): each step adds the candidate that most
increases ``log det L_S``, by incremental Cholesky updates, O(m·n²) for ``n`` picks.

The picks are returned **in greedy order**: the first ``j`` of them are the greedy DPP subset of size
``j``. The packer keeps the first that fit the token budget, so a prompt of ``k`` demonstrations holds the
greedy DPP subset of size ``k`` whenever every pick fits. When the kernel's rank runs out before ``n``
picks (near-duplicate candidates), the rest follow in relevance order.

>>> import numpy as np
>>> e = np.array([[1, 0], [0.99, 0.141], [0, 1]], np.float32); e /= np.linalg.norm(e, axis=1, keepdims=True)
>>> dpp_order(e, np.array([1, 0], np.float32), 2, scale=0.5).tolist()  # the near-duplicate of 0 loses to 2
[0, 2]
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_scale", "dpp_kernel", "dpp_order"]

_EPS = 1e-10  # a candidate whose conditional variance falls below this adds nothing (rank exhausted)


def check_scale(scale: object) -> float:
    """``scale`` if it is a positive finite number, else ``ValueError``."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"dpp_scale must be a positive number (relevance temperature of the DPP kernel; "
                         f"OpenICL uses 0.1), got {scale!r}.")
    return float(scale)


def dpp_kernel(embeddings: np.ndarray, query: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``(L, rel)``: the DPP kernel over the candidates and their cosine relevance to the query."""
    e = np.asarray(embeddings, np.float64)
    rel = e @ np.asarray(query, np.float64)
    r = (rel + 1.0) / 2.0
    r = np.exp((r - r.max(initial=0.0)) / (2.0 * scale))
    sim = (e @ e.T + 1.0) / 2.0
    return r[:, None] * sim * r[None, :], rel


def dpp_order(embeddings: np.ndarray, query: np.ndarray, n: int, scale: float = 0.1) -> np.ndarray:
    """Indices (into ``embeddings``) of up to ``n`` candidates in greedy MAP order; see the module docstring.

    Ties go to the lower index (candidates arrive best first, so to the more relevant).
    """
    m = len(embeddings)
    n = min(n, m)
    if n <= 0:
        return np.zeros(0, np.int64)
    kernel, rel = dpp_kernel(embeddings, query, check_scale(scale))
    cis = np.zeros((n, m))
    di2s = np.diag(kernel).copy()
    chosen: list[int] = []
    j = int(np.argmax(di2s))
    while True:
        chosen.append(j)
        if len(chosen) == n:
            break
        t = len(chosen) - 1
        eis = (kernel[j] - cis[:t, j] @ cis[:t]) / math.sqrt(di2s[j])
        cis[t] = eis
        di2s -= eis * eis
        di2s[chosen] = -np.inf
        j = int(np.argmax(di2s))
        if di2s[j] < _EPS * max(1.0, float(kernel[chosen[0], chosen[0]])):
            break
    if len(chosen) < n:  # the kernel's rank is exhausted: the rest by relevance
        taken = set(chosen)
        rest = [i for i in np.argsort(-rel, kind="stable").tolist() if i not in taken]
        chosen += rest[:n - len(chosen)]
    return np.asarray(chosen, np.int64)
