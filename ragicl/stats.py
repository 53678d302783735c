"""Statistics used by the evaluator: TV distance, confidence intervals, classification metrics.

Numpy, plus scipy (imported lazily) for :func:`bootstrap_ci` (``scipy.stats.bootstrap``,
percentile method), :func:`clopper_pearson` and :func:`exceedance`. Every interval is an :class:`Interval` with its estimate, bounds, nominal level and
method name. What each interval guarantees is described in ``docs/guide/BOUNDS.md``:

* :func:`bootstrap_ci` — percentile bootstrap, approximate coverage (asymptotic);
* :func:`clopper_pearson`, :func:`exceedance` — exact binomial, coverage ≥ level for every n;
* :func:`hoeffding_interval`, :func:`empirical_bernstein_interval`, :func:`sequence_tv_mc` —
  finite-sample concentration bounds for bounded variables, coverage ≥ level (conservative).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._exceptions import require

__all__ = [
    "Interval",
    "accuracy",
    "bootstrap_ci",
    "clopper_pearson",
    "empirical_bernstein_interval",
    "exceedance",
    "hoeffding_interval",
    "macro_f1",
    "sequence_tv_mc",
    "tv_distance",
]

_SUM_TOL = 1e-4
_NEG_TOL = 1e-9


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval.

    >>> iv = Interval(estimate=0.123, low=0.1, high=0.15, level=0.95, method="bootstrap")
    >>> str(iv)
    '0.123 [0.100, 0.150]'
    >>> iv.to_json()["high"], iv.contains(0.12)
    (0.15, True)
    """

    estimate: float
    low: float
    high: float
    level: float
    method: str

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"

    @property
    def width(self) -> float:
        """``high − low``."""
        return self.high - self.low

    def contains(self, value: float) -> bool:
        """Whether ``low ≤ value ≤ high``."""
        return self.low <= value <= self.high

    def to_json(self) -> dict:
        """A JSON-ready dict of the five fields."""
        return asdict(self)


# --------------------------------------------------------------------------------------------- checks
def _alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be a number in the open interval (0, 1), e.g. 0.05; received {alpha!r}.")
    return float(alpha)


def _sample(name: str, values: object, min_n: int = 1, ndim: tuple[int, ...] = (1,)) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of numbers; received {type(values).__name__}.") from err
    if arr.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dimension(s); received shape {arr.shape}.")
    if arr.shape[0] < min_n:
        raise ValueError(f"{name} needs at least {min_n} value(s); received {arr.shape[0]}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; received {int(np.sum(~np.isfinite(arr)))} NaN/inf value(s).")
    return arr


def _labels(name: str, values: object, n_labels: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{name} must be a non-empty 1-D array of integer label indices; received dtype {arr.dtype}, "
            f"shape {arr.shape}."
        )
    if arr.min() < 0 or arr.max() >= n_labels:
        raise ValueError(
            f"{name} must hold label indices in [0, {n_labels}); received values in [{arr.min()}, {arr.max()}]."
        )
    return arr


def _check_n_labels(n_labels: object) -> int:
    if isinstance(n_labels, bool) or not isinstance(n_labels, numbers.Integral) or n_labels <= 0:
        raise ValueError(f"n_labels must be a positive integer; received {n_labels!r}.")
    return int(n_labels)


