"""Helpers shared by the estimators (:class:`~ragicl.ICLClassifier`, :class:`~ragicl.ICLGenerator`, the
baselines and fusion): query normalization, ``fit`` input checks, LM loading and the row-wise softmax.

>>> as_examples("a joy", ["text"])[0].inputs
{'text': 'a joy'}
>>> softmax(np.log(np.array([[1.0, 3.0]]))).round(2).tolist()
[[0.25, 0.75]]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._exceptions import DataError
from ..index.core import ExampleIndex
from ..lm.factory import LMSpec, make_lm
from ..lm.hf import LanguageModel
from ..prompt.step import MANY_SHOT, check_k
from ..types import Dataset, Example, Query

logger = logging.getLogger(__name__)

__all__ = ["as_examples", "dataset_from_xy", "fit_source", "load_lm", "softmax"]


def as_examples(queries: Sequence[Query] | Query, input_fields: Sequence[str]) -> list[Example]:
    """Normalize queries (str, dict of input fields, or Example) to Examples; ids for non-Examples are
    ``query-<i>``. A plain string needs a single-field template."""
    if isinstance(queries, (str, Mapping, Example)):
        queries = [queries]
    out: list[Example] = []
    for i, q in enumerate(queries):
        if isinstance(q, Example):
            out.append(q)
        elif isinstance(q, str):
            if len(input_fields) != 1:
                raise DataError(f"query {i} is a plain string but the template needs the fields "
                                f"{list(input_fields)}; pass a dict with those keys.")
            out.append(Example(id=f"query-{i}", inputs={input_fields[0]: q}))
        elif isinstance(q, Mapping):
            missing = [f for f in input_fields if f not in q]
            if missing:
                raise DataError(f"query {i} lacks the input field(s) {missing}; it has {list(q)}.")
            out.append(Example(id=f"query-{i}", inputs={f: str(q[f]) for f in input_fields}))
        else:
            raise TypeError(f"query {i} is a {type(q).__name__}; expected str, dict or Example.")
    return out


def dataset_from_xy(x: Sequence[Query], y: Sequence[str], *, task: str) -> Dataset:
    """A Dataset from queries (texts, dicts of fields or Examples) and their labels/outputs (``fit(X, y)``)."""
    if isinstance(x, (str, Mapping)) or isinstance(y, str):
        raise TypeError("fit(X, y) expects a sequence of queries and a sequence of labels of the same length.")
    x, y = list(x), [str(v) for v in y]
    if len(x) != len(y) or not x:
        raise DataError(f"fit(X, y) got {len(x)} queries and {len(y)} labels; expected the same, non-zero number.")
    first = x[0]
    fields = (tuple(first.inputs) if isinstance(first, Example) else tuple(first) if isinstance(first, Mapping)
              else ("text",))
    examples = tuple(
        Example(id=f"train-{i}", inputs=dict(ex.inputs), label=lab if task == "classification" else None,
                output=None if task == "classification" else lab)
        for i, (ex, lab) in enumerate(zip(as_examples(x, fields), y)))
    if task == "classification":
        return Dataset(examples, fields, "classification", tuple(sorted(set(y))))
    return Dataset(examples, fields, "generation", (), "output")


def softmax(logp: np.ndarray) -> np.ndarray:
    """Row-wise softmax of log-scores (numerically stable)."""
    z = logp - logp.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_source(k: int | str, data: ExampleIndex | Dataset) -> tuple[ExampleIndex | None, Dataset]:
    """Check ``k`` and split what ``fit`` received into (index or None, dataset) — shared by the ICL systems."""
    k = check_k(k)
    if isinstance(data, ExampleIndex):
        return data, data.dataset
    if isinstance(data, Dataset):
        if k != 0:
            raise ValueError(f"k={k} needs examples to retrieve from: pass an ExampleIndex "
                             "(ExampleIndex.build(dataset)), or use k=0 for zero-shot.")
        return None, data
    raise TypeError(f"fit expects an ExampleIndex or a Dataset, got {type(data).__name__}.")


def load_lm(lm: str | LMSpec | LanguageModel, *, device: str, batch_size: int | None,
            show_progress: bool | None) -> LanguageModel:
    """A name (a ``.gguf`` path runs on llama.cpp, anything else on transformers) or an
    :class:`~ragicl.lm.factory.LMSpec` becomes a loaded LM; a model object is loaded if it can be, else kept."""
    out = make_lm(lm, device=device, batch_size=batch_size, show_progress=show_progress)
    if hasattr(out, "load"):
        out.load()
    return out


def ensure_lm_and_retriever(est: Any) -> None:
    """Set an estimator's ``lm_`` (loaded once; kept across re-fits and unpickling) and ``retriever_``
    (None for zero-shot) from its parameters: the part of ``_prepare`` both estimators share."""
    if "lm_" not in est.__dict__:
        est.lm_ = load_lm(est.lm, device=est.device, batch_size=est.batch_size, show_progress=est.show_progress)
    est.retriever_ = make_retriever(est, est.k)


def make_retriever(est: Any, k: int | str) -> Any:
    """The estimator's :class:`~ragicl.prompt.retrieve.Retriever` for ``k`` demonstrations (None for
    zero-shot; for ``k="max"`` a count-1 placeholder, replaced once the packer resolves ``k``)."""
    from ..prompt.retrieve import Retriever

    if not k:
        return None
    search = getattr(est, "search", "dense")
    index = getattr(est, "index_", None)
    if search in ("bm25", "hybrid") and index is not None and getattr(index, "lexical", None) is None:
        logger.info("search=%r: building the BM25 index in memory (save it with the index to skip this: "
                    "index.build_lexical(); index.save(path))", search)
        index.build_lexical()
    selection = "topk" if est.selection == "mdl" else est.selection  # MDL re-orders the top candidates
    return Retriever(k=1 if k == MANY_SHOT else int(k), selection=selection, seed=est.seed, search=search,
                     reranker=getattr(est, "reranker", None))
