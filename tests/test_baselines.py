"""Baselines: kNN vote (hand-computed), contextual calibration (p / p_cf), kNN-prompting (anchors)."""

from __future__ import annotations

import numpy as np
import pytest

from ragicl import ExampleIndex, ICLClassifier, PromptTemplate, read_dataset
from ragicl._exceptions import NotFittedError
from ragicl.estimators._common import softmax
from ragicl.estimators.baselines import CalibratedClassifier, KNNPromptingClassifier, KNNVoteClassifier
from ragicl.index.embed import HashEmbedder
from ragicl.prompt.retrieve import Retriever
from ragicl.types import Example


@pytest.fixture(scope="module")
def sst(sst2_train_path):
    data = read_dataset(sst2_train_path, name="sst2").subset(range(110))
    train, test = data.subset(range(100)), data.subset(range(100, 110))
    return ExampleIndex.build(train, embedder=HashEmbedder(32), device="cpu"), test


@pytest.mark.parametrize("temperature", [None, 0.05])
def test_knn_vote_equals_hand_count(sst, temperature):
    index, test = sst
    clf = KNNVoteClassifier(k=5, temperature=temperature, smoothing=0.5).fit(index)
    probs = clf.predict_proba(list(test.examples))
    assert probs.shape == (len(test), 2)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    for row, r in zip(probs, Retriever(k=5).retrieve(index, list(test.examples))):
        scores = np.asarray(r.scores, dtype=np.float64)
        w = (np.ones(len(scores)) if temperature is None  # plain: one vote each; weighted: softmax(s/T) x count
             else np.exp((scores - scores.max()) / temperature) / np.exp((scores - scores.max()) / temperature).sum()
             * len(scores))
        counts = np.full(2, 0.5)
        for pos, weight in zip(r.positions, w):
            counts[index.labels.index(index.examples[pos].label)] += weight
        np.testing.assert_allclose(row, counts / counts.sum())
    assert clf.predict(list(test.examples)) == [clf.classes_[i] for i in probs.argmax(1)]


def test_weighted_is_the_deprecated_spelling_of_the_weighted_vote(sst):
    index, test = sst
    with pytest.warns(DeprecationWarning, match="temperature=0.05"):
        old = KNNVoteClassifier(k=5, weighted=True).fit(index).predict_proba(list(test.examples))
    new = KNNVoteClassifier(k=5, temperature=0.05).fit(index).predict_proba(list(test.examples))
    np.testing.assert_array_equal(old, new)


def test_every_estimator_clones_with_its_parameters():
    """The scikit-learn contract on every estimator (one base: ParamsMixin), with scikit-learn's own clone."""
    clone = pytest.importorskip("sklearn.base").clone
    from ragicl import FusionClassifier, FusionTuner, ICLClassifier, ICLGenerator
    from ragicl.estimators.baselines import CalibratedClassifier, KNNPromptingClassifier

    estimators = [KNNVoteClassifier(k=7, temperature=0.1), CalibratedClassifier(ICLClassifier(k=3)),
                  KNNPromptingClassifier(ICLClassifier(k=0), n_anchors=10), FusionClassifier(k=4, knn_weight=0.3),
                  FusionTuner(dev_size=20, ks=(4,)), ICLClassifier(k=2), ICLGenerator(k=1)]
    for est in estimators:
        twin = clone(est)
        assert type(twin) is type(est) and twin is not est
        assert repr(twin) == repr(est)
        params = est.get_params(deep=False)
        assert params == twin.get_params(deep=False) or type(est).__name__ in ("CalibratedClassifier",
                                                                                "KNNPromptingClassifier")
        with pytest.raises(ValueError, match="Invalid parameter"):
            est.set_params(no_such_parameter=1)
    assert FusionClassifier(k=4).set_params(knn_weight=0.9).knn_weight == 0.9
    assert CalibratedClassifier(ICLClassifier(k=3)).set_params(base__k=5).base.k == 5


def test_knn_vote_excludes_the_query_itself(sst):
    index, _ = sst
    ex = index.examples[3]
    clf = KNNVoteClassifier(k=1, smoothing=0.0).fit(index)
    r = Retriever(k=1).retrieve(index, [ex])[0]
    assert index.examples[r.positions[0]].key() != ex.key()
    expected = index.examples[r.positions[0]].label
    assert clf.predict([ex]) == [expected]


