"""Shared-prefix scoring: the tokens every prompt of a batch starts with are run once, not once per prompt.

ICL prompts often begin with the same tokens: a template's instruction, or a whole fixed demonstration set
(random-k with one draw, lm-eval style fixed few-shot). :class:`PrefixScorer` runs that common prefix
``P`` once with batch size 1 and ``use_cache=True``, repeats its KV cache over the batch
(``Cache.batch_repeat_interleave``) and runs only the suffixes on top of it::

    cache:  [ prefix (P tokens, computed once) ]
    input:  [ pad .. pad | suffix ]   position_ids P, P+1, ... for the real suffix tokens
    mask:   [ 1 ....... 1 | 0 .. 0 | 1 ..... 1 ]   (2-D, prefix + padded suffix)

The padding sits *between* the prefix and each suffix. ``transformers`` builds the 4-D mask from the 2-D
mask over cache indices, so padded slots are never attended, and the explicit ``position_ids`` give every
real token its unpadded position: the scores equal the plain left-padded pass up to float rounding.

Sliding-window layers measure the window in cache indices, which the middle padding stretches; the path is
only taken when the whole sequence (prefix + padded suffix + any continuation pass) fits in the smallest
window, where the window excludes nothing. Caches with other layer kinds (chunked attention, linear
attention / SSM states, quantised or static caches) are never used with it.

Multi-token labels compose with it: the suffix pass returns the batch's cache and the 2-D mask (prefix +
padded suffix), which the continuation pass of :func:`ragicl.lm.scoring.continuation_scores` extends exactly
as it extends a left-padded prompt cache.

Memory: the suffix pass holds the batch's KV cache (prefix repeated + suffixes) for all layers at once, like
the multi-token label path does; the plain single-token pass (``use_cache=False``) does not.

Private module: :class:`ragicl.lm.hf.TransformersLM` is the public face (its ``share_prefix`` option).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

#: the values of ``TransformersLM(share_prefix=...)``
SharePrefix = bool | Literal["auto"]

#: ``"auto"`` shares a prefix only when it is at least this many tokens long ...
MIN_PREFIX_TOKENS = 16
#: ... and running it once saves at least this fraction of the batch's forwarded (padded) token slots
#: (SmolLM2 on CPU: forcing the path with a 2-token prefix cost 1-4 %; an 80-token instruction before
#: 512-token prompts, 14 % saved, ran 1.14-1.24x faster; docs/BENCHMARKS.md, section 3)
MIN_SAVING = 0.1
#: prefix caches kept per scoring call (the call-wide common prefix and the latest per-batch one)
_MEMO_SIZE = 2
#: the attention layer kinds the shared path is known to be exact for
_SAFE_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})


def check_share_prefix(value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is ``True``, ``False`` or ``"auto"``."""
    if not (value is True or value is False or (isinstance(value, str) and value == "auto")):
        raise ValueError(f"share_prefix must be True, False or 'auto', got {value!r}.")


def cache_arg(model: Any) -> str:
    """The keyword ``model.forward`` takes the KV cache under: ``"cache"`` (transformers >= 5.2x, where
    ``past_key_values`` is deprecated and "will be removed in version 5.40.0") or ``"past_key_values"``."""
    forward = getattr(model, "forward", None)
    key = type(model)
    if key not in _CACHE_ARG:
        import inspect

        try:
            params = inspect.signature(forward).parameters if forward is not None else {}
        except (TypeError, ValueError):  # pragma: no cover - builtins / odd callables
            params = {}
        _CACHE_ARG[key] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_ARG[key]


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """``{<the model's cache keyword>: cache}``, to splat into ``model(...)``."""
    return {cache_arg(model): cache}


def output_cache(out: Any) -> Any:
    """The KV cache a forward pass returned (``out.cache``; ``out.past_key_values`` on older transformers),
    read without touching the deprecated alias."""
    if "cache" in getattr(out, "__dataclass_fields__", ()):
        return out.cache
    return getattr(out, "past_key_values", None)


_CACHE_ARG: dict[type, str] = {}


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every sequence (0 for an empty list)."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for seq in seqs[1:]:
        if list(seq[:n]) == list(first[:n]):  # the common case, at C speed
            continue
        k = 0
        while k < n and seq[k] == first[k]:
            k += 1
        n = k
        if n == 0:
            break
    return n


def saved_fraction(prefix_len: int, batch: int, width: int) -> float:
    """Fraction of a batch's forwarded token slots (``batch * width``, padding included) that running a
    ``prefix_len``-token prefix once instead of ``batch`` times saves: ``(batch - 1) * P / (batch * width)``."""
    return (batch - 1) * prefix_len / (batch * width) if batch and width else 0.0


def worth_sharing(mode: SharePrefix, prefix_len: int, batch: int, width: int) -> bool:
    """The rule: ``True`` shares any non-empty prefix; ``"auto"`` needs a batch of 2 or more, at least
    :data:`MIN_PREFIX_TOKENS` shared tokens and a :func:`saved_fraction` of at least :data:`MIN_SAVING`."""
    if mode is True:
        return prefix_len >= 1
    if mode != "auto":
        return False
    return (batch >= 2 and prefix_len >= MIN_PREFIX_TOKENS
            and saved_fraction(prefix_len, batch, width) >= MIN_SAVING)


@dataclass(frozen=True)
class CacheSupport:
    """Whether a model's KV cache can take the shared-prefix path, and the sliding window it must fit."""

    ok: bool
    window: int | None = None  # smallest sliding window among the layers; None: no sliding layer
    reason: str = ""


