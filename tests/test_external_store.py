"""Bring your own store (issue 39 §1): an ExampleIndex over a LangChain VectorStore or a FAISS index file plus
its rows, without re-embedding; retrieval agrees with the store's own search, and on real SST-2 rows embedded
by MiniLM the result is the index ragicl builds itself."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("langchain_core", reason="the LangChain store tests need langchain-core")

import faiss
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_core.vectorstores import InMemoryVectorStore

from ragicl._exceptions import DataError
from ragicl.data import from_records, read_dataset
from ragicl.index.core import ExampleIndex
from ragicl.index.embed import HashEmbedder
from ragicl.index.external import LangChainEmbedder, from_faiss, from_vectorstore, read_vectorstore
from ragicl.prompt.retrieve import Retriever

TEXTS = ["a gripping, funny film", "dull and far too long", "the cast is superb", "a mess of a plot",
         "warm and moving", "I want my two hours back", "sharp writing throughout", "flat, lifeless acting"]


class Counting(Embeddings):
    """Wraps an Embeddings object and counts the texts it embeds."""

    def __init__(self, inner):
        self.inner, self.n_documents, self.n_queries = inner, 0, 0

    def embed_documents(self, texts):
        self.n_documents += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text):
        self.n_queries += 1
        return self.inner.embed_query(text)


def _store(embeddings, texts=TEXTS):
    store = InMemoryVectorStore(embeddings)
    store.add_texts(texts, metadatas=[{"label": "neg" if i % 2 else "pos", "src": i} for i in range(len(texts))],
                    ids=[f"doc-{i}" for i in range(len(texts))])
    return store


def test_in_memory_store_is_indexed_without_re_embedding():
    emb = Counting(DeterministicFakeEmbedding(size=24))
    store = _store(emb)
    before = emb.n_documents
    index = from_vectorstore(store, device="cpu")
    assert emb.n_documents == before and emb.n_queries == 0  # the stored vectors were used as they are
    assert [ex.id for ex in index.examples] == [f"doc-{i}" for i in range(len(TEXTS))]
    assert [ex.label for ex in index.examples] == ["neg" if i % 2 else "pos" for i in range(len(TEXTS))]
    stored = np.asarray([store.store[f"doc-{i}"]["vector"] for i in range(len(TEXTS))], np.float32)
    np.testing.assert_allclose(index.embeddings, stored / np.linalg.norm(stored, axis=1, keepdims=True), rtol=1e-6)
    assert index.embedder.name == "langchain:Counting"  # the class name when the model has no name


def test_retrieval_agrees_with_the_stores_own_search():
    store = _store(DeterministicFakeEmbedding(size=24))
    index = from_vectorstore(store, embedder=LangChainEmbedder(store.embeddings, mode="query"), device="cpu")
    for query in ["a moving film", "too long", "superb acting"]:
        own = [d.id for d in store.similarity_search(query, k=4)]
        (r,) = Retriever(k=4).retrieve(index, [query])
        assert [index.examples[p].id for p in r.positions] == own


class _DocStore:
    def __init__(self, docs):
        self.docs = docs

    def search(self, doc_id):
        return self.docs.get(doc_id, f"ID {doc_id} not found.")


class _FaissStore:
    """The attributes of langchain_community's FAISS vector store (not installed here)."""

    def __init__(self, vectors, texts, faiss_index):
        faiss_index.add(vectors)
        self.index = faiss_index
        self.index_to_docstore_id = {i: f"f{i}" for i in range(len(texts))}
        self.docstore = _DocStore({f"f{i}": Document(page_content=t, metadata={"label": "x" if i % 3 else "y"})
                                   for i, t in enumerate(texts)})
        self.embedding_function = DeterministicFakeEmbedding(size=vectors.shape[1])


@pytest.mark.parametrize("kind", ["flat-l2", "ivf"])
def test_faiss_store_attributes_are_read(kind):
    vectors = HashEmbedder(16).encode(TEXTS)
    flat = faiss.IndexFlatL2(16)
    raw = flat if kind == "flat-l2" else faiss.IndexIVFFlat(flat, 16, 2)
    if kind == "ivf":
        raw.train(np.concatenate([vectors] * 4))
    store = _FaissStore(vectors, TEXTS, raw)
    ids, texts, metas, got = read_vectorstore(store)
    assert texts == TEXTS and ids[0] == "f0" and metas[1]["label"] == "x"
    np.testing.assert_allclose(got, vectors, rtol=1e-6)
    index = from_vectorstore(store, device="cpu")
    np.testing.assert_allclose(index.embeddings, vectors, rtol=1e-6)


