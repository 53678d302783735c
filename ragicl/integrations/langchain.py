"""LangChain (``langchain-core``) views of a ragicl index: an example selector and a retriever.

* :class:`RagiclExampleSelector` is a ``BaseExampleSelector`` for ``FewShotPromptTemplate`` and
  ``FewShotChatMessagePromptTemplate``. It retrieves the most relevant labeled examples from an
  :class:`~ragicl.index.core.ExampleIndex` and returns as many as fit a budget counted in **tokens of a real
  tokenizer** (``LengthBasedExampleSelector`` counts words; ``SemanticSimilarityExampleSelector`` has no
  budget). After :meth:`RagiclExampleSelector.attach` the budget covers the whole rendered prompt: prefix,
  suffix, system/human messages and, for chat prompts, the tokenizer's chat template.
* :class:`RagiclRetriever` is a ``BaseRetriever``: ``invoke(query)`` returns ``Document`` objects (the
  example's text, with its id, input fields, label and score as metadata), so an index composes in LCEL.

Install with ``pip install 'ragicl[langchain]'``; importing this module without ``langchain-core``
raises :class:`~ragicl.MissingDependencyError` with that line.
"""

from __future__ import annotations

import contextvars
import logging
import os
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._exceptions import BudgetError, DataError, check_positive_int, require

require("langchain_core", "langchain", "langchain-core")

from langchain_core.example_selectors import BaseExampleSelector
from langchain_core.messages import BaseMessage
from langchain_core.prompts import BaseChatPromptTemplate
from langchain_core.prompts.message import BaseMessagePromptTemplate

from ..index.core import ExampleIndex
from ..models import DEFAULT_LM
from ..prompt.pack import greedy_select
from ..prompt.retrieve import Retriever
from ..prompt.template import verbalize
from ..types import Example
from .langchain_retriever import RagiclRetriever, _load_index, example_to_document

logger = logging.getLogger(__name__)

__all__ = ["PromptOverBudgetWarning", "RagiclExampleSelector", "RagiclRetriever", "Selection",
           "example_to_document"]


class PromptOverBudgetWarning(UserWarning):
    """A selector without :meth:`RagiclExampleSelector.attach` picked examples that, with the query's own
    text, already exceed ``max_tokens``: the rendered prompt is over budget. Attach the prompt to fix it."""

# While a selector measures a prompt it renders that prompt with a fixed example list: the prompt calls
# back into select_examples, which returns the forced list (keyed by selector id; context-local, so
# threads and asyncio tasks never see each other's measurements).
_FORCED: contextvars.ContextVar[dict[int, list[dict[str, str]]] | None] = contextvars.ContextVar(
    "ragicl_forced_examples", default=None)
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "function"}
_ANCHOR = [{"role": "system", "content": "x"}]  # fixes templates that inject a default system message


def _load_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer from a model name/path (resolved offline by ragicl.models), an LM, or a tokenizer."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        from ..models import resolve_tokenizer

        return AutoTokenizer.from_pretrained(resolve_tokenizer(str(tokenizer)))
    if callable(tokenizer):
        return tokenizer
    inner = getattr(tokenizer, "tokenizer", None)  # a ragicl TransformersLM or similar wrapper
    if inner is not None and callable(inner):
        return inner
    raise TypeError(f"tokenizer must be a model name or path, a Hugging Face tokenizer, or an object with "
                    f".tokenizer; got {type(tokenizer).__name__}.")


def _message_dict(message: BaseMessage) -> dict[str, str]:
    """A LangChain message as the ``{"role", "content"}`` dict chat templates expect."""
    role = getattr(message, "role", None) if message.type == "chat" else _ROLES.get(message.type)
    if role is None:
        raise ValueError(f"cannot map a LangChain message of type {message.type!r} to a chat-template role; "
                         f"expected one of {sorted(_ROLES)} or a ChatMessage with a role.")
    content = message.content
    if not isinstance(content, str):  # multimodal content blocks: keep the text parts
        content = "".join(part if isinstance(part, str) else str(part.get("text", ""))
                          for part in content)
    return {"role": role, "content": content}


