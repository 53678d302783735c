"""How many prompts go through the LM at once: batches sized by tokens, not by count.

A forward pass costs about its padded token slots (rows × the longest row), so a fixed count of prompts is
either too little work (8 zero-shot prompts of 13 tokens: 104 slots, launch overhead dominates on a GPU,
tiny matrix products on a CPU) or too much memory (8 prompts of 4,000 tokens). :func:`token_batches` groups
length-sorted prompts greedily under a budget of padded slots, optionally capped in rows;
:func:`auto_batch_tokens` picks the budget from the device: on CUDA from the free memory and the model's
per-token footprint (KV cache, activations, attention scores), on a CPU a fixed 4,096 slots (where a
135M-parameter model's throughput stops growing, ``docs/BENCHMARKS.md`` §3).

>>> token_batches([5, 3, 9, 2], budget=12)
[[2], [0, 1], [3]]
>>> token_batches([5, 3, 9, 2], budget=12, max_rows=1)
[[2], [0], [1], [3]]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["CPU_BATCH_TOKENS", "auto_batch_tokens", "check_batch_tokens", "per_token_bytes", "token_batches"]

#: padded token slots per forward pass on a CPU (throughput is flat from ~2k to ~8k slots there)
CPU_BATCH_TOKENS = 4096
#: bounds of the CUDA budget: enough rows to fill the GPU, few enough that one batch stays a few GB
_CUDA_MIN, _CUDA_MAX = 8192, 131072
#: share of the free device memory one batch may take (the rest: fragmentation, the caller's tensors)
_CUDA_SHARE = 0.25


def check_batch_tokens(value: Any) -> int | str | None:
    """``value`` if it is ``"auto"``, ``None`` or an int ≥ 1; else a ValueError saying what is expected."""
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"batch_tokens must be 'auto', None (batches of batch_size prompts) or an int >= 1 "
                         f"(padded token slots per forward pass, e.g. 4096); got {value!r}.")
    return value


def token_batches(lengths: Sequence[int], budget: int | None, max_rows: int | None = None) -> list[list[int]]:
    """Positions into ``lengths`` grouped into batches of similar length, longest first.

    Each batch holds the next prompts in length order while ``rows × longest ≤ budget`` and, with
    ``max_rows``, ``rows ≤ max_rows``; a prompt longer than the budget goes alone. ``budget=None`` means
    batches of ``max_rows`` (the count-based batching). Equal lengths keep their input order.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if budget is None:
        size = max_rows or len(order) or 1
        return [order[i:i + size] for i in range(0, len(order), size)]
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        if current and ((len(current) + 1) * width > budget or (max_rows and len(current) >= max_rows)):
            batches.append(current)
            current = []
        if not current:
            width = max(1, lengths[i])
        current.append(i)
    if current:
        batches.append(current)
    return batches


def per_token_bytes(config: Any, element_bytes: int) -> int:
    """Rough peak bytes one token slot of a forward pass holds: its KV cache (kept when continuations are
    scored on it), the widest transient activations of one layer, and a float32 row of attention scores
    for a 1,024-token sequence (the math attention kernel). Unknown config fields count as GPT-2 small's."""
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 768)
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 12)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 12)
    kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(config, "head_dim", 0) or hidden // max(1, heads))
    inter = int(getattr(config, "intermediate_size", 0) or getattr(config, "n_inner", 0) or 4 * hidden)
    kv = 2 * layers * kv_heads * head_dim * element_bytes
    activations = (4 * hidden + 3 * inter) * element_bytes
    scores = heads * 1024 * 4
    return kv + activations + scores


def auto_batch_tokens(model: Any) -> int:
    """The padded token slots per forward pass for ``model`` on its device (see the module docstring)."""
    import torch

    param = next(model.parameters())
    if param.device.type != "cuda":
        return CPU_BATCH_TOKENS
    free, _ = torch.cuda.mem_get_info(param.device)
    dtype = getattr(model, "dtype", param.dtype)  # the compute dtype: a 4/8-bit model's packed weights are 1 byte
    per_token = per_token_bytes(getattr(model, "config", None), torch.empty((), dtype=dtype).element_size())
    budget = int(_CUDA_SHARE * free / per_token)
    budget = max(_CUDA_MIN, min(_CUDA_MAX, budget // 1024 * 1024))
    logger.debug("batch_tokens auto: %d (free %.1f GiB, %d bytes per token slot)", budget, free / 2**30,
                 per_token)
    return budget
