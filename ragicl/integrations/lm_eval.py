"""Retrieval few-shot for lm-evaluation-harness: a ``fewshot_config.sampler`` backed by a ragicl index.

lm-eval builds each few-shot context by calling ``task.sampler.sample(n, eval_doc=doc)``; the sampler
class comes from ``fewshot_config: sampler:`` in the task YAML, either a name in lm-eval's
``SAMPLER_REGISTRY`` or a ``ContextSampler`` subclass (``!function module.attr`` in YAML, or a class in a
Python task config). :class:`RagiclSampler` returns, for every evaluated document, the ``n`` most similar
labeled documents (most relevant last, next to the evaluated one), never the document itself or an exact
duplicate of it.

Two ways to use it:

* ``sampler: ragicl``: the pool is the task's few-shot docs, indexed on first use with the default
  embedder. A plain task YAML needs no Python: lm-eval has no plugin discovery for samplers, so ragicl's
  install adds ``_ragicl_lmeval.pth``, whose start-up hook (``_ragicl_lmeval.py``, no ragicl import)
  registers a placeholder as soon as lm-eval's sampler registry is imported; the placeholder imports this
  module on first use. Importing this module registers the real class directly.
* ``sampler: !function utils.sampler`` with ``sampler = make_sampler(index=...)`` in the task folder's
  ``utils.py``: the pool is a ragicl :class:`~ragicl.index.core.ExampleIndex` (an object, a saved folder, a data
  file, or a function building one), e.g. the whole training set.

**Set the few-shot split to the test split** (``fewshot_split: <test_split>``). lm-eval passes the
evaluated document to the sampler only in that case (it is its guard against leaking the document into
its own context), and a retrieval sampler needs the document to retrieve for it. With an explicit
``index`` the split's own docs are not used as the pool, so this costs nothing.

Install with ``pip install 'ragicl[lmeval]'``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from .._exceptions import require

require("lm_eval", "lmeval", "lm-eval")

from lm_eval.api.samplers import SAMPLER_REGISTRY, ContextSampler

from ..index.core import ExampleIndex
from ..index.embed import Embedder
from ..models import DEFAULT_EMBEDDER
from ..prompt.retrieve import STRATEGIES, Retriever
from ..types import Dataset, Example

logger = logging.getLogger(__name__)

__all__ = ["RagiclSampler", "make_sampler", "register_sampler"]

IndexSource = ExampleIndex | str | os.PathLike | Callable[[], ExampleIndex] | None
_DEFAULT_CONFIG: dict[str, Any] = {"index": None, "embedder": DEFAULT_EMBEDDER, "query": None,
                                   "label_field": "label", "output_field": None, "strategy": "topk",
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
                                "file. Fix: pass the folder written by ExampleIndex.save, a .jsonl/.csv "
                                "file, or an ExampleIndex.")
    if callable(source):
        index = source()
        if not isinstance(index, ExampleIndex):
            raise TypeError(f"the index function returned a {type(index).__name__}; expected an "
                            "ExampleIndex.")
        return index
    raise TypeError(f"index must be an ExampleIndex, a path, a function returning one, or None; got "
                    f"{type(source).__name__}.")


class RagiclSampler(ContextSampler):
    """An lm-eval ``ContextSampler`` returning the documents most similar to each evaluated document.

    lm-eval instantiates samplers itself (``cls(fewshot_docs, rnd=None)``), so settings live on the class:
    :func:`make_sampler` makes a configured subclass. This base class (registered as ``"ragicl"``)
    indexes lm-eval's few-shot docs with the default embedder on first use; the query text of a document
    is its string fields other than ``label`` joined by newlines.

    >>> docs = [{"text": t, "label": l} for t, l in [("great fun", "positive"), ("a bore", "negative"),
    ...                                              ("loved it", "positive")]]     # doctest: +SKIP
    >>> RagiclSampler(docs).sample(1, eval_doc=docs[0])                             # doctest: +SKIP
    [{'text': 'loved it', 'label': 'positive'}]
    """

    config: ClassVar[Mapping[str, Any]] = _DEFAULT_CONFIG
    _shared: ClassVar[ExampleIndex | None] = None  # the configured index, opened once per class

    def __init__(self, df: Sequence[dict[str, Any]] | None = None, *, rnd: int | None = None,
                 fewshot_indices: list[int] | None = None, **kwargs: Any) -> None:
        super().__init__(df, rnd=rnd, fewshot_indices=fewshot_indices, **kwargs)
        self._index: ExampleIndex | None = None
        self._pool: list[dict[str, Any]] | None = None  # position -> lm-eval doc, for an index built from df
        self._seed = 0 if rnd is None else int(rnd)

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
        """The ``n`` documents nearest ``eval_doc`` (never itself), least relevant first."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n (num_fewshot) must be a non-negative integer, got {n!r}.")
        if n == 0:
            return []
        if df:
            self.replace_df(df)
        if eval_doc is None:
            raise ValueError(
                "RagiclSampler received no evaluated document: lm-eval passes it to the sampler only when "
                "the few-shot split equals the test split. Fix: set `fewshot_split:` to the task's "
                "`test_split` in the task YAML (with make_sampler(index=...) that split is not the pool).")
        index = self.index
        query = self.doc_query(eval_doc)
        retriever = Retriever(k=n, selection=self.config["strategy"], seed=self._seed)
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
            if cfg["index"] is not None:
                cache = type(self).__dict__.get("_shared")
                if cache is None:
                    cache = _open_index(cfg["index"], cfg["embedder"])
                    type(self)._shared = cache  # one load per configured sampler class
                self._index = cache
            else:
                self._index = self._index_from_docs()
        return self._index

    def _index_from_docs(self) -> ExampleIndex:
        docs = self.fewshot_docs()
        if not docs:
            raise ValueError("RagiclSampler has no documents to index: the task has no few-shot docs. "
                             "Fix: set `fewshot_split:` in the task YAML, or pass make_sampler(index=...).")
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
                             "make_sampler(query=[field, ...]) or query=lambda doc: text.")
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
                           "Fix: make_sampler(query=[fields of the document]) or query=lambda doc: text.")
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
                 label_field: str = "label", output_field: str | None = None, strategy: str = "topk",
                 example_to_doc: Callable[[Example], Mapping[str, Any]] | None = None,
                 name: str | None = None) -> type[RagiclSampler]:
    """A :class:`RagiclSampler` subclass with these settings, for ``fewshot_config: sampler:``.

    Args:
        index: the pool: an :class:`~ragicl.index.core.ExampleIndex`, a saved index folder, a data file (indexed
            with ``embedder`` on first use), a function returning an index (called once, lazily), or
            ``None`` for lm-eval's own few-shot docs.
        query: the document fields embedded as the query (default: the index's input fields), or a
            function ``doc -> text``.
        label_field / output_field: where an example's label (or output) goes in the returned documents;
            they must be what the task's ``doc_to_target`` reads.
        strategy: a :class:`~ragicl.prompt.retrieve.Retriever` strategy: ``topk``, ``balanced``, ``mmr``,
            ``random``.
        example_to_doc: custom ``Example -> lm-eval doc`` conversion (default: input fields + label field).
        name: also register the class under this name, for ``sampler: <name>`` in YAML.

    >>> sampler = make_sampler("indexes/sst2", name="ragicl-sst2")   # doctest: +SKIP
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown retrieval strategy {strategy!r}; valid strategies: {list(STRATEGIES)}.")
    config = {**_DEFAULT_CONFIG, "index": index, "embedder": embedder, "query": query,
              "label_field": label_field, "output_field": output_field, "strategy": strategy,
              "example_to_doc": example_to_doc}
    cls = type(f"RagiclSampler_{name or 'custom'}".replace("-", "_"), (RagiclSampler,),
               {"config": config, "__module__": __name__,
                "__doc__": f"RagiclSampler made by make_sampler(index={index!r}, strategy={strategy!r})."})
    if name is not None:
        register_sampler(name, cls)
    return cls


def register_sampler(name: str = "ragicl", cls: type[ContextSampler] = RagiclSampler) -> type[ContextSampler]:
    """Register ``cls`` in lm-eval's ``SAMPLER_REGISTRY`` so task YAML can say ``sampler: <name>``."""
    if not (isinstance(cls, type) and issubclass(cls, ContextSampler)):
        raise TypeError(f"cls must be a subclass of lm_eval's ContextSampler, got {cls!r}.")
    existing = SAMPLER_REGISTRY.get(name)
    if existing is not None and existing is not cls and not getattr(existing, "_ragicl_lazy", False):
        logger.info("replacing lm-eval sampler %r (%s) with %s", name, existing.__name__, cls.__name__)
    SAMPLER_REGISTRY[name] = cls
    return cls


register_sampler("ragicl", RagiclSampler)
