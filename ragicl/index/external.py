"""Bring your own store: an :class:`~ragicl.index.core.ExampleIndex` over embeddings that already exist.

* :func:`from_vectorstore` reads the texts, metadata and stored vectors of a LangChain ``VectorStore``
  (``InMemoryVectorStore``; LangChain's ``FAISS`` store; ``Chroma``; or any store exposing the same
  attributes) and indexes them **without re-embedding**; queries are embedded by the store's own
  ``Embeddings`` object through :class:`LangChainEmbedder`.
* :func:`from_faiss` reads the vectors back out of a FAISS index file (``faiss.write_index``) and pairs them
  with the rows they were made from, in the file's order; queries are embedded by the ``embedder`` given
  (it must be the model that made the vectors).

The result is an ordinary ``ExampleIndex`` (``ExampleIndex.from_vectors``): its rows are L2-normalised, so
search is by cosine whatever the store's metric; it saves, loads, retrieves and packs like any other. To
load a saved one, pass the same embedder: ``ExampleIndex.load(path, embedder=LangChainEmbedder(emb))``.

>>> from langchain_core.embeddings import DeterministicFakeEmbedding     # doctest: +SKIP
>>> from langchain_core.vectorstores import InMemoryVectorStore          # doctest: +SKIP
>>> store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))    # doctest: +SKIP
>>> store.add_texts(["a fine film", "a dull film"], metadatas=[{"label": "pos"}, {"label": "neg"}])  # doctest: +SKIP
>>> index = from_vectorstore(store)                                      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import DataError, require
from ..types import Dataset
from .core import ExampleIndex
from .embed import Embedder

logger = logging.getLogger(__name__)

__all__ = ["LangChainEmbedder", "from_faiss", "from_vectorstore", "read_vectorstore"]


class LangChainEmbedder:
    """A LangChain ``Embeddings`` object as a ragicl :class:`~ragicl.index.embed.Embedder`.

    ``mode="documents"`` (default) embeds every text with ``embed_documents`` — the indexed examples and
    the queries alike, as in-context demonstrations and queries are texts of one kind; ``"query"`` uses
    ``embed_query`` (for asymmetric models, to match the store's own ``similarity_search``). Outputs are
    L2-normalised float32. ``name`` is what an index manifest records (default ``"langchain:<model or
    class name>"``); ``dimension`` is measured on a probe text unless given.
    """

    def __init__(self, embeddings: Any, *, name: str | None = None, dimension: int | None = None,
                 mode: str = "documents") -> None:
        if not (hasattr(embeddings, "embed_documents") and hasattr(embeddings, "embed_query")):
            raise TypeError(f"embeddings must be a LangChain Embeddings object (embed_documents and embed_query); "
                            f"got {type(embeddings).__name__}.")
        if mode not in ("documents", "query"):
            raise ValueError(f"mode must be 'documents' or 'query', got {mode!r}.")
        self.embeddings = embeddings
        model = getattr(embeddings, "model_name", None) or getattr(embeddings, "model", None)
        self._name = name or f"langchain:{model if isinstance(model, str) else type(embeddings).__name__}"
        self._dimension = dimension
        self.mode = mode

    def __repr__(self) -> str:
        return f"LangChainEmbedder({self._name!r}, mode={self.mode!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self._dimension = int(self.encode(["dimension probe"]).shape[1])
        return self._dimension

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None,
               show_progress: bool | None = None) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return np.zeros((0, self._dimension or 0), np.float32)
        if self.mode == "documents":
            rows = self.embeddings.embed_documents(texts)
        else:
            rows = [self.embeddings.embed_query(t) for t in texts]
        x = np.asarray(rows, dtype=np.float32)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if x.ndim != 2 or not np.isfinite(x).all() or (norms == 0).any():
            raise DataError(f"the LangChain embeddings returned {x.shape} vectors that are not all finite and "
                            "non-zero; expected one finite, non-zero vector per text.")
        return x / norms


def read_vectorstore(store: Any) -> tuple[list[str], list[str], list[dict[str, Any]], np.ndarray]:
    """``(ids, texts, metadatas, vectors)`` stored in a LangChain vector store, without embedding anything.

    Reads ``InMemoryVectorStore`` (``store.store``), LangChain's ``FAISS`` (``index`` +
    ``index_to_docstore_id`` + ``docstore``) and ``Chroma`` (``_collection.get``); ``TypeError`` naming
    what to do for any other store.
    """
    if isinstance(getattr(store, "store", None), Mapping):  # InMemoryVectorStore
        items = list(store.store.values())
        return ([str(it["id"]) for it in items], [str(it["text"]) for it in items],
                [dict(it.get("metadata") or {}) for it in items], np.asarray([it["vector"] for it in items]))
    if all(hasattr(store, a) for a in ("index", "docstore", "index_to_docstore_id")):  # LangChain FAISS
        faiss_index, mapping = store.index, store.index_to_docstore_id
        n = int(faiss_index.ntotal)
        vectors = _reconstruct(faiss_index)
        ids, texts, metas = [], [], []
        for i in range(n):
            doc_id = mapping[i]
            doc = store.docstore.search(doc_id)
            if isinstance(doc, str) or doc is None:
                raise DataError(f"the FAISS store's docstore has no document for row {i} (id {doc_id!r}): {doc!r}.")
            ids.append(str(doc_id))
            texts.append(doc.page_content)
            metas.append(dict(doc.metadata or {}))
        return ids, texts, metas, vectors
    collection = getattr(store, "_collection", None)
    if collection is not None and hasattr(collection, "get"):  # Chroma
        got = collection.get(include=["embeddings", "documents", "metadatas"])
        return ([str(i) for i in got["ids"]], list(got["documents"]), [dict(m or {}) for m in got["metadatas"]],
                np.asarray(got["embeddings"]))
    raise TypeError(f"cannot read the stored vectors of a {type(store).__name__}: ragicl reads InMemoryVectorStore, "
                    "LangChain's FAISS and Chroma. Fix: take the texts, labels and vectors out of your store and "
                    "call ExampleIndex.from_vectors(vectors, dataset, embedder=LangChainEmbedder(embeddings)).")


def _reconstruct(faiss_index: Any) -> np.ndarray:
    """Every stored vector of a faiss index (IVF indexes get a direct map first)."""
    faiss = require("faiss", "cpu", "faiss-cpu")
    n = int(faiss_index.ntotal)
    try:
        return np.asarray(faiss_index.reconstruct_n(0, n))
    except RuntimeError:
        pass
    try:
        faiss.extract_index_ivf(faiss_index).make_direct_map()
        return np.asarray(faiss_index.reconstruct_n(0, n))
    except RuntimeError as err:
        raise DataError(f"the faiss index ({type(faiss_index).__name__}) cannot give its vectors back "
                        f"(reconstruct failed: {err}). Fix: export the vectors from where they were made and use "
                        "ExampleIndex.from_vectors.") from err


def from_vectorstore(store: Any, *, embedder: str | Embedder | None = None, label_key: str | None = "label",
                     output_key: str | None = None, input_field: str = "text", factory: str = "Flat",
                     device: str = "auto", name: str = "") -> ExampleIndex:
    """An :class:`ExampleIndex` over the documents of a LangChain vector store and their stored vectors.

    Args:
        store: the vector store (see :func:`read_vectorstore` for the kinds read).
        embedder: embeds queries (and :meth:`~ExampleIndex.add`-ed examples); default: the store's own
            ``Embeddings`` (``store.embeddings``) through :class:`LangChainEmbedder`.
        label_key: metadata key holding each document's label (classification).
        output_key: metadata key holding each document's output (generation; then ``label_key`` is ignored).
        input_field: the field name the document text gets (the template's ``{text}`` by default).
        factory, device: as :meth:`ExampleIndex.build`.
        name: the dataset's name.

    Ids are the store's document ids. ``DataError`` for a document without the label (or output) key.
    """
    from ..data import from_records

    ids, texts, metas, vectors = read_vectorstore(store)
    if not ids:
        raise DataError(f"the {type(store).__name__} holds no documents; expected at least one.")
    key = output_key or label_key
    rows = []
    for doc_id, text, meta in zip(ids, texts, metas):
        if key is not None and key not in meta:
            raise DataError(f"document {doc_id!r} has no metadata key {key!r} (its keys: {sorted(meta)}); expected "
                            f"every document's {'output' if output_key else 'label'} there. Fix: pass "
                            f"{'output_key' if output_key else 'label_key'}= the key that holds it.")
        row = {"id": doc_id, input_field: text}
        if key is not None:
            row[key] = meta[key]
        rows.append(row)
    dataset = from_records(rows, id_field="id", input_fields=[input_field],
                           label_field=None if output_key or label_key is None else label_key,
                           output_field=output_key, name=name)
    if embedder is None:
        own = getattr(store, "embeddings", None) or getattr(store, "embedding_function", None)
        if own is None:
            raise ValueError(f"the {type(store).__name__} exposes no embeddings object; pass embedder= (the model "
                             "that made its vectors).")
        embedder = LangChainEmbedder(own, dimension=int(np.asarray(vectors).shape[1]))
    logger.info("indexing %d stored vectors of a %s (no re-embedding)", len(ids), type(store).__name__)
    return ExampleIndex.from_vectors(vectors, dataset, embedder=embedder, factory=factory, device=device)


def from_faiss(index_file: str | os.PathLike, rows: Dataset | Any, embedder: str | Embedder, *,
               factory: str = "Flat", device: str = "auto", input_fields: Sequence[str] | None = None,
               label_field: str | None = "label", output_field: str | None = None) -> ExampleIndex:
    """An :class:`ExampleIndex` over the vectors in a FAISS index file and the rows they were made from.

    ``rows``: a :class:`Dataset` or anything :func:`ragicl.read_dataset` reads (with ``input_fields``,
    ``label_field``, ``output_field``), row ``i`` being the file's vector ``i``. ``embedder``: the model that
    made the vectors (for queries). ``DataError`` when the counts differ or the vectors cannot be read back.
    """
    from ..data import read_dataset

    faiss = require("faiss", "cpu", "faiss-cpu")
    path = Path(index_file)
    if not path.is_file():
        raise DataError(f"no FAISS index file at {str(path)!r}; expected a file written by faiss.write_index.")
    try:
        stored = faiss.read_index(str(path))
    except RuntimeError as err:
        raise DataError(f"{str(path)!r} is not a readable FAISS index ({err}).") from err
    dataset = rows if isinstance(rows, Dataset) else read_dataset(
        rows, input_fields=input_fields, label_field=label_field, output_field=output_field)
    if len(dataset) != stored.ntotal:
        raise DataError(f"the FAISS index {str(path)!r} holds {stored.ntotal} vectors but {len(dataset)} rows were "
                        "given; expected one row per vector, in the index's order.")
    return ExampleIndex.from_vectors(_reconstruct(stored), dataset, embedder=embedder, factory=factory, device=device)