def cache_support(model: Any) -> CacheSupport:
    """Inspect the ``DynamicCache`` the model would build for itself (no forward pass needed)."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
    except ImportError:  # pragma: no cover - transformers older than the layered caches
        return CacheSupport(False, reason="this transformers version has no layered DynamicCache")
    config = getattr(model, "config", None)
    if config is None:
        return CacheSupport(False, reason="the model has no config")
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    kinds = set(getattr(text, "layer_types", None) or [])
    if kinds - _SAFE_LAYER_TYPES:
        return CacheSupport(False, reason=f"layer types {sorted(kinds - _SAFE_LAYER_TYPES)} are not supported")
    try:
        layers = DynamicCache(config=config).layers
    except Exception as err:  # noqa: BLE001 - any failure means "do not take the path"
        return CacheSupport(False, reason=f"cannot build a DynamicCache from the config ({err})")
    windows = []
    for layer in layers:
        if type(layer) is DynamicSlidingWindowLayer:
            windows.append(int(layer.sliding_window))
        elif type(layer) is not DynamicLayer:
            return CacheSupport(False, reason=f"cache layer {type(layer).__name__} is not supported")
    return CacheSupport(True, window=min(windows) if windows else None)


class PrefixScorer:
    """Last-position log-probs of a batch of prompts through a shared prefix, for one scoring call.

    Build it with :meth:`for_prompts` (``None`` when the path is off or unsafe for the model). ``hint`` is
    the prefix shared by all prompts of the call: a batch uses it (its cache computed once per call) or its
    own longer common prefix, whichever forwards fewer tokens. Up to :data:`_MEMO_SIZE` prefix caches
    (batch size 1) are kept for the call.
    """

    def __init__(self, model: Any, pad_id: int, mode: SharePrefix, support: CacheSupport, hint: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.mode = mode
        self.support = support
        self.hint = hint
        self._memo: dict[tuple[int, ...], Any] = {}

    @classmethod
    def for_prompts(cls, model: Any, pad_id: int, mode: SharePrefix,
                    prompts: Sequence[Sequence[int]]) -> PrefixScorer | None:
        """A scorer for a call over ``prompts``, or ``None`` when ``mode`` is off or the cache unsafe."""
        check_share_prefix(mode)
        if mode is False:
            return None
        support = cache_support(model)
        if not support.ok:
            logger.debug("shared-prefix scoring off for %s: %s", type(model).__name__, support.reason)
            return None
        return cls(model, pad_id, mode, support, common_prefix_length(prompts))

    def plan(self, seqs: Sequence[Sequence[int]], extra: int = 0) -> int:
        """Prefix length to share for this batch (0: use the plain path). ``extra`` continuation tokens
        follow the prompts in a later pass on the same cache (they count against a sliding window)."""
        width = max(len(s) for s in seqs)
        room = min(len(s) for s in seqs) - 1  # every prompt keeps >= 1 suffix token (its last logits)
        if self.support.window is not None and width + extra > self.support.window:
            return 0
        best, best_cost = 0, None
        for p in dict.fromkeys((min(self.hint, room), min(common_prefix_length(seqs), room))):
            if p <= 0 or not worth_sharing(self.mode, p, len(seqs), width):
                continue
            cost = (0 if tuple(seqs[0][:p]) in self._memo else p) + len(seqs) * (width - p)
            if best_cost is None or cost < best_cost:
                best, best_cost = p, cost
        return best

    def last_logprobs(self, seqs: Sequence[Sequence[int]], use_cache: bool = False,
                      extra: int = 0) -> tuple[Any, Any, Any] | None:
        """Float32 log-probs at the last position ``(B, V)``, the cache (or None) and the 2-D mask over
        prefix + padded suffix, like the plain path's; ``None`` when no prefix is worth sharing."""
        import torch

        p = self.plan(seqs, extra)
        if p == 0:
            return None
        device = self.model.device
        cache = _repeat_cache(self._prefix_cache(tuple(seqs[0][:p])), len(seqs))
        width = max(len(s) for s in seqs) - p
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        suffix_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - (len(seq) - p):] = torch.tensor(seq[p:], dtype=torch.long)
            suffix_mask[row, width - (len(seq) - p):] = 1
        positions = p + (suffix_mask.cumsum(-1) - 1).clamp(min=0)
        mask = torch.cat([torch.ones((len(seqs), p), dtype=torch.long), suffix_mask], dim=1).to(device)
        out = self.model(input_ids=ids.to(device), attention_mask=mask, position_ids=positions.to(device),
                         use_cache=True, logits_to_keep=1, **with_cache(self.model, cache))
        logprobs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        return logprobs, (output_cache(out) if use_cache else None), mask

    def _prefix_cache(self, prefix: tuple[int, ...]) -> Any:
        """The KV cache of ``prefix`` (batch size 1), memoised for the call."""
        import torch
        from transformers.cache_utils import DynamicCache

        if prefix not in self._memo:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.pop(next(iter(self._memo)))
            ids = torch.tensor([prefix], dtype=torch.long, device=self.model.device)
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1,
                             **with_cache(self.model, DynamicCache(config=self.model.config)))
            self._memo[prefix] = output_cache(out)
            logger.debug("shared prefix of %d tokens computed once", len(prefix))
        return self._memo[prefix]


def _repeat_cache(cache: Any, n: int) -> Any:
    """A new cache holding ``n`` copies of ``cache``'s single row (``cache`` is left untouched)."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    if n > 1:
        new.batch_repeat_interleave(n)
    return new
