"""The scoring math, once: pure torch functions over a causal LM and token ids, with or without gradients.

Every function takes a ``transformers``-style causal LM (``model(input_ids=..., attention_mask=...,
position_ids=..., logits_to_keep=...)``) and lists of token ids, and returns torch tensors on the model's
device. None of them switches gradients on or off: :class:`ragicl.lm.hf.TransformersLM` calls them under
``torch.inference_mode()``, the trainer (:mod:`ragicl.training.finetune`) with gradients.

* :func:`left_pad`: a batch LEFT-padded, with ``position_ids`` from the attention mask, so a sequence scores
  the same alone or in a padded batch;
* :func:`last_logprobs`: float32 log-probs at the last position (optionally keeping the KV cache);
  :func:`last_logits` the raw logits there (a softmax over a label subset needs no normalisation);
* :func:`continuation_scores`: summed log-probs of every continuation after every prompt, ``(B, C)``: one
  prompt pass with cache, then the continuations (right-padded, minus their last token) on re-indexed
  copies of that cache (:func:`select_cache`), at most ``max_rows`` (prompt, continuation) rows at a time;
* :func:`concat_scores`: the same by scoring every prompt+continuation concatenation (the reference);
* :func:`teacher_forced`, :func:`sequence_logprobs`, :func:`token_logprobs`: one continuation per prompt,
  teacher-forced: full-vocabulary log-probs, their sum, and the per-token values;
* :func:`sample_rows`: temperature-1 sampling from the exact softmax, one ``torch.Generator`` per row.

The KV cache goes to the model under the keyword its ``forward`` takes (:func:`ragicl.lm.prefix.with_cache`).

>>> ids, mask, positions = left_pad([[5, 6, 7], [8]], pad_id=0, device="cpu")
>>> ids.tolist(), mask.tolist(), positions.tolist()
([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]], [[0, 1, 2], [0, 0, 0]])
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

from .prefix import output_cache, with_cache

logger = logging.getLogger(__name__)

__all__ = ["can_select", "concat_scores", "continuation_inputs", "continuation_scores", "last_logits", "last_logprobs", "left_pad", "model_device",
           "sample_rows", "select_cache", "sequence_logprobs", "teacher_forced", "to_device", "token_logprobs"]

Ids = Sequence[Sequence[int]]


def model_device(model: Any) -> Any:
    """Where the model's inputs go: the device of its input embeddings (the first of several devices when
    ``device_map`` spread it over them), else of its first parameter."""
    try:
        weight = model.get_input_embeddings().weight
    except (AttributeError, NotImplementedError):  # no embeddings to ask (e.g. a bare module)
        weight = None
    return weight.device if weight is not None else next(model.parameters()).device


def to_device(tensor: Any, device: Any) -> Any:
    """``tensor`` (on the host) moved to ``device``; to CUDA through pinned memory without blocking the host,
    so building the next batch overlaps the GPU's work on this one (a pageable copy would synchronise)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def left_pad(seqs: Ids, pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    """``input_ids``, ``attention_mask`` and ``position_ids`` of ``seqs`` LEFT-padded, on ``device``."""
    import numpy as np
    import torch

    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        if len(seq):
            ids[row, width - len(seq):] = seq
            mask[row, width - len(seq):] = 1
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    return tuple(to_device(torch.from_numpy(a), device) for a in (ids, mask, positions))  # type: ignore[return-value]


def last_logprobs(model: Any, prompts: Ids, pad_id: int, *, use_cache: bool = False) -> tuple[Any, Any, Any]:
    """Float32 log-probs at each prompt's last position ``(B, V)``, the KV cache (None without
    ``use_cache``) and the prompts' attention mask. One left-padded pass, ``logits_to_keep=1``."""
    import torch

    input_ids, mask, positions = left_pad(prompts, pad_id, model_device(model))
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=use_cache,
                logits_to_keep=1)
    logits = out.logits[:, -1, :].float()
    return torch.log_softmax(logits, dim=-1), (output_cache(out) if use_cache else None), mask


def last_logits(model: Any, prompts: Ids, pad_id: int) -> Any:
    """Raw float32 logits at each prompt's last position ``(B, V)`` (one left-padded pass)."""
    input_ids, mask, positions = left_pad(prompts, pad_id, model_device(model))
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
    return out.logits[:, -1, :].float()


def can_select(cache: Any) -> bool:
    """Whether :func:`select_cache` can re-index ``cache`` (a layered ``transformers`` cache)."""
    return hasattr(cache, "layers") and hasattr(cache, "batch_select_indices")


