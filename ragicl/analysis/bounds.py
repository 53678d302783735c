"""Dataset-size bounds for approximating a fine-tuned model by in-context learning, and ε(n) curve fits.

Sharma (2025, arXiv:2506.08060) shows that a base transformer given the fine-tuning set in context can
match the fine-tuned model to total-variation (TV) error ε with probability 1 − δ once the set has

=====================================  ====================================  ==============================
setting                                paper (O-form)                        function here
=====================================  ====================================  ==============================
generation, m contexts, vocabulary V   O(m·V/ε² · log(m/δ))                  :func:`generation_contexts_bound`
generation, output length l            O(l·log V/ε² · log(1/δ))              :func:`generation_length_bound`
linear classification in R^d           O(d/ε)                                :func:`linear_classification_bound`
classification, fixed context          O(1/ε² · log(1/δ))                    :func:`fixed_context_classification_bound`
=====================================  ====================================  ==============================

The O-forms hide a constant, which the caller sets (``constant=1.0``). Each also has an ``*_explicit``
version whose constants come from a named standard inequality (derivations in the docstrings and in
``docs/guide/BOUNDS.md``). All logarithms are natural unless written log2. Every function returns the real
threshold n* (take ``ceil`` for a sample count) and broadcasts over numpy arrays of ``epsilon`` and
``delta`` (for plotting n(ε) curves); integer parameters are scalars.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "PowerLawFit",
    "categorical_sample_size",
    "fit_power_law",
    "fixed_context_classification_bound",
    "fixed_context_classification_explicit",
    "generation_contexts_bound",
    "generation_contexts_explicit",
    "generation_length_bound",
    "generation_length_explicit",
    "linear_classification_bound",
    "linear_classification_explicit",
]


# ----------------------------------------------------------------------------------------------- checks
def _prob(name: str, value: object) -> np.ndarray:
    """``value`` as a float array with every entry in the open interval (0, 1), else ``ValueError``."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number or array of numbers in (0, 1); received {value!r}.") from err
    bad = ~((arr > 0.0) & (arr < 1.0))  # also catches NaN
    if bad.any():
        shown = arr[bad].ravel()[:5].tolist() if arr.ndim else float(arr)
        raise ValueError(f"{name} must lie in the open interval (0, 1); received {shown!r}.")
    return arr


