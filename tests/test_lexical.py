"""BM25 (ragicl.index.lexical) and the bm25/hybrid searches (issue 39 §1): scores equal bm25s's own, the BM25
part is saved in the version folder with the index's guarantees (checksummed, atomic, versioned; an index
without it still loads), reciprocal-rank fusion matches a reference, and on real TREC rows BM25 returns
bm25s's own ranking and neighbours that share the query's label far above chance."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bm25s", reason="BM25 needs bm25s: pip install 'ragicl[retrieval]'")

import bm25s
from conftest import dataset_path

from ragicl import _atomic
from ragicl._exceptions import IndexFormatError
from ragicl.data import from_records, read_dataset
from ragicl.index.core import ExampleIndex
from ragicl.index.lexical import BM25_METHODS, LexicalIndex, top_positions
from ragicl.prompt.retrieve import Retriever

DOCS = ["the cat sat on the mat", "a dog chased the cat", "stock markets fell sharply today",
        "the market for cat food grew", "dogs and cats living together", "interest rates rise again",
        "the mat was red", "markets rally as rates fall"]


def _rows(texts):
    return [{"text": t, "label": "a" if i % 2 else "b"} for i, t in enumerate(texts)]


@pytest.fixture()
def index():
    idx = ExampleIndex.build(from_records(_rows(DOCS)), embedder="hash-32", device="cpu")
    idx.build_lexical()
    return idx


@pytest.mark.parametrize("method", BM25_METHODS)
def test_scores_equal_bm25s_own_per_query_scores(method):
    lex = LexicalIndex.build(DOCS, method=method, stopwords="en")
    ref = bm25s.BM25(method=method)
    ref.index(bm25s.tokenize(DOCS, stopwords="en", show_progress=False), show_progress=False)
    queries = ["cat on a mat", "markets and rates", "cat cat cat", "unknown words only"]
    ours = lex.scores(queries)
    for q, row in zip(queries, ours):
        toks = bm25s.tokenize(q, stopwords="en", return_ids=False, show_progress=False)[0]
        toks = [t for t in toks if t in ref.vocab_dict]
        expected = ref.get_scores(toks) if toks else np.zeros(len(DOCS), np.float32)  # no known term: 0
        np.testing.assert_allclose(row, expected, rtol=1e-6, atol=1e-6)


def test_top_positions_is_a_stable_full_sort():
    rng = np.random.default_rng(0)
    for _ in range(200):
        row = rng.integers(0, 4, size=rng.integers(1, 30)).astype(np.float32)  # many ties
        row[rng.random(len(row)) < 0.2] = -np.inf
        k = int(rng.integers(1, 35))
        ref = np.lexsort((np.arange(len(row)), -row))
        ref = ref[row[ref] > -np.inf][:k]
        assert top_positions(row, k).tolist() == ref.tolist()


def test_bad_parameters_say_what_is_expected():
    for kwargs, match in [({"k1": -1}, "k1 must be"), ({"b": 1.5}, r"b must be a number in \[0, 1\]"),
                          ({"method": "bm26"}, "unknown BM25 method"), ({"stopwords": 3}, "stopwords must be"),
                          ({"lower": "yes"}, "lower must be")]:
        with pytest.raises(ValueError, match=match):
            LexicalIndex(**kwargs)
    with pytest.raises(ValueError, match="0 texts"):
        LexicalIndex.build([])
    with pytest.raises(ValueError, match="not built"):
        LexicalIndex().search(["x"], 1)
    with pytest.raises(TypeError, match="expected the query's text"):
        LexicalIndex.build(DOCS).scores([3])


def test_saved_in_the_version_folder_checksummed_and_reloaded(index, tmp_path):
    path = index.save(tmp_path / "idx")
    manifest = json.loads((path / "manifest.json").read_text())
    lex = manifest["lexical"]
    assert lex["kind"] == "bm25" and lex["params"] == index.lexical.params
    assert set(lex["files"]) == set(lex["checksums"]) and all(n.startswith("bm25/") for n in lex["files"])
    for name, size in lex["files"].items():
        assert (path / manifest["version"] / name).stat().st_size == size
    # bm25s opens the folder as its own
    assert bm25s.BM25.load(str(path / manifest["version"] / "bm25")).scores["num_docs"] == len(DOCS)
    back = ExampleIndex.load(path, device="cpu")
    queries = ["cat on the mat", "falling markets"]
    np.testing.assert_array_equal(back.lexical.scores(queries), index.lexical.scores(queries))
    r1 = Retriever(k=3, search="bm25").retrieve(index, queries)
    assert Retriever(k=3, search="bm25").retrieve(back, queries) == r1


def test_a_damaged_bm25_file_is_refused_and_verify_false_skips_the_check(index, tmp_path):
    path = index.save(tmp_path / "idx")
    manifest = json.loads((path / "manifest.json").read_text())
    name = min(manifest["lexical"]["files"])
    file = path / manifest["version"] / name
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="corrupt"):
        ExampleIndex.load(path, device="cpu")
    file.write_bytes(bytes(data[:-1]))
    with pytest.raises(IndexFormatError, match="truncated"):
        ExampleIndex.load(path, device="cpu")
    file.unlink()
    with pytest.raises(IndexFormatError, match="missing"):
        ExampleIndex.load(path, device="cpu")


@pytest.mark.parametrize("bad", [{"bm25/../../x": 1}, {"../v-0123456789ab/index.faiss": 1}, {"bm25/.hidden": 1},
                                 {}])
def test_manifest_cannot_point_the_bm25_part_outside_its_folder(index, tmp_path, bad):
    path = index.save(tmp_path / "idx")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.pop(_atomic.DIGEST_FIELD)
    manifest["lexical"]["files"] = bad
    manifest["lexical"]["checksums"] = {n: "sha256:00" for n in bad}
    (path / "manifest.json").write_text(json.dumps(_atomic.seal(manifest)))
    with pytest.raises(IndexFormatError, match="field 'lexical'"):
        ExampleIndex.load(path, device="cpu")


def test_an_index_without_bm25_loads_and_a_later_save_adds_it(tmp_path):
    plain = ExampleIndex.build(from_records(_rows(DOCS)), embedder="hash-32", device="cpu")
    path = plain.save(tmp_path / "idx")  # a format-3 folder as every earlier ragicl wrote it
    assert "lexical" not in json.loads((path / "manifest.json").read_text())
    back = ExampleIndex.load(path, device="cpu")
    assert back.lexical is None
    with pytest.raises(ValueError, match=r"build_lexical\(\)"):
        Retriever(k=2, search="bm25").retrieve(back, ["cat"])
    back.build_lexical(k1=1.2, b=0.5)
    back.save(path)
    again = ExampleIndex.load(path, device="cpu")
    assert again.lexical.params["k1"] == 1.2 and again.lexical.params["b"] == 0.5


def test_add_rebuilds_bm25_over_every_example(index):
    index.add(from_records([{"id": "new", "text": "zebras graze quietly", "label": "a"}]).examples)
    (r,) = Retriever(k=1, search="bm25").retrieve(index, ["quietly grazing zebras"])
    assert index.examples[r.positions[0]].id == "new"
    assert len(index.lexical) == len(index)


def test_kill_while_writing_bm25_leaves_the_old_version(index, tmp_path):
    path = index.save(tmp_path / "idx")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from ragicl.data import from_records
        from ragicl.index import folder
        from ragicl.index.core import ExampleIndex
        idx = ExampleIndex.build(from_records([{{"text": t, "label": "x"}} for t in {DOCS[:5]!r}]),
                                 embedder="hash-32", device="cpu")
        idx.build_lexical()
        folder.checkpoint = lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == "lexical" else None
        idx.save({str(path)!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    back = ExampleIndex.load(path, device="cpu")
    assert len(back) == len(DOCS) and len(back.lexical) == len(DOCS)  # the old version, BM25 included
    assert not any(p.name.startswith(".tmp-") for p in path.iterdir())  # the load tidied the killed save


def test_bm25_search_excludes_the_query_and_its_duplicates(index):
    (r,) = Retriever(k=len(DOCS), search="bm25").retrieve(index, [DOCS[0]])
    assert 0 not in r.positions and len(r.positions) == len(DOCS) - 1
    assert list(r.scores) == sorted(r.scores, reverse=True)


def _rrf_reference(index, query, depth, weights, rrf_k):
    x = index.embed([query])
    dense = [p for p in index.search_vectors(x, len(index)).positions[0].tolist()
             if index.keys[p] != index.keys[0] or query != DOCS[0]][:depth]
    scores = index.lexical.scores([query])[0]
    lexical = [p for p in np.lexsort((np.arange(len(scores)), -scores)).tolist() if scores[p] > 0][:depth]
    fused: dict[int, float] = {}
    for r, p in enumerate(dense, 1):
        fused[p] = weights[0] / (rrf_k + r)
    for r, p in enumerate(lexical, 1):
        fused[p] = fused.get(p, 0.0) + weights[1] / (rrf_k + r)
    return sorted(fused, key=lambda p: (-fused[p], dense.index(p) if p in dense else depth, p))[:depth]


@pytest.mark.parametrize("weights,rrf_k", [((1.0, 1.0), 60.0), ((1.0, 3.0), 1.0), ((0.0, 1.0), 60.0)])
def test_hybrid_is_reciprocal_rank_fusion(index, weights, rrf_k):
    for query in ["cat on the mat", "markets and rates", "dogs"]:
        (r,) = Retriever(k=5, search="hybrid", hybrid_weights=weights, rrf_k=rrf_k).retrieve(index, [query])
        assert list(r.positions) == _rrf_reference(index, query, 5, weights, rrf_k)


def test_search_parameters_are_checked():
    for kwargs, match in [({"search": "sparse"}, "unknown search"), ({"hybrid_weights": (0, 0)}, "not both 0"),
                          ({"hybrid_weights": (1.0,)}, "two non-negative"), ({"rrf_k": -1}, "rrf_k"),
                          ({"selection": "votek", "search": "bm25"}, "does not apply")]:
        with pytest.raises(ValueError, match=match):
            Retriever(**kwargs)


# ------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def trec_lexical():
    train = read_dataset(dataset_path("trec"), name="trec")
    test = read_dataset(dataset_path("trec", "test"), name="trec").subset(range(100))
    index = ExampleIndex.build(train, embedder="hash-64", device="cpu")
    index.build_lexical()
    return index, test


def test_real_trec_bm25_is_bm25s_ranking_and_finds_same_label_neighbours(trec_lexical):
    index, test = trec_lexical
    texts = [ex.text() for ex in test]
    ref = bm25s.BM25()
    ref.index(bm25s.tokenize([ex.text() for ex in index.examples], stopwords="en", show_progress=False),
              show_progress=False)
    results = Retriever(k=8, search="bm25").retrieve(index, list(test))
    agree = []
    for ex, text, r in zip(test, texts, results):
        toks = [t for t in bm25s.tokenize(text, stopwords="en", return_ids=False, show_progress=False)[0]
                if t in ref.vocab_dict]
        scores = ref.get_scores(toks) if toks else np.zeros(len(index), np.float32)
        for p in index.duplicates_of(ex.key()):
            scores[p] = -np.inf
        expected = np.lexsort((np.arange(len(scores)), -scores))[:8]
        np.testing.assert_allclose(np.asarray(r.scores), scores[expected], rtol=1e-5, atol=1e-6)
        assert list(r.positions) == expected.tolist()
        agree.append(np.mean([index.examples[p].label == ex.label for p in r.positions]))
    freq = np.bincount(index.label_ids, minlength=len(index.labels)) / len(index)
    chance = float(sum(freq[index.labels.index(ex.label)] for ex in test) / len(test))
    assert np.mean(agree) > 1.5 * chance, (np.mean(agree), chance)