def select_cache(cache: Any, index: Any) -> Any:
    """A new cache holding rows ``index`` (a 1-D long tensor) of ``cache``, which is left untouched."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    new.batch_select_indices(index)
    return new


def continuation_inputs(continuations: Ids, pad_id: int, device: Any) -> tuple[Any, Any, Any, Any]:
    """The continuation-side tensors of :func:`continuation_scores`, built once per scoring call: each
    continuation's first token ``(C,)``, and for the second pass the continuations minus their last token
    (right-padded), minus their first (the targets) and the mask of real slots, ``(C, longest - 1)``."""
    import numpy as np
    import torch

    rest_len = max(len(c) for c in continuations) - 1
    firsts = np.array([c[0] for c in continuations], dtype=np.int64)
    feed = np.full((len(continuations), rest_len), pad_id, dtype=np.int64)
    target = np.zeros((len(continuations), rest_len), dtype=np.int64)
    real = np.zeros((len(continuations), rest_len), dtype=bool)
    for c, seq in enumerate(continuations):
        k = len(seq) - 1
        feed[c, :k] = seq[:-1]
        target[c, :k] = seq[1:]
        real[c, :k] = True
    return tuple(to_device(torch.from_numpy(a), device) for a in (firsts, feed, target, real))  # type: ignore


def continuation_scores(model: Any, prompts: Ids, continuations: Ids, pad_id: int, *,
                        max_rows: int | None = None, prompt_pass: tuple[Any, Any, Any] | None = None,
                        prepared: tuple[Any, Any, Any, Any] | None = None) -> Any:
    """Summed log-probability of every continuation after every prompt, float32 ``(B, C)``.

    The prompts go through one pass with ``use_cache=True`` (or ``prompt_pass``: the ``(log-probs, cache,
    mask)`` of :func:`last_logprobs` computed elsewhere, e.g. through a shared prefix, whose mask covers
    prefix + padded suffix: true lengths are the mask sums; ``prepared``: the :func:`continuation_inputs`
    of ``continuations``, built once for many batches). Continuations of one token are read off the
    last position; longer ones are fed (minus their last token, right-padded) on top of per-row copies of
    the prompt cache, ``max_rows`` (prompt, continuation) rows per pass (default: all at once). Right-padded
    slots are masked and come after every real slot, so causality keeps them out. A cache that cannot be
    re-indexed falls back to :func:`concat_scores`.
    """
    import torch

    first_lp, cache, prompt_mask = prompt_pass or last_logprobs(model, prompts, pad_id, use_cache=True)
    device = first_lp.device
    firsts, feed, target, real = prepared or continuation_inputs(continuations, pad_id, device)
    scores = first_lp[:, firsts]  # (B, C): log-prob of each continuation's first token
    rest_len = feed.shape[1]
    if rest_len == 0:
        return scores
    if not can_select(cache):  # pragma: no cover - every layered transformers cache can
        logger.debug("cache type %s cannot be re-indexed; scoring by concatenation", type(cache))
        return concat_scores(model, prompts, continuations, pad_id)
    n_b, n_c = len(prompts), len(continuations)
    lengths = prompt_mask.sum(-1)  # true prompt lengths: the first continuation position
    step = max_rows or n_b * n_c
    parts = []
    for lo in range(0, n_b * n_c, step):
        rows = torch.arange(lo, min(lo + step, n_b * n_c), device=device)  # row = b * C + c
        b_idx, c_idx = rows // n_c, rows % n_c
        mask = torch.cat([prompt_mask[b_idx], real[c_idx].long()], dim=1)
        positions = lengths[b_idx].unsqueeze(1) + torch.arange(rest_len, device=device).unsqueeze(0)
        out = model(input_ids=feed[c_idx], attention_mask=mask, position_ids=positions, use_cache=True,
                    **with_cache(model, select_cache(cache, b_idx)))
        logits = out.logits.float()  # (rows, rest_len, V): log-probs of the targets only, no full softmax
        picked = logits.gather(-1, target[c_idx].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        parts.append(picked.masked_fill(~real[c_idx], 0.0).sum(-1))
    return scores + torch.cat(parts).view(n_b, n_c)


def concat_scores(model: Any, prompts: Ids, continuations: Ids, pad_id: int) -> Any:
    """:func:`continuation_scores` without cache reuse: every prompt+continuation scored directly, ``(B, C)``."""
    import torch

    n = max(len(c) for c in continuations)
    keep = None
    rows = []
    for prompt in prompts:
        ids, mask, positions = left_pad([list(prompt) + list(c) for c in continuations], pad_id,
                                        model_device(model))
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=n + 1).logits[:, :-1].float()
        picked = torch.log_softmax(logits, -1).gather(-1, ids[:, -n:].unsqueeze(-1)).squeeze(-1)
        if keep is None:
            keep = torch.stack([torch.arange(n, device=ids.device) >= n - len(c) for c in continuations])
        rows.append((picked * keep).sum(-1))
    return torch.stack(rows)


def teacher_forced(model: Any, prompts: Ids, continuations: Ids, pad_id: int) -> tuple[Any, Any, Any]:
    """One continuation per prompt, teacher-forced in one left-padded pass over prompt+continuation.

    Returns float32 full-vocabulary log-probs ``(N, T, V)`` (``T`` = the longest continuation; row ``i``'s
    continuation occupies its last ``len(continuations[i])`` positions, each position predicting that
    token), the target token ids ``(N, T)`` and the boolean mask of real positions ``(N, T)``.
    """
    import torch

    seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    ids, mask, positions = left_pad(seqs, pad_id, model_device(model))
    n_cont = max(len(c) for c in continuations)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   logits_to_keep=n_cont + 1).logits.float()  # the last n_cont+1 positions
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts the last n_cont tokens
    lengths = torch.tensor([len(c) for c in continuations], device=ids.device)
    keep = torch.arange(n_cont, device=ids.device).unsqueeze(0) >= (n_cont - lengths).unsqueeze(1)
    return logprobs, ids[:, ids.shape[1] - n_cont:], keep


def _picked(model: Any, prompts: Ids, continuations: Ids, pad_id: int) -> tuple[Any, Any]:
    logprobs, targets, keep = teacher_forced(model, prompts, continuations, pad_id)
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1), keep


def sequence_logprobs(model: Any, prompts: Ids, continuations: Ids, pad_id: int) -> Any:
    """Summed log-probability of ``continuations[i]`` after ``prompts[i]`` (one pair per row), ``(N,)``."""
    picked, keep = _picked(model, prompts, continuations, pad_id)
    return (picked * keep).sum(-1)


def token_logprobs(model: Any, prompts: Ids, continuations: Ids, pad_id: int) -> list[Any]:
    """Per-token log-probabilities of ``continuations[i]`` after ``prompts[i]``: one 1-D tensor per pair."""
    picked, _ = _picked(model, prompts, continuations, pad_id)
    width = picked.shape[1]
    return [picked[i, width - len(c):] for i, c in enumerate(continuations)]


def sample_rows(model: Any, prompts: Ids, pad_id: int, seeds: Sequence[int], max_new_tokens: int,
                eos_ids: set[int], stopped: Callable[[list[int]], bool] | None = None
                ) -> list[tuple[list[int], bool]]:
    """One continuation per prompt from the exact softmax (temperature 1, no top-k/top-p), with a KV cache.

    Row ``r`` draws from its own ``torch.Generator`` seeded with ``seeds[r]`` (the global RNG is untouched;
    a row draws the same whatever the batch). A row ends at an id in ``eos_ids``, when ``stopped(ids)``
    is true, or after ``max_new_tokens``; returns ``(ids, truncated)`` per row, ``truncated`` meaning
    the cap was hit without another reason to stop.
    """
    import torch

    ids, mask, positions = left_pad(prompts, pad_id, model_device(model))
    dev, b = ids.device, len(prompts)
    pos = mask.sum(-1, keepdim=True)  # next position of each row
    gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in seeds]
    seqs: list[list[int]] = [[] for _ in range(b)]
    done, truncated = [False] * b, [False] * b
    res = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    for step in range(max_new_tokens):
        probs = torch.softmax(res.logits[:, -1].float(), dim=-1)
        nxt = torch.stack([torch.multinomial(probs[r], 1, generator=gens[r]) for r in range(b)])
        for r in range(b):
            if done[r]:
                continue
            t = int(nxt[r, 0])
            seqs[r].append(t)
            if t in eos_ids or (stopped is not None and stopped(seqs[r])):
                done[r] = True
            elif step == max_new_tokens - 1:
                done[r] = truncated[r] = True
        if all(done):
            break
        mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=dev)], dim=1)
        res = model(input_ids=nxt, attention_mask=mask, position_ids=pos, use_cache=True,
                    **with_cache(model, output_cache(res)))
        pos = pos + 1
    return list(zip(seqs, truncated))