# ------------------------------------------------------------------------------------------ distances
def tv_distance(p, q, axis: int = -1) -> float | np.ndarray:
    """Total-variation distance ½·Σ|p − q| between probability vectors along ``axis``.

    ``p`` and ``q`` must have the same shape; every vector along ``axis`` must be non-negative and sum to
    1 within 1e-4. Returns a float for 1-D inputs, an array of per-row distances otherwise.

    >>> tv_distance([0.5, 0.5], [0.9, 0.1])
    0.4
    >>> tv_distance([[1, 0], [0.5, 0.5]], [[0, 1], [0.5, 0.5]]).tolist()
    [1.0, 0.0]
    """
    a, b = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"p and q must have the same shape; received {a.shape} and {b.shape}.")
    if a.ndim == 0 or a.size == 0:
        raise ValueError(f"p and q must be non-empty arrays of probabilities; received shape {a.shape}.")
    for name, arr in (("p", a), ("q", b)):
        if not np.all(np.isfinite(arr)) or arr.min() < -_NEG_TOL:
            raise ValueError(f"{name} must be finite and non-negative; received minimum {np.nanmin(arr)!r}.")
        sums = arr.sum(axis=axis)
        off = np.abs(sums - 1.0) > _SUM_TOL
        if np.any(off):
            raise ValueError(
                f"every {name} vector along axis {axis} must sum to 1 (within {_SUM_TOL}); received sums "
                f"{np.atleast_1d(sums)[np.atleast_1d(off)][:5].tolist()}."
            )
    out = 0.5 * np.abs(a - b).sum(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


# ---------------------------------------------------------------------------------------- intervals
_VECTORIZED = {np.mean, np.median, np.sum, np.std, np.var, np.nanmean, np.nanmedian}


def bootstrap_ci(values, stat: Callable[..., float] = np.mean, n_boot: int = 2000, alpha: float = 0.05,
                 seed: int | np.random.Generator = 0, vectorized: bool | None = None) -> Interval:
    """Percentile bootstrap interval for ``stat`` of a sample.

    ``values`` is 1-D, or 2-D with one row per unit: rows are resampled together, so paired statistics
    work (e.g. ``values = np.column_stack([a, b])`` with ``stat=lambda x: x[:, 0].mean() - x[:, 1].mean()``).
    Resampling uses one index matrix (in chunks). When ``stat`` is a numpy reduction (``np.mean``,
    ``np.median``, ...) on 1-D data, or ``vectorized=True`` (``stat(x, axis=1)`` reduces each row of a
    ``(B, n, ...)`` batch to a scalar), all resamples are evaluated in one call; otherwise ``stat`` is
    called once per resample. The interval is [α/2, 1 − α/2] quantiles of the bootstrap statistics:
    ``scipy.stats.bootstrap(method="percentile")`` over the row indices, drawing ``n_boot`` resamples from
    ``seed`` in chunks of at most 4 M values.

    >>> iv = bootstrap_ci(np.arange(100.0), n_boot=500)
    >>> iv.estimate, iv.low < 49.5 < iv.high
    (49.5, True)
    """
    data = _sample("values", values, ndim=(1, 2))
    a = _alpha(alpha)
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer; received {n_boot!r}.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n = data.shape[0]
    if vectorized is None:
        vectorized = data.ndim == 1 and stat in _VECTORIZED
    estimate = float(stat(data))
    if n < 2:  # every resample is the sample itself (scipy refuses one observation)
        return Interval(estimate, estimate, estimate, 1 - a, "percentile-bootstrap")
    chunk = max(1, min(n_boot, 4_000_000 // max(1, data[0].size * n)))

    def rows_stat(i: np.ndarray, axis: int = -1) -> Any:  # scipy resamples row indices: rows stay together
        i = np.asarray(i, dtype=np.intp)
        if not vectorized:
            return float(stat(data[i]))
        res = np.asarray(stat(data[i], axis=1), dtype=float)
        if res.shape != (i.shape[0],):
            raise ValueError(
                f"stat(x, axis=1) must return one value per resample, shape ({i.shape[0]},); received "
                f"shape {res.shape}. Pass vectorized=False to call stat once per resample."
            )
        return res

    scipy_stats = require("scipy.stats", "report", "scipy")
    res = scipy_stats.bootstrap((np.arange(n),), rows_stat, n_resamples=int(n_boot), batch=chunk,
                                vectorized=bool(vectorized), confidence_level=1 - a, method="percentile",
                                rng=rng)
    low, high = res.confidence_interval
    return Interval(estimate, float(low), float(high), 1 - a, "percentile-bootstrap")


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> Interval:
    """Exact (Clopper–Pearson 1934) interval for a binomial proportion k/n.

    low = Beta(α/2; k, n − k + 1) quantile (0 when k = 0), high = Beta(1 − α/2; k + 1, n − k) quantile
    (1 when k = n). Coverage is at least 1 − α for every true p.

    >>> round(clopper_pearson(0, 10).high, 4)  # 1 - 0.025**(1/10)
    0.3085
    """
    ints = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (k, n))
    if not ints or n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need integers n ≥ 1 and 0 ≤ k ≤ n; received k={k!r}, n={n!r}.")
    a = _alpha(alpha)
    beta = require("scipy.stats", "report", "scipy").beta
    low = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return Interval(k / n, low, high, 1 - a, "clopper-pearson")


def hoeffding_interval(values, low: float = 0.0, high: float = 1.0, alpha: float = 0.05) -> Interval:
    """Two-sided Hoeffding (1963) interval for the mean of i.i.d. values in [low, high].

    mean ± (high − low)·sqrt(ln(2/α)/(2n)), clipped to [low, high]; coverage ≥ 1 − α.

    >>> iv = hoeffding_interval([0.0, 1.0] * 50)
    >>> round(iv.high - iv.estimate, 4)  # sqrt(ln(40)/200)
    0.1358
    """
    data = _sample("values", values)
    a = _alpha(alpha)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"need finite low < high; received low={low!r}, high={high!r}.")
    if data.min() < low or data.max() > high:
        raise ValueError(
            f"values must lie in [low, high] = [{low}, {high}]; received range [{data.min()}, {data.max()}]."
        )
    mean = float(data.mean())
    half = (high - low) * math.sqrt(math.log(2 / a) / (2 * data.size))
    return Interval(mean, max(low, mean - half), min(high, mean + half), 1 - a, "hoeffding")


def empirical_bernstein_interval(values, alpha: float = 0.05, range: float = 1.0,
                                 clip: tuple[float, float] | None = None) -> Interval:
    """Two-sided empirical-Bernstein interval (Maurer & Pontil 2009, Thm 4) for a bounded mean.

    For i.i.d. X in an interval of width R, n ≥ 2 and sample variance V (divisor n − 1), Thm 4 gives,
    with probability ≥ 1 − δ, E X − mean ≤ sqrt(2·V·ln(2/δ)/n) + 7·R·ln(2/δ)/(3(n − 1)) (one side; the
    ln 2 is the theorem's own union bound). Applying it to X and −X with δ = α/2 each gives the two-sided
    half-width sqrt(2·V·ln(4/α)/n) + 7·R·ln(4/α)/(3(n − 1)); coverage ≥ 1 − α. ``clip`` = (lo, hi)
    clips the interval to a known support.

    >>> iv = empirical_bernstein_interval([0.2] * 100)  # zero variance: only the 7R·ln/(3(n−1)) term
    >>> round(iv.high - 0.2, 4)
    0.1033
    """
    data = _sample("values", values, min_n=2)
    a = _alpha(alpha)
    if isinstance(range, bool) or not isinstance(range, numbers.Real) or not (math.isfinite(range) and range > 0):
        raise ValueError(f"range must be a positive finite number; received {range!r}.")
    spread = float(data.max() - data.min())
    if spread > range * (1 + 1e-12):
        raise ValueError(
            f"values span {spread:.6g}, more than range={range}; pass the width of the values' known support."
        )
    n = data.size
    mean = float(data.mean())
    log_term = math.log(4 / a)
    half = math.sqrt(2 * float(data.var(ddof=1)) * log_term / n) + 7 * range * log_term / (3 * (n - 1))
    low, high = mean - half, mean + half
    if clip is not None:
        low, high = max(clip[0], low), min(clip[1], high)
    return Interval(mean, low, high, 1 - a, "empirical-bernstein")


def sequence_tv_mc(logp_samples_under_p, logq_samples_under_p, alpha: float = 0.05) -> Interval:
    """Monte-Carlo TV(P, Q) from log-probabilities of sequences sampled from P.

    TV(P, Q) = 1 − Σ_y min(P(y), Q(y)) = E_{y~P}[1 − min(1, Q(y)/P(y))]. With y_i ~ P, ``logp[i] =
    ln P(y_i)`` (finite) and ``logq[i] = ln Q(y_i)`` (may be −inf), each term 1 − exp(min(0, logq − logp))
    lies in [0, 1] and never overflows; the estimate is their mean (unbiased) and the interval is
    :func:`empirical_bernstein_interval` with R = 1, clipped to [0, 1]. The log-probabilities must be of
    the exact sampling distribution (temperature 1, no top-k/top-p truncation, same stop rule).

    >>> iv = sequence_tv_mc(np.log([0.5, 0.5, 0.5, 0.5]), np.log([0.5, 0.25, 0.5, 0.25]))
    >>> iv.estimate
    0.25
    """
    lp = np.asarray(logp_samples_under_p, dtype=float)
    lq = np.asarray(logq_samples_under_p, dtype=float)
    if lp.ndim != 1 or lp.shape != lq.shape:
        raise ValueError(
            f"log-probabilities must be two 1-D arrays of the same length; received {lp.shape} and {lq.shape}."
        )
    if lp.size < 2:
        raise ValueError(f"need at least 2 samples from P; received {lp.size}.")
    if not np.all(np.isfinite(lp)) or np.any(lp > 1e-9):
        raise ValueError("logp_samples_under_p must be finite log-probabilities (≤ 0) of samples drawn from P.")
    if np.any(np.isnan(lq)) or np.any(lq == np.inf) or np.any(lq > 1e-9):
        raise ValueError("logq_samples_under_p must be log-probabilities (≤ 0, −inf allowed), without NaN.")
    diff = np.minimum(lq - lp, 0.0)  # −inf where Q(y) = 0
    terms = -np.expm1(diff)
    iv = empirical_bernstein_interval(terms, alpha=alpha, range=1.0, clip=(0.0, 1.0))
    return Interval(iv.estimate, iv.low, iv.high, iv.level, "mc-empirical-bernstein")


# -------------------------------------------------------------------------------------- classification
def accuracy(y_true, y_pred) -> float:
    """Share of positions where the two label arrays agree.

    >>> accuracy([0, 1, 1, 2], [0, 1, 2, 2])
    0.75
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 1 or t.shape != p.shape or t.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty 1-D arrays of equal length; received {t.shape}, {p.shape}.")
    return float(np.mean(t == p))


def macro_f1(y_true, y_pred, n_labels: int) -> float:
    """Unweighted mean of per-label F1 = 2TP/(2TP + FP + FN) over labels in ``range(n_labels)``.

    A label that appears in neither ``y_true`` nor ``y_pred`` has undefined F1 and is left out of the
    mean (the labels averaged are those present, as in scikit-learn's default ``labels=None``).

    >>> round(macro_f1([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], n_labels=3), 4)  # F1s 0.5, 0.8, 0
    0.4333
    """
    k = _check_n_labels(n_labels)
    t, p = _labels("y_true", y_true, k), _labels("y_pred", y_pred, k)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length; received {t.size} and {p.size}.")
    tp = np.bincount(t[t == p], minlength=k).astype(float)
    n_true, n_pred = np.bincount(t, minlength=k), np.bincount(p, minlength=k)
    denom = n_true + n_pred  # = 2TP + FP + FN
    present = denom > 0
    return float(np.mean(2 * tp[present] / denom[present]))


def exceedance(values, epsilon: float, alpha: float = 0.05) -> Interval:
    """Share of queries whose value (e.g. per-query TV) exceeds ``epsilon``, with a Clopper–Pearson interval.

    >>> iv = exceedance([0.01, 0.2, 0.05, 0.3], epsilon=0.1)
    >>> iv.estimate, iv.method
    (0.5, 'clopper-pearson')
    """
    data = _sample("values", values)
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not math.isfinite(epsilon):
        raise ValueError(f"epsilon must be a finite number; received {epsilon!r}.")
    return clopper_pearson(int(np.sum(data > epsilon)), int(data.size), alpha)