def _count(name: str, value: object) -> int:
    """A positive integer (Python or numpy int, not bool), else ``ValueError``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer (expected 1, 2, ...); received {value!r}.")
    return int(value)


def _constant(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"constant must be a positive finite number; received {value!r}.")
    return float(value)


def _out(arr: np.ndarray) -> float | np.ndarray:
    """Plain float for 0-d results, the array otherwise."""
    return float(arr) if np.ndim(arr) == 0 else arr


def _log_weissman(n_outcomes: int) -> float:
    """ln(2^V − 2), computed without overflow; −inf for V = 1 (nothing to estimate)."""
    if n_outcomes == 1:
        return -math.inf
    return n_outcomes * math.log(2.0) + math.log1p(-(2.0 ** (1 - n_outcomes)))


# ------------------------------------------------------------------------------------- O-form bounds
def generation_contexts_bound(epsilon, delta, vocab_size: int, n_contexts: int,
                              constant: float = 1.0) -> float | np.ndarray:
    """Paper bound for generation over ``n_contexts`` contexts: ``constant · m·V/ε² · ln(m/δ)``.

    >>> round(generation_contexts_bound(0.1, 0.05, vocab_size=10, n_contexts=4), 1)
    17528.1
    """
    eps, dlt = _prob("epsilon", epsilon), _prob("delta", delta)
    v, m, c = _count("vocab_size", vocab_size), _count("n_contexts", n_contexts), _constant(constant)
    return _out(c * m * v / eps**2 * np.log(m / dlt))


def generation_length_bound(epsilon, delta, vocab_size: int, length: int,
                            constant: float = 1.0) -> float | np.ndarray:
    """Paper bound for generating ``length`` tokens in a fixed (bounded) context:
    ``constant · l·ln V/ε² · ln(1/δ)`` (0 when V = 1).

    >>> round(generation_length_bound(0.1, 0.05, vocab_size=100, length=5), 1)
    6897.9
    """
    eps, dlt = _prob("epsilon", epsilon), _prob("delta", delta)
    v, n_len, c = _count("vocab_size", vocab_size), _count("length", length), _constant(constant)
    return _out(c * n_len * math.log(v) / eps**2 * np.log(1.0 / dlt))


def linear_classification_bound(epsilon, dim: int, constant: float = 1.0) -> float | np.ndarray:
    """Paper bound for linear classification in ``dim`` dimensions: ``constant · d/ε``.

    >>> linear_classification_bound(0.1, dim=20)
    200.0
    """
    eps, d, c = _prob("epsilon", epsilon), _count("dim", dim), _constant(constant)
    return _out(c * d / eps)


def fixed_context_classification_bound(epsilon, delta, constant: float = 1.0) -> float | np.ndarray:
    """Paper bound for classification with a fixed context: ``constant · ln(1/δ)/ε²``.

    >>> round(fixed_context_classification_bound(0.1, 0.05), 2)
    299.57
    """
    eps, dlt, c = _prob("epsilon", epsilon), _prob("delta", delta), _constant(constant)
    return _out(c * np.log(1.0 / dlt) / eps**2)


# ---------------------------------------------------------------------------------- explicit bounds
def categorical_sample_size(epsilon, delta, n_outcomes: int) -> float | np.ndarray:
    """Samples so that the empirical distribution over ``n_outcomes`` outcomes is within TV ε w.p. ≥ 1 − δ.

    Weissman, Ordentlich, Seroussi, Verdú & Weinberger (2003, Thm 2.1): for p̂ the empirical distribution
    of n i.i.d. draws from p on V outcomes, P(‖p̂ − p‖₁ ≥ t) ≤ (2^V − 2)·exp(−n t²/2). TV = ½‖·‖₁, so
    TV ≥ ε means ‖·‖₁ ≥ 2ε; with t = 2ε the right side is (2^V − 2)·exp(−2nε²) ≤ δ iff

        n ≥ ln((2^V − 2)/δ) / (2ε²)   ≤   (V·ln 2 + ln(1/δ)) / (2ε²).

    The exact left form is returned (0 for V = 1). For V = 2 it is Hoeffding's two-sided ln(2/δ)/(2ε²).

    >>> round(categorical_sample_size(0.1, 0.05, n_outcomes=2), 1)  # = ln(40)/0.02
    184.4
    """
    eps, dlt, v = _prob("epsilon", epsilon), _prob("delta", delta), _count("n_outcomes", n_outcomes)
    if v == 1:
        return _out(np.zeros(np.broadcast(eps, dlt).shape))
    return _out(np.maximum(0.0, (_log_weissman(v) - np.log(dlt)) / (2.0 * eps**2)))


def generation_contexts_explicit(epsilon, delta, vocab_size: int, n_contexts: int,
                                 allocation: Literal["balanced", "uniform"] = "balanced"
                                 ) -> float | np.ndarray:
    """Total samples so that every one of m contexts' next-token distributions is within TV ε, w.p. 1 − δ.

    Per context, :func:`categorical_sample_size` at failure δ/m (union bound over the m contexts):
    n_c = ln((2^V − 2)·m/δ)/(2ε²).

    * ``allocation="balanced"`` assumes the set holds n_c examples of each context: total m·n_c
      = m·(ln(2^V − 2) + ln(m/δ))/(2ε²) — the paper's m·V/ε²·log(m/δ) shape with a sum in place of the
      product, i.e. a smaller number.
    * ``allocation="uniform"`` assumes each example's context is drawn uniformly from the m contexts.
      Spend δ/2 on counts and δ/2 on estimation: with N draws the count of a context is Bin(N, 1/m);
      the Chernoff lower tail P(X ≤ μ/2) ≤ exp(−μ/8), μ = N/m, with a union bound over contexts, gives
      every count ≥ μ/2 w.p. 1 − δ/2 once μ ≥ 8·ln(2m/δ). So N = m·max(2·n_c(δ/2), 8·ln(2m/δ)).

    >>> round(generation_contexts_explicit(0.1, 0.05, vocab_size=10, n_contexts=4))
    2262
    """
    eps, dlt = _prob("epsilon", epsilon), _prob("delta", delta)
    v, m = _count("vocab_size", vocab_size), _count("n_contexts", n_contexts)
    if allocation == "balanced":
        return _out(m * np.asarray(categorical_sample_size(eps, dlt / m, v)))
    if allocation == "uniform":
        per_context = np.asarray(categorical_sample_size(eps, dlt / (2 * m), v))
        return _out(m * np.maximum(2.0 * per_context, 8.0 * np.log(2.0 * m / dlt)))
    raise ValueError(f"allocation must be 'balanced' or 'uniform'; received {allocation!r}.")


def generation_length_explicit(epsilon, delta, vocab_size: int, length: int) -> float | np.ndarray:
    """Samples so that generated sequences of ``length`` tokens are within TV ε of the target, w.p. 1 − δ.

    Assumption: given the fixed context, the l output positions are estimated separately (position t's
    distribution p_t over V tokens, one draw per training sequence — a product model). Coupling
    (hybrid) lemma: TV(⊗p̂_t, ⊗p_t) ≤ Σ_t TV(p̂_t, p_t) (couple each position maximally; the sequences
    differ only if some position does). So ask TV ≤ ε/l per position with failure δ/l (union bound):

        n ≥ l² · ln((2^V − 2)·l/δ) / (2ε²).

    This is a sufficient condition, quadratic in l and linear in V — not an explicit-constant version
    of the paper's l·log V rate, which rests on assumptions the chain argument does not use.

    >>> round(generation_length_explicit(0.1, 0.05, vocab_size=2, length=1), 1)  # = Hoeffding
    184.4
    """
    eps, dlt = _prob("epsilon", epsilon), _prob("delta", delta)
    v, n_len = _count("vocab_size", vocab_size), _count("length", length)
    return _out(np.asarray(categorical_sample_size(eps / n_len, dlt / n_len, v)))


def _vc_implicit(eps: np.ndarray, dlt: np.ndarray, h: int) -> np.ndarray:
    """Smallest m ≥ 8/ε with 2·(2em/h)^h·2^(−εm/2) ≤ δ, by vectorized bisection on ln m."""
    eps, dlt = np.broadcast_arrays(eps, dlt)

    def excess(m: np.ndarray) -> np.ndarray:
        return math.log(2.0) + h * np.log(2.0 * math.e * m / h) - eps * m * math.log(2.0) / 2 - np.log(dlt)

    # excess is concave in m with its maximum at m_top; past m_top it decreases, so the threshold is
    # the root above m_top (or 8/ε if even the maximum is ≤ 0).
    m_top = 2.0 * h / (eps * math.log(2.0))
    hi = 4.0 / eps * (h * np.log2(12.0 / eps) + np.log2(2.0 / dlt))  # closed form, always feasible
    lo_l, hi_l = np.log(m_top), np.log(np.maximum(hi, m_top))
    for _ in range(80):
        mid = 0.5 * (lo_l + hi_l)
        ok = excess(np.exp(mid)) <= 0
        hi_l, lo_l = np.where(ok, mid, hi_l), np.where(ok, lo_l, mid)
    root = np.where(excess(m_top) <= 0, 0.0, np.exp(hi_l))
    return np.maximum(root, 8.0 / eps)


def linear_classification_explicit(epsilon, delta, dim: int, homogeneous: bool = False,
                                   method: Literal["anthony-biggs", "blumer", "implicit"] = "anthony-biggs"
                                   ) -> float | np.ndarray:
    """Realizable PAC sample size for halfspaces in R^``dim``: error ≤ ε w.p. ≥ 1 − δ for any consistent learner.

    VC dimension h = d + 1 for affine halfspaces, h = d when ``homogeneous`` (through the origin). All
    three forms rest on Blumer, Ehrenfeucht, Haussler & Warmuth (1989, JACM 36(4), Thm A2.1, the
    double-sample bound): for m ≥ 8/ε, P(some consistent h has error > ε) ≤ 2·Π_H(2m)·2^(−εm/2), with
    Sauer's lemma Π_H(2m) ≤ (2em/h)^h.

    * ``"anthony-biggs"`` (default): m ≥ (4/ε)·(h·log2(12/ε) + log2(2/δ)) (Anthony & Biggs 1992,
      *Computational Learning Theory*, Thm 8.4.1).
    * ``"blumer"``: m ≥ max((4/ε)·log2(2/δ), (8h/ε)·log2(13/ε)) (Blumer et al. 1989, Thm 2.1(ii)(a)).
    * ``"implicit"``: the smallest m ≥ 8/ε that satisfies 2·(2em/h)^h·2^(−εm/2) ≤ δ (solved numerically;
      never larger than the closed forms).

    The paper's O(d/ε) drops the log(1/ε) factor, which Hanneke (2016, JMLR 17) shows is achievable
    (Θ((d + ln(1/δ))/ε)) by a specific learner, with unspecified constants.

    >>> round(linear_classification_explicit(0.1, 0.05, dim=2))
    1042
    """
    eps, dlt, d = _prob("epsilon", epsilon), _prob("delta", delta), _count("dim", dim)
    h = d if homogeneous else d + 1
    if method == "anthony-biggs":
        return _out(4.0 / eps * (h * np.log2(12.0 / eps) + np.log2(2.0 / dlt)))
    if method == "blumer":
        return _out(np.maximum(4.0 / eps * np.log2(2.0 / dlt), 8.0 * h / eps * np.log2(13.0 / eps)))
    if method == "implicit":
        return _out(_vc_implicit(eps, dlt, h))
    raise ValueError(f"method must be 'anthony-biggs', 'blumer' or 'implicit'; received {method!r}.")


def fixed_context_classification_explicit(epsilon, delta, n_labels: int = 2) -> float | np.ndarray:
    """Samples so that the label distribution for one fixed context is within TV ε, w.p. ≥ 1 − δ.

    Two labels: Hoeffding (1963), P(|p̂ − p| ≥ ε) ≤ 2·exp(−2nε²) ≤ δ iff n ≥ ln(2/δ)/(2ε²); TV between
    Bernoulli(p̂) and Bernoulli(p) is |p̂ − p|. More labels: :func:`categorical_sample_size`, which
    equals the Hoeffding value at two labels.

    >>> round(fixed_context_classification_explicit(0.1, 0.05), 1)  # ln(40)/0.02
    184.4
    """
    eps, dlt, k = _prob("epsilon", epsilon), _prob("delta", delta), _count("n_labels", n_labels)
    if k == 2:
        return _out(np.log(2.0 / dlt) / (2.0 * eps**2))
    return categorical_sample_size(eps, dlt, k)


# -------------------------------------------------------------------------------------- power laws
@dataclass(frozen=True)
class PowerLawFit:
    """ε(n) ≈ a·n^(−b), fitted by least squares on (ln n, ln ε).

    ``r2`` is the coefficient of determination in log-log space; ``b_stderr`` the OLS standard error of
    the slope (NaN with two points).

    >>> fit = PowerLawFit(a=2.0, b=0.5, r2=1.0, n_points=3, b_stderr=0.0)
    >>> float(fit.predict(100)), float(fit.n_for(0.1))
    (0.2, 400.0)
    """

    a: float
    b: float
    r2: float
    n_points: int
    b_stderr: float

    def predict(self, n) -> float | np.ndarray:
        """ε predicted at sample size(s) ``n`` (positive)."""
        arr = np.asarray(n, dtype=float)
        if np.any(~(arr > 0)):
            raise ValueError(f"n must be positive; received {n!r}.")
        return _out(self.a * arr ** (-self.b))

    def n_for(self, epsilon) -> float | np.ndarray:
        """Sample size at which the fitted curve reaches ``epsilon``: (a/ε)^(1/b). Needs b > 0."""
        eps = np.asarray(epsilon, dtype=float)
        if np.any(~(eps > 0)):
            raise ValueError(f"epsilon must be positive; received {epsilon!r}.")
        if not self.b > 0:
            raise ValueError(
                f"the fitted curve does not decrease (b = {self.b:.4g}, expected b > 0), "
                "so no sample size reaches a smaller epsilon."
            )
        return _out((self.a / eps) ** (1.0 / self.b))


def fit_power_law(n, eps) -> PowerLawFit:
    """Fit ε(n) ≈ a·n^(−b) by ordinary least squares of ln ε on ln n.

    ``n`` and ``eps`` are 1-D, the same length, ≥ 2 points, all positive and finite, with at least two
    distinct ``n``.

    >>> fit = fit_power_law([100, 400, 1600], [0.2, 0.1, 0.05])
    >>> round(fit.a, 3), round(fit.b, 3), round(fit.r2, 3)
    (2.0, 0.5, 1.0)
    """
    x = np.asarray(n, dtype=float)
    y = np.asarray(eps, dtype=float)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"n and eps must be 1-D arrays of the same length; received shapes {x.shape} and {y.shape}."
        )
    if x.size < 2:
        raise ValueError(f"need at least 2 points to fit a power law; received {x.size}.")
    for name, arr in (("n", x), ("eps", y)):
        bad = ~(np.isfinite(arr) & (arr > 0))
        if bad.any():
            raise ValueError(
                f"{name} must be positive and finite for a log-log fit; received {arr[bad][:5].tolist()}."
            )
    lx, ly = np.log(x), np.log(y)
    if np.ptp(lx) == 0:
        raise ValueError("n must take at least two distinct values to fit a slope.")
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (intercept + slope * lx)
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    ss_res = float(np.sum(resid**2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    k = x.size
    stderr = math.sqrt(ss_res / (k - 2) / np.sum((lx - lx.mean()) ** 2)) if k > 2 else math.nan
    return PowerLawFit(a=float(math.exp(intercept)), b=float(-slope), r2=float(r2), n_points=int(k),
                       b_stderr=float(stderr))
