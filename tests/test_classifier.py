"""ICLClassifier end to end on the real SmolLM2 (and a hash embedder where retrieval quality is not the
point), plus one run on the real embedder."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dataset_path

from ragicl import (
    DataError,
    ExampleIndex,
    HashEmbedder,
    ICLClassifier,
    NotFittedError,
    PromptTemplate,
    TransformersLM,
    read_dataset,
)
from ragicl.types import normalize_text

TEMPLATE = PromptTemplate(example="Review: {text}\nSentiment: {label}")


@pytest.fixture(scope="module")
def lm(smollm_path):
    return TransformersLM(smollm_path).load()


@pytest.fixture(scope="module")
def small_train():
    return read_dataset(dataset_path("sst2", "train")).sample(120, seed=3)


@pytest.fixture(scope="module")
def hash_index(small_train):
    return ExampleIndex.build(small_train, embedder=HashEmbedder(64), show_progress=False)


def test_predict_proba_is_a_distribution_and_prompts_fit(lm, hash_index, small_train):
    clf = ICLClassifier(lm, TEMPLATE, k=6, max_prompt_tokens=300).fit(hash_index)
    queries = list(small_train.examples[:5])  # queries taken from the indexed set itself
    probs = clf.predict_proba(queries)
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    preds = clf.predict_detailed(queries)
    for q, pred in zip(queries, preds):
        prompt = pred.prompt
        assert prompt.n_tokens <= prompt.budget <= 300
        assert list(prompt.token_ids) == lm.tokenizer(prompt.text).input_ids
        # The query never appears among its own demonstrations (no leakage from the indexed set).
        demos = prompt.text.split("\n\n")[:-1]
        assert all(normalize_text(q.inputs["text"]) not in normalize_text(d) for d in demos)
        assert 1 <= len(prompt.included) <= 6
        assert pred.label == max(pred.probs, key=pred.probs.get)
    assert clf.predict(queries) == [p.label for p in preds]


def test_zero_shot_from_a_dataset_and_string_queries(lm, small_train):
    clf = ICLClassifier(lm, TEMPLATE, k=0).fit(small_train)
    (pred,) = clf.predict_detailed("a gripping, beautifully shot film")
    assert pred.prompt.included == ()
    assert pred.prompt.text == "Review: a gripping, beautifully shot film\nSentiment:"
    assert pred.label == "positive"


def test_bad_use_is_reported(lm, small_train, hash_index):
    with pytest.raises(NotFittedError, match="fit"):
        ICLClassifier(lm, TEMPLATE).predict(["x"])
    with pytest.raises(ValueError, match="k must be a non-negative integer"):
        ICLClassifier(lm, TEMPLATE, k=-1).fit(hash_index)
    with pytest.raises(ValueError, match="needs examples to retrieve from"):
        ICLClassifier(lm, TEMPLATE, k=4).fit(small_train)
    clf = ICLClassifier(lm, TEMPLATE, k=0).fit(small_train)
    with pytest.raises(DataError, match="lacks the input field"):
        clf.predict([{"sentence": "x"}])


def test_rte_two_fields_needs_dict_queries(lm):
    train = read_dataset(dataset_path("rte", "train")).sample(40)
    clf = ICLClassifier(lm, k=0).fit(train)
    with pytest.raises(DataError, match="plain string"):
        clf.predict(["just one string"])
    probs = clf.predict_proba([{"premise": "A dog runs in a park.", "hypothesis": "An animal moves."}])
    assert probs.shape == (1, 2)


@pytest.mark.slow
def test_retrieval_beats_chance_on_real_sst2(lm, minilm):
    train = read_dataset(dataset_path("sst2", "train")).sample(400, seed=0)
    test = read_dataset(dataset_path("sst2", "test")).sample(30, seed=0)
    index = ExampleIndex.build(train, embedder=minilm, show_progress=False)
    clf = ICLClassifier(lm, TEMPLATE, k=8, max_prompt_tokens=512).fit(index)
    # A deterministic run (fixed samples, CPU float32): retrieved 8-shot SmolLM2 is far above chance.
    assert clf.score(test) >= 0.65


def test_prompts_and_scores_equal_the_shared_step_and_the_hand_built_pipeline(lm, hash_index, small_train):
    """ICLClassifier's prompts are the PromptStep's, and both equal retrieval + packing written out by hand
    (the pre-refactor code: Retriever → Packer fitted on the index → pack_batch with 2k candidates); the
    public label_logprobs gives the probabilities predict_proba returns, and a column subset of them."""
    from ragicl.estimators._common import softmax
    from ragicl.prompt.pack import Packer
    from ragicl.prompt.retrieve import Retriever
    from ragicl.prompt.step import PromptStep, make_packer

    queries = list(small_train.examples[:6]) + ["an utterly charmless, flat comedy"]
    for k, selection in ((4, "topk"), (3, "mmr"), (0, "topk")):
        clf = ICLClassifier(lm, TEMPLATE, k=k, max_prompt_tokens=200, selection=selection).fit(hash_index)
        examples = clf._as_examples(queries)
        packer = Packer(lm.tokenizer, TEMPLATE, max_prompt_tokens=200,
                        context_length=lm.context_length).fit(list(hash_index.examples), labels=clf.classes_)
        if k:
            found = Retriever(k=k, selection=selection).retrieve(hash_index, examples, n_candidates=2 * k)
            by_hand = packer.pack_batch(examples, [r.positions for r in found], max_examples=k)
        else:
            by_hand = packer.pack_batch(examples, [[] for _ in examples])
        step = PromptStep(make_packer(lm, TEMPLATE, hash_index.examples, max_prompt_tokens=200,
                                      labels=clf.classes_),
                          Retriever(k=k, selection=selection) if k else None, hash_index, k)
        got = clf.prompts(queries)
        assert got == step(examples) == clf.prompt_step()(examples) == by_hand
        assert k == 0 or any(p.included for p in got)
        logp = clf.label_logprobs(got)
        label_ids = [packer.answer_ids(c) for c in clf.classes_]
        np.testing.assert_array_equal(logp, np.asarray(lm.score_continuations([p.token_ids for p in by_hand],
                                                                              label_ids)))
        np.testing.assert_array_equal(clf.predict_proba(queries), softmax(logp))
        one = clf.label_logprobs(got, [1])
        assert one.shape == (len(queries), 1)
        # one label scored alone: the same numbers up to float32 batching noise of log-probs this size
        np.testing.assert_allclose(one[:, 0], logp[:, 1], rtol=0, atol=1e-4 * max(1.0, np.abs(logp).max()))


@pytest.mark.parametrize("search, selection", [("bm25", "topk"), ("hybrid", "dpp"), ("dense", "votek"),
                                               ("dense", "mdl")])
def test_every_search_and_selection_reaches_the_classifier(lm, hash_index, small_train, search, selection):
    """The retrieve stage's searches and the ICL-literature selections (issue 39) through ICLClassifier, on
    the real SmolLM2: prompts within the exact budget, a distribution per query, and the choice visible in the
    prompts (BM25 finds the query's own words; MDL keeps one of its candidate prompts)."""
    from ragicl.prompt.step import PromptStep

    clf = ICLClassifier(lm, TEMPLATE, k=4, max_prompt_tokens=256, search=search, selection=selection,
                        mdl_samples=2).fit(hash_index)
    queries = [{"text": "a gripping , beautifully shot film"}, {"text": "dull and far too long"}]
    prompts = clf.prompts(queries)
    assert all(p.n_tokens <= p.budget <= 256 and 1 <= len(p.included) <= 4 for p in prompts)
    probs = clf.predict_proba(queries)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert isinstance(clf.prompt_step(), PromptStep) == (selection != "mdl")
    if search == "bm25":  # lexical search: every chosen demonstration shares a word with its query
        for q, p in zip(queries, prompts):
            words = set(q["text"].split()) - {",", "and", "a"}
            demos = [hash_index.examples[hash_index.position_of(i)].inputs["text"] for i in p.included]
            assert all(words & set(d.split()) for d in demos), (q, demos)
