"""``RagiclSampler`` and ``make_sampler``: the lm-eval few-shot sampler backed by a ragicl index.

Public names are re-exported by :mod:`ragicl.integrations.lm_eval` (import them from there).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from lm_eval.api.samplers import SAMPLER_REGISTRY, ContextSampler

from ..index.core import ExampleIndex
from ..index.embed import Embedder
from ..models import DEFAULT_EMBEDDER
from ..prompt.retrieve import Retriever, check_selection, resolve_selection
from ..types import Dataset, Example

logger = logging.getLogger("ragicl.integrations.lm_eval")

IndexSource = ExampleIndex | str | os.PathLike | Callable[[], ExampleIndex] | None
_DEFAULT_CONFIG: dict[str, Any] = {"index": None, "embedder": DEFAULT_EMBEDDER, "query": None,
                                   "label_field": "label", "output_field": None, "selection": "topk",
                                   "example_to_doc": None}


def _open_index(source: IndexSource, embedder: str | Embedder) -> ExampleIndex:
    if isinstance(source, ExampleIndex):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return ExampleIndex.load(path)
        if path.is_file():
            from ..data import read_dataset

            return ExampleIndex.build(read_dataset(path), embedder=embedder)
        raise FileNotFoundError(f"index {str(path)!r} is neither a saved ExampleIndex folder nor a data "
                                "file. Fix: pass the folder written by ExampleIndex.save (ragicl index build), "
                                "a .jsonl/.csv file, or an ExampleIndex.")
    if callable(source):
        index = source()
        if not isinstance(index, ExampleIndex):
            raise TypeError(f"the index function returned a {type(index).__name__}; expected an "
                            "ExampleIndex.")
        return index
    raise TypeError(f"index must be an ExampleIndex, a path, a function returning one, or None; got "
                    f"{type(source).__name__}.")


def _check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (sampler settings) checked: known keys, a valid selection, an index that exists."""
    unknown = sorted(set(config) - set(_DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown RagiclSampler settings {unknown}; valid: {sorted(_DEFAULT_CONFIG)}.")
    config = {**config}
    if "selection" in config:
        check_selection(config["selection"])
    query = config.get("query")
    if isinstance(query, str):
        config["query"] = [query]
    elif query is not None and not callable(query) and not (
            isinstance(query, Sequence) and query and all(isinstance(f, str) for f in query)):
        raise TypeError(f"query must be a field name, a list of field names or a function doc -> text; got "
                        f"{query!r}.")
    index = config.get("index")
    if isinstance(index, (str, os.PathLike)) and not Path(index).exists():
        raise FileNotFoundError(f"index {str(index)!r} does not exist (resolved {Path(index).resolve()}). Fix: "
                                "give a folder written by ExampleIndex.save (ragicl index build) or a "
                                ".jsonl/.csv data file; relative paths are relative to the working folder.")
    return config


class RagiclSampler(ContextSampler):
    """An lm-eval ``ContextSampler`` returning the documents most similar to each evaluated document.

    lm-eval instantiates samplers itself (``cls(fewshot_docs, rnd=None)``), so settings live on the class
    (:func:`make_sampler` makes a configured subclass) or are set on the instance with :meth:`configure`
    (what :class:`RetrievalTask` does with the task's ``metadata: ragicl:``). Without an ``index`` the pool is
    lm-eval's few-shot docs, indexed with the default embedder on first use; the query text of a document
    is its string fields other than the label field joined by newlines.

    >>> docs = [{"text": t, "label": l} for t, l in [("great fun", "positive"), ("a bore", "negative"),
    ...                                              ("loved it", "positive")]]     # doctest: +SKIP
    >>> RagiclSampler(docs).sample(1, eval_doc=docs[0])                             # doctest: +SKIP
    [{'text': 'loved it', 'label': 'positive'}]
    """

    config: ClassVar[Mapping[str, Any]] = _DEFAULT_CONFIG
    _shared: ClassVar[ExampleIndex | None] = None  # the class-configured index, opened once per class

    def __init__(self, df: Sequence[dict[str, Any]] | None = None, *, rnd: int | None = None,
                 fewshot_indices: list[int] | None = None, **kwargs: Any) -> None:
        super().__init__(df, rnd=rnd, fewshot_indices=fewshot_indices, **kwargs)
        self._index: ExampleIndex | None = None
        self._pool: list[dict[str, Any]] | None = None  # position -> lm-eval doc, for an index built from df
        self._seed = 0 if rnd is None else int(rnd)
        self._configured = False

    def configure(self, **settings: Any) -> RagiclSampler:
        """Override the class's settings on this instance (keys of :func:`make_sampler`); returns self."""
        self.config = {**type(self).config, **_check_config(settings)}  # type: ignore[misc]
        self._index, self._pool, self._configured = None, None, True
        return self

    def set_rnd(self, rnd: int | None) -> RagiclSampler:
        super().set_rnd(rnd)
        self._seed = 0 if rnd is None else int(rnd)
        return self

    def replace_df(self, df: Sequence[dict[str, Any]]) -> RagiclSampler:
        super().replace_df(df)
        if self.config["index"] is None:
            self._index, self._pool = None, None
        return self

    # ---------------------------------------------------------------------------------------- sample
    def sample(self, n: int, eval_doc: dict[str, Any] | None = None,
               df: Sequence[dict[str, Any]] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """The ``n`` documents nearest ``eval_doc`` (never itself or an exact duplicate), least relevant first."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n (num_fewshot) must be a non-negative integer, got {n!r}.")
        if n == 0:
            return []
        if df:
            self.replace_df(df)
        if eval_doc is None:
            raise ValueError(
                "RagiclSampler received no evaluated document to retrieve for: lm-eval passes it to the "
                "sampler only when the few-shot split equals the test split. Fix: add `class: !function "
                "ragicl.integrations.lm_eval.RetrievalTask` to the task YAML (demonstrations then come from "
                "`fewshot_split:`, e.g. train), or set `fewshot_split:` to the task's `test_split`.")
        index = self.index
        query = self.doc_query(eval_doc)
        retriever = Retriever(k=n, selection=self.config["selection"], seed=self._seed)
        found = retriever.retrieve(index, [query], n_candidates=n + 1)[0]
        docs = [self._doc(p) for p in found.positions]
        docs = [d for d in docs if d != eval_doc][:n]
        if len(docs) < n:
            logger.warning("RagiclSampler: only %d of %d few-shot documents available for this document",
                           len(docs), n)
        return docs[::-1]

    # -------------------------------------------------------------------------------------- helpers
    @property
    def index(self) -> ExampleIndex:
        """The index searched: the configured one, or one built from lm-eval's few-shot docs."""
        if self._index is None:
            cfg = self.config
            if cfg["index"] is None:
                self._index = self._index_from_docs()
            elif self._configured:
                self._index = _open_index(cfg["index"], cfg["embedder"])
            else:
                cache = type(self).__dict__.get("_shared")
                if cache is None:
                    cache = _open_index(cfg["index"], cfg["embedder"])
                    type(self)._shared = cache  # one load per configured sampler class
                self._index = cache
        return self._index

    def _index_from_docs(self) -> ExampleIndex:
        docs = self.fewshot_docs()
        if not docs:
            raise ValueError("RagiclSampler has no documents to index: the task has no few-shot docs. "
                             "Fix: set `fewshot_split:` (e.g. train) in the task YAML, or give an index "
                             "(metadata: ragicl: index: <folder or file>, or make_sampler(index=...)).")
        cfg = self.config
        fields = ("text",) if callable(cfg["query"]) else tuple(cfg["query"] or self._text_fields(docs[0]))
        target = cfg["output_field"] or cfg["label_field"]
        examples = []
        for i, doc in enumerate(docs):
            if callable(cfg["query"]):
                inputs = {"text": str(cfg["query"](doc))}
            else:
                inputs = {f: str(doc[f]) for f in fields}
            value = doc.get(target)
            value = None if value is None else str(value)
            examples.append(Example(str(i), inputs, output=value) if cfg["output_field"]
                            else Example(str(i), inputs, label=value))
        labels = () if cfg["output_field"] else tuple(sorted({e.label for e in examples if e.label}))
        dataset = Dataset(tuple(examples), fields, "generation" if cfg["output_field"] else "classification",
                          labels, cfg["output_field"], "lm-eval-fewshot")
        logger.info("RagiclSampler: indexing %d few-shot documents (fields %s)", len(docs), list(fields))
        self._pool = list(docs)
        return ExampleIndex.build(dataset, embedder=cfg["embedder"])

    def _text_fields(self, doc: Mapping[str, Any]) -> list[str]:
        skip = {self.config["label_field"], self.config["output_field"]}
        fields = [k for k, v in doc.items() if isinstance(v, str) and k not in skip]
        if not fields:
            raise ValueError(f"cannot tell which fields of the documents are the input: {sorted(doc)}. Fix: "
                             "set the query fields (metadata: ragicl: query: [field, ...], or "
                             "make_sampler(query=[field, ...]) / query=lambda doc: text).")
        return fields

    def doc_query(self, doc: Mapping[str, Any]) -> str | dict[str, str]:
        """What is embedded for an lm-eval document: ``query(doc)``, or its input fields."""
        query = self.config["query"]
        if callable(query):
            return str(query(doc))
        fields = list(query) if query else list(self.index.input_fields)
        missing = [f for f in fields if f not in doc]
        if missing:
            raise KeyError(f"the evaluated document has fields {sorted(doc)} but the query needs {missing}. "
                           "Fix: set the query fields (metadata: ragicl: query: [fields of the document], "
                           "or make_sampler(query=...)).")
        return "\n".join(str(doc[f]) for f in fields)

    def _doc(self, position: int) -> dict[str, Any]:
        if self._pool is not None:
            return self._pool[position]
        ex = self.index.examples[position]
        convert = self.config["example_to_doc"]
        if convert is not None:
            return dict(convert(ex))
        doc: dict[str, Any] = dict(ex.inputs)
        if ex.label is not None:
            doc[self.config["label_field"]] = ex.label
        if ex.output is not None:
            doc[self.config["output_field"] or "output"] = ex.output
        return doc


def make_sampler(index: IndexSource = None, *, embedder: str | Embedder = DEFAULT_EMBEDDER,
                 query: Sequence[str] | Callable[[Mapping[str, Any]], str] | None = None,
                 label_field: str = "label", output_field: str | None = None, selection: str | None = None,
                 example_to_doc: Callable[[Example], Mapping[str, Any]] | None = None,
                 name: str | None = None, strategy: str | None = None) -> type[RagiclSampler]:
    """A :class:`RagiclSampler` subclass with these settings, for ``fewshot_config: sampler:``.

    Args:
        index: the pool: an :class:`~ragicl.index.core.ExampleIndex`, a saved index folder, a data file (indexed
            with ``embedder`` on first use), a function returning an index (called once, lazily), or
            ``None`` for lm-eval's own few-shot docs.
        query: the document fields embedded as the query (default: the index's input fields), or a
            function ``doc -> text``.
        label_field / output_field: where an example's label (or output) goes in the returned documents;
            they must be what the task's ``doc_to_target`` reads.
        selection: how demonstrations are chosen, as in :class:`~ragicl.prompt.retrieve.Retriever`:
            ``topk`` (default), ``balanced``, ``mmr``, ``random``. ``strategy``: its deprecated alias
            (warns).
        example_to_doc: custom ``Example -> lm-eval doc`` conversion (default: input fields + label field).
        name: also register the class under this name, for ``sampler: <name>`` in YAML (in a process that
            has called this function).

    >>> sampler = make_sampler("indexes/sst2", selection="mmr")   # doctest: +SKIP
    """
    selection = resolve_selection(selection, strategy)
    config = _check_config({**_DEFAULT_CONFIG, "index": index, "embedder": embedder, "query": query,
                            "label_field": label_field, "output_field": output_field,
                            "selection": selection, "example_to_doc": example_to_doc})
    cls = type(f"RagiclSampler_{name or 'custom'}".replace("-", "_"), (RagiclSampler,),
               {"config": config, "__module__": "ragicl.integrations.lm_eval",
                "__doc__": f"RagiclSampler made by make_sampler(index={index!r}, selection={selection!r})."})
    if name is not None:
        register_sampler(name, cls)
    return cls


def register_sampler(name: str = "ragicl", cls: type[ContextSampler] = RagiclSampler) -> type[ContextSampler]:
    """Register ``cls`` in lm-eval's ``SAMPLER_REGISTRY`` so task YAML can say ``sampler: <name>``.

    The registry lives in the process: a YAML naming the sampler works only after this ran (importing this
    module registers ``"ragicl"``). A YAML that must work on its own names the class instead:
    ``sampler: !function ragicl.integrations.lm_eval.RagiclSampler``.
    """
    if not (isinstance(cls, type) and issubclass(cls, ContextSampler)):
        raise TypeError(f"cls must be a subclass of lm_eval's ContextSampler, got {cls!r}.")
    existing = SAMPLER_REGISTRY.get(name)
    if existing is not None and existing is not cls:
        logger.info("replacing lm-eval sampler %r (%s) with %s", name, existing.__name__, cls.__name__)
    SAMPLER_REGISTRY[name] = cls
    return cls
