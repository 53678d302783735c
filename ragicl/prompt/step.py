"""The retrieve-and-pack step: the one place that turns queries into packed prompts.

Every ICL system in ragicl builds its prompts here: :class:`~ragicl.ICLClassifier` and
:class:`~ragicl.ICLGenerator` (``prompts``), the fine-tuned reference and the auxiliary few-shot loss
(zero-shot prompts of the training examples). :func:`make_packer` is the one factory of a
:class:`~ragicl.prompt.pack.Packer` for an LM (its tokenizer and context length), a template and the indexed
examples; :class:`PromptStep` pairs that packer with a :class:`~ragicl.prompt.retrieve.Retriever`, the index
and ``k``: retrieve ``n_candidates`` (default ``2k``) per query, then pack at most ``k`` that fit the budget.
With ``k=0`` (or no retriever/index) the prompts are zero-shot and nothing is retrieved or embedded. The
estimators accept ``k="max"`` (many-shot: as many as the budget holds), resolved by :func:`resolve_k`.

>>> from ragicl.data import from_records
>>> from ragicl.index.core import ExampleIndex
>>> from ragicl.prompt.template import PromptTemplate
>>> from transformers import AutoTokenizer                                    # doctest: +SKIP
>>> ds = from_records([{"text": t, "label": l} for t, l in
...                    [("good film", "pos"), ("great film", "pos"), ("bad film", "neg")]])
>>> index = ExampleIndex.build(ds, embedder="hash-32")
>>> packer = Packer(tok, PromptTemplate(), max_prompt_tokens=64).fit(index.examples)  # doctest: +SKIP
>>> step = PromptStep(packer, Retriever(k=2), index, k=2)                     # doctest: +SKIP
>>> step([ds[0]])[0].included                                                 # doctest: +SKIP
('train-2', 'train-1')
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._exceptions import BudgetError
from ..types import Example, PackedPrompt
from .pack import Packer
from .retrieve import Retriever
from .template import PromptTemplate

if TYPE_CHECKING:
    from ..index.core import ExampleIndex

__all__ = ["MANY_SHOT", "PromptStep", "check_k", "make_packer", "resolve_k"]

#: ``k`` meaning "as many demonstrations as the token budget holds" (many-shot)
MANY_SHOT = "max"


def check_k(k: Any) -> int | str:
    """``k`` if it is a non-negative int or ``"max"``; else a ValueError saying what is expected."""
    if k == MANY_SHOT:
        return k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer (0 = zero-shot) or 'max' (as many demonstrations "
                         f"as the token budget holds), got {k!r}.")
    return int(k)


def resolve_k(k: int | str, packer: Packer, n_examples: int) -> int:
    """The demonstration cap behind ``k``: ``k`` itself, or for ``"max"`` the most that could fit the
    packer's budget (:attr:`Packer.max_demonstrations`, at most ``n_examples``): retrieval hands that many
    most-relevant candidates (times two) to the packer, whose budget then decides how many go in."""
    k = check_k(k)
    if k == MANY_SHOT:
        return max(1, min(n_examples, packer.max_demonstrations))
    return int(k)


def make_packer(lm: Any, template: PromptTemplate, examples: Sequence[Example] = (), *,
                max_prompt_tokens: int | None, answer_tokens: int | None = None,
                labels: Sequence[str] | None = None, index: ExampleIndex | None = None) -> Packer:
    """A fitted :class:`Packer` for ``lm`` (an object with ``.tokenizer`` and ``.context_length``, e.g. a
    loaded :class:`~ragicl.lm.hf.TransformersLM`), ``template`` and the demonstrations ``examples``.

    ``answer_tokens`` keeps room for generation (``max_new_tokens``); for classification leave it None and
    pass ``labels``, whose longest answer sets it. With ``index`` (whose ``examples`` these are), the fitted
    packer is kept for the index's lifetime and handed to every later call with the same tokenizer, template
    and budget: fitting tokenizes every indexed example, so the systems of one evaluation (zero-shot aside)
    share one fit instead of repeating it (seconds at 10⁴ examples, minutes at 10⁶)."""
    def fit() -> Packer:
        return Packer(lm.tokenizer, template, max_prompt_tokens=max_prompt_tokens, context_length=lm.context_length,
                      answer_tokens=answer_tokens).fit(list(examples), labels=labels)

    if index is None:
        return fit()
    owned = index.examples
    key = (id(lm.tokenizer), id(owned), template, max_prompt_tokens, lm.context_length, answer_tokens,
           None if labels is None else tuple(labels))
    with _PACKERS_LOCK:
        per_index = _PACKERS.setdefault(index, {})
        hit = per_index.get(key)
    if hit is not None and hit[0] is lm.tokenizer and hit[1] is owned and len(owned) == len(examples):
        return hit[2]
    packer = fit()
    with _PACKERS_LOCK:
        per_index[key] = (lm.tokenizer, owned, packer)  # the references pin the ids the key uses
    return packer


#: fitted packers per index (weak: dropped with the index), keyed by tokenizer, examples, template, budget
_PACKERS: weakref.WeakKeyDictionary[Any, dict[tuple, tuple[Any, Any, Packer]]] = weakref.WeakKeyDictionary()
_PACKERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class PromptStep:
    """Retrieve-and-pack: ``step(queries)`` → one :class:`~ragicl.types.PackedPrompt` per query.

    ``packer`` is fitted on ``index.examples`` (candidate positions are positions into them); ``retriever``
    and ``index`` may be None for zero-shot. ``k`` caps the demonstrations per prompt; ``n_candidates``
    (default ``2k``) is how many the retriever hands to the packer, so long ones that do not fit are
    replaced by the next most relevant.
    """

    packer: Packer
    retriever: Retriever | None = None
    index: ExampleIndex | None = None
    k: int = 0
    n_candidates: int | None = None

    @property
    def zero_shot(self) -> bool:
        """True when no demonstrations are retrieved."""
        return self.retriever is None or self.index is None or self.k == 0

    def candidates(self, queries: Sequence[Example]) -> list[Sequence[int]]:
        """The retrieved candidate positions per query, most relevant first (empty lists when zero-shot)."""
        if self.zero_shot:
            return [[] for _ in queries]
        retrieved = self.retriever.retrieve(self.index, list(queries),  # type: ignore[union-attr]
                                            n_candidates=self.n_candidates or 2 * self.k)
        return [r.positions for r in retrieved]

    def __call__(self, queries: Sequence[Example]) -> list[PackedPrompt]:
        """The packed prompts for ``queries`` (:class:`BudgetError` when a query alone does not fit)."""
        queries = list(queries)
        if self.zero_shot:
            return self.packer.pack_batch(queries, [[] for _ in queries])
        return self.packer.pack_batch(queries, self.candidates(queries), max_examples=self.k)

    def pack_each(self, queries: Sequence[Example]) -> list[PackedPrompt | None]:
        """Like calling the step, but a query that alone exceeds the budget gets None instead of raising
        (training sets: such examples are skipped)."""
        queries = list(queries)
        try:
            return list(self(queries))
        except BudgetError:
            pass
        cands = self.candidates(queries)
        cap = None if self.zero_shot else self.k
        out: list[PackedPrompt | None] = []
        for q, c in zip(queries, cands):
            try:
                out.append(self.packer.pack(q, c, max_examples=cap))
            except BudgetError:
                out.append(None)
        return out