def test_knn_vote_small_index_and_errors(sst):
    index, test = sst
    tiny = ExampleIndex.build(index.dataset.subset(range(3)), embedder=HashEmbedder(32), device="cpu")
    probs = KNNVoteClassifier(k=16).fit(tiny).predict_proba(list(test.examples))
    np.testing.assert_allclose(probs.sum(1), 1.0)
    counts = np.bincount([tiny.labels.index(e.label) for e in tiny.examples], minlength=2) + 0.5
    np.testing.assert_allclose(probs[0], counts / counts.sum())  # all 3 neighbours, no padding votes
    with pytest.raises(NotFittedError):
        KNNVoteClassifier().predict_proba(["x"])
    with pytest.raises(ValueError, match="k must"):
        KNNVoteClassifier(k=0).fit(index)


@pytest.mark.slow
def test_calibration_zero_shot_matches_manual(smollm_lm, sst):
    """k=0: p_cf is the model's distribution on the content-free query; q = p/p_cf renormalized."""
    index, test = sst
    tpl = PromptTemplate.for_dataset("sst2")
    queries = list(test.examples[:4])
    base = ICLClassifier(smollm_lm, tpl, k=0)
    cal = CalibratedClassifier(base, content_free=("N/A",)).fit(index)
    got = cal.predict_proba(queries)
    p = ICLClassifier(smollm_lm, tpl, k=0).fit(index).predict_proba(queries)
    p_cf = ICLClassifier(smollm_lm, tpl, k=0).fit(index).predict_proba([{"text": "N/A"}])[0]
    expected = (p / p_cf) / (p / p_cf).sum(1, keepdims=True)
    # float32 scores depend slightly on batch shape and thread blocking (7e-5 seen in CI under load), so
    # the tolerance is 5e-4; a wrong formula (e.g. p·p_cf) is off by far more than that
    np.testing.assert_allclose(got, expected, rtol=0, atol=5e-4)
    wrong = (p * p_cf) / (p * p_cf).sum(1, keepdims=True)
    assert not np.allclose(got, wrong, atol=5e-3)
    assert not np.allclose(got, p, atol=1e-3)  # calibration moved the distribution
    np.testing.assert_allclose(got.sum(1), 1.0)


@pytest.mark.slow
def test_calibration_k_shot_keeps_the_demonstrations(smollm_lm, sst):
    """k=2: the content-free prompt has the query's own demonstrations; averaging over cf strings."""
    index, test = sst
    tpl = PromptTemplate.for_dataset("sst2")
    q = list(test.examples[:2])
    cal = CalibratedClassifier(ICLClassifier(smollm_lm, tpl, k=2, max_prompt_tokens=200),
                               content_free=("N/A", "")).fit(index)
    got = cal.predict_proba(q)
    base = cal.base
    prompts = base.prompts(q)
    p = softmax(base.label_logprobs(prompts))
    cf = np.zeros_like(p)
    for text in ("N/A", ""):
        cf_prompts = []
        for prompt in prompts:
            positions = [index.position_of(i) for i in reversed(prompt.included)]
            cf_prompts.append(base.packer_.pack(Example(id="cf", inputs={"text": text}), positions))
            assert cf_prompts[-1].included == prompt.included
            assert cf_prompts[-1].text.startswith(prompt.text.rsplit("Review:", 1)[0])
        cf += softmax(base.label_logprobs(cf_prompts)) / 2
    np.testing.assert_allclose(got, (p / cf) / (p / cf).sum(1, keepdims=True), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_knn_prompting_anchor_finds_itself(smollm_lm, sst):
    """An anchor queried back is its own nearest anchor (KL 0): with 1 neighbour it gets its label."""
    index, test = sst
    small = ExampleIndex.build(index.dataset.subset(range(10)), embedder=HashEmbedder(32), device="cpu")
    tpl = PromptTemplate.for_dataset("sst2")
    knnp = KNNPromptingClassifier(ICLClassifier(smollm_lm, tpl, k=0, max_prompt_tokens=256), n_demos=2,
                                  n_neighbors=1, smoothing=0.5, top_tokens=512).fit(small)
    anchors = [ex for i, ex in enumerate(small.examples) if i not in knnp._demos][:4]
    probs = knnp.predict_proba(anchors)
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    for row, ex in zip(probs, anchors):
        own = small.labels.index(ex.label)
        assert row[own] == pytest.approx((1 + 0.5) / (1 + 2 * 0.5))
    capped = KNNPromptingClassifier(ICLClassifier(smollm_lm, tpl, k=0), n_anchors=4, n_neighbors=3,
                                    top_tokens=256).fit(small)
    assert len(capped._anchor_labels) == 4
    out = capped.predict_proba(list(test.examples[:2]))
    assert out.shape == (2, 2) and np.all(out > 0)
    with pytest.raises(ValueError, match="zero-shot"):
        KNNPromptingClassifier(ICLClassifier(smollm_lm, tpl, k=2)).fit(small)
