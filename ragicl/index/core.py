"""``ExampleIndex``: every example of a dataset embedded into a FAISS index, searchable and persisted.

Folder layout written by :meth:`ExampleIndex.save` (see docs/DESIGN.md, *Index*): ``manifest.json`` naming
the current version folder ``v-<id>/``, which holds ``index.faiss`` (CPU form), ``examples.jsonl`` (one
example per line, with its duplicate ``key``) and ``embeddings.npy`` (memory-mapped on load; used by MMR,
exact re-ranking and rebuilding), each checksummed in the manifest.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import DataError, NotFittedError, require
from ..models import DEFAULT_EMBEDDER
from ..types import Dataset, Example, SearchResult
from . import device as _index_device
from . import folder as _index_io
from . import search as _index_search
from .embed import Embedder, check_vectors, get_embedder
from .folder import FILES, FORMAT_VERSION, build_and_save

logger = logging.getLogger(__name__)

__all__ = ["FILES", "FORMAT_VERSION", "ExampleIndex", "Query", "build_and_save"]

Query = str | Mapping[str, str] | Example


def _faiss() -> Any:
    return require("faiss", "cpu", "faiss-cpu")


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
        self._examples: list[Example] = []
        self._keys: list[str] = []
        self._embeddings: np.ndarray | None = None
        self._schema: dict[str, Any] = {}
        self._search_params: dict[str, Any] = {}
        self._saved_manifest: dict[str, Any] | None = None
        self._cache: dict[str, Any] = {}  # derived data, cleared by add()

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
        if not isinstance(dataset, Dataset):
            from ..data import read_dataset

            dataset = read_dataset(dataset)
        self = cls(embedder, factory, device, batch_size=batch_size, show_progress=show_progress, fp16=fp16)
        self._build_from(dataset, train_size=train_size, seed=seed)
        return self

    @classmethod
    def from_vectors(cls, vectors: np.ndarray | Any, dataset: Dataset | Any,
                     embedder: str | Embedder = DEFAULT_EMBEDDER, factory: str = "Flat",
                     device: str = "auto", *, batch_size: int | None = None,
                     show_progress: bool | None = None, fp16: bool = False, train_size: int = 100_000,
                     seed: int = 0) -> ExampleIndex:
        """Index ``dataset`` with precomputed embeddings instead of embedding it (row ``i`` = example ``i``).

        For data already embedded elsewhere (e.g. ``SentenceTransformer.encode`` on a GPU) and for
        benchmarks on synthetic vectors. The result is an ordinary index: searched, saved and loaded like
        one from :meth:`build`, and given the same vectors it *is* the index :meth:`build` makes.

        Args:
            vectors: a 2-D float array ``(len(dataset), dimension)`` (numpy, or anything ``np.asarray``
                reads, e.g. a CPU tensor). It is copied as float32. The metric is cosine (inner product of
                unit vectors), so rows are L2-normalized the way the embedders normalize (``x / ‖x‖``);
                rows already of unit norm (within 1e-4) are kept bit for bit, so an embedder's own output
                gives exactly the index :meth:`build` would. NaN/inf values and zero rows are rejected.
            dataset: the examples, in the order of ``vectors``: a :class:`Dataset`, or anything
                :func:`ragicl.read_dataset` accepts.
            embedder: the model that produced ``vectors``; it embeds text queries (and :meth:`add`) later,
                and its name is written to the manifest. If its dimension is known without loading a
                model (a loaded or model-free embedder such as ``"hash-64"``), a different width raises
                ``EmbedderMismatchError`` here; a sentence-transformers model is *not* loaded for the check
                — its width is checked at the first text query, like a loaded index's. Searching with
                query vectors (:meth:`search` on a matrix, :meth:`search_vectors`) never loads it.
            factory, device, batch_size, show_progress, fp16, train_size, seed: as for :meth:`build`.

        Raises ``DataError`` for a row count other than ``len(dataset)``, a non-2-D or non-float array,
        or non-finite/zero rows; ``EmbedderMismatchError`` for a known embedder of another dimension.

        >>> from ragicl.data import from_records
        >>> from ragicl.index.embed import HashEmbedder
        >>> ds = from_records([{"text": t, "label": "x"} for t in ["red", "green", "blue"]])
        >>> vectors = HashEmbedder(16).encode([ex.text() for ex in ds])      # or any model's output
        >>> index = ExampleIndex.from_vectors(vectors, ds, embedder="hash-16")
        >>> index.search(["green"], k=1).positions.tolist()
        [[1]]
        """
        if not isinstance(dataset, Dataset):
            from ..data import read_dataset

            dataset = read_dataset(dataset)
        self = cls(embedder, factory, device, batch_size=batch_size, show_progress=show_progress, fp16=fp16)
        x = check_vectors(vectors, len(dataset), self.embedder)
        self._build_from(dataset, vectors=x, train_size=train_size, seed=seed)
        return self

    def _build_from(self, dataset: Dataset, *, vectors: np.ndarray | None = None, train_size: int = 100_000,
                    seed: int = 0) -> None:
        if len(dataset) == 0:
            raise DataError("cannot index an empty dataset: received 0 examples, expected at least one.")
        faiss = _faiss()
        self._schema = {"input_fields": list(dataset.input_fields), "task": dataset.task,
                        "labels": list(dataset.labels), "output_field": dataset.output_field,
                        "name": dataset.name}
        examples = self._check_new(dataset.examples)
        start = time.perf_counter()
        vectors = self.embed(examples) if vectors is None else vectors
        d = vectors.shape[1]
        try:
            cpu = faiss.index_factory(d, self.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(f"invalid faiss factory string {self.factory!r}: {str(err).strip()[:200]}. "
                             "Expected e.g. 'Flat', 'IVF256,Flat', 'HNSW32', 'IVF256,PQ16'.") from err
        ivf = faiss.try_extract_index_ivf(cpu)
        ivf = faiss.downcast_index(ivf) if ivf is not None else None
        if ivf is not None and hasattr(ivf, "do_polysemous_training"):
            # The factory enables polysemous training for IVF-PQ; it costs minutes and nothing here uses
            # polysemous codes (measured: >100 s to train on 20k vectors with it).
            ivf.do_polysemous_training = False
        if not cpu.is_trained:
            sample = vectors
            if len(vectors) > train_size:
                rng = np.random.default_rng(seed)
                sample = vectors[np.sort(rng.choice(len(vectors), train_size, replace=False))]
            logger.info("training %s on %d vectors", self.factory, len(sample))
            try:
                cpu.train(sample)
            except RuntimeError as err:
                raise ValueError(f"could not train faiss factory {self.factory!r} on {len(sample)} vectors: "
                                 f"{str(err).strip()[:200]}. Fix: use fewer IVF lists (about n/39, e.g. "
                                 f"'IVF{max(1, len(sample) // 39)},Flat') or 'Flat'.") from err
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
        new = self._check_new(list(examples))
        if not new:
            return
        self._append(new, self.embed(new))

    def _check_new(self, examples: Sequence[Example]) -> list[Example]:
        fields = self._schema["input_fields"]
        labels = set(self._schema["labels"])
        known = self._id_positions() if self._examples else {}
        seen: set[str] = set()
        for i, ex in enumerate(examples):
            if not isinstance(ex, Example):
                raise TypeError(f"examples[{i}] is a {type(ex).__name__}; expected ragicl.Example.")
            missing = [f for f in fields if f not in ex.inputs]
            if missing:
                raise DataError(f"example {ex.id!r} lacks input field(s) {missing}; the index expects "
                                f"{fields}. Fix: read the data with input_fields={fields}.")
            if self._schema["task"] == "classification" and labels and ex.label not in labels:
                raise DataError(f"example {ex.id!r} has label {ex.label!r}, outside the index's label set "
                                f"{sorted(labels)}. Fix: rebuild the index with labels=[...] including it.")
            if ex.id in seen or ex.id in known:
                raise DataError(f"example id {ex.id!r} is already in the index; ids must be unique. Fix: read "
                                "the data with id_field=..., or give the new examples distinct ids (e.g. a prefix).")
            seen.add(ex.id)
        return list(examples)

    def _append(self, examples: list[Example], vectors: np.ndarray) -> None:
        self._faiss_index.add(vectors)
        self._embeddings = vectors if not len(self._examples) else np.concatenate([self._embeddings, vectors])
        self._examples.extend(examples)
        self._keys.extend(ex.key() for ex in examples)
        self._cache.clear()
        self._saved_manifest = None

    # ------------------------------------------------------------------ search
    def embed(self, queries: Sequence[Query] | Query | np.ndarray) -> np.ndarray:
        """Query vectors as :meth:`search` computes them: texts, input mappings or Examples → ``(Q, d)``.

        A float32 matrix passes through after checking its dimension (``EmbedderMismatchError`` if wrong).
        """
        if isinstance(queries, np.ndarray):
            return _index_search.check_matrix(self, queries)
        if isinstance(queries, (str, Mapping, Example)):
            queries = [queries]
        return _index_search.encode_texts(self, [self.query_text(q) for q in queries])

    def query_text(self, query: Query) -> str:
        """The text embedded for a query: the index's input fields joined by newlines."""
        fields = self._schema.get("input_fields") or []
        if isinstance(query, str):
            return query
        inputs = query.inputs if isinstance(query, Example) else query
        if not isinstance(inputs, Mapping):
            raise TypeError(f"a query must be a str, a mapping of input fields or an Example; got "
                            f"{type(query).__name__}.")
        if fields and all(f in inputs for f in fields):
            return "\n".join(str(inputs[f]) for f in fields)
        if isinstance(query, Example):
            return query.text()
        raise DataError(f"query mapping has fields {sorted(inputs)}; the index expects {fields}. "
                        "Fix: pass a dict with those keys, or the text as a string.")

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
        positions, scores = _index_search.search_vectors(self, x, k, nprobe=nprobe)
        return SearchResult(positions, scores)

    def set_search_params(self, **params: Any) -> None:
        """Set FAISS search parameters, e.g. ``nprobe=16`` (IVF) or ``efSearch=64`` (HNSW); saved too."""
        self._require_built()
        faiss = _faiss()
        space = faiss.GpuParameterSpace() if self._backend == "faiss-gpu" else faiss.ParameterSpace()
        for name, value in params.items():
            try:
                if self._backend == "torch":  # exact Flat search: nothing to tune
                    raise RuntimeError("exact search on the torch backend has no search parameters")
                space.set_index_parameter(self._faiss_index, name, value)
            except RuntimeError as err:
                raise ValueError(f"cannot set {name}={value!r} on a {self.factory!r} index: "
                                 f"{str(err).strip()[:160]}.") from err
            self._search_params[name] = value

    # ------------------------------------------------------------------ accessors
    def __len__(self) -> int:
        return len(self._examples)

    def _require_built(self) -> None:
        if self._faiss_index is None:
            raise NotFittedError("this ExampleIndex is empty: use ExampleIndex.build(dataset) or "
                                 "ExampleIndex.load(path).")

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder(self._embedder_spec, device=self.device,
                                          batch_size=self.batch_size or 64, show_progress=self.show_progress)
        return self._embedder

    @property
    def dimension(self) -> int:
        self._require_built()
        return int(self._embeddings.shape[1])  # type: ignore[union-attr]

    @property
    def examples(self) -> tuple[Example, ...]:
        if "examples" not in self._cache:
            self._cache["examples"] = tuple(self._examples)
        return self._cache["examples"]

    @property
    def keys(self) -> tuple[str, ...]:
        """``Example.key()`` of every example, in position order (for duplicate detection)."""
        if "key_tuple" not in self._cache:
            self._cache["key_tuple"] = tuple(self._keys)
        return self._cache["key_tuple"]

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
        if "label_ids" not in self._cache:
            lookup = {lab: i for i, lab in enumerate(self.labels)}
            self._cache["label_ids"] = np.array([lookup.get(ex.label, -1) for ex in self._examples], np.int64)
        return self._cache["label_ids"]

    def _id_positions(self) -> dict[str, int]:
        if "ids" not in self._cache:
            self._cache["ids"] = {ex.id: i for i, ex in enumerate(self._examples)}
        return self._cache["ids"]

    def position_of(self, example_id: str) -> int | None:
        """Position of the example with this id, or ``None``."""
        return self._id_positions().get(example_id)

    def duplicates_of(self, key: str) -> tuple[int, ...]:
        """Positions of every example whose ``Example.key()`` equals ``key`` (exact duplicates)."""
        if "keys" not in self._cache:
            groups: dict[str, list[int]] = {}
            for i, k in enumerate(self._keys):
                groups.setdefault(k, []).append(i)
            self._cache["keys"] = {k: tuple(v) for k, v in groups.items()}
        return self._cache["keys"].get(key, ())

    @property
    def manifest(self) -> dict[str, Any]:
        """What ``manifest.json`` holds (as last saved/loaded, or as it would be saved now)."""
        if self._saved_manifest is not None:
            return dict(self._saved_manifest)
        self._require_built()
        return _index_io.make_manifest(self, {})

    # ------------------------------------------------------------------ device
    def _install(self, cpu_index: Any) -> None:
        """Record the IVF probe count (so per-call overrides restore it) and move to the device."""
        faiss = _faiss()
        try:
            self._search_params.setdefault("nprobe", int(faiss.extract_index_ivf(cpu_index).nprobe))
        except RuntimeError:  # not an IVF index
            pass
        self._faiss_index, self._backend = _index_device.to_device(
            cpu_index, device=self.device, factory=self.factory, fp16=self.fp16, embeddings=self._embeddings)
        if self._search_params:
            self.set_search_params(**self._search_params)

    def _cpu_index(self) -> Any:
        return _index_device.to_cpu(self._faiss_index, self._backend)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index folder crash-safely; readers see the old or the new version, never a mix.

        The files go to a new version subfolder ``v-<id>/``; replacing ``manifest.json`` (which names
        it) is the one atomic commit, so a crash at any moment leaves the previous index loadable. Other
        files in the folder (a ``NOTES.md``) are kept; a folder that is not an index (no
        ``manifest.json``, not empty) is never written into (``FileExistsError``). Concurrent saves to one
        path are serialized (the last one wins). Layout and protocol: docs/DESIGN.md, *Index*.
        """
        self._require_built()
        path = Path(path)
        self._saved_manifest = _index_io.save(self, path)
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
        folder = _index_io.read(path, mmap=mmap, verify=verify)
        manifest = folder.manifest
        if embedder is not None:
            embedder = _index_io.check_embedder(path, manifest, embedder, device=device,
                                                batch_size=batch_size or 64)
        self = cls(embedder or manifest["embedder"], manifest["factory"], device, batch_size=batch_size,
                   show_progress=show_progress, fp16=fp16)
        self._schema = {"input_fields": manifest.get("input_fields") or [], "task": manifest.get("task"),
                        "labels": manifest.get("labels") or [], "output_field": manifest.get("output_field"),
                        "name": manifest.get("name") or ""}
        self._examples, self._keys, self._embeddings = folder.examples, folder.keys, folder.vectors
        self._search_params = dict(manifest.get("search_params") or {})
        self._install(folder.faiss_index)
        self._cache["fingerprint"] = manifest.get("dataset_fingerprint")
        self._saved_manifest = manifest
        return self

    def summary(self) -> dict[str, Any]:
        """Count, dimension, factory, embedder, fingerprint and (if saved) size on disk."""
        m = self.manifest
        return {"count": len(self), "dimension": self.dimension, "factory": self.factory,
                "embedder": m["embedder"], "fingerprint": m["dataset_fingerprint"],
                "device": "cpu" if self._backend == "cpu" else "gpu", "backend": self._backend,
                "bytes_on_disk": sum(m.get("files", {}).values()) or None}