def test_store_errors_say_what_to_do():
    store = _store(DeterministicFakeEmbedding(size=8))
    with pytest.raises(DataError, match="no metadata key 'category'"):
        from_vectorstore(store, label_key="category")
    with pytest.raises(TypeError, match="ExampleIndex.from_vectors"):
        from_vectorstore(object())
    with pytest.raises(DataError, match="holds no documents"):
        from_vectorstore(InMemoryVectorStore(DeterministicFakeEmbedding(size=8)))
    with pytest.raises(TypeError, match="LangChain Embeddings"):
        LangChainEmbedder(object())


def test_faiss_file_plus_rows(tmp_path):
    rows = [{"text": t, "label": "neg" if i % 2 else "pos"} for i, t in enumerate(TEXTS)]
    vectors = HashEmbedder(32).encode(TEXTS)
    raw = faiss.IndexFlatIP(32)
    raw.add(vectors)
    faiss.write_index(raw, str(tmp_path / "mine.faiss"))
    index = from_faiss(tmp_path / "mine.faiss", rows, embedder="hash-32", device="cpu")
    same = ExampleIndex.build(from_records(rows), embedder="hash-32", device="cpu")
    np.testing.assert_array_equal(index.embeddings, same.embeddings)
    assert Retriever(k=3).retrieve(index, ["a funny film"]) == Retriever(k=3).retrieve(same, ["a funny film"])
    with pytest.raises(DataError, match="holds 8 vectors but 7 rows"):
        from_faiss(tmp_path / "mine.faiss", rows[:7], embedder="hash-32")
    with pytest.raises(DataError, match="no FAISS index file"):
        from_faiss(tmp_path / "none.faiss", rows, embedder="hash-32")
    (tmp_path / "bad.faiss").write_bytes(b"not an index")
    with pytest.raises(DataError, match="not a readable FAISS index"):
        from_faiss(tmp_path / "bad.faiss", rows, embedder="hash-32")


def test_saved_store_index_reloads_with_the_same_embedder(tmp_path):
    store = _store(DeterministicFakeEmbedding(size=24))
    index = from_vectorstore(store, device="cpu")
    index.save(tmp_path / "idx")
    back = ExampleIndex.load(tmp_path / "idx", embedder=LangChainEmbedder(store.embeddings), device="cpu")
    assert Retriever(k=3).retrieve(back, ["warm film"]) == Retriever(k=3).retrieve(index, ["warm film"])


# ------------------------------------------------------------------------------------- real data
class MiniLMEmbeddings(Embeddings):
    """The user's LangChain embeddings: the real all-MiniLM-L6-v2 (what HuggingFaceEmbeddings would wrap)."""

    def __init__(self, minilm):
        self.minilm, self.calls = minilm, 0

    def embed_documents(self, texts):
        self.calls += len(texts)
        return self.minilm.encode(list(texts)).tolist()

    def embed_query(self, text):
        self.calls += 1
        return self.minilm.encode([text])[0].tolist()


def test_real_sst2_store_embedded_by_minilm_is_the_index_ragicl_builds(sst2_train_path, sst2_test_path, minilm):
    data = read_dataset(sst2_train_path).sample(100, seed=5)
    emb = MiniLMEmbeddings(minilm)
    store = InMemoryVectorStore(emb)
    store.add_texts([ex.text() for ex in data], metadatas=[{"label": ex.label} for ex in data],
                    ids=[ex.id for ex in data])
    calls = emb.calls
    index = from_vectorstore(store, embedder=minilm, device="cpu")
    assert emb.calls == calls  # nothing re-embedded
    ours = ExampleIndex.build(data, embedder=minilm, device="cpu")
    order = [ours.position_of(ex.id) for ex in index.examples]
    np.testing.assert_allclose(index.embeddings, np.asarray(ours.embeddings)[order], atol=1e-5)
    test = list(read_dataset(sst2_test_path).subset(range(10)))
    for a, b in zip(Retriever(k=5).retrieve(index, test), Retriever(k=5).retrieve(ours, test)):
        ids_a = [index.examples[p].id for p in a.positions]
        ids_b = [ours.examples[p].id for p in b.positions]
        sims = np.asarray(b.scores)
        # the same neighbours, unless two are tied within float noise at the cut
        assert ids_a == ids_b or np.min(np.abs(np.diff(sims))) < 1e-5
