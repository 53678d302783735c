"""Retriever: exclusion of the query and its duplicates, the four selections, and a real end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import dataset_path

from ragicl.data import from_records, read_dataset
from ragicl.index.core import ExampleIndex
from ragicl.prompt import retrieve
from ragicl.prompt.retrieve import Retriever
from ragicl.types import Example

BASE = ["the cat sat on the mat", "a dog barked at the mailman", "stocks fell sharply on monday",
        "the team won the championship game", "rain is expected over the weekend",
        "the chef cooked a wonderful meal", "the film was dull and far too long",
        "a gripping thriller with a twist", "the senate passed the budget bill", "kids played in the park"]


@pytest.fixture(scope="module")
def dup_data():
    """Distinct texts plus exact duplicates (case / whitespace variants) of the first three."""
    rows = [{"text": t, "label": "a" if i % 2 else "b"} for i, t in enumerate(BASE * 3)]
    rows = [{"text": f"{r['text']} v{'i' * (i // len(BASE))}" if i >= len(BASE) else r["text"], "label": r["label"]}
            for i, r in enumerate(rows)]
    for i in range(3):
        rows.append({"text": "  " + BASE[i].upper() + " ", "label": "a"})
        rows.append({"text": BASE[i].replace(" ", "  "), "label": "b"})
    return from_records(rows)


@pytest.fixture(scope="module")
def dup_index(dup_data):
    return ExampleIndex.build(dup_data, embedder="hash-64")


@pytest.mark.parametrize("strategy", ["topk", "balanced", "mmr", "dpp", "votek", "random"])
def test_never_itself_nor_exact_duplicates(dup_data, dup_index, strategy):
    retriever = Retriever(k=8, selection=strategy)
    results = retriever.retrieve(dup_index, list(dup_data.examples))
    for query, r in zip(dup_data.examples, results):
        assert len(r.positions) == 8 and len(set(r.positions)) == 8
        keys = {dup_index.keys[p] for p in r.positions}
        assert query.key() not in keys
        assert dup_data.examples.index(query) not in r.positions
    # plain-string and mapping queries are deduplicated by text too
    for query in [BASE[0], {"text": BASE[1].title()}]:
        (r,) = retriever.retrieve(dup_index, query)
        assert all(dup_index.examples[p].key() != Example("", {"t": BASE[0]}).key() for p in r.positions) \
            or query != BASE[0]


def test_topk_is_brute_force_minus_duplicates(dup_data, dup_index):
    query = dup_data[0]
    (r,) = Retriever(k=10).retrieve(dup_index, query)
    sims = np.asarray(dup_index.embeddings) @ dup_index.embed([query])[0]
    dup = {i for i, ex in enumerate(dup_data) if ex.key() == query.key()}
    assert len(dup) == 3
    expected = [int(i) for i in np.argsort(-sims, kind="stable") if i not in dup][:10]
    assert list(r.positions) == expected
    np.testing.assert_allclose(r.scores, sims[expected], rtol=1e-5)


def test_many_duplicates_widen_search():
    rows = [{"text": "the same sentence", "label": "x"} for _ in range(40)]
    rows += [{"text": f"other sentence {i}", "label": "y"} for i in range(10)]
    index = ExampleIndex.build(from_records(rows), embedder="hash-64", factory="IVF2,Flat")
    index.set_search_params(nprobe=1)  # the probed list may hold only duplicates: exact fallback covers it
    (r,) = Retriever(k=5).retrieve(index, "The  same sentence")
    assert len(r.positions) == 5 and all(p >= 40 for p in r.positions)
    (r,) = Retriever(k=30).retrieve(index, "the same sentence")
    assert sorted(r.positions) == list(range(40, 50))


def test_index_exhausted_returns_fewer(dup_index):
    (r,) = Retriever(k=100).retrieve(dup_index, BASE[0])
    assert len(r.positions) == len(dup_index) - 3


def test_n_candidates_k0_and_validation(dup_index):
    r = Retriever(k=4).retrieve(dup_index, [BASE[5], BASE[6]], n_candidates=9)
    assert [len(x.positions) for x in r] == [9, 9]
    assert list(r[0].scores) == sorted(r[0].scores, reverse=True)
    assert Retriever(k=0).retrieve(dup_index, [BASE[5]])[0].positions == ()
    with pytest.raises(ValueError, match="non-negative integer"):
        Retriever(k=-1)
    with pytest.raises(ValueError, match=r"valid: \['topk', 'balanced', 'mmr', 'dpp', 'votek', 'random'\]"):
        Retriever(selection="nearest")
    with pytest.raises(ValueError, match="mmr_lambda"):
        Retriever(mmr_lambda=1.5)
    with pytest.raises(ValueError, match="n_candidates"):
        Retriever(k=2).retrieve(dup_index, BASE[0], n_candidates=0)


def test_balanced_round_robin(dup_index):
    query = "the film was dull and far too long"
    (top,) = Retriever(k=60).retrieve(dup_index, query)  # everything, similarity order
    (bal,) = Retriever(k=6, selection="balanced").retrieve(dup_index, query)
    labels = [dup_index.examples[p].label for p in bal.positions]
    assert sorted(labels[:2]) == ["a", "b"] and sorted(labels[2:4]) == ["a", "b"]
    for lab in "ab":  # within a label: similarity order
        mine = [p for p in bal.positions if dup_index.examples[p].label == lab]
        ranked = [p for p in top.positions if dup_index.examples[p].label == lab]
        assert mine == ranked[: len(mine)]
    for i in range(0, 6, 2):  # within a round: similarity order
        assert bal.scores[i] >= bal.scores[i + 1]
    gen = ExampleIndex.build(from_records([{"q": "x", "a": "y"}], output_field="a"), embedder="hash-16")
    with pytest.raises(ValueError, match="balanced.*labels"):
        Retriever(k=2, selection="balanced").retrieve(gen, "x")


def _mmr_reference(emb, q, cand, n, lam):
    chosen = []
    rest = list(cand)
    while rest and len(chosen) < n:
        def gain(c):
            div = max((emb[c] @ emb[s] for s in chosen), default=0.0)
            return lam * (emb[c] @ q) - (1 - lam) * div if chosen else emb[c] @ q
        best = max(rest, key=gain)
        chosen.append(best)
        rest.remove(best)
    return chosen


def test_mmr_matches_reference_and_diversifies():
    cluster = [f"the cat sat on the mat number {i}" for i in range(6)]
    others = ["the cat napped on a rug", "a cat sat on the sofa", "dogs sat on the mat", "the mat was red"]
    noise = [f"unrelated stock market news item {i}" for i in range(20)]
    ds = from_records([{"text": t, "label": "x"} for t in cluster + others + noise])
    index = ExampleIndex.build(ds, embedder="hash-64")
    query = "the cat sat on the mat"
    (top,) = Retriever(k=5).retrieve(index, query)
    (mmr,) = Retriever(k=5, selection="mmr", mmr_lambda=0.3).retrieve(index, query)
    (same,) = Retriever(k=5, selection="mmr", mmr_lambda=1.0).retrieve(index, query)
    assert same.positions == top.positions
    assert mmr.positions[0] == top.positions[0]
    assert sum(p < 6 for p in mmr.positions) < sum(p < 6 for p in top.positions)
    emb = np.asarray(index.embeddings)
    q = index.embed([query])[0]
    cand = list(Retriever(k=len(ds)).retrieve(index, query)[0].positions)[:50]
    assert list(mmr.positions) == _mmr_reference(emb, q, cand, 5, 0.3)
    np.testing.assert_allclose(mmr.scores, emb[list(mmr.positions)] @ q, rtol=1e-5)


def test_random_is_seeded_and_excludes(dup_data, dup_index):
    q = dup_data[0]
    a = Retriever(k=6, selection="random", seed=1).retrieve(dup_index, [q, q])
    b = Retriever(k=6, selection="random", seed=1).retrieve(dup_index, q)
    c = Retriever(k=6, selection="random", seed=2).retrieve(dup_index, q)
    other = Retriever(k=6, selection="random", seed=1).retrieve(dup_index, dup_data[5])
    assert a[0] == a[1] == b[0] and c[0].positions != b[0].positions
    assert other[0].positions != b[0].positions
    assert all(math.isnan(s) for s in b[0].scores)
    draws = Retriever(k=len(dup_index), selection="random").retrieve(dup_index, q)[0].positions
    assert len(draws) == len(dup_index) - 3 and q.key() not in {dup_index.keys[p] for p in draws}


@pytest.fixture(scope="module")
def sst2_index(sst2_train_path, minilm):
    train = read_dataset(sst2_train_path).subset(range(500))
    return ExampleIndex.build(train, embedder=minilm)


@pytest.mark.slow
def test_end_to_end_sst2_minilm(sst2_index, tmp_path):
    test = read_dataset(dataset_path("sst2", "test"))
    queries = list(test.examples[:4]) + [sst2_index.examples[10]]  # the last one is indexed itself
    results = Retriever(k=8).retrieve(sst2_index, queries)
    x = sst2_index.embed(queries)
    sims = x @ np.asarray(sst2_index.embeddings).T
    for i, (q, r) in enumerate(zip(queries, results)):
        dup = {p for p, key in enumerate(sst2_index.keys) if key == q.key()}
        expected = [int(p) for p in np.argsort(-sims[i], kind="stable") if p not in dup][:8]
        assert list(r.positions) == expected
        np.testing.assert_allclose(r.scores, sims[i, expected], rtol=1e-4, atol=1e-5)
    assert 10 not in results[-1].positions
    positive = Retriever(k=8).retrieve(sst2_index, "a wonderful, moving and beautifully acted film")[0]
    labels = [sst2_index.examples[p].label for p in positive.positions]
    assert labels.count("positive") >= 5
    loaded = ExampleIndex.load(sst2_index.save(tmp_path / "sst2"))
    assert loaded.embedder.name == "all-MiniLM-L6-v2"
    again = Retriever(k=8).retrieve(loaded, queries[:2])
    assert [r.positions for r in again] == [r.positions for r in results[:2]]


# ---------------------------------------------------------------------- vectorized == per-query semantics
def _per_query_pools(index, queries, depth, exclude_same_id):
    """The retriever's pools with a Python loop over rows (the pre-vectorization code, kept as the spec).

    Each pass searches the still-unanswered rows as one batch, as the retriever does: faiss breaks exact
    ties differently for a batch and for a single query, so the batches must match to compare orders.
    """
    x = index.embed(queries)
    excluded = []
    for query in queries:
        ex = list(index.duplicates_of(Example("", {"q": index.query_text(query)}).key()))
        if exclude_same_id and isinstance(query, Example):
            own = index.position_of(query.id)
            if own is not None and own not in ex:
                ex.append(own)
        excluded.append(np.asarray(ex, dtype=np.int64))
    total = len(index)
    pools = [None] * len(queries)
    todo, fetch = list(range(len(queries))), min(total, depth + max(len(e) for e in excluded))
    while todo:
        res = index.search_vectors(x[todo], fetch)
        again = []
        for row, q in enumerate(todo):
            pos, sc = res.positions[row], res.scores[row]
            keep = (pos >= 0) & ~np.isin(pos, excluded[q])
            pos, sc = pos[keep], sc[keep]
            if len(pos) >= min(depth, total - len(excluded[q])):
                pools[q] = (pos[:depth], sc[:depth])
            elif fetch >= total:  # an approximate index saw too few: brute force (unchanged helper)
                pools[q] = retrieve._exact(index, x[q], excluded[q], depth)
            else:
                again.append(q)
        todo, fetch = again, min(total, fetch * 2)
    return x, pools


@pytest.fixture(scope="module")
def crowded():
    """Many exact duplicates (a 30-copy group), near-duplicates, labels a/b/c, on a coarse IVF index."""
    rows = [{"text": "the same sentence", "label": "a"} for _ in range(30)]
    rows += [{"text": f"THE  same sentence{' ' * (i % 3)}", "label": "b"} for i in range(5)]
    rows += [{"text": f"{w} sentence number {i}", "label": "abc"[i % 3]}
             for i, w in enumerate(["other", "the same", "a different", "one more"] * 10)]
    return from_records(rows)


@pytest.mark.parametrize("factory", ["Flat", "IVF2,Flat"])
@pytest.mark.parametrize("strategy", ["topk", "balanced", "mmr"])
def test_vectorized_batch_equals_per_query(crowded, factory, strategy):
    index = ExampleIndex.build(crowded, embedder="hash-32", factory=factory)
    if factory.startswith("IVF"):
        index.set_search_params(nprobe=1)  # too few candidates per probe: widening and exact fallback
    queries = [crowded[0], crowded[31], "the same sentence", "The Same Sentence", {"text": "other sentence"},
               crowded[50], Example(id="7", inputs={"text": "not indexed, but shares an id"}), "nothing alike"]
    queries += list(crowded.examples[35::9])
    for k, n_candidates, same_id in [(1, None, False), (4, 9, True), (12, None, True), (len(crowded), None, False)]:
        retriever = Retriever(k=k, selection=strategy, exclude_same_id=same_id, fetch_k=None if k != 4 else 10)
        got = retriever.retrieve(index, queries, n_candidates=n_candidates)
        n = n_candidates or k
        depth = n if strategy == "topk" else max(n, retriever.fetch_k or max(4 * n, 50))
        x, pools = _per_query_pools(index, queries, depth, same_id)
        for i, ((p, s), r) in enumerate(zip(pools, got)):
            if strategy == "topk":
                want = (tuple(p[:n].tolist()), tuple(s[:n].tolist()))
            elif strategy == "balanced":
                b = retrieve._balanced(index.label_ids[p], p, s, n)
                want = (b.positions, b.scores)
            else:
                m = retrieve._mmr(index, x[i], p, n, retriever.mmr_lambda)
                want = (m.positions, m.scores)
            assert (r.positions, r.scores) == want, (k, i, queries[i])
    # everything excluded: the 35 copies of "the same sentence" asked for more than exist
    (r,) = Retriever(k=len(crowded)).retrieve(index, "the same sentence")
    assert len(r.positions) == len(crowded) - 35 and min(r.positions) >= 35
    # exclude_same_id drops the example with the query's id even though its text differs
    (r,) = Retriever(k=len(crowded), exclude_same_id=True).retrieve(index, queries[6])
    assert index.position_of("7") not in r.positions and len(r.positions) == len(crowded) - 1


def test_retrieve_without_any_duplicate_uses_one_search(dup_index, monkeypatch):
    """The fast path: no query has a duplicate, so one batched search answers every query."""
    calls = []
    real = dup_index.search_vectors
    monkeypatch.setattr(dup_index, "search_vectors", lambda x, k, **kw: calls.append((len(x), k)) or real(x, k))
    queries = [f"a brand new sentence {i}" for i in range(5)]
    got = Retriever(k=3).retrieve(dup_index, queries)
    assert calls == [(5, 3)] and all(len(r.positions) == 3 for r in got)
    assert all(isinstance(p, int) for r in got for p in r.positions)
    assert all(isinstance(s, float) for r in got for s in r.scores)


def test_strategy_is_a_deprecated_alias_of_selection(dup_index):
    """``selection`` is the one name; ``strategy=`` still works, warns, and gives the same retrieval."""
    with pytest.warns(DeprecationWarning, match="use selection="):
        old = Retriever(k=4, strategy="mmr", mmr_lambda=0.3)
    new = Retriever(k=4, selection="mmr", mmr_lambda=0.3)
    assert old.selection == old.strategy == "mmr"
    assert old.retrieve(dup_index, BASE[3]) == new.retrieve(dup_index, BASE[3])
    with pytest.raises(ValueError, match="pass selection= alone"):
        Retriever(selection="topk", strategy="mmr")
