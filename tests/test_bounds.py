"""Tests for ragicl.analysis.bounds: known values, monotonicity, vectorization, input errors, power-law fits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ragicl.analysis.bounds import (
    PowerLawFit,
    categorical_sample_size,
    fit_power_law,
    fixed_context_classification_bound,
    fixed_context_classification_explicit,
    generation_contexts_bound,
    generation_contexts_explicit,
    generation_length_bound,
    generation_length_explicit,
    linear_classification_bound,
    linear_classification_explicit,
)

# name -> (function, kwargs other than epsilon/delta, integer parameters, takes delta)
BOUNDS = {
    "contexts": (generation_contexts_bound, {"vocab_size": 50, "n_contexts": 8}, True),
    "contexts_explicit": (generation_contexts_explicit, {"vocab_size": 50, "n_contexts": 8}, True),
    "contexts_uniform": (generation_contexts_explicit,
                         {"vocab_size": 50, "n_contexts": 8, "allocation": "uniform"}, True),
    "length": (generation_length_bound, {"vocab_size": 50, "length": 4}, True),
    "length_explicit": (generation_length_explicit, {"vocab_size": 50, "length": 4}, True),
    "linear": (linear_classification_bound, {"dim": 10}, False),
    "linear_explicit": (linear_classification_explicit, {"dim": 10}, True),
    "linear_blumer": (linear_classification_explicit, {"dim": 10, "method": "blumer"}, True),
    "linear_implicit": (linear_classification_explicit, {"dim": 10, "method": "implicit"}, True),
    "fixed": (fixed_context_classification_bound, {}, True),
    "fixed_explicit": (fixed_context_classification_explicit, {}, True),
    "categorical": (categorical_sample_size, {"n_outcomes": 5}, True),
}


def call(name, epsilon, delta=0.05, **override):
    fn, kwargs, has_delta = BOUNDS[name]
    kwargs = {**kwargs, **override}
    return fn(epsilon, delta, **kwargs) if has_delta else fn(epsilon, **kwargs)


# ------------------------------------------------------------------------------------------ known values
def test_hoeffding_known_value():
    expected = math.log(40) / 0.02  # ≈ 184.44
    assert fixed_context_classification_explicit(0.1, 0.05) == pytest.approx(expected)
    assert expected == pytest.approx(184.4, abs=0.05)
    # Weissman with V = 2 is exactly Hoeffding's two-sided bound
    assert categorical_sample_size(0.1, 0.05, 2) == pytest.approx(expected)
    assert fixed_context_classification_explicit(0.1, 0.05, n_labels=2) == pytest.approx(expected)


def test_weissman_closed_form_and_upper_form():
    eps, delta, v = 0.05, 0.01, 30
    exact = (math.log(2**v - 2) + math.log(1 / delta)) / (2 * eps**2)
    assert categorical_sample_size(eps, delta, v) == pytest.approx(exact)
    assert categorical_sample_size(eps, delta, v) <= (v * math.log(2) + math.log(1 / delta)) / (2 * eps**2)
    # huge vocabularies do not overflow
    big = categorical_sample_size(0.1, 0.05, 50_000)
    assert big == pytest.approx((50_000 * math.log(2) + math.log(20)) / 0.02, rel=1e-12)
    assert categorical_sample_size(0.1, 0.05, 1) == 0.0


def test_weissman_bound_holds_in_simulation():
    rng = np.random.default_rng(1)
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    eps, delta = 0.1, 0.1
    n = math.ceil(categorical_sample_size(eps, delta, p.size))
    counts = rng.multinomial(n, p, size=2000)
    tv = 0.5 * np.abs(counts / n - p).sum(axis=1)
    assert np.mean(tv >= eps) <= delta


def test_o_form_values():
    assert generation_contexts_bound(0.1, 0.05, 10, 4) == pytest.approx(4 * 10 / 0.01 * math.log(80))
    assert generation_length_bound(0.1, 0.05, 100, 5) == pytest.approx(5 * math.log(100) / 0.01 * math.log(20))
    assert linear_classification_bound(0.1, 20) == pytest.approx(200.0)
    assert fixed_context_classification_bound(0.1, 0.05) == pytest.approx(math.log(20) / 0.01)
    assert fixed_context_classification_bound(0.1, 0.05, constant=3.0) == pytest.approx(3 * math.log(20) / 0.01)
    assert generation_length_bound(0.1, 0.05, 1, 5) == 0.0


def test_explicit_values():
    eps, delta, v, m, n_len = 0.1, 0.05, 10, 4, 3
    per = math.log((2**v - 2) * m / delta) / (2 * eps**2)
    assert generation_contexts_explicit(eps, delta, v, m) == pytest.approx(m * per)
    per_u = math.log((2**v - 2) * 2 * m / delta) / (2 * eps**2)
    assert generation_contexts_explicit(eps, delta, v, m, allocation="uniform") == pytest.approx(
        m * max(2 * per_u, 8 * math.log(2 * m / delta)))
    assert generation_length_explicit(eps, delta, v, n_len) == pytest.approx(
        n_len**2 * math.log((2**v - 2) * n_len / delta) / (2 * eps**2))
    assert linear_classification_explicit(eps, delta, 2) == pytest.approx(
        4 / eps * (3 * math.log2(12 / eps) + math.log2(2 / delta)))
    assert linear_classification_explicit(eps, delta, 2, homogeneous=True, method="blumer") == pytest.approx(
        max(4 / eps * math.log2(2 / delta), 16 / eps * math.log2(13 / eps)))


@pytest.mark.parametrize("d", [1, 3, 10, 200])
def test_vc_forms_satisfy_double_sample_inequality(d):
    """The closed forms and the numeric solution all make 2·(2em/h)^h·2^(−εm/2) ≤ δ (with m ≥ 8/ε)."""
    eps = np.geomspace(1e-3, 0.9, 25)[:, None]
    delta = np.geomspace(1e-8, 0.5, 9)[None, :]
    h = d + 1
    implicit = linear_classification_explicit(eps, delta, d, method="implicit")
    for method in ("anthony-biggs", "blumer", "implicit"):
        m = linear_classification_explicit(eps, delta, d, method=method)
        lhs = math.log(2) + h * np.log(2 * math.e * m / h) - eps * m * math.log(2) / 2
        assert np.all(lhs <= np.log(delta) + 1e-9), method
        assert np.all(m >= 8 / eps - 1e-9)
        assert np.all(implicit <= m * (1 + 1e-9))


# -------------------------------------------------------------------------------------------- monotonicity
@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_decreasing_in_epsilon_and_delta(name):
    eps = np.linspace(0.01, 0.9, 40)
    values = call(name, eps)
    assert np.all(np.diff(values) < 0)
    if BOUNDS[name][2] and name not in ("linear_blumer",):
        deltas = np.linspace(0.001, 0.9, 40)
        assert np.all(np.diff(call(name, 0.1, deltas)) < 0)
    if name == "linear_blumer":  # the max() form is flat in δ where the d-term dominates
        assert np.all(np.diff(call(name, 0.1, np.linspace(0.001, 0.9, 40))) <= 0)


@pytest.mark.parametrize("name,param", [
    ("contexts", "vocab_size"), ("contexts", "n_contexts"), ("contexts_explicit", "vocab_size"),
    ("contexts_explicit", "n_contexts"), ("contexts_uniform", "n_contexts"), ("length", "vocab_size"),
    ("length", "length"), ("length_explicit", "vocab_size"), ("length_explicit", "length"),
    ("linear", "dim"), ("linear_explicit", "dim"), ("linear_blumer", "dim"), ("linear_implicit", "dim"),
    ("categorical", "n_outcomes"), ("fixed_explicit", "n_labels"),
])
def test_increasing_in_size_parameters(name, param):
    values = [call(name, 0.1, **{param: k}) for k in (2, 3, 5, 10, 100, 1000)]
    assert np.all(np.diff(values) > 0)


def test_constant_scales_o_forms():
    assert generation_contexts_bound(0.1, 0.1, 5, 3, constant=2.5) == pytest.approx(
        2.5 * generation_contexts_bound(0.1, 0.1, 5, 3))
    assert linear_classification_bound(0.2, 7, constant=0.5) == pytest.approx(0.5 * 35)


# --------------------------------------------------------------------------------------------- vectorization
@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_vectorized_matches_scalar(name):
    eps = np.array([0.02, 0.1, 0.3])
    vec = call(name, eps)
    assert isinstance(vec, np.ndarray) and vec.shape == (3,)
    scalars = [call(name, float(e)) for e in eps]
    assert all(isinstance(s, float) for s in scalars)
    np.testing.assert_allclose(vec, scalars, rtol=1e-9)


def test_broadcast_epsilon_delta_grid():
    grid = fixed_context_classification_explicit(np.array([0.1, 0.2])[:, None], np.array([0.01, 0.05, 0.1]))
    assert grid.shape == (2, 3)
    assert grid[0, 1] == pytest.approx(math.log(40) / 0.02)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan"), [0.1, 1.2], "x"])
def test_bad_probabilities(bad):
    with pytest.raises(ValueError, match="epsilon"):
        fixed_context_classification_explicit(bad, 0.05)
    with pytest.raises(ValueError, match="delta"):
        generation_contexts_bound(0.1, bad, 10, 2)


@pytest.mark.parametrize("bad", [0, -3, 2.5, 3.0, True, "4", None])
def test_bad_integers(bad):
    with pytest.raises(ValueError, match="vocab_size.*received"):
        generation_length_explicit(0.1, 0.05, bad, 3)
    with pytest.raises(ValueError, match="dim"):
        linear_classification_bound(0.1, bad)
    with pytest.raises(ValueError, match="n_contexts"):
        generation_contexts_explicit(0.1, 0.05, 10, bad)


def test_numpy_integers_accepted_and_bad_options():
    assert generation_length_bound(0.1, 0.05, np.int64(10), np.int32(3)) > 0
    with pytest.raises(ValueError, match="constant"):
        linear_classification_bound(0.1, 3, constant=0)
    with pytest.raises(ValueError, match="allocation"):
        generation_contexts_explicit(0.1, 0.05, 10, 3, allocation="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method"):
        linear_classification_explicit(0.1, 0.05, 3, method="vc")  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- power laws
def test_power_law_recovers_parameters_with_noise():
    rng = np.random.default_rng(0)
    a, b = 3.0, 0.45
    n = np.geomspace(16, 4096, 30)
    eps = a * n**-b * np.exp(rng.normal(0, 0.05, n.size))
    fit = fit_power_law(n, eps)
    assert isinstance(fit, PowerLawFit)
    assert fit.b == pytest.approx(b, abs=0.03)
    assert fit.a == pytest.approx(a, rel=0.15)
    assert fit.r2 > 0.98 and fit.n_points == 30 and 0 < fit.b_stderr < 0.05
    assert fit.predict(1000) == pytest.approx(a * 1000**-b, rel=0.05)
    assert fit.n_for(fit.predict(777.0)) == pytest.approx(777.0)
    np.testing.assert_allclose(fit.predict(np.array([10.0, 100.0])), fit.a * np.array([10.0, 100.0]) ** -fit.b)


def test_power_law_exact_and_errors():
    fit = fit_power_law([100, 400], [0.2, 0.1])
    assert fit.a == pytest.approx(2.0) and fit.b == pytest.approx(0.5) and math.isnan(fit.b_stderr)
    with pytest.raises(ValueError, match="at least 2"):
        fit_power_law([10], [0.1])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([10, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([10, 20], [0.1, -0.2])
    with pytest.raises(ValueError, match="same length"):
        fit_power_law([10, 20, 30], [0.1, 0.2])
    with pytest.raises(ValueError, match="distinct"):
        fit_power_law([10, 10], [0.1, 0.2])
    rising = fit_power_law([10, 100], [0.1, 0.2])
    with pytest.raises(ValueError, match="does not decrease"):
        rising.n_for(0.05)
    with pytest.raises(ValueError, match="positive"):
        fit.predict(0)
