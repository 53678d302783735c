"""Token- and sequence-level distributions of causal LMs: the measuring instruments of the generation gap.

Exact-match extraction (GSM8K ``####`` convention), a vocabulary check (TV needs one vocabulary),
per-position full-vocabulary log-probs under teacher forcing, the exact per-position TV between two
systems, and plain temperature-1 sampling (no top-k/top-p) with per-row seeds. Everything goes through the
:class:`ragicl.lm.protocol.LanguageModel` protocol (``tokenizer.get_vocab``, ``vocab_size``,
``token_logprobs``, ``teacher_forced_logprobs``, ``sample``), so any backend serves the gap evaluator.
``ragicl.estimators.generation`` builds the generator facade and the gap report on these.

>>> extract_answer("3 + 4 = 7 apples\\n#### 1,234")
'1234'
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import numpy as np

from .._exceptions import check_positive_int

logger = logging.getLogger(__name__)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


# ------------------------------------------------------------------------------------------ exact match
def extract_answer(text: str) -> str | None:
    """The final answer of a GSM8K-style solution: the last number after the last ``####`` when the text
    has one, else the last number in the text; commas and trailing zeros dropped; None if no number.

    >>> extract_answer("She has 5 - 2 = 3 left.\\n#### 3"), extract_answer("about 2.50 dollars"), extract_answer("none")
    ('3', '2.5', None)
    """
    found = _NUMBER.findall(text.rsplit("####", 1)[1] if "####" in text else text)
    if not found:
        return None
    value = Decimal(found[-1].replace(",", ""))  # the regex only matches numbers
    return str(int(value)) if value == value.to_integral_value() else format(value.normalize(), "f")


def exact_match(prediction: str, gold: str, extractor: Callable[[str], str | None] = extract_answer) -> bool:
    """Whether ``extractor`` finds the same answer in both texts (never true when it finds none).

    >>> exact_match("#### 72", "Natalia sold 48/2 = 24 clips in May.\\n#### 72"), exact_match("", "#### 1")
    (True, False)
    """
    got, want = extractor(prediction), extractor(gold)
    return got is not None and got == want


# ------------------------------------------------------------------------------------------ vocabulary
def _vocab_fingerprint(lm: Any) -> tuple[int, str, int]:
    vocab = lm.tokenizer.get_vocab()
    digest = hashlib.sha256(repr(sorted(vocab.items())).encode("utf-8")).hexdigest()[:16]
    return len(vocab), digest, int(lm.vocab_size)


def check_same_vocabulary(a: Any, b: Any) -> None:
    """Raise ``ValueError`` unless both LMs share one vocabulary (TV between next-token distributions is
    only defined over a common support): identical ``tokenizer.get_vocab()`` and logits width."""
    fa, fb = _vocab_fingerprint(a), _vocab_fingerprint(b)
    if fa != fb:
        raise ValueError(
            f"the two models do not share a vocabulary: {_name(a)!r} has {fa[0]} tokens (vocab hash {fa[1]}, "
            f"logits width {fa[2]}) and {_name(b)!r} has {fb[0]} (hash {fb[1]}, width {fb[2]}). TV needs one "
            "vocabulary: compare a model with its own fine-tuned checkpoint (saved with the same tokenizer).")


def _name(lm: Any) -> str:
    return str(getattr(lm, "name", type(lm).__name__))


# ------------------------------------------------------------------------------------- scoring & sampling
def continuation_logprobs(lm: Any, prompt: Sequence[int], continuation: Sequence[int]) -> Any:
    """Float32 full-vocabulary log-probs ``(len(continuation), V)`` as a CPU torch tensor: row t is the
    distribution of the token at continuation position t given the prompt and ``continuation[:t]``
    (``lm.teacher_forced_logprobs``)."""
    import torch

    prompt, cont = [int(t) for t in prompt], [int(t) for t in continuation]
    if not prompt or not cont:
        raise ValueError(f"prompt and continuation must be non-empty; got {len(prompt)} and {len(cont)} ids.")
    limit = getattr(lm, "context_length", None)
    if limit is not None and len(prompt) + len(cont) > limit:
        raise ValueError(f"prompt ({len(prompt)}) + continuation ({len(cont)}) tokens exceed the context "
                         f"length {limit} of {_name(lm)!r}; lower max_prompt_tokens.")
    return torch.from_numpy(np.asarray(lm.teacher_forced_logprobs(prompt, cont), dtype=np.float32))


def token_logprobs(lm: Any, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                   *, show_progress: bool | None = None) -> list[np.ndarray]:
    """Per-token log-probabilities (float64) of ``continuations[i]`` after ``prompts[i]``, one pair per
    query (unlike ``LanguageModel.score_continuations``, where every continuation goes with every prompt).
    Their cumulative sum at t is ``ln P`` of the first t tokens."""
    if len(prompts) != len(continuations):
        raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations; pair them up.")
    got = lm.token_logprobs(prompts, continuations, show_progress=show_progress)
    return [np.asarray(v, dtype=np.float32).astype(np.float64) for v in got]


def sequence_logprobs(lm: Any, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                      *, show_progress: bool | None = None) -> np.ndarray:
    """Summed log-probability (float64) of ``continuations[i]`` after ``prompts[i]``, one pair per row."""
    return np.array([v.sum() for v in token_logprobs(lm, prompts, continuations, show_progress=show_progress)])


def teacher_forced_tv(lm_p: Any, prompts_p: Sequence[Sequence[int]], lm_q: Any,
                      prompts_q: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *,
                      show_progress: bool | None = None) -> list[np.ndarray]:
    """Per-position TV between P's and Q's full next-token distributions along each continuation.

    Returns one float64 array of length ``len(continuations[i])`` per query. Each query's two
    ``(T, V)`` matrices are computed, reduced and dropped before the next, so memory stays at one pair.
    """
    from tqdm.auto import tqdm

    if not len(prompts_p) == len(prompts_q) == len(continuations):
        raise ValueError(f"need one P prompt, one Q prompt and one continuation per query; got "
                         f"{len(prompts_p)}, {len(prompts_q)}, {len(continuations)}.")
    check_same_vocabulary(lm_p, lm_q)
    out: list[np.ndarray] = []
    for i in tqdm(range(len(continuations)), desc="teacher-forced TV", leave=False,
                  disable=_quiet(show_progress)):
        lp = continuation_logprobs(lm_p, prompts_p[i], continuations[i])
        lq = continuation_logprobs(lm_q, prompts_q[i], continuations[i])
        out.append((0.5 * (lp.exp() - lq.exp()).abs().sum(-1)).double().clamp(0.0, 1.0).numpy())
        del lp, lq
    return out


def sample_continuations(lm: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, n: int = 1,
                         stop: Sequence[str] = (), seed: int = 0, batch_size: int = 8,
                         show_progress: bool | None = None) -> list[list[tuple[list[int], bool]]]:
    """``n`` continuations per prompt drawn from the LM's exact softmax (temperature 1, no top-k/top-p),
    stopped by the rule in the module docstring. Returns, per prompt, ``n`` pairs ``(token ids,
    truncated)``; ``truncated`` means the sample hit ``max_new_tokens`` without an end-of-sequence id or
    stop string. Rows are left-padded into batches; each row draws from its own ``torch.Generator``
    seeded by ``(seed, prompt index, sample index)``, so the global RNG is untouched and the draws do
    not depend on the batching."""
    from tqdm.auto import tqdm

    check_positive_int("n", n)
    check_positive_int("max_new_tokens", max_new_tokens)
    check_positive_int("batch_size", batch_size)
    ids = [[int(t) for t in p] for p in prompts]
    if not ids or not all(ids):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists.")
    rows = [(i, j) for i in range(len(ids)) for j in range(n)]
    out: list[list[tuple[list[int], bool]]] = [[] for _ in ids]
    stops = tuple(s for s in stop if s)
    for lo in tqdm(range(0, len(rows), batch_size), desc="sampling", leave=False, disable=_quiet(show_progress)):
        chunk = rows[lo:lo + batch_size]
        seeds = [int(np.random.SeedSequence([seed, i, j]).generate_state(1)[0]) for i, j in chunk]
        for (i, _), res in zip(chunk, lm.sample([ids[i] for i, _ in chunk], max_new_tokens, seeds=seeds,
                                                 stop=stops)):
            out[i].append(res)
    return out


def _quiet(show: bool | None) -> bool | None:
    return None if show is None else not show


