"""Selection methods of the ICL literature (issue 39 §2) and cross-encoder re-ranking (§1): DPP equals the
greedy log-det reference, VoteK equals a from-scratch recomputation and covers clusters, MDL keeps the
lowest-entropy packed prompt, re-ranking orders by the cross-encoder's scores; every method's prompts are
packed within the exact budget. Real-data tests: SST-2 rows, the MiniLM embedder, SmolLM2's tokenizer and
(for MDL) SmolLM2 itself."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _selection_fakes import FakeLM, tiny_cross_encoder

from ragicl.data import from_records, read_dataset
from ragicl.index.core import ExampleIndex
from ragicl.prompt.mdl import MDLStep, label_entropy
from ragicl.prompt.pack import Packer
from ragicl.prompt.rerank import CrossEncoderReranker
from ragicl.prompt.retrieve import Retriever
from ragicl.prompt.select_dpp import dpp_kernel, dpp_order
from ragicl.prompt.select_votek import vote_graph, votek_pool, votek_rank
from ragicl.prompt.step import PromptStep
from ragicl.prompt.template import PromptTemplate

WORDS = ["red", "green", "blue", "cat", "dog", "film", "great", "awful", "plot", "actor", "music", "slow", "fast", "funny", "dull"]


def _synthetic(n=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = [{"text": " ".join(rng.choice(WORDS, size=int(rng.integers(2, 12)))) + f" {i}",
             "label": "positive" if i % 3 else "negative"} for i in range(n)]
    return from_records(rows)


@pytest.fixture(scope="module")
def small():
    return ExampleIndex.build(_synthetic(), embedder="hash-64", device="cpu")


# ------------------------------------------------------------------------------------------ DPP
def _greedy_logdet(kernel, n):
    chosen: list[int] = []
    for _ in range(n):
        best, best_val = None, -np.inf
        for j in range(len(kernel)):
            if j in chosen:
                continue
            s = chosen + [j]
            sign, val = np.linalg.slogdet(kernel[np.ix_(s, s)])
            val = val if sign > 0 else -np.inf
            if val > best_val + 1e-9:
                best, best_val = j, val
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_dpp_order_is_the_greedy_log_det_maximiser(seed):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(12, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = emb[0] + 0.3 * rng.normal(size=16)
    q /= np.linalg.norm(q)
    for scale in (0.05, 0.1, 1.0):
        kernel, _ = dpp_kernel(emb, q, scale)
        assert dpp_order(emb, q, 6, scale).tolist() == _greedy_logdet(kernel, 6)


def test_dpp_prefers_diverse_over_near_duplicates_and_fills_when_rank_runs_out():
    e = np.array([[1, 0, 0], [1, 1e-4, 0], [0.6, 0.8, 0], [0, 0, 1]], np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    q = np.array([1.0, 0.0, 0.0])
    order = dpp_order(e, q, 4, scale=1.0).tolist()
    assert order[0] == 0 and order.index(1) == 3  # the near-duplicate of the first pick comes last
    dup = np.repeat(e[:1], 3, axis=0)  # rank 1: one greedy pick, then the rest by relevance
    assert dpp_order(dup, q, 3).tolist() == [0, 1, 2]


def test_dpp_selection_draws_from_the_pool_in_greedy_order(small):
    queries = list(small.examples[:5])
    fetch = 20
    pools = Retriever(k=fetch).retrieve(small, queries)
    for query, pool, r in zip(queries, pools, Retriever(k=6, selection="dpp", fetch_k=fetch).retrieve(small, queries)):
        assert set(r.positions) <= set(pool.positions) and len(r.positions) == 6
        emb = np.asarray(small.embeddings[list(pool.positions)])
        order = dpp_order(emb, small.embed([query])[0], 6, 0.1)
        assert list(r.positions) == [pool.positions[i] for i in order]
    with pytest.raises(ValueError, match="dpp_scale"):
        Retriever(selection="dpp", dpp_scale=0)


# ---------------------------------------------------------------------------------------- VoteK
def _votek_reference(graph, size, rho):
    a = graph.toarray()
    chosen: list[int] = []
    for _ in range(size):
        scores = {u: sum(rho ** -float(sum(a[v, ell] for ell in chosen)) for v in range(len(a))
                         if a[v, u] and v not in chosen)
                  for u in range(len(a)) if u not in chosen}
        top = max(scores.values())
        chosen.append(min(u for u, sc in scores.items() if sc >= top - 1e-9 * max(1.0, abs(top))))
    return chosen


@pytest.mark.parametrize("seed", range(3))
def test_votek_rank_equals_a_from_scratch_recomputation(seed):
    from scipy import sparse

    rng = np.random.default_rng(seed)
    n, k = 25, 4
    rows = np.repeat(np.arange(n), k)
    cols = np.concatenate([rng.choice([j for j in range(n) if j != i], k, replace=False) for i in range(n)])
    graph = sparse.csr_matrix((np.ones(n * k), (rows, cols)), shape=(n, n))
    for rho in (2.0, 10.0):
        assert votek_rank(graph, 10, rho).tolist() == _votek_reference(graph, 10, rho)


def test_votek_pool_covers_every_cluster_and_is_cached():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 16)
    sizes = (8, 8, 8)  # each example votes for its 7 nearest: its whole cluster
    vectors = np.concatenate([c + 0.05 * rng.normal(size=(m, 16)) for c, m in zip(centres, sizes)])
    ds = from_records([{"text": f"row {i}", "label": "x"} for i in range(len(vectors))])
    index = ExampleIndex.from_vectors(vectors, ds, embedder="hash-16", device="cpu")
    pool = votek_pool(index, 3, k=7)
    clusters = np.repeat([0, 1, 2], sizes)
    assert clusters[pool].tolist() == [0, 1, 2]  # by votes alone (no discount) the first 3 are all in cluster 0
    graph = vote_graph(index, 7)
    votes = np.asarray(graph.sum(axis=0)).ravel()
    assert set(clusters[np.argsort(-votes, kind="stable")[:3]].tolist()) == {0}
    assert votek_pool(index, 2, k=7).tolist() == pool[:2].tolist()  # a prefix of the same greedy order
    assert graph.shape == (24, 24) and graph.sum() == 24 * 7 and graph.diagonal().sum() == 0
    with pytest.raises(ValueError, match="votek_rho"):
        votek_pool(index, 3, rho=1.0)


def test_votek_selection_is_one_pool_ordered_per_query(small):
    r = Retriever(k=5, selection="votek", votek_pool=8).retrieve(small, list(small.examples[:6]))
    pool = votek_pool(small, 9, k=10).tolist()
    for query, res in zip(small.examples[:6], r):
        own = small.duplicates_of(query.key())
        members = [p for p in pool if p not in own][:8]
        assert set(res.positions) <= set(members) and len(res.positions) == 5
        sims = np.asarray(small.embeddings[list(members)]) @ small.embed([query])[0]
        assert list(res.positions) == [members[i] for i in np.lexsort((members, -sims))[:5]]


# ------------------------------------------------------------------------------------ re-ranking
class _ByLength:
    """A reranker that prefers shorter candidates (ties: keep the first stage's order)."""

    def score(self, query, texts):
        return np.array([-(len(t) // 10) for t in texts], np.float32)


def test_reranker_reorders_the_first_stage_and_keeps_its_order_on_ties(small):
    query = small.examples[3]
    first = Retriever(k=30).retrieve(small, [query])[0].positions
    r = Retriever(k=5, reranker=_ByLength(), rerank_depth=30).retrieve(small, [query])[0]
    key = {p: (len(small.query_text(small.examples[p])) // 10, i) for i, p in enumerate(first)}
    assert list(r.positions) == sorted(first, key=lambda p: key[p])[:5]
    assert list(r.scores) == [-(len(small.query_text(small.examples[p])) // 10) for p in r.positions]


def test_reranker_errors_are_clear(small):
    class Bad:
        def score(self, query, texts):
            return np.zeros(len(texts) + 1)

    with pytest.raises(ValueError, match="one finite score per candidate"):
        Retriever(k=2, reranker=Bad()).retrieve(small, ["red cat"])
    with pytest.raises(TypeError, match="reranker must be"):
        Retriever(reranker=3.5)


def test_tiny_cross_encoder_scores_are_what_the_retriever_orders_by(small, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    folder = tiny_cross_encoder(tmp_path / "ce")
    query = "a funny film with great music"
    r = Retriever(k=4, reranker=folder, rerank_depth=12).retrieve(small, [query])[0]
    first = Retriever(k=12).retrieve(small, [query])[0].positions
    model = st.CrossEncoder(folder, device="cpu")
    direct = model.predict([(query, small.query_text(small.examples[p])) for p in first])
    order = np.argsort(-np.asarray(direct), kind="stable")[:4]
    assert len(set(np.asarray(direct).round(6).tolist())) > 4  # the random model does tell candidates apart
    assert list(r.positions) == [first[i] for i in order]
    np.testing.assert_allclose(r.scores, np.asarray(direct)[order], rtol=1e-5, atol=1e-6)
    loaded = CrossEncoderReranker(model)  # a loaded CrossEncoder is used as is
    np.testing.assert_allclose(loaded.score(query, ["a", "b c"]), model.predict([(query, "a"), (query, "b c")]),
                               rtol=1e-6)


def test_a_real_cross_encoder_from_the_hub_when_one_is_cached():
    reranker = CrossEncoderReranker("cross-encoder/ms-marco-MiniLM-L-6-v2", device="cpu")
    try:
        reranker.load()
    except OSError as err:
        pytest.skip(f"no cross-encoder is installable offline here (none ships as a PyPI package; the hub is "
                    f"unreachable): {str(err)[:120]}")
    s = reranker.score("what is the capital of France?", ["Paris is the capital of France.", "Bananas are yellow."])
    assert s[0] > s[1]


# ------------------------------------------------------------------------------------------ MDL
def test_label_entropy():
    h = label_entropy(np.log(np.array([[0.5, 0.5], [1.0, 1e-12], [0.2, 0.8]])) + 3.0)
    np.testing.assert_allclose(h, [math.log(2), 0.0, -(0.2 * math.log(0.2) + 0.8 * math.log(0.8))], atol=1e-9)


@pytest.fixture(scope="module")
def packer(smollm_tokenizer, small):
    return Packer(smollm_tokenizer, PromptTemplate(), max_prompt_tokens=90).fit(small.examples)


def test_mdl_keeps_the_lowest_entropy_packed_prompt(packer, small, smollm_tokenizer):
    lm = FakeLM(smollm_tokenizer)
    step = PromptStep(packer, Retriever(k=3), small, k=3)
    queries = list(_synthetic(8, seed=1).examples)
    mdl = MDLStep(step, lm, n_samples=4, seed=7)
    choices = mdl.select(queries)
    answers = [packer.answer_ids(label) for label in packer.labels_]
    for q, c in zip(queries, choices):
        assert len(c.entropies) == 4 and c.entropy == min(c.entropies) and c.entropies[c.chosen] == c.entropy
        assert c.prompt.n_tokens <= c.prompt.budget and len(c.prompt.included) <= 3
        np.testing.assert_allclose(label_entropy(lm.score_continuations([c.prompt.token_ids], answers))[0],
                                   c.entropy, rtol=1e-6)
    assert mdl.select(queries) == choices  # seeded: the same draws again
    assert MDLStep(step, lm, n_samples=1).select(queries)[0].prompt == step(queries[:1])[0]
    with pytest.raises(ValueError, match="n_samples"):
        MDLStep(step, lm, n_samples=0)
    with pytest.raises(ValueError, match="at least 2 labels"):
        MDLStep(step, lm, labels=["positive"]).select(queries)


# ------------------------------------------------------------------------- real data, exact budget
@pytest.fixture(scope="module")
def sst2_real(sst2_train_path, sst2_test_path, minilm):
    train = read_dataset(sst2_train_path, name="sst2").sample(200, seed=3)
    index = ExampleIndex.build(train, embedder=minilm, device="cpu")
    index.build_lexical()
    return index, read_dataset(sst2_test_path, name="sst2").subset(range(6))


@pytest.mark.parametrize("kwargs", [{}, {"selection": "mmr"}, {"selection": "dpp"}, {"selection": "votek"},
                                    {"search": "bm25"}, {"search": "hybrid", "selection": "dpp"},
                                    {"search": "hybrid", "selection": "balanced"}])
def test_every_method_packs_real_sst2_prompts_within_the_exact_budget(sst2_real, smollm_tokenizer, kwargs):
    index, test = sst2_real
    packer = Packer(smollm_tokenizer, PromptTemplate(), max_prompt_tokens=160).fit(index.examples)
    step = PromptStep(packer, Retriever(k=4, **kwargs), index, k=4)
    cands = step.candidates(list(test))
    for prompt, c in zip(step(list(test)), cands):
        assert prompt.n_tokens <= prompt.budget == 160
        assert prompt.token_ids == tuple(smollm_tokenizer(prompt.text)["input_ids"])
        ids = [index.examples[p].id for p in c]
        chosen = list(reversed(prompt.included))  # most relevant first
        assert chosen == [i for i in ids if i in chosen]  # the first candidates that fit, in the selection's order
        assert 1 <= len(chosen) <= 4


def test_real_mdl_with_smollm2_on_sst2(sst2_real, smollm_lm):
    index, test = sst2_real
    packer = Packer(smollm_lm.tokenizer, PromptTemplate(), max_prompt_tokens=160,
                    context_length=smollm_lm.context_length).fit(index.examples)
    step = PromptStep(packer, Retriever(k=2), index, k=2)
    choices = MDLStep(step, smollm_lm, n_samples=3).select(list(test)[:3])
    answers = [packer.answer_ids(label) for label in packer.labels_]
    for c in choices:
        assert c.prompt.n_tokens <= 160 and c.entropy <= c.entropies[0] + 1e-12
        direct = label_entropy(smollm_lm.score_continuations([c.prompt.token_ids], answers))[0]
        assert abs(direct - c.entropy) <= 1e-4 * max(1.0, c.entropy)  # batched vs single scoring (float32)
        assert 0.0 <= c.entropy <= math.log(2) + 1e-9
    json.dumps([c.entropies for c in choices])  # plain floats
