"""``ExampleIndex``: every example of a dataset embedded into a FAISS index, searchable and persisted.

Persistence goes through a record: ``save`` hands ``index.folder`` an ``IndexFolder`` made from the index's
state, ``load`` builds the index from the one ``folder.read`` returns (layout: docs/DESIGN.md, *Index*).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import DataError, NotFittedError
from ..models import DEFAULT_EMBEDDER
from ..types import Dataset, Example, Query, SearchResult
from . import device as _index_device
from . import folder as _folder
from . import search as _index_search
from .embed import Embedder, check_vectors, get_embedder
from .factory import ivf_nprobe, new_faiss_index
from .folder import FILES, FORMAT_VERSION
from .rows import Rows, schema_of

logger = logging.getLogger(__name__)

__all__ = ["FILES", "FORMAT_VERSION", "ExampleIndex", "Query", "build_and_save"]


def _as_dataset(dataset: Dataset | Any) -> Dataset:
    from ..data import read_dataset

    return dataset if isinstance(dataset, Dataset) else read_dataset(dataset)


class ExampleIndex:
    """A FAISS index (inner product on unit vectors = cosine) over every example of a dataset.

    Build with :meth:`build`, reopen with :meth:`load`; the constructor only stores settings.
    ``device="auto"`` puts the FAISS index on the GPU(s) when faiss has GPU support and one is visible
    (``fp16=True`` stores GPU vectors in float16); otherwise everything runs on CPU.

    >>> from ragicl.data import from_records
    >>> ds = from_records([{"text": t, "label": "x"} for t in ["red", "green", "blue"]])
    >>> index = ExampleIndex.build(ds, embedder="hash-16")
    >>> len(index), index.dimension, index.factory
    (3, 16, 'Flat')
    """

    def __init__(self, embedder: str | Embedder = DEFAULT_EMBEDDER, factory: str = "Flat",
                 device: str = "auto", *, batch_size: int | None = None, show_progress: bool | None = None,
                 fp16: bool = False) -> None:
        self._embedder_spec, self.factory, self.device, self.fp16 = embedder, factory, device, fp16
        self.batch_size, self.show_progress = batch_size, show_progress
        self._embedder: Embedder | None = None
        self._faiss_index: Any = None
        self._backend = "cpu"  # "cpu" | "faiss-gpu" | "torch" (exact search on CUDA without faiss-gpu)
        self._rows = Rows()
        self._embeddings: np.ndarray | None = None
        self._schema: dict[str, Any] = {}
        self._search_params: dict[str, Any] = {}
        self._saved_manifest: dict[str, Any] | None = None
        self._fingerprint: str | None = None  # of the dataset, cleared by add()
        self._lexical: Any = None  # the BM25 part (ragicl.index.lexical.LexicalIndex), after build_lexical()

    def __repr__(self) -> str:
        name = self._embedder.name if self._embedder else self._embedder_spec
        return f"ExampleIndex({len(self)} examples, embedder={name!r}, factory={self.factory!r})"

    # ------------------------------------------------------------------ build / add
    @classmethod
    def build(cls, dataset: Dataset | Any, embedder: str | Embedder = DEFAULT_EMBEDDER, factory: str = "Flat",
              device: str = "auto", *, batch_size: int | None = None, show_progress: bool | None = None,
              fp16: bool = False, train_size: int = 100_000, seed: int = 0) -> ExampleIndex:
        """Embed every example of ``dataset`` and index it.

        Args:
            dataset: a :class:`Dataset`, or anything :func:`ragicl.read_dataset` accepts.
            embedder: an :class:`Embedder` or a name for :func:`ragicl.index.embed.get_embedder`.
            factory: a ``faiss.index_factory`` string: ``"Flat"`` (exact), ``"IVF256,Flat"``, ``"HNSW32"``...
                Factories that need training are trained on the data (a ``train_size`` sample if larger).
            device: ``"auto"``, ``"cpu"`` or ``"cuda"``; used for the embedder and the FAISS index.
        """
        self = cls(embedder, factory, device, batch_size=batch_size, show_progress=show_progress, fp16=fp16)
        self._build_from(_as_dataset(dataset), train_size=train_size, seed=seed)
        return self

    @classmethod
    def from_vectors(cls, vectors: np.ndarray | Any, dataset: Dataset | Any,
                     embedder: str | Embedder = DEFAULT_EMBEDDER, factory: str = "Flat",
                     device: str = "auto", *, batch_size: int | None = None,
                     show_progress: bool | None = None, fp16: bool = False, train_size: int = 100_000,
                     seed: int = 0) -> ExampleIndex:
        """Index ``dataset`` with precomputed embeddings instead of embedding it (row ``i`` = example ``i``).

        For data embedded elsewhere (e.g. on a GPU) and benchmarks on synthetic vectors. The result is an
        ordinary index; given the same vectors it *is* the index :meth:`build` makes.

        Args:
            vectors: a 2-D float array ``(len(dataset), dimension)`` (numpy, or anything ``np.asarray``
                reads), copied as float32; rows are L2-normalized (``x / ‖x‖``) unless already of unit norm
                (within 1e-4: kept bit for bit, so an embedder's own output gives exactly :meth:`build`'s index).
            dataset: the examples, in the order of ``vectors`` (a :class:`Dataset` or a ``read_dataset`` source).
            embedder: the model that produced ``vectors``, used for text queries and :meth:`add` and named in
                the manifest. A width known without loading a model (``"hash-64"``, a loaded embedder) is
                checked here; a sentence-transformers model is checked at the first text query instead.
            factory, device, batch_size, show_progress, fp16, train_size, seed: as for :meth:`build`.

        ``DataError`` for a row count other than ``len(dataset)``, a non-2-D or non-float array, non-finite
        or zero rows; ``EmbedderMismatchError`` for a known embedder of another dimension.

        >>> from ragicl.data import from_records
        >>> from ragicl.index.embed import HashEmbedder
        >>> ds = from_records([{"text": t, "label": "x"} for t in ["red", "green", "blue"]])
        >>> vectors = HashEmbedder(16).encode([ex.text() for ex in ds])      # or any model's output
        >>> index = ExampleIndex.from_vectors(vectors, ds, embedder="hash-16")
        >>> index.search(["green"], k=1).positions.tolist()
        [[1]]
        """
        dataset = _as_dataset(dataset)
        self = cls(embedder, factory, device, batch_size=batch_size, show_progress=show_progress, fp16=fp16)
        x = check_vectors(vectors, len(dataset), self.embedder)
        self._build_from(dataset, vectors=x, train_size=train_size, seed=seed)
        return self

    def _build_from(self, dataset: Dataset, *, vectors: np.ndarray | None = None, train_size: int = 100_000,
                    seed: int = 0) -> None:
        if len(dataset) == 0:
            raise DataError("cannot index an empty dataset: received 0 examples, expected at least one.")
        self._schema = schema_of(dataset)
        examples = self._rows.check_new(dataset.examples, self._schema)
        start = time.perf_counter()
        vectors = self.embed(examples) if vectors is None else vectors
        d = vectors.shape[1]
        cpu = new_faiss_index(self.factory, vectors, train_size=train_size, seed=seed)
        self._install(cpu)
        self._embeddings = np.zeros((0, d), dtype=np.float32)
        self._append(examples, vectors)
        logger.info("indexed %d examples (dim %d, %s%s) in %.1f s", len(self), d, self.factory,
                    "" if self._backend == "cpu" else f", {self._backend}", time.perf_counter() - start)

    def add(self, examples: Dataset | Example | Iterable[Example]) -> None:
        """Embed and add examples (incremental). Ids must be new; fields and labels must fit the schema.

        On an index made with the bare constructor, ``add(dataset)`` builds it.
        """
        if self._faiss_index is None:
            if not isinstance(examples, Dataset):
                raise NotFittedError("this ExampleIndex is empty: build it with ExampleIndex.build(dataset) "
                                     "or call add() with a Dataset first.")
            self._build_from(examples)
            return
        if isinstance(examples, Dataset):
            examples = examples.examples
        elif isinstance(examples, Example):
            examples = [examples]
        if new := self._rows.check_new(list(examples), self._schema):
            self._append(new, self.embed(new))

    def _append(self, examples: list[Example], vectors: np.ndarray) -> None:
        self._faiss_index.add(vectors)
        self._embeddings = vectors if not len(self._rows) else np.concatenate([self._embeddings, vectors])
        self._rows.extend(examples)
        self._fingerprint = None
        self._saved_manifest = None
        if self._lexical is not None:  # BM25 weights depend on every document (idf, mean length): rebuild
            self.build_lexical(**self._lexical.params)

    def build_lexical(self, k1: float = 1.5, b: float = 0.75, method: str = "lucene",
                      stopwords: str | Sequence[str] | None = "en", lower: bool = True) -> Any:
        """Build the BM25 part over every example's query text (``search="bm25"``/``"hybrid"`` use it).

        Parameters as :class:`~ragicl.index.lexical.LexicalIndex`; needs ``bm25s`` (``pip install
        'ragicl[retrieval]'``). :meth:`save` stores it in the version folder, :meth:`load` reads it back;
        :meth:`add` rebuilds it. Returns the :class:`~ragicl.index.lexical.LexicalIndex`.
        """
        from .lexical import LexicalIndex

        self._require_built()
        start = time.perf_counter()
        self._lexical = LexicalIndex.build([self.query_text(ex) for ex in self.examples], k1=k1, b=b,
                                           method=method, stopwords=stopwords, lower=lower)
        self._saved_manifest = None
        logger.info("built BM25 over %d examples (%d terms) in %.2f s", len(self), self._lexical.vocabulary_size,
                    time.perf_counter() - start)
        return self._lexical

    @property
    def lexical(self) -> Any:
        """The BM25 part (:class:`~ragicl.index.lexical.LexicalIndex`) or None before :meth:`build_lexical`."""
        return self._lexical

    # ------------------------------------------------------------------ search
    def embed(self, queries: Sequence[Query] | Query | np.ndarray) -> np.ndarray:
        """Query vectors as :meth:`search` computes them: texts, input mappings or Examples → ``(Q, d)``.

        A float32 matrix passes through after checking its dimension (``EmbedderMismatchError`` if wrong).
        """
        if isinstance(queries, np.ndarray):
            return _index_search.check_matrix(queries, self._dim(), lambda: self.embedder.name)
        if isinstance(queries, (str, Mapping, Example)):
            queries = [queries]
        built_with = (self._saved_manifest or {}).get("embedder") or self.embedder.name
        return _index_search.encode_texts(self.embedder, [self.query_text(q) for q in queries],
                                          dimension=self._dim(), built_with=built_with,
                                          batch_size=self.batch_size, show_progress=self.show_progress)

    def query_text(self, query: Query) -> str:
        """The text embedded for a query: the index's input fields joined by newlines."""
        return _index_search.query_text(query, self._schema.get("input_fields") or [])

    def search(self, queries: Sequence[Query] | Query | np.ndarray, k: int, *,
               nprobe: int | None = None) -> SearchResult:
        """The ``k`` nearest examples of each query, best first (positions into :attr:`examples`).

        ``queries``: strings, input mappings, Examples, or a float32 ``(Q, d)`` matrix of unit vectors
        (NaN/inf rows raise ``DataError``). ``k``: any positive integer (``np.int64`` too; not a bool or a
        float). The result has shape ``(Q, min(k, len(index)))``: it stops at the index size, and entries
        an approximate index (IVF, HNSW) could not fill are ``-1`` with score ``-inf``. ``nprobe``
        overrides the IVF probe count for this call only (thread-safe; the stored value is untouched).
        """
        k = _index_search.check_count("k", k)
        self._require_built()
        return self.search_vectors(self.embed(queries), k, nprobe=nprobe)

    def search_vectors(self, x: np.ndarray, k: int, *, nprobe: int | None = None) -> SearchResult:
        """:meth:`search` for an already checked float32 matrix (no embedding, no validation)."""
        positions, scores = _index_search.search_index(
            self._faiss_index, x, min(k, len(self)), nprobe=nprobe, stored_nprobe=self._search_params.get("nprobe"),
            factory=self.factory, set_nprobe=lambda v: self.set_search_params(nprobe=v),
            host_vectors=self._embeddings if self._backend == "faiss-gpu" else None)
        return SearchResult(positions, scores)

    def set_search_params(self, **params: Any) -> None:
        """Set FAISS search parameters, e.g. ``nprobe=16`` (IVF) or ``efSearch=64`` (HNSW); saved too."""
        self._require_built()
        for name, value in params.items():
            _index_search.set_params(self._faiss_index, {name: value}, backend=self._backend, factory=self.factory)
            self._search_params[name] = value

    # ------------------------------------------------------------------ accessors
    def __len__(self) -> int:
        return len(self._rows)

    def _dim(self) -> int | None:
        return None if self._embeddings is None else int(self._embeddings.shape[1])

    def _require_built(self) -> None:
        if self._faiss_index is None:
            raise NotFittedError("this ExampleIndex is empty: use ExampleIndex.build(dataset) or .load(path).")

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder(self._embedder_spec, device=self.device,
                                          batch_size=self.batch_size or 64, show_progress=self.show_progress)
        return self._embedder

    @property
    def dimension(self) -> int:
        self._require_built()
        return self._dim()  # type: ignore[return-value]

    @property
    def examples(self) -> tuple[Example, ...]:
        return self._rows.examples

    @property
    def keys(self) -> tuple[str, ...]:
        """``Example.key()`` of every example, in position order (for duplicate detection)."""
        return self._rows.keys

    @property
    def embeddings(self) -> np.ndarray:
        """The ``(n, d)`` float32 unit vectors, in position order (memory-mapped after :meth:`load`)."""
        self._require_built()
        return self._embeddings  # type: ignore[return-value]

    @property
    def input_fields(self) -> tuple[str, ...]:
        return tuple(self._schema.get("input_fields", ()))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self._schema.get("labels", ()))

    @property
    def dataset(self) -> Dataset:
        """The indexed examples as a :class:`Dataset` with the index's schema."""
        s = self._schema
        return Dataset(self.examples, tuple(s["input_fields"]), s["task"], tuple(s["labels"]),
                       s["output_field"], s["name"])

    @property
    def label_ids(self) -> np.ndarray:
        """Index into :attr:`labels` of every example's label (``-1`` for none), int64."""
        return self._rows.label_ids(self.labels)

    def position_of(self, example_id: str) -> int | None:
        """Position of the example with this id, or ``None``."""
        return self._rows.position_of(example_id)

    def duplicates_of(self, key: str) -> tuple[int, ...]:
        """Positions of every example whose ``Example.key()`` equals ``key`` (exact duplicates)."""
        return self._rows.duplicates_of(key)

    @property
    def manifest(self) -> dict[str, Any]:
        """What ``manifest.json`` holds (as last saved/loaded, or as it would be saved now)."""
        if self._saved_manifest is not None:
            return dict(self._saved_manifest)
        self._require_built()
        return _folder.make_manifest(self._describe(), {})

    def _describe(self) -> dict[str, Any]:
        """The manifest's description of this index (the folder adds its format's fields)."""
        if self._fingerprint is None:
            self._fingerprint = self.dataset.fingerprint()
        return {"embedder": self.embedder.name, "dimension": self.dimension, "metric": "inner_product",
                "factory": self.factory, "dataset_fingerprint": self._fingerprint, "count": len(self),
                **self._schema, "search_params": dict(self._search_params)}

    # ------------------------------------------------------------------ device
    def _install(self, cpu_index: Any) -> None:
        """Record the IVF probe count (so per-call overrides restore it) and move to the device."""
        if (nprobe := ivf_nprobe(cpu_index)) is not None:
            self._search_params.setdefault("nprobe", nprobe)
        self._faiss_index, self._backend = _index_device.to_device(
            cpu_index, device=self.device, factory=self.factory, fp16=self.fp16, embeddings=self._embeddings)
        if self._search_params:
            self.set_search_params(**self._search_params)

    def _cpu_index(self) -> Any:
        return _index_device.to_cpu(self._faiss_index, self._backend)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index folder crash-safely; readers see the old or the new version, never a mix.

        Replacing ``manifest.json`` (naming the new version folder ``v-<id>/``) is the one atomic commit,
        so a crash at any moment leaves the previous index loadable. Other files in the folder are kept; a
        non-empty folder that is not an index is refused (``FileExistsError``); concurrent saves run one
        after the other (the last wins). Layout and protocol: docs/DESIGN.md, *Index*.
        """
        self._require_built()
        path = Path(path)
        record = _folder.IndexFolder(self._describe(), self._cpu_index(), self._embeddings, self._rows.examples,
                                     self._rows.keys, self._lexical)
        self._saved_manifest = _folder.save(record, path)
        logger.info("saved %d examples to %s", len(self), path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, embedder: str | Embedder | None = None, device: str = "auto", *,
             mmap: bool = True, fp16: bool = False, batch_size: int | None = None,
             show_progress: bool | None = None, verify: bool = True) -> ExampleIndex:
        """Open a folder written by :meth:`save`, checking the manifest against the files.

        Raises ``IndexFormatError`` for a missing folder or file, a truncated or corrupt file (each file's
        checksum is verified; ``verify=False`` skips that for very large indexes, about 1 s per GB) or
        inconsistent counts, and ``EmbedderMismatchError`` if ``embedder`` is not the one the index was
        built with. Without ``embedder`` the manifest's embedder is used (loaded lazily, on the first text
        query). A save running concurrently makes the load read the new version instead.
        """
        path = Path(path)
        if (loader := _folder.layout_loader(path)) is not None:  # another layout, e.g. a sharded folder
            return loader(path, embedder=embedder, device=device, mmap=mmap, fp16=fp16, batch_size=batch_size,
                          show_progress=show_progress, verify=verify)
        folder = _folder.read(path, mmap=mmap, verify=verify)
        manifest = dict(folder.manifest)
        if embedder is not None:
            embedder = _folder.check_embedder(path, manifest, embedder, device=device,
                                                batch_size=batch_size or 64)
        self = cls(embedder or manifest["embedder"], manifest["factory"], device, batch_size=batch_size,
                   show_progress=show_progress, fp16=fp16)
        self._schema = schema_of(manifest)
        self._rows, self._embeddings = Rows(folder.examples, folder.keys), folder.vectors
        self._search_params = dict(manifest.get("search_params") or {})
        self._install(folder.faiss_index)
        self._lexical = folder.lexical
        self._fingerprint = manifest.get("dataset_fingerprint")
        self._saved_manifest = manifest
        return self

    def summary(self) -> dict[str, Any]:
        """Count, dimension, factory, embedder, fingerprint and (if saved) size on disk."""
        m = self.manifest
        return {"count": len(self), "dimension": self.dimension, "factory": self.factory,
                "embedder": m["embedder"], "fingerprint": m["dataset_fingerprint"],
                "device": "cpu" if self._backend == "cpu" else "gpu", "backend": self._backend,
                "bytes_on_disk": sum(m.get("files", {}).values()) or None}



def build_and_save(source: str | os.PathLike | Dataset, out: str | os.PathLike, *,
                   embedder: str | Embedder = DEFAULT_EMBEDDER, factory: str = "Flat", device: str = "auto",
                   batch_size: int | None = 64, input_fields: Sequence[str] | None = None,
                   label_field: str | None = "label", output_field: str | None = None,
                   show_progress: bool | None = None, lexical: bool = False) -> ExampleIndex:
    """Read a dataset, build an :class:`ExampleIndex` (with ``lexical``, its BM25 index too), save it to
    ``out`` and log a summary.

    What ``scripts/build_index.py`` and ``ragicl index build`` run (conventional ``out``: ``indexes/<name>``).

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "indexes" / "pets"
    >>> rows = [{"text": "a cat", "label": "x"}, {"text": "a dog", "label": "y"}]
    >>> build_and_save(rows, out, embedder="hash-8").summary()["count"]
    2
    """
    from ..data import read_dataset

    start = time.perf_counter()
    dataset = source if isinstance(source, Dataset) else read_dataset(
        source, input_fields=input_fields, label_field=label_field, output_field=output_field)
    index = ExampleIndex.build(dataset, embedder=embedder, factory=factory, device=device,
                               batch_size=batch_size, show_progress=show_progress)
    if lexical:
        index.build_lexical()
    index.save(out)
    s = index.summary()
    logger.info("built %s: %d examples, dim %d, factory %r, embedder %s, fingerprint %s, %.1f MB, %.1f s",
                out, s["count"], s["dimension"], s["factory"], s["embedder"], s["fingerprint"][:12],
                (s["bytes_on_disk"] or 0) / 1e6, time.perf_counter() - start)
    return index
