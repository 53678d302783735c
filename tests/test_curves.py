"""Gap curves: numbers equal a hand computation, the data curve embeds once, plots are real PNGs."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import numpy as np
import pytest

from ragicl import BudgetError, ExampleIndex, read_dataset
from ragicl.estimators.baselines import KNNVoteClassifier
from ragicl.evaluation.curves import (
    Curve,
    fit_data_curve,
    gap_vs_budget,
    gap_vs_data_fraction,
    gap_vs_k,
    plot_bounds_vs_measured,
    plot_curve,
)
from ragicl.evaluation.report import curve_markdown
from ragicl.evaluation.stats import bootstrap_ci
from ragicl.index.embed import HashEmbedder, PrecomputedEmbedder


class CountingEmbedder(HashEmbedder):
    """HashEmbedder that counts the texts it embeds."""

    def __init__(self, dimension: int = 32) -> None:
        super().__init__(dimension)
        self.calls = 0

    def encode(self, texts, **kw):
        self.calls += len(texts)
        return super().encode(texts, **kw)


@pytest.fixture(scope="module")
def sst(sst2_train_path):
    data = read_dataset(sst2_train_path).subset(range(160))
    return data.subset(range(128)), data.subset(range(128, 160))


@pytest.fixture(scope="module")
def ref(sst):
    return np.random.default_rng(0).dirichlet([1, 1], size=len(sst[1]))


def test_gap_vs_k_equals_hand_computation(sst, ref):
    train, test = sst
    index = ExampleIndex.build(train, embedder=HashEmbedder(32), device="cpu")
    curve = gap_vs_k(index, test, ref, [1, 3, 8], lambda k: KNNVoteClassifier(k=k), n_boot=200,
                     show_progress=False)
    assert curve.x == (1.0, 3.0, 8.0) and len(curve) == 3 and curve.meta["knob"] == "k"
    y = test.label_array()
    for k, tv_iv, acc_iv in zip((1, 3, 8), curve.tv, curve.accuracy):
        probs = KNNVoteClassifier(k=k).fit(index).predict_proba(list(test.examples))
        tv = 0.5 * np.abs(probs - ref).sum(1)
        assert tv_iv == bootstrap_ci(tv, n_boot=200, seed=0)
        assert acc_iv.estimate == pytest.approx(np.mean(probs.argmax(1) == y))
    with pytest.raises(FrozenInstanceError):
        curve.x = ()  # type: ignore[misc]


def test_reference_shape_checked(sst):
    train, test = sst
    index = ExampleIndex.build(train, embedder=HashEmbedder(32), device="cpu")
    with pytest.raises(ValueError, match="reference_probs"):
        gap_vs_k(index, test, np.full((3, 2), 0.5), [1], lambda k: KNNVoteClassifier(k=k))


def test_data_fraction_embeds_once_and_full_fraction_matches_full_index(sst, ref):
    train, test = sst
    emb = CountingEmbedder(32)
    curve = gap_vs_data_fraction(train, test, ref, make_classifier=lambda f: KNNVoteClassifier(k=4),
                                 fractions=(1 / 8, 1 / 2, 1.0), seeds=(0, 1), embedder=emb, n_boot=100,
                                 show_progress=False)
    assert emb.calls == len(train) + len(test)  # every text embedded exactly once
    assert curve.meta["n_index"] == [16, 64, 128]
    assert len(curve.meta["tv_per_seed"][0]) == 2
    full = KNNVoteClassifier(k=4).fit(ExampleIndex.build(train, embedder=HashEmbedder(32), device="cpu"))
    tv_full = 0.5 * np.abs(full.predict_proba(list(test.examples)) - ref).sum(1)
    assert curve.tv[-1].estimate == pytest.approx(tv_full.mean(), abs=1e-6)
    assert curve.meta["tv_seed_sd"][-1] == pytest.approx(0.0, abs=1e-9)  # fraction 1: seeds agree
    fit = fit_data_curve(curve)
    assert fit.n_points == 3 and np.isfinite(fit.b)


def test_data_fraction_from_index_reuses_stored_vectors(sst, ref):
    train, test = sst
    emb = CountingEmbedder(32)
    index = ExampleIndex.build(train, embedder=emb, device="cpu")
    before = emb.calls
    curve = gap_vs_data_fraction(index, test, ref, make_classifier=lambda f: KNNVoteClassifier(k=2),
                                 fractions=(0.25, 1.0), seeds=(0,), n_boot=50, show_progress=False)
    assert emb.calls - before == len(test)
    assert np.isnan(curve.meta["tv_seed_sd"][0])


def test_bad_fractions_raise(sst, ref):
    with pytest.raises(ValueError, match="fractions"):
        gap_vs_data_fraction(sst[0], sst[1], ref, make_classifier=lambda f: None, fractions=(0.0,),
                             embedder=HashEmbedder(8))


def test_precomputed_embedder_falls_back():
    base = HashEmbedder(8)
    pre = PrecomputedEmbedder(base, ["a"], base.encode(["a"]))
    assert pre.name == base.name and pre.dimension == 8
    np.testing.assert_allclose(pre.encode(["b", "a"]), base.encode(["b", "a"]))
    assert pre.hits == 1


def test_plots_are_pngs(tmp_path, sst, ref):
    from ragicl.evaluation.stats import Interval

    iv = [Interval(e, e * 0.8, e * 1.2, 0.95, "bootstrap") for e in (0.4, 0.3, 0.2)]
    acc = [Interval(e, e - 0.05, e + 0.05, 0.95, "bootstrap") for e in (0.6, 0.7, 0.8)]
    data = Curve((0.25, 0.5, 1.0), tuple(iv), tuple(acc), {"knob": "data_fraction", "n_index": [25, 50, 100]})
    fit = fit_data_curve(data)
    for path in (plot_curve(data, tmp_path / "d.png", fit=fit),
                 plot_bounds_vs_measured(data, tmp_path / "b.png", fit=fit, dim=384, constant=0.5),
                 plot_curve(Curve((0, 2), tuple(iv[:2]), tuple(acc[:2]), {"knob": "k"}), tmp_path / "k.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="data_fraction"):
        plot_bounds_vs_measured(Curve((1,), iv[:1], acc[:1], {"knob": "k"}), tmp_path / "x.png")


@pytest.mark.slow
def test_real_lm_k_and_budget_curves(smollm_lm, sst, ref):
    """SmolLM2: k=0 gives the zero-shot distribution; a larger budget fits more demonstrations."""
    from ragicl import ICLClassifier, PromptTemplate

    train, test = sst
    test = test.subset(range(4))
    ref6 = ref[:4]
    tpl = PromptTemplate.for_dataset("sst2")
    index = ExampleIndex.build(train, embedder=HashEmbedder(32), device="cpu")
    curve = gap_vs_k(index, test, ref6, [0, 2],
                     lambda k: ICLClassifier(smollm_lm, tpl, k=k, max_prompt_tokens=256), n_boot=50)
    zero = ICLClassifier(smollm_lm, tpl, k=0).fit(index).predict_proba(list(test.examples))
    assert curve.tv[0].estimate == pytest.approx(np.mean(0.5 * np.abs(zero - ref6).sum(1)), abs=1e-5)
    made = []

    def make(b):
        made.append(ICLClassifier(smollm_lm, tpl, k=32, max_prompt_tokens=b))
        return made[-1]

    bc = gap_vs_budget(index, test, ref6, [96, 160], make, n_boot=50)
    assert bc.x == (96.0, 160.0) and "skipped_budgets" not in bc.meta
    swept = made[-2:]  # made[0] is the pre-flight packer check at the largest budget
    shots = [np.mean([len(p.included) for p in clf.prompts(list(test.examples))]) for clf in swept]
    assert shots[1] > shots[0]
    assert all(p.n_tokens <= 160 for p in swept[1].prompts(list(test.examples)))

    # a budget below what a query needs alone: a clear error before any scoring, or skipped on request
    alone = max(len(p.token_ids) for p in ICLClassifier(smollm_lm, tpl, k=0, max_prompt_tokens=160)
                .fit(index).prompts(list(test.examples)))
    too_small = alone - 1
    n_made = len(made)
    with pytest.raises(BudgetError, match=rf"budgets \[{too_small}\].*{alone} tokens.*budgets ≥ {alone}"):
        gap_vs_budget(index, test, ref6, [too_small, 160], make, n_boot=50)
    assert len(made) == n_made + 1  # only the pre-flight classifier: nothing was scored
    skipped = gap_vs_budget(index, test, ref6, [too_small, 160], make, n_boot=50, too_small="skip")
    assert skipped.x == (160.0,) and skipped.meta["skipped_budgets"] == {too_small: alone}
    assert skipped.tv[0].estimate == pytest.approx(bc.tv[1].estimate)
    assert "needs" in curve_markdown(skipped)
    with pytest.raises(BudgetError):  # nothing left to measure
        gap_vs_budget(index, test, ref6, [too_small], make, n_boot=50, too_small="skip")
    with pytest.raises(ValueError, match="too_small"):
        gap_vs_budget(index, test, ref6, [160], make, too_small="truncate")
