"""LangChain (``langchain-core``) retriever over a ragicl index, and the Example → ``Document`` mapping.

Part of :mod:`ragicl.integrations.langchain` (which re-exports both); see there for the example selector.
Install with ``pip install 'ragicl[langchain]'``.
"""

from __future__ import annotations

import os
from typing import Any

from .._exceptions import check_positive_int, require

require("langchain_core", "langchain", "langchain-core")

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, field_validator, model_validator

from ..index.core import ExampleIndex
from ..prompt.retrieve import Retriever, check_selection, resolve_selection
from ..types import Example

__all__ = ["RagiclRetriever", "example_to_document"]


def _load_index(index: ExampleIndex | str | os.PathLike) -> ExampleIndex:
    if isinstance(index, ExampleIndex):
        return index
    if isinstance(index, (str, os.PathLike)):
        return ExampleIndex.load(index)
    raise TypeError(f"index must be a ragicl ExampleIndex or the path of a saved one; got "
                    f"{type(index).__name__}. Build one with ExampleIndex.build(dataset).")



def example_to_document(example: Example, score: float | None = None) -> Document:
    """A ragicl :class:`~ragicl.types.Example` as a LangChain ``Document``.

    ``page_content`` is :meth:`Example.text` (the embedded text); ``metadata`` holds the input fields,
    ``id``, ``label`` (or ``output``) and the retrieval ``score`` when given.

    >>> doc = example_to_document(Example("3", {"text": "a joy"}, label="positive"), 0.9)
    >>> doc.page_content, doc.metadata["label"], doc.metadata["score"]
    ('a joy', 'positive', 0.9)
    """
    metadata: dict[str, Any] = {**example.inputs, "id": example.id}
    if example.label is not None:
        metadata["label"] = example.label
    if example.output is not None:
        metadata["output"] = example.output
    if score is not None:
        metadata["score"] = float(score)
    return Document(page_content=example.text(), metadata=metadata, id=example.id)


class RagiclRetriever(BaseRetriever):
    """A LangChain retriever over a ragicl index: ``invoke(query) -> list[Document]``, best first.

    Documents carry the example text as ``page_content`` and ``{fields..., "id", "label", "score"}`` as
    metadata (see :func:`example_to_document`). Like every ragicl retrieval, exact duplicates of the query
    are never returned. ``selection`` is any :class:`~ragicl.prompt.retrieve.Retriever` selection
    (``strategy`` is its deprecated alias, as for ``Retriever``).

    ``invoke(query, k=2)`` (or ``selection=...``) overrides the field for that call; any other keyword
    raises ``TypeError``.

    >>> retriever = RagiclRetriever(index=index, k=3)                        # doctest: +SKIP
    >>> [d.metadata["label"] for d in retriever.invoke("a gripping film")]  # doctest: +SKIP
    ['positive', 'positive', 'positive']
    >>> len(retriever.invoke("a gripping film", k=1))                      # doctest: +SKIP
    1
    """

    index: Any
    """An :class:`~ragicl.index.core.ExampleIndex` (or the path of a saved one, loaded at construction)."""
    k: int = Field(default=4, gt=0)
    """How many documents to return."""
    selection: str = "topk"
    """How documents are chosen: ``"topk"``, ``"balanced"``, ``"mmr"`` or ``"random"``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _strategy_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "strategy" in data:
            data = dict(data)
            data["selection"] = resolve_selection(data.get("selection"), data.pop("strategy"), stacklevel=6)
        return data

    @field_validator("selection")
    @classmethod
    def _check_selection(cls, value: str) -> str:
        return check_selection(value)

    @field_validator("index", mode="before")
    @classmethod
    def _check_index(cls, value: Any) -> ExampleIndex:
        return _load_index(value)

    @property
    def strategy(self) -> str:
        """Deprecated alias of :attr:`selection` (read-only)."""
        return self.selection

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None, selection: str | None = None,
                                strategy: str | None = None, **kwargs: Any) -> list[Document]:
        # langchain-core passes invoke()'s extra keywords here because this signature has more than
        # (query, run_manager); ``verbose`` is its own and ignored.
        kwargs.pop("verbose", None)
        if kwargs:
            raise TypeError(f"RagiclRetriever.invoke() got unexpected keyword(s) {sorted(kwargs)}; it accepts "
                            "k=... and selection=... per call.")
        k = self.k if k is None else check_positive_int("k", k)
        chosen = self.selection if selection is None and strategy is None else resolve_selection(selection, strategy)
        found = Retriever(k=k, selection=chosen).retrieve(self.index, [query])[0]
        examples = self.index.examples
        return [example_to_document(examples[p], s) for p, s in zip(found.positions, found.scores)]

    async def _aget_relevant_documents(self, query: str, *, run_manager: Any, **kwargs: Any) -> list[Document]:
        # langchain-core's default drops the extra keywords (k=...) on the async path: pass them on
        from langchain_core.runnables.config import run_in_executor

        return await run_in_executor(None, self._get_relevant_documents, query,
                                     run_manager=run_manager.get_sync(), **kwargs)
