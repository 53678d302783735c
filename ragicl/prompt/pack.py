"""Packing retrieved examples into a prompt under an exact token budget.

A prompt is ``[tokenizer specials] + lead + demonstrations + query + tail`` where *lead* is the instruction
(or, in chat mode, the chat template's text up to the user content) and *tail* is the chat template's
text after the user content. Every block after the first starts with the separator: byte-level BPE
pre-tokenizers split a whitespace run before a letter into its own pieces, so ``tokens("…positive") +
tokens("\\n\\nReview: …")`` equals the tokens of the joined text, whereas a separator at the *end* of a
block would tokenize differently alone (``"\\n\\n"`` at the end of a string becomes one merged token).

:meth:`Packer.fit` renders and tokenizes every example once, in both forms (with and without the leading
separator), then checks on sample prompts that the concatenated cached ids equal the tokenizer's ids of
the rendered text. When they do (the fast path) a ``pack`` is integer arithmetic over cached lengths plus
one concatenation; the query block is the only text tokenized (by the fastest encoder of
:mod:`ragicl.prompt._pack_fast` that reproduced the tokenizer's ids at fit), and :meth:`Packer.prepare` does that
once for queries packed more than once (several budgets, ``k`` values). When they do not (a tokenizer that
merges across block boundaries) the packer logs a warning and re-tokenizes each packed prompt, dropping the
least relevant demonstration until it fits. Either way ``prompt.token_ids ==
tokenizer(prompt.text).input_ids`` and ``prompt.n_tokens <= prompt.budget``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ragicl._exceptions import BudgetError, DataError, NotFittedError
from ragicl.prompt._pack_checks import FitChecks
from ragicl.prompt._pack_fast import candidate_encoders, shared_ints
from ragicl.prompt.template import PromptTemplate
from ragicl.types import Example, PackedPrompt, Query

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedQuery:
    """A query with its prompt block already tokenized, from :meth:`Packer.prepare`.

    ``block_ids`` are the tokenizer's ids of ``separator + cue``. Any packer with the same tokenizer object
    and an equal template uses them as they are (e.g. one packer per budget); another packer re-tokenizes.
    """

    inputs: Mapping[str, str]
    id: str | None
    cue: str
    block_ids: tuple[int, ...]
    key: tuple[Any, PromptTemplate] = field(repr=False, compare=False)


PackQuery = Query | PreparedQuery  # what pack/pack_batch/prepare accept
_SANE_MAX_LENGTH = 10_000_000  # tokenizers without a limit report model_max_length ~ 1e30


class Packer(FitChecks):
    """Packs the most relevant examples that fit into a prompt of at most ``budget_`` tokens.

    ``budget_ = min(max_prompt_tokens, context_length - answer_tokens)`` counted over the whole prompt
    (special tokens, instruction/chat frame, demonstrations, query). ``context_length`` defaults to the
    tokenizer's ``model_max_length`` when that is a real limit. ``answer_tokens`` defaults to the longest
    label answer (classification); for generation pass ``max_new_tokens``. ``mode="retokenize"`` forces
    the exact slow path (the default ``"auto"`` picks the fast path when the fit-time check passes).
    ``encoder_`` names the query-block encoder that passed the check (``"backend"`` or ``"wrapper"``,
    see :mod:`ragicl.prompt._pack_fast`); :meth:`prepare` tokenizes queries ahead of packing.

    >>> from ragicl.models import load_tokenizer                        # doctest: +SKIP
    >>> tok = load_tokenizer("SmolLM2-135M-Instruct")  # the tokenizer alone  # doctest: +SKIP
    >>> train = [Example(str(i), {"text": t}, label=lab)                # doctest: +SKIP
    ...          for i, (t, lab) in enumerate([("fun", "positive"), ("dull", "negative")])]
    >>> packer = Packer(tok, PromptTemplate(), max_prompt_tokens=64).fit(train)  # doctest: +SKIP
    >>> p = packer.pack({"text": "a joy"}, [1, 0])                      # doctest: +SKIP
    >>> p.included, p.n_tokens <= 64                                    # doctest: +SKIP
    (('0', '1'), True)
    """

    def __init__(self, tokenizer: Any, template: PromptTemplate, max_prompt_tokens: int | None = None,
                 context_length: int | None = None, answer_tokens: int | None = None,
                 mode: Literal["auto", "retokenize"] = "auto", check_samples: int = 16, seed: int = 0):
        self.tokenizer = tokenizer
        self.template = template
        self.max_prompt_tokens = max_prompt_tokens
        self.context_length = context_length
        self.answer_tokens = answer_tokens
        self.mode = mode
        self.check_samples = check_samples
        self.seed = seed

    # ------------------------------------------------------------------------------------------- fit
    def fit(self, examples: Sequence[Example], labels: Sequence[str] | None = None) -> Packer:
        """Render and tokenize every example once, fix the budget, and choose the fast or exact path.

        ``labels`` (default: the distinct labels of ``examples``) are the answers whose token length sets
        ``answer_tokens`` when it was not given, and whose continuation tokenization is checked.
        """
        tpl = self.template
        if self.mode not in ("auto", "retokenize"):
            raise ValueError(f"mode must be 'auto' or 'retokenize', got {self.mode!r}.")
        for name in ("max_prompt_tokens", "context_length", "answer_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0
                                      or (value == 0 and name != "answer_tokens")):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
        examples = tuple(examples)
        tpl.validate(list(examples[0].inputs) if examples else None)
        sep = tpl.separator
        self._ids = tuple(ex.id for ex in examples)
        self._text_bare = [tpl.render_example(ex) for ex in examples]
        self._ids_bare = self._batch_encode(self._text_bare)
        self._text_sep = [sep + t for t in self._text_bare]
        self._ids_sep = self._batch_encode(self._text_sep)
        self._ids_bare, self._ids_sep = shared_ints(self._ids_bare, self._ids_sep)
        self._len_sep = [len(ids) for ids in self._ids_sep]
        self._len_bare = [len(ids) for ids in self._ids_bare]
        self._min_saving = min((s - b for s, b in zip(self._len_sep, self._len_bare)), default=0)
        self._min_len = min(self._len_sep, default=0)
        self._answer_cache: dict[str, list[int]] = {}
        self._set_frame()
        self.labels_ = self._labels(examples, labels)
        self.answer_tokens_ = self._answer_tokens()
        self.budget_ = self._budget()
        self._key = (self.tokenizer, tpl)
        self._encoders = candidate_encoders(self.tokenizer, (self._wrapper_encode, self._batch_encode),
                                            self._text_bare + self._text_sep, self._ids_bare + self._ids_sep)
        self.encoder_, self._encode, self._encode_many = self._encoders[-1]  # the wrapper unless a faster one passes
        self.fast_ = self.mode == "auto" and self._check_fast_path(examples)
        self.answers_exact_ = self._check_answers(examples)
        self._fitted = True
        logger.info("Packer fitted on %d examples: budget %d tokens (answer_tokens %d), %s path", len(examples),
                    self.budget_, self.answer_tokens_, "fast concatenation" if self.fast_ else "re-tokenizing")
        return self

    def _batch_encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def _full_encode(self, text: str) -> list[int]:
        """The reference: what the model receives for ``text``."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _wrapper_encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _labels(self, examples: Sequence[Example], labels: Sequence[str] | None) -> tuple[str, ...]:
        if self.template.target != "label":
            return ()
        if labels is None:
            labels = sorted({ex.label for ex in examples if ex.label is not None})
        labels = tuple(labels)
        answers = [self.template.answer(lab) for lab in labels]
        if len(set(answers)) != len(answers):
            dup = sorted({a for a in answers if answers.count(a) > 1})
            raise ValueError(f"labels {list(labels)} verbalize to duplicate answers {dup}; give the verbalizer "
                             f"distinct words per label.")
        return labels

    def _context(self) -> int | None:
        if self.context_length is not None:
            return self.context_length
        mml = getattr(self.tokenizer, "model_max_length", None)
        return mml if isinstance(mml, int) and 0 < mml <= _SANE_MAX_LENGTH else None

    def _answer_tokens(self) -> int:
        if self.answer_tokens is not None:
            return self.answer_tokens
        lengths = [len(self.answer_ids(lab)) for lab in self.labels_]
        if lengths:
            return max(lengths)
        if self._context() is None:
            return 0
        raise ValueError("answer_tokens is needed to keep room for the answer inside the context window: "
                         "pass answer_tokens=max_new_tokens for generation, or fit with labels=[...].")

    def _budget(self) -> int:
        limits: list[int] = []
        if self.max_prompt_tokens is not None:
            limits.append(self.max_prompt_tokens)
        ctx = self._context()
        if ctx is not None:
            limits.append(ctx - self.answer_tokens_)
        if not limits:
            raise ValueError("no token budget: the tokenizer reports no real model_max_length; pass "
                             "max_prompt_tokens=... or context_length=... to Packer.")
        budget = min(limits)
        if budget <= 0:
            raise ValueError(f"the budget is {budget} tokens (context_length {ctx} - answer_tokens "
                             f"{self.answer_tokens_}); raise context_length or lower answer_tokens.")
        return budget

    # ---------------------------------------------------------------------------------------- packing
    @property
    def max_demonstrations(self) -> int:
        """The most demonstrations one prompt could hold: the budget over the shortest demonstration (at
        least 1; an upper bound, what ``k="max"`` retrieves and lets the budget cut)."""
        self._require_fitted()
        return max(1, self.budget_ // max(1, self._min_len))

    def answer_ids(self, label: str) -> list[int]:
        """Token ids of ``template.answer(label)`` (no special tokens): the continuation the LM scores."""
        ids = self._answer_cache.get(label) if hasattr(self, "_answer_cache") else None
        if ids is None:
            ids = list(self.tokenizer(self.template.answer(label), add_special_tokens=False)["input_ids"])
            if hasattr(self, "_answer_cache"):
                self._answer_cache[label] = ids
        return list(ids)

    def pack(self, query: PackQuery, candidates: Sequence[int], *, max_examples: int | None = None
             ) -> PackedPrompt:
        """The prompt for ``query`` with as many of ``candidates`` (positions, most relevant first) as fit.

        ``max_examples`` caps the demonstrations (e.g. the classifier's ``k``): give more candidates than
        that, and ones that do not fit are replaced by the next most relevant. Candidates left out, for
        lack of room or past the cap, are recorded in ``excluded``. Negative positions (the ``-1``
        padding of a search result) and repeats are ignored. Raises :class:`BudgetError` when the query
        alone does not fit.
        """
        self._require_fitted()
        inputs, qid, cue, q_ids = self._query_blocks([query], need_ids=False)[0]
        return self._pack_one(inputs, candidates, qid, cue=cue, q_ids=q_ids, max_examples=max_examples)

    def pack_batch(self, queries: Sequence[PackQuery], candidate_lists: Sequence[Sequence[int]], *,
                   max_examples: int | None = None) -> list[PackedPrompt]:
        """:meth:`pack` for many queries; query blocks not already prepared are tokenized in one batch."""
        self._require_fitted()
        if len(queries) != len(candidate_lists):
            raise ValueError(f"pack_batch got {len(queries)} queries but {len(candidate_lists)} candidate "
                             f"lists; pass one candidate list per query.")
        blocks = self._query_blocks(queries, need_ids=self.fast_)
        return [self._pack_one(inputs, cands, qid, cue=cue, q_ids=ids, max_examples=max_examples)
                for (inputs, qid, cue, ids), cands in zip(blocks, candidate_lists)]

    def prepare(self, queries: Sequence[PackQuery]) -> list[PreparedQuery]:
        """Tokenize the query blocks of ``queries`` once, for packing them more than once.

        ``pack``/``pack_batch`` take the result in place of the queries and then tokenize nothing; the
        prompts are the same as for the raw queries. Packers sharing the tokenizer object and an equal
        template (e.g. one per budget) share prepared queries.
        """
        self._require_fitted()
        return [PreparedQuery(inputs, qid, cue, tuple(ids), self._key)
                for inputs, qid, cue, ids in self._query_blocks(queries, need_ids=True)]

    def _query_blocks(self, queries: Sequence[PackQuery], need_ids: bool
                      ) -> list[tuple[Mapping[str, str], str | None, str, Sequence[int] | None]]:
        """``(inputs, id, cue, ids of separator + cue or None)`` per query, the ids of prepared queries reused,
        the others' tokenized in one batch if ``need_ids``."""
        out: list[Any] = [None] * len(queries)
        todo: list[int] = []
        for i, q in enumerate(queries):
            if isinstance(q, PreparedQuery) and q.key == self._key:
                out[i] = (q.inputs, q.id, q.cue, q.block_ids)
            else:
                todo.append(i)
        if todo:
            parsed = [self._query_inputs(queries[i]) for i in todo]
            cues = [self.template.render_query(inputs, example_id=qid) for inputs, qid in parsed]
            sep = self.template.separator
            encode = self._encode_many if self.fast_ else self._batch_encode  # unchecked encoders: the reference
            ids = encode([sep + c for c in cues]) if need_ids else [None] * len(cues)
            for i, (inputs, qid), cue, q_ids in zip(todo, parsed, cues, ids):
                out[i] = (inputs, qid, cue, q_ids)
        return out

    def _require_fitted(self) -> None:
        if not getattr(self, "_fitted", False):
            raise NotFittedError("Packer is not fitted: call packer.fit(examples) before pack().")

    def _query_inputs(self, query: PackQuery) -> tuple[Mapping[str, str], str | None]:
        if isinstance(query, PreparedQuery):  # from a packer with another tokenizer or template
            return query.inputs, query.id
        if isinstance(query, Example):
            return query.inputs, query.id
        if isinstance(query, str):
            fields = self.template.input_fields
            if len(fields) != 1:
                raise DataError(f"a plain-string query needs a single-field template, but the template uses "
                                f"{list(fields)}; pass a mapping {{field: text}} or an Example.")
            return {fields[0]: query}, None
        if isinstance(query, Mapping):
            return query, None
        raise TypeError(f"query must be an Example, a mapping of input fields, or a string; got "
                        f"{type(query).__name__}.")

    def _pack_one(self, inputs: Mapping[str, str], candidates: Sequence[int], qid: str | None, *,
                  cue: str | None = None, q_ids: Sequence[int] | None = None, budget: int | None = None,
                  max_examples: int | None = None) -> PackedPrompt:
        budget = self.budget_ if budget is None else budget
        if cue is None:
            cue = self.template.render_query(inputs, example_id=qid)
        if q_ids is None:
            q_ids = self._encode(self.template.separator + cue)
        ids_of = self._ids
        avail = budget - self._fixed - len(q_ids) + (0 if self._sep_first else self._min_saving)
        cap = len(ids_of) if max_examples is None else max_examples
        if hasattr(candidates, "tolist"):  # numpy arrays: index with plain ints
            candidates = candidates.tolist()  # type: ignore[union-attr]
        elif not isinstance(candidates, (list, tuple)):
            candidates = list(candidates)
        try:
            unique = candidates  # relevance order; repeats and negative positions (-1 padding) dropped
            if len(set(candidates)) < len(candidates):
                unique = list(dict.fromkeys(candidates))
            if unique and min(unique) < 0:
                unique = [p for p in unique if p >= 0]
            chosen, skipped = greedy_select(unique, self._len_sep, avail, cap, self._min_len)
            excluded = tuple(map(ids_of.__getitem__, skipped))  # also checks the positions greedy_select never read
        except (IndexError, TypeError):
            raise IndexError(f"candidates must be integer positions into the {len(ids_of)} fitted examples; "
                             f"got {list(candidates)[:20]!r}.") from None
        if self.fast_:
            ids, text = self._assemble(chosen, cue, q_ids)
        else:
            n_chosen = len(chosen)
            ids, text = self._fit_by_retokenizing(chosen, cue, budget)
            if len(chosen) < n_chosen:  # dropped examples join the excluded ones, in relevance order
                kept = set(chosen)
                excluded = tuple([ids_of[p] for p in unique if p not in kept])
        if len(ids) > budget:
            self._raise_budget(len(ids), budget)
        return PackedPrompt(text=text, token_ids=ids, budget=budget,
                            included=tuple(map(ids_of.__getitem__, reversed(chosen))), excluded=excluded)

    def _assemble(self, chosen: list[int], cue: str, q_sep_ids: Sequence[int]) -> tuple[tuple[int, ...], str]:
        """Concatenate cached ids and texts; the prompt holds ``chosen`` (most relevant first) in reverse, so
        the most relevant example sits next to the query."""
        ids = list(self._head_ids)
        texts = [self._lead_text]
        order = chosen[::-1]
        if order and not self._sep_first:  # the first block in the prompt goes without its separator
            ids += self._ids_bare[order[0]]
            texts.append(self._text_bare[order[0]])
            del order[0]
        ids_sep, text_sep = self._ids_sep, self._text_sep
        for p in order:  # list += list copies in C: faster than itertools.chain's element-by-element walk
            ids += ids_sep[p]
            texts.append(text_sep[p])
        if chosen or self._sep_first:
            ids += q_sep_ids
            texts.append(self.template.separator)
        else:
            ids += self._encode(cue)
        ids += self._end_ids
        texts += (cue, self._tail_text)
        return tuple(ids), "".join(texts)

    def _render(self, order: Sequence[int], cue: str) -> str:
        sep = self.template.separator
        blocks = [self._text_bare[p] for p in order] + [cue]
        lead = self._lead_text + (sep if self._sep_first else "")
        return lead + sep.join(blocks) + self._tail_text

    def _fit_by_retokenizing(self, chosen: list[int], cue: str, budget: int) -> tuple[tuple[int, ...], str]:
        """Exact path: tokenize the rendered prompt; drop the least relevant example until it fits."""
        while True:
            text = self._render(chosen[::-1], cue)
            ids = self._full_encode(text)
            if len(ids) <= budget or not chosen:
                return tuple(ids), text
            chosen.pop()

    def _raise_budget(self, n_tokens: int, budget: int) -> None:
        raise BudgetError(f"the query alone needs {n_tokens} prompt tokens (with {self._fixed} tokens of "
                          f"instruction/chat frame/special tokens) but the budget is {budget} tokens "
                          f"(max_prompt_tokens={self.max_prompt_tokens}, context={self._context()}, "
                          f"answer_tokens={self.answer_tokens_}). Raise max_prompt_tokens or context_length, "
                          f"or shorten the query.", needed=n_tokens, budget=budget)


def greedy_select(unique: Sequence[Any], lens: Any, avail: int, cap: int, min_len: int = 0
                  ) -> tuple[list[Any], list[Any]]:
    """Greedy budget selection in relevance order: take each candidate that still fits (skip, do not stop
    at, one that does not), at most ``cap``; once the cap is reached or no example could fit (``avail <
    min_len``), the rest are all skipped. ``lens[c]`` is candidate ``c``'s token cost (any indexable, read
    only for candidates considered). Returns ``(chosen, skipped)``, each in relevance order. The one budget
    selection of ragicl (the packer, the LangChain selector).

    >>> greedy_select([0, 1, 2, 3], [5, 9, 3, 1], avail=9, cap=2)
    ([0, 2], [1, 3])
    """
    chosen: list[Any] = []
    if cap <= 0 or avail < min_len:
        return chosen, unique
    skipped: list[Any] = []
    rest = iter(unique)
    for p in rest:
        c = lens[p]
        if c <= avail:
            chosen.append(p)
            avail -= c
            if len(chosen) >= cap or avail < min_len:
                break
        else:
            skipped.append(p)
    skipped.extend(rest)
    return chosen, skipped
