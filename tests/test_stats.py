"""Tests for ragicl.evaluation.stats: TV distance, intervals (coverage by simulation), MC sequence TV, metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ragicl.evaluation.stats import (
    Interval,
    accuracy,
    bootstrap_ci,
    clopper_pearson,
    empirical_bernstein_interval,
    exceedance,
    hoeffding_interval,
    macro_f1,
    sequence_tv_mc,
    tv_distance,
)


# ------------------------------------------------------------------------------------------------ Interval
def test_interval_str_and_json():
    iv = Interval(0.123, 0.1, 0.15, 0.95, "x")
    assert str(iv) == "0.123 [0.100, 0.150]"
    assert json.loads(json.dumps(iv.to_json())) == {
        "estimate": 0.123, "low": 0.1, "high": 0.15, "level": 0.95, "method": "x"}
    assert iv.width == pytest.approx(0.05) and iv.contains(0.1) and not iv.contains(0.2)
    with pytest.raises(AttributeError):
        iv.low = 0.0  # type: ignore[misc]


# --------------------------------------------------------------------------------------------- tv_distance
def test_tv_known_pairs():
    assert tv_distance([1, 0, 0], [0, 0, 1]) == 1.0
    assert tv_distance([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert tv_distance([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4)
    rows = tv_distance([[0.25, 0.75], [0.6, 0.4]], [[0.75, 0.25], [0.5, 0.5]])
    np.testing.assert_allclose(rows, [0.5, 0.1])
    cols = tv_distance(np.array([[0.25, 0.6], [0.75, 0.4]]), np.array([[0.75, 0.5], [0.25, 0.5]]), axis=0)
    np.testing.assert_allclose(cols, [0.5, 0.1])


def test_tv_validation():
    with pytest.raises(ValueError, match="same shape"):
        tv_distance([0.5, 0.5], [1 / 3] * 3)
    with pytest.raises(ValueError, match="sum to 1"):
        tv_distance([0.5, 0.6], [0.5, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        tv_distance([1.2, -0.2], [0.5, 0.5])
    with pytest.raises(ValueError, match="sum to 1"):
        tv_distance([[0.5, 0.5], [0.1, 0.1]], [[0.5, 0.5], [0.5, 0.5]])
    assert tv_distance([0.5, 0.50005], [0.5, 0.5]) == pytest.approx(0.000025)  # within tolerance


# ------------------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_coverage_simulation():
    rng = np.random.default_rng(123)
    hits = 0
    for trial in range(200):
        x = rng.normal(1.0, 2.0, size=100)
        iv = bootstrap_ci(x, n_boot=1000, seed=trial)
        hits += iv.contains(1.0)
        assert iv.level == 0.95 and iv.method == "percentile-bootstrap"
    assert hits / 200 >= 0.90


def test_bootstrap_narrows_with_n_and_is_seeded():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.uniform(size=50))
    large = bootstrap_ci(rng.uniform(size=5000))
    assert large.width < small.width / 5
    x = rng.uniform(size=100)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)


def _bootstrap_before_scipy(data, stat, n_boot, alpha, seed, vectorized):
    """The hand-written percentile bootstrap bootstrap_ci was before it called scipy.stats.bootstrap."""
    rng = np.random.default_rng(seed)
    n = data.shape[0]
    chunk = max(1, min(n_boot, 4_000_000 // max(1, data[0].size * n)))
    boots = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        if vectorized:
            boots[start:start + idx.shape[0]] = stat(data[idx], axis=1)
        else:
            boots[start:start + idx.shape[0]] = [float(stat(data[row])) for row in idx]
    return tuple(np.quantile(boots, [alpha / 2, 1 - alpha / 2]).tolist())


@pytest.mark.parametrize(("n", "n_boot", "kind"), [
    (50, 2000, "mean"), (7, 333, "median"), (3000, 2000, "mean"),  # 3000 rows: resampled in chunks
    (40, 500, "paired"), (40, 300, "loop"),
])
def test_bootstrap_ci_is_scipy_percentile_bootstrap_with_the_same_draws(n, n_boot, kind):
    """bootstrap_ci now calls scipy.stats.bootstrap(method="percentile"); for the same seed it draws the
    same resamples as the former hand-written loop, so both intervals are equal (to float rounding of
    the quantile arithmetic, far below any resampling difference: one resample moves a bound by ~1/n)."""
    rng = np.random.default_rng(n)
    if kind == "paired":
        data = np.column_stack([rng.uniform(size=n), rng.uniform(size=n)])
        stat, vectorized = (lambda x, axis=None: np.mean(x[..., 1] - x[..., 0], axis=axis)), True
        iv = bootstrap_ci(data, stat=stat, n_boot=n_boot, seed=5, vectorized=True)
    else:
        data = rng.exponential(size=n)
        stat = {"mean": np.mean, "median": np.median, "loop": lambda x: float(np.percentile(x, 30))}[kind]
        vectorized = kind != "loop"
        iv = bootstrap_ci(data, stat=stat, n_boot=n_boot, seed=5, alpha=0.1)
    alpha = 0.05 if kind == "paired" else 0.1
    low, high = _bootstrap_before_scipy(data, stat, n_boot, alpha, 5, vectorized)
    scale = max(1.0, abs(low), abs(high))
    assert iv.low == pytest.approx(low, rel=0, abs=1e-12 * scale)
    assert iv.high == pytest.approx(high, rel=0, abs=1e-12 * scale)
    assert iv.low < iv.high


def test_bootstrap_paired_rows_and_generic_stat():
    rng = np.random.default_rng(5)
    a = rng.normal(size=200)
    b = a + 0.5 + rng.normal(scale=0.1, size=200)  # strongly paired
    pairs = np.column_stack([a, b])
    iv = bootstrap_ci(pairs, stat=lambda x: float(np.mean(x[:, 1] - x[:, 0])), n_boot=1000)
    assert iv.contains(0.5) and iv.width < 0.1  # paired resampling keeps the correlation
    med_vec = bootstrap_ci(a, stat=np.median, n_boot=500, seed=3)
    med_loop = bootstrap_ci(a, stat=np.median, n_boot=500, seed=3, vectorized=False)
    assert med_vec.low == pytest.approx(med_loop.low) and med_vec.high == pytest.approx(med_loop.high)
    const = bootstrap_ci(np.full(10, 3.0))
    assert (const.estimate, const.low, const.high) == (3.0, 3.0, 3.0)


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="at least 1"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0, 2.0], alpha=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="one value per resample"):
        bootstrap_ci(np.ones((5, 2)), stat=np.mean, vectorized=True)


# ------------------------------------------------------------------------------------------ Clopper–Pearson
def test_clopper_pearson_known_values():
    iv = clopper_pearson(0, 10)
    assert iv.low == 0.0 and iv.high == pytest.approx(1 - 0.025 ** 0.1, abs=1e-10)
    assert iv.high == pytest.approx(0.3085, abs=1e-4)
    top = clopper_pearson(10, 10)
    assert top.high == 1.0 and top.low == pytest.approx(0.025 ** 0.1, abs=1e-10)  # ≈ 0.6915
    mid = clopper_pearson(5, 10)
    assert (mid.low, mid.high) == pytest.approx((0.187086, 0.812914), abs=1e-5)
    assert mid.estimate == 0.5 and mid.method == "clopper-pearson"


def test_clopper_pearson_errors():
    for k, n in [(-1, 10), (11, 10), (0, 0), (1.5, 10)]:
        with pytest.raises(ValueError, match="received"):
            clopper_pearson(k, n)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Hoeffding and empirical Bernstein
def test_hoeffding_interval_width_and_validation():
    iv = hoeffding_interval(np.full(200, 0.5))
    assert iv.high - 0.5 == pytest.approx(math.sqrt(math.log(40) / 400))
    clipped = hoeffding_interval([1.0] * 10)
    assert clipped.high == 1.0
    scaled = hoeffding_interval([2.0, 4.0] * 50, low=0, high=10)
    assert scaled.high - scaled.estimate == pytest.approx(10 * math.sqrt(math.log(40) / 200))
    with pytest.raises(ValueError, match=r"\[low, high\]"):
        hoeffding_interval([0.5, 1.5])


def test_empirical_bernstein_formula_and_coverage():
    x = np.array([0.0, 1.0] * 50)
    iv = empirical_bernstein_interval(x)
    half = math.sqrt(2 * x.var(ddof=1) * math.log(80) / 100) + 7 * math.log(80) / (3 * 99)
    assert iv.high - iv.estimate == pytest.approx(half)
    rng = np.random.default_rng(9)
    p = 0.1
    samples = rng.binomial(1, p, size=(300, 200)).astype(float)
    covered = sum(empirical_bernstein_interval(s).contains(p) for s in samples)
    assert covered / 300 >= 0.95
    # low-variance data: much narrower than Hoeffding once n is large
    y = rng.uniform(0.45, 0.55, size=5000)
    assert empirical_bernstein_interval(y).width < 0.3 * hoeffding_interval(y).width


def test_empirical_bernstein_errors():
    with pytest.raises(ValueError, match="at least 2"):
        empirical_bernstein_interval([0.5])
    with pytest.raises(ValueError, match="span"):
        empirical_bernstein_interval([0.0, 3.0], range=1.0)
    with pytest.raises(ValueError, match="range"):
        empirical_bernstein_interval([0.0, 0.5], range=-1)


# -------------------------------------------------------------------------------------------- sequence TV
def test_sequence_tv_mc_against_exact():
    # five "sequences" with explicit probabilities under P and Q (Q puts no mass on the last one)
    p = np.array([0.4, 0.25, 0.15, 0.1, 0.1])
    q = np.array([0.3, 0.35, 0.2, 0.15, 0.0])
    exact = 0.5 * np.abs(p - q).sum()  # = 0.2
    rng = np.random.default_rng(42)
    y = rng.choice(p.size, size=4000, p=p)
    with np.errstate(divide="ignore"):
        logq = np.log(q[y])
    iv = sequence_tv_mc(np.log(p[y]), logq)
    assert iv.contains(exact)
    assert iv.estimate == pytest.approx(exact, abs=0.03)
    assert 0.0 <= iv.low <= iv.high <= 1.0 and iv.method == "mc-empirical-bernstein"


def test_sequence_tv_mc_coverage_and_extremes():
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.3, 0.5])
    exact = 0.3
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(100):
        y = rng.choice(3, size=300, p=p)
        hits += sequence_tv_mc(np.log(p[y]), np.log(q[y])).contains(exact)
    assert hits >= 95
    # very long sequences: log-probabilities of −5000 must not under/overflow
    same = sequence_tv_mc(np.array([-5000.0, -4000.0]), np.array([-5000.0, -3000.0]))
    assert same.estimate == 0.0 and same.low == 0.0
    disjoint = sequence_tv_mc(np.array([-5000.0, -4000.0]), np.array([-np.inf, -9000.0]))
    assert disjoint.estimate == pytest.approx(1.0) and disjoint.high == 1.0


def test_sequence_tv_mc_errors():
    with pytest.raises(ValueError, match="same length"):
        sequence_tv_mc([-1.0, -2.0], [-1.0])
    with pytest.raises(ValueError, match="finite"):
        sequence_tv_mc([-1.0, -np.inf], [-1.0, -1.0])
    with pytest.raises(ValueError, match="NaN"):
        sequence_tv_mc([-1.0, -1.0], [-1.0, np.nan])
    with pytest.raises(ValueError, match="at least 2"):
        sequence_tv_mc([-1.0], [-1.0])


# ---------------------------------------------------------------------------------------------- metrics
def test_macro_f1_hand_computed():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 0]
    # label 0: TP 2, FP 1, FN 1 -> 4/6;  label 1: TP 1, FP 1, FN 1 -> 2/4;  label 2: TP 2, FP 1, FN 1 -> 4/6
    expected = (4 / 6 + 2 / 4 + 4 / 6) / 3
    assert macro_f1(y_true, y_pred, n_labels=3) == pytest.approx(expected)
    # a label absent from both arrays is left out; one never predicted counts as F1 = 0
    assert macro_f1([0, 1], [0, 1], n_labels=4) == 1.0
    assert macro_f1([0, 1], [0, 0], n_labels=2) == pytest.approx((2 / 3 + 0) / 2)


def test_accuracy_and_metric_errors():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert accuracy(["a", "b"], ["a", "a"]) == 0.5
    with pytest.raises(ValueError, match="equal length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        macro_f1([0, 2], [0, 1], n_labels=2)
    with pytest.raises(ValueError, match="integer"):
        macro_f1([0.5, 1.0], [0, 1], n_labels=2)
    with pytest.raises(ValueError, match="n_labels"):
        macro_f1([0], [0], n_labels=0)


def test_exceedance():
    tv = np.array([0.01, 0.2, 0.05, 0.3, 0.1])
    iv = exceedance(tv, 0.1)  # strictly greater: 0.2 and 0.3
    assert iv.estimate == pytest.approx(0.4)
    ref = clopper_pearson(2, 5)
    assert (iv.low, iv.high) == (ref.low, ref.high)
    assert exceedance(tv, 1.0).estimate == 0.0
    with pytest.raises(ValueError, match="epsilon"):
        exceedance(tv, float("nan"))
