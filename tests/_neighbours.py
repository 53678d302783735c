"""Comparing two exact nearest-neighbour results without demanding an order that float noise decides.

Two exact searches (CPU and GPU, faiss and torch, two BLAS builds) compute the same inner products with
different summation orders, so scores agree only to a few units in the last place and near-equal scores
may come out in either order. :func:`assert_same_neighbours` accepts exactly that and nothing more:

* scores agree within ``tol``;
* where the two id lists differ in a row, the *exact* (float64) scores of both lists agree as sorted
  multisets within ``tol``: only candidates whose true scores are within float noise of each other may
  trade places or trade the last slot, so a wrong neighbour (a true score further than ``tol`` away) fails.

``tol`` is derived from the arithmetic: a float32 inner product of length ``d`` with inputs of norm at most
``r`` has error at most about ``d * u * r_q * r_x`` with ``u = 2**-24``; :func:`float32_tol` returns that
bound for unit vectors with a factor of 4 of margin (two results, each with its own error, plus rounding of
the stored scores).
"""

from __future__ import annotations

import numpy as np


def float32_tol(d: int, norm: float = 1.0) -> float:
    """Worst-case difference of two float32 evaluations of one inner product of length ``d``."""
    return 4.0 * d * 2.0**-24 * norm * norm


def assert_same_neighbours(db: np.ndarray, queries: np.ndarray, got: tuple[np.ndarray, np.ndarray],
                           ref: tuple[np.ndarray, np.ndarray], tol: float | None = None) -> None:
    """``got`` and ``ref`` are ``(scores, positions)`` of the same top-k search of ``queries`` in ``db``."""
    got_s, got_p = (np.asarray(a) for a in got)
    ref_s, ref_p = (np.asarray(a) for a in ref)
    assert got_p.shape == ref_p.shape, (got_p.shape, ref_p.shape)
    tol = float32_tol(db.shape[1]) if tol is None else tol
    np.testing.assert_allclose(got_s, ref_s, rtol=0, atol=tol)
    exact = queries.astype(np.float64) @ db.astype(np.float64).T
    for row in range(len(queries)):
        a, b = got_p[row], ref_p[row]
        assert np.array_equal(a < 0, b < 0), f"row {row}: padding differs: {a} vs {b}"
        a, b = a[a >= 0], b[b >= 0]
        assert len(set(a.tolist())) == len(a), f"row {row}: repeated positions {a}"
        if np.array_equal(a, b):
            continue
        ours, theirs = np.sort(exact[row, a]), np.sort(exact[row, b])
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=tol,
                                   err_msg=f"row {row}: different neighbours {a} vs {b}, not a float tie")
        # the scores each side reports for its own ids are those ids' true scores
        np.testing.assert_allclose(got_s[row][: len(a)], exact[row, a], rtol=0, atol=tol)