@dataclass(frozen=True)
class Selection:
    """What :meth:`RagiclExampleSelector.select_detailed` chose for one input.

    ``examples`` are LangChain example dicts in prompt order (least relevant first, so the most relevant
    sits next to the query); ``ids`` the matching ragicl example ids; ``n_tokens`` the exact token count
    of the attached prompt rendered with them (of the examples alone when no prompt is attached);
    ``excluded`` the retrieved candidates that did not fit, most relevant first.
    """

    examples: tuple[dict[str, str], ...]
    ids: tuple[str, ...]
    n_tokens: int
    budget: int
    excluded: tuple[str, ...]


class RagiclExampleSelector(BaseExampleSelector):
    """Retrieved few-shot examples packed to a token budget of a real tokenizer, for LangChain prompts.

    Args:
        index: an :class:`~ragicl.index.core.ExampleIndex` or the path of a saved one.
        tokenizer: model name or path whose tokenizer counts the budget (default SmolLM2-135M-Instruct,
            resolved offline), a Hugging Face tokenizer, or a ragicl ``TransformersLM``.
        example_prompt: how one example is rendered (a LangChain ``PromptTemplate`` or chat template);
            taken from the prompt given to :meth:`attach` when omitted.
        k: at most this many examples.
        max_tokens: the budget. With an attached prompt it bounds the whole rendered prompt (for chat
            prompts: the messages with the tokenizer's chat template applied); otherwise the examples alone,
            and a :class:`PromptOverBudgetWarning` (also logged) is issued when those examples plus the
            query's text exceed it: forgetting ``attach`` never overflows silently.
        input_keys: template variables that hold the query, mapped to the index's input fields: a mapping
            ``{"input": "text"}``, or one variable name for a single-field index. Default: ``"input"`` for
            a single-field index, else each field under its own name.
        output_key: template variable that receives the verbalized label (or the output, generation).
        retriever: a ragicl :class:`~ragicl.prompt.retrieve.Retriever` choosing the candidates (default top-k).
        selection, search, reranker: shortcuts for ``retriever=Retriever(k, selection=..., search=...,
            reranker=...)`` (not together with ``retriever``): ``selection`` ``"topk"``, ``"balanced"``,
            ``"mmr"``, ``"dpp"``, ``"votek"`` or ``"random"``; ``search`` ``"dense"``, ``"bm25"`` or
            ``"hybrid"`` (BM25 needs ``index.build_lexical()``); ``reranker`` a cross-encoder hub id or folder.
            Whatever selects, the examples kept are the first of its order that fit ``max_tokens``.
        fetch_k: candidates retrieved per query (default ``2 * k``): long ones that do not fit are skipped.
        verbalizer: label → answer text; default writes ``_`` as a space, like ``PromptTemplate``.
        add_generation_prompt: count the chat template's assistant cue (as a model receiving it would).

    >>> from langchain_core.prompts import FewShotPromptTemplate, PromptTemplate  # doctest: +SKIP
    >>> selector = RagiclExampleSelector(index, "SmolLM2-135M-Instruct", k=8,
    ...                                  max_tokens=256)                       # doctest: +SKIP
    >>> prompt = selector.attach(FewShotPromptTemplate(                          # doctest: +SKIP
    ...     example_selector=selector, prefix="Classify the sentiment.",
    ...     example_prompt=PromptTemplate.from_template("Review: {input}\\nSentiment: {output}"),
    ...     suffix="Review: {input}\\nSentiment:", input_variables=["input"]))
    >>> text = prompt.format(input="a gripping film")  # ≤ 256 SmolLM2 tokens  # doctest: +SKIP
    """

    def __init__(self, index: ExampleIndex | str | os.PathLike, tokenizer: Any = DEFAULT_LM, *,
                 example_prompt: Any = None, k: int = 8, max_tokens: int = 1024,
                 input_keys: str | Mapping[str, str] | None = None, output_key: str = "output",
                 retriever: Retriever | None = None, fetch_k: int | None = None,
                 verbalizer: Mapping[str, str] | None = None, add_generation_prompt: bool = True,
                 selection: str | None = None, search: str | None = None, reranker: Any = None) -> None:
        self._index_spec = index
        self._index: ExampleIndex | None = index if isinstance(index, ExampleIndex) else None
        self._tokenizer_spec = tokenizer
        self._tokenizer: Any = None
        self.example_prompt = example_prompt
        self.k = check_positive_int("k", k)
        self.max_tokens = check_positive_int("max_tokens", max_tokens)
        self.fetch_k = check_positive_int("fetch_k", fetch_k) if fetch_k is not None else None
        self._input_keys_spec = input_keys
        self.output_key = output_key
        self.retriever = _make_retriever(k, retriever, selection, search, reranker)
        self.verbalizer = dict(verbalizer) if verbalizer is not None else None
        self.add_generation_prompt = add_generation_prompt
        self.prompt: Any = None
        self.separator = "\n\n"
        self._costs: dict[str, int] = {}

    def __repr__(self) -> str:
        return (f"RagiclExampleSelector(k={self.k}, max_tokens={self.max_tokens}, "
                f"attached={type(self.prompt).__name__ if self.prompt is not None else None})")

    # ------------------------------------------------------------------------------------ properties
    @property
    def index(self) -> ExampleIndex:
        """The ragicl index (loaded on first use when a path was given)."""
        if self._index is None:
            self._index = _load_index(self._index_spec)
        return self._index

    @property
    def tokenizer(self) -> Any:
        """The tokenizer that counts the budget (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = _load_tokenizer(self._tokenizer_spec)
        return self._tokenizer

    @property
    def input_keys(self) -> dict[str, str]:
        """Template variable → index input field."""
        spec, fields = self._input_keys_spec, list(self.index.input_fields)
        if isinstance(spec, Mapping):
            unknown = [f for f in spec.values() if f not in fields]
            if unknown:
                raise DataError(f"input_keys maps to field(s) {unknown} that the index does not have; its "
                                f"input fields are {fields}.")
            return dict(spec)
        if isinstance(spec, str) or spec is None:
            if len(fields) == 1:
                return {spec or "input": fields[0]}
            if spec is None:
                return {f: f for f in fields}
            example = ", ".join(f"{f!r}: {f!r}" for f in fields)
            raise ValueError(f"input_keys={spec!r} names one variable but the index has {len(fields)} input "
                             f"fields {fields}; pass a mapping such as {{{example}}}.")
        raise TypeError(f"input_keys must be a str, a mapping or None; got {type(spec).__name__}.")

    @property
    def chat(self) -> bool:
        """True when prompts are counted as chat messages through the tokenizer's chat template."""
        target = self.prompt if self.prompt is not None else self.example_prompt
        return isinstance(target, (BaseChatPromptTemplate, BaseMessagePromptTemplate))

    # ---------------------------------------------------------------------------------------- attach
    def attach(self, prompt: Any) -> Any:
        """Make the budget cover ``prompt`` (the whole prompt that contains this selector); returns it.

        ``prompt`` is the ``FewShotPromptTemplate``, the ``FewShotChatMessagePromptTemplate``, or the
        ``ChatPromptTemplate`` around it. The example format, separator and fixed text are read from it.
        """
        few_shot = _find_few_shot(prompt, self)
        if few_shot is None:
            raise ValueError(f"the {type(prompt).__name__} given to attach() does not use this selector; "
                             "pass the FewShotPromptTemplate / FewShotChatMessagePromptTemplate built with "
                             "example_selector=selector, or the ChatPromptTemplate that contains it.")
        if self.example_prompt is None:
            self.example_prompt = few_shot.example_prompt
        self.separator = getattr(few_shot, "example_separator", self.separator)
        self.prompt = prompt
        self._costs.clear()
        return prompt

    # ------------------------------------------------------------------------------------ conversion
    def to_example_dict(self, example: Example) -> dict[str, str]:
        """A ragicl example as a LangChain example dict: input variables plus ``output_key``."""
        out = {var: str(example.inputs[field]) for var, field in self.input_keys.items()}
        if example.label is not None:
            out[self.output_key] = self._verbalize(example.label)
        elif example.output is not None:
            out[self.output_key] = example.output
        return out

    def _verbalize(self, label: str) -> str:
        return verbalize(label, self.verbalizer)

    def _query(self, input_variables: Mapping[str, Any]) -> dict[str, str]:
        missing = [var for var in self.input_keys if var not in input_variables]
        if missing:
            raise KeyError(f"the prompt inputs {sorted(input_variables)} lack {missing}, the variable(s) "
                           f"this selector retrieves with (input_keys={self.input_keys}). Pass them, or set "
                           "input_keys to the variable holding the query.")
        return {field: str(input_variables[var]) for var, field in self.input_keys.items()}

    # -------------------------------------------------------------------------------------- counting
    def count_tokens(self, input_variables: Mapping[str, Any], examples: Sequence[Mapping[str, str]]) -> int:
        """Exact tokens of the attached prompt rendered with ``examples`` (what the model receives)."""
        if self.prompt is None:
            raise ValueError("count_tokens needs the whole prompt: call selector.attach(prompt) first.")
        forced = dict(_FORCED.get() or {})
        forced[id(self)] = [dict(e) for e in examples]
        token = _FORCED.set(forced)
        try:
            if self.chat:
                return self._count_messages([_message_dict(m) for m in
                                             self.prompt.format_messages(**input_variables)])
            text = self.prompt.format(**input_variables)
            return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        finally:
            _FORCED.reset(token)

    def _count_messages(self, messages: list[dict[str, str]], generation_prompt: bool | None = None) -> int:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(f"the prompt is a chat prompt but tokenizer {type(self.tokenizer).__name__} has no "
                             "chat template to count it with. Fix: pass the tokenizer (or name) of the chat "
                             "model that receives the prompt, or use a string FewShotPromptTemplate.")
        gen = self.add_generation_prompt if generation_prompt is None else generation_prompt
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _cost(self, example: Example) -> int:
        """Tokens one example adds (separator included), computed once per example id."""
        cost = self._costs.get(example.id)
        if cost is None:
            values = self.to_example_dict(example)
            if self.chat:
                messages = [_message_dict(m) for m in self.example_prompt.format_messages(**values)]
                try:
                    cost = self._count_messages(_ANCHOR + messages, False) - self._count_messages(_ANCHOR, False)
                except Exception:  # noqa: BLE001 - templates that reject a system turn: count the turns alone
                    cost = self._count_messages(messages, False)
            else:
                text = self.separator + self.example_prompt.format(**values)
                cost = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            self._costs[example.id] = cost
        return cost

    # ------------------------------------------------------------------------------------- selecting
    def select_detailed(self, input_variables: Mapping[str, Any]) -> Selection:
        """Retrieve, pack to the budget, and verify with a final exact count (see :class:`Selection`)."""
        if self.example_prompt is None:
            raise ValueError("no example_prompt: pass example_prompt=... to RagiclExampleSelector or call "
                             "selector.attach(prompt) with the few-shot prompt that uses it.")
        index, budget = self.index, self.max_tokens
        fetch = self.fetch_k or 2 * self.k
        found = self.retriever.retrieve(index, [self._query(input_variables)], n_candidates=fetch)[0]
        overhead = self.count_tokens(input_variables, []) if self.prompt is not None else 0
        if overhead > budget:
            raise BudgetError(f"the prompt without any example already has {overhead} tokens; the budget is "
                              f"max_tokens={budget}. Raise max_tokens or shorten the prompt/query.")
        costs = {p: self._cost(index.examples[p]) for p in found.positions}
        picked, left = greedy_select(list(found.positions), costs, budget - overhead, self.k)
        chosen, skipped = [index.examples[p] for p in picked], [index.examples[p] for p in left]
        n_tokens = overhead + sum(costs[p] for p in picked)
        if self.prompt is None:
            self._warn_unattached(input_variables, n_tokens, budget)
        else:  # exact check: drop the least relevant while boundary effects overflow
            while True:
                n_tokens = self.count_tokens(input_variables, [self.to_example_dict(e) for e in chosen[::-1]])
                if n_tokens <= budget or not chosen:
                    break
                logger.debug("prompt has %d tokens > %d; dropping %s", n_tokens, budget, chosen[-1].id)
                skipped.insert(0, chosen.pop())
        return Selection(examples=tuple(self.to_example_dict(e) for e in chosen[::-1]),
                         ids=tuple(e.id for e in chosen[::-1]), n_tokens=n_tokens, budget=budget,
                         excluded=tuple(e.id for e in skipped))

    def _warn_unattached(self, input_variables: Mapping[str, Any], n_examples: int, budget: int) -> None:
        """Without ``attach`` only the examples are budgeted: warn when they plus the query overflow."""
        query = "\n".join(str(v) for v in self._query(input_variables).values())
        n_query = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
        if n_examples + n_query > budget:
            message = (f"the selected examples take {n_examples} tokens and the query's inputs {n_query}, so "
                       f"the prompt has at least {n_examples + n_query} tokens > max_tokens={budget} (its "
                       "prefix, suffix and template text come on top). Without attach() the budget covers "
                       "the examples alone. Fix: call selector.attach(prompt) with the few-shot prompt, so "
                       "the budget bounds the whole rendered prompt.")
            logger.warning(message)
            warnings.warn(message, PromptOverBudgetWarning, stacklevel=3)

    def select_examples(self, input_variables: dict[str, str]) -> list[dict[str, str]]:
        """The examples for these prompt inputs, least relevant first, within the token budget."""
        forced = _FORCED.get()
        if forced is not None and id(self) in forced:
            return forced[id(self)]
        return list(self.select_detailed(input_variables).examples)

    def add_example(self, example: dict[str, str]) -> str:
        """Add a LangChain example dict to the index (embedded now); returns its new ragicl id.

        The dict needs the input variables and ``output_key`` (a verbalized label is mapped back). An
        ``"id"`` key is used as the id when present.
        """
        index = self.index
        try:
            inputs = {field: str(example[var]) for var, field in self.input_keys.items()}
            target = str(example[self.output_key])
        except KeyError as err:
            raise DataError(f"example {example!r} lacks key {err.args[0]!r}; expected the input variable(s) "
                            f"{list(self.input_keys)} and {self.output_key!r}.") from None
        ex_id = str(example.get("id") or f"langchain-{uuid.uuid4().hex[:12]}")
        if index.dataset.task == "generation":
            new = Example(ex_id, inputs, output=target)
        else:
            words = {self._verbalize(lab): lab for lab in index.labels}
            label = target if target in index.labels else words.get(target)
            if label is None:
                raise DataError(f"example label {target!r} is none of the index's labels "
                                f"{list(index.labels)} (or their verbalized forms {sorted(words)}).")
            new = Example(ex_id, inputs, label=label)
        index.add(new)
        return ex_id


def _make_retriever(k: int, retriever: Retriever | None, selection: str | None, search: str | None,
                    reranker: Any) -> Retriever:
    """The selector's retriever: the one given, or one built from the shortcuts (top-k dense by default)."""
    shortcuts = {name: v for name, v in (("selection", selection), ("search", search), ("reranker", reranker))
                 if v is not None}
    if retriever is not None:
        if shortcuts:
            raise ValueError(f"got retriever= and {sorted(shortcuts)}; pass either a Retriever or the shortcut "
                             "options, e.g. Retriever(k, selection=..., search=...) alone.")
        return retriever
    return Retriever(k=k, **shortcuts)


def _find_few_shot(prompt: Any, selector: RagiclExampleSelector) -> Any:
    """The few-shot template inside ``prompt`` whose ``example_selector`` is ``selector``."""
    if getattr(prompt, "example_selector", None) is selector:
        return prompt
    for message in getattr(prompt, "messages", None) or []:
        found = _find_few_shot(message, selector)
        if found is not None:
            return found
    return None
