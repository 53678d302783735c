"""The :class:`LanguageModel` protocol: what the estimators and the generation gap need from an LM, and the
backend-independent checks of its token-id inputs.

Any backend that implements the protocol serves the classifier, the evaluator and the generation-gap
evaluator (:mod:`ragicl.lm.sequence` uses nothing else); :class:`ragicl.lm.hf.TransformersLM` is the
``transformers`` one.

>>> as_id_lists([(1, 2), [3]], "prompts")
[[1, 2], [3]]
>>> check_pairs(8, "tiny", [[1, 2]], [[3, 4, 5]])
([[1, 2]], [[3, 4, 5]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["LanguageModel", "as_id_lists", "check_pairs", "check_prompts"]


@runtime_checkable
class LanguageModel(Protocol):
    """What the classifier and evaluator need from a language model.

    ``score_continuations`` returns the summed log-probability of each continuation (all C apply to every
    prompt) after each prompt, shape ``(P, C)``; ``next_token_logprobs`` the full-vocabulary log-probs at
    the last prompt position, shape ``(P, V)``. The generation gap (:mod:`ragicl.lm.sequence`) needs only
    the rest: ``vocab_size`` (logits width), ``eos_token_ids``, teacher-forced ``token_logprobs`` (one
    continuation per prompt) and ``teacher_forced_logprobs`` (full vocabulary, one pair), and ``sample``.
    """

    name: str
    tokenizer: Any
    context_length: int
    vocab_size: int
    eos_token_ids: frozenset[int]

    def score_continuations(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                            *, show_progress: bool | None = None) -> np.ndarray: ...

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]]) -> np.ndarray: ...

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                 stop: Sequence[str] | None = None, do_sample: bool = False, temperature: float = 1.0,
                 seed: int | None = None) -> list[str]: ...

    def token_logprobs(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *,
                       show_progress: bool | None = None) -> list[np.ndarray]: ...

    def teacher_forced_logprobs(self, prompt: Sequence[int], continuation: Sequence[int]) -> np.ndarray: ...

    def sample(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, seeds: Sequence[int],
               stop: Sequence[str] = ()) -> list[tuple[list[int], bool]]: ...


def as_id_lists(seqs: Sequence[Sequence[int]], what: str) -> list[list[int]]:
    """``seqs`` as lists of ints; a clear ``TypeError`` for text or a non-sequence."""
    if isinstance(seqs, (str, bytes)) or not isinstance(seqs, Sequence) and not hasattr(seqs, "__len__"):
        raise TypeError(f"{what} must be a sequence of token-id sequences, got {type(seqs).__name__}.")
    out = []
    for i, seq in enumerate(seqs):
        if isinstance(seq, (str, bytes)):
            raise TypeError(f"{what}[{i}] is text ({seq[:40]!r}); expected token ids. "
                            "Tokenize first, e.g. tokenizer(text)['input_ids'].")
        out.append([int(t) for t in seq])
    return out


def check_prompts(prompts: list[list[int]], limit: int, extra: int, what: str) -> None:
    """Raise ``ValueError`` for no prompts, an empty prompt, or one that with ``extra`` more tokens (needed
    by ``what``) exceeds the context length ``limit``."""
    if not prompts:
        raise ValueError("prompts is empty; expected at least one prompt of token ids.")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token id "
                             "(add a BOS token or some text).")
        if len(prompt) + extra > limit:
            raise ValueError(
                f"prompt {i} has {len(prompt)} tokens and {what} needs {extra} more, over the model's "
                f"context length of {limit}. Shorten the prompt (e.g. a smaller max_prompt_tokens in "
                "the Packer).")


def check_pairs(limit: int, name: str, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
                ) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts and continuations paired one to one, as id lists; ``ValueError`` when the counts differ, a
    side is empty, or a pair exceeds the context length ``limit`` of the model ``name``."""
    ids, cont = as_id_lists(prompts, "prompts"), as_id_lists(continuations, "continuations")
    if len(ids) != len(cont):
        raise ValueError(f"got {len(ids)} prompts but {len(cont)} continuations; pair them up.")
    for i, (p, c) in enumerate(zip(ids, cont)):
        if not p or not c:
            raise ValueError(f"prompt and continuation must be non-empty; pair {i} has {len(p)} and {len(c)} ids.")
        if len(p) + len(c) > limit:
            raise ValueError(f"prompt ({len(p)}) + continuation ({len(c)}) tokens of pair {i} exceed the context "
                             f"length {limit} of {name!r}; lower max_prompt_tokens.")
    return ids, cont
