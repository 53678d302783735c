"""Language models: score label continuations after token-id prompts, and generate.

Everything here works on token ids, never on text: the packer decides exactly what the model sees, and
the model scores exactly that. :class:`TransformersLM` wraps any causal LM that ``transformers`` loads.

Scoring is one pass per prompt shared by every continuation:

* all continuations one token long (the usual label set): one forward pass keeping only the last
  position's logits (``logits_to_keep=1``), ``log_softmax``, gather the C token ids;
* otherwise: one pass over the prompt with ``use_cache=True``, then a second batched pass that feeds the
  (right-padded) continuations of every label on top of the prompt's KV cache, repeated per label.

Prompts are bucketed by length (sorted, then restored) and LEFT-padded with explicit ``position_ids``
taken from the attention mask, so a prompt scores the same alone or in a padded batch.

When the prompts of a batch start with the same tokens (a fixed demonstration set, a long instruction),
``share_prefix`` runs that prefix once and only the suffixes per prompt (:mod:`ragicl.lm.prefix`); both
scoring paths above and :meth:`TransformersLM.next_token_logprobs` use it, with the same results.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ragicl._exceptions import check_positive_int
from ragicl.lm.prefix import PrefixScorer, SharePrefix, check_share_prefix, output_cache, with_cache
from ragicl.models import DEFAULT_LM, load_tokenizer, resolve_lm

logger = logging.getLogger(__name__)

__all__ = ["LanguageModel", "TransformersLM"]

#: cached prompt tokens per batch_size unit in the continuation pass (bounds KV-cache copies)
_ROW_TOKENS = 4096


@runtime_checkable
class LanguageModel(Protocol):
    """What the classifier and evaluator need from a language model.

    ``score_continuations`` returns the summed log-probability of each continuation (all C apply to every
    prompt) after each prompt, shape ``(P, C)``; ``next_token_logprobs`` the full-vocabulary log-probs at
    the last prompt position, shape ``(P, V)``.
    """

    name: str
    tokenizer: Any
    context_length: int

    def score_continuations(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                            *, show_progress: bool | None = None) -> np.ndarray: ...

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]]) -> np.ndarray: ...

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                 stop: Sequence[str] | None = None, do_sample: bool = False, temperature: float = 1.0,
                 seed: int | None = None) -> list[str]: ...


def _as_id_lists(seqs: Sequence[Sequence[int]], what: str) -> list[list[int]]:
    if isinstance(seqs, (str, bytes)) or not isinstance(seqs, Sequence) and not hasattr(seqs, "__len__"):
        raise TypeError(f"{what} must be a sequence of token-id sequences, got {type(seqs).__name__}.")
    out = []
    for i, seq in enumerate(seqs):
        if isinstance(seq, (str, bytes)):
            raise TypeError(f"{what}[{i}] is text ({seq[:40]!r}); expected token ids. "
                            "Tokenize first, e.g. tokenizer(text)['input_ids'].")
        out.append([int(t) for t in seq])
    return out


class TransformersLM:
    """A causal LM loaded with ``transformers``, scoring and generating from token ids.

    ``model`` is a short name known to :func:`ragicl.models.resolve_lm`, a hub id or a local folder.
    ``device="auto"`` picks CUDA when available, else CPU; ``dtype="auto"`` is bfloat16 on CUDA (float16
    where bfloat16 is unsupported) and float32 on CPU. Nothing is loaded until :meth:`load` or first use.

    ``share_prefix`` runs the token prefix shared by a batch's prompts once (batch size 1, KV cache
    repeated over the batch) and only the suffixes per prompt. ``"auto"`` (default) does so when the prefix
    has at least 16 tokens, the batch at least 2 prompts and running the prefix once saves at least 10 % of
    the batch's forwarded token slots (:func:`ragicl.lm.prefix.worth_sharing`); ``True`` whenever there is a
    shared token; ``False`` never. It is skipped for caches where it is not exact (sliding windows the
    sequence does not fit in, chunked or linear attention). Scores equal the plain path up to float rounding.

    >>> lm = TransformersLM("SmolLM2-135M-Instruct", batch_size=4)
    >>> ids = lm.tokenizer("Review: great fun!\\nSentiment:")["input_ids"]       # doctest: +SKIP
    >>> labels = [lm.tokenizer(w)["input_ids"] for w in (" positive", " negative")]  # doctest: +SKIP
    >>> lm.score_continuations([ids], labels).shape                              # doctest: +SKIP
    (1, 2)
    """

    def __init__(self, model: str = DEFAULT_LM, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 8, show_progress: bool | None = None,
                 share_prefix: SharePrefix = "auto") -> None:
        self.model_name = model
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.share_prefix = share_prefix
        self._model: Any = None
        self._tokenizer: Any = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_LM, **kwargs: Any) -> TransformersLM:
        """Construct and load at once: ``TransformersLM.from_pretrained("SmolLM2-135M-Instruct")``."""
        return cls(model, **kwargs).load()

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, name: str | None = None, batch_size: int = 8,
                   show_progress: bool | None = None, share_prefix: SharePrefix = "auto") -> TransformersLM:
        """Wrap an already-loaded ``(model, tokenizer)`` pair (e.g. a model being fine-tuned)."""
        name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        lm = cls(str(name), device=str(next(model.parameters()).device), dtype=str(model.dtype),
                 batch_size=batch_size, show_progress=show_progress, share_prefix=share_prefix)
        check_share_prefix(share_prefix)
        lm._model, lm._tokenizer = model, tokenizer
        model.eval()
        return lm

    def load(self) -> TransformersLM:
        """Load model and tokenizer (once); returns ``self``."""
        if self._model is not None:
            return self
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        check_positive_int("batch_size", self.batch_size)
        check_share_prefix(self.share_prefix)
        device = self._resolve_device()
        dtype = self._resolve_dtype(device)
        path = resolve_lm(self.model_name)
        logger.info("loading LM %s from %s on %s (%s)", self.model_name, path, device, dtype)
        tokenizer = self._tokenizer if self._tokenizer is not None else AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model.to(torch.device(device))
        model.eval()
        self._model, self._tokenizer = model, tokenizer
        return self

    def _resolve_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def _resolve_dtype(self, device: str) -> Any:
        import torch

        if self.dtype == "auto":
            if device.startswith("cuda"):
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.float32
        if isinstance(self.dtype, torch.dtype):
            return self.dtype
        names = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                 "half": torch.float16, "fp16": torch.float16}
        key = str(self.dtype).removeprefix("torch.")
        if key not in names:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(names)} (or a torch.dtype), "
                             f"got {self.dtype!r}.")
        return names[key]

    @property
    def model(self) -> Any:
        """The underlying ``transformers`` model (loads on first access)."""
        return self.load()._model

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loaded alone on first access: counting tokens never loads or converts the model)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_name)
        return self._tokenizer

    @property
    def name(self) -> str:
        return self.model_name

    @property
    def context_length(self) -> int:
        """Maximum tokens the model attends to (``max_position_embeddings`` or the tokenizer's limit)."""
        config = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        limit = getattr(self.tokenizer, "model_max_length", None)
        return int(limit) if isinstance(limit, int) and 0 < limit < 10**7 else 2048

    def __repr__(self) -> str:
        state = "loaded" if self._model is not None else "not loaded"
        return f"TransformersLM({self.model_name!r}, device={self.device!r}, dtype={self.dtype!r}, {state})"

    # ------------------------------------------------------------------ helpers

    @property
    def _pad_id(self) -> int:
        tok = self.tokenizer
        for value in (tok.pad_token_id, tok.eos_token_id, 0):
            if value is not None:
                return int(value)
        return 0  # pragma: no cover

    def _check_prompts(self, prompts: list[list[int]], extra: int, what: str) -> None:
        if not prompts:
            raise ValueError("prompts is empty; expected at least one prompt of token ids.")
        limit = self.context_length
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {i} is empty; every prompt needs at least one token id "
                                 "(add a BOS token or some text).")
            if len(prompt) + extra > limit:
                raise ValueError(
                    f"prompt {i} has {len(prompt)} tokens and {what} needs {extra} more, over the model's "
                    f"context length of {limit}. Shorten the prompt (e.g. a smaller max_prompt_tokens in "
                    "the Packer).")

    def _batches(self, prompts: list[list[int]]) -> list[list[int]]:
        """Positions of prompts grouped into batches of similar length (longest first)."""
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        size = self.batch_size
        return [order[i:i + size] for i in range(0, len(order), size)]

    def _left_pad(self, seqs: list[list[int]]) -> tuple[Any, Any, Any]:
        """input_ids, attention_mask, position_ids (LEFT padding) on the model's device."""
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = self.model.device
        return ids.to(device), mask.to(device), positions.to(device)

    def _progress(self, total: int, desc: str, show: bool | None) -> Any:
        from tqdm.auto import tqdm

        show = self.show_progress if show is None else show
        return tqdm(total=total, desc=desc, disable=(None if show is None else not show), leave=False)

    # ------------------------------------------------------------------ scoring

    def score_continuations(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                            *, show_progress: bool | None = None) -> np.ndarray:
        """Summed log-probability of every continuation after every prompt, float32 ``(P, C)``.

        All C continuations apply to every prompt; each prompt is encoded once and shared by all of them.
        """
        import torch

        cont = _as_id_lists(continuations, "continuations")
        if not cont:
            raise ValueError("continuations is empty; expected at least one continuation (e.g. the token "
                             "ids of each label's verbalization).")
        for c, seq in enumerate(cont):
            if not seq:
                raise ValueError(f"continuation {c} is empty; every continuation needs at least one token id.")
        ids = _as_id_lists(prompts, "prompts")
        self._check_prompts(ids, max(len(c) for c in cont), "the longest continuation")
        out = np.zeros((len(ids), len(cont)), dtype=np.float32)
        single = all(len(c) == 1 for c in cont)
        batches = self._batches(ids)
        with torch.inference_mode(), self._progress(len(batches), "scoring", show_progress) as bar:
            shared = self._prefix_scorer(ids)
            for batch in batches:
                seqs = [ids[i] for i in batch]
                scores = (self._score_single(seqs, cont, shared) if single
                          else self._score_multi(seqs, cont, shared))
                out[batch] = scores
                bar.update(1)
        return out

    def _prefix_scorer(self, prompts: list[list[int]]) -> PrefixScorer | None:
        """The shared-prefix scorer for one call over ``prompts`` (None: plain path only)."""
        return PrefixScorer.for_prompts(self.model, self._pad_id, self.share_prefix, prompts)

    def _last_logprobs(self, seqs: list[list[int]], use_cache: bool = False,
                       shared: PrefixScorer | None = None, extra: int = 0) -> tuple[Any, Any, Any]:
        """Float32 log-probs at the last position ``(B, V)``, the cache (or None) and the prompt mask.

        With ``shared``, through the batch's shared prefix when it is worth it (the mask then covers prefix
        + padded suffix); ``extra`` continuation tokens will follow on the cache (sliding-window check).
        """
        import torch

        if shared is not None:
            got = shared.last_logprobs(seqs, use_cache=use_cache, extra=extra)
            if got is not None:
                return got
        input_ids, mask, positions = self._left_pad(seqs)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         use_cache=use_cache, logits_to_keep=1)
        logits = out.logits[:, -1, :].float()
        return torch.log_softmax(logits, dim=-1), (output_cache(out) if use_cache else None), mask

    def _score_single(self, seqs: list[list[int]], cont: list[list[int]],
                      shared: PrefixScorer | None = None) -> np.ndarray:
        import torch

        logprobs, _, _ = self._last_logprobs(seqs, shared=shared)
        index = torch.tensor([c[0] for c in cont], dtype=torch.long, device=logprobs.device)
        return logprobs[:, index].cpu().numpy()

    def _score_multi(self, seqs: list[list[int]], cont: list[list[int]],
                     shared: PrefixScorer | None = None) -> np.ndarray:
        """Prompt pass with cache, then the continuations on top of per-row copies of that cache.

        Rows of the second pass are (prompt, continuation) pairs, at most ``_ROW_TOKENS * batch_size``
        cached tokens at a time, so many labels (e.g. 77 intents) do not multiply memory by the label count.
        The prompt pass may go through a shared prefix: its cache and mask (prefix + padded suffix, true
        lengths = mask sums) are used exactly like the left-padded ones.
        """
        import torch

        n_b, n_c = len(seqs), len(cont)
        rest_len = max(len(c) for c in cont) - 1
        first_lp, cache, prompt_mask = self._last_logprobs(seqs, use_cache=True, shared=shared, extra=rest_len)
        device = first_lp.device
        firsts = torch.tensor([c[0] for c in cont], dtype=torch.long, device=device)
        scores = first_lp[:, firsts]  # (B, C): log-prob of each continuation's first token
        if not hasattr(cache, "layers") or not hasattr(cache, "batch_select_indices"):  # pragma: no cover
            logger.debug("cache type %s cannot be re-indexed; scoring by concatenation", type(cache))
            return self._score_concat(seqs, cont)
        # Second pass input: each continuation minus its last token, right-padded; target: minus its first.
        feed = torch.full((n_c, rest_len), self._pad_id, dtype=torch.long)
        target = torch.zeros((n_c, rest_len), dtype=torch.long)
        real = torch.zeros((n_c, rest_len), dtype=torch.bool)
        for c, seq in enumerate(cont):
            k = len(seq) - 1
            feed[c, :k] = torch.tensor(seq[:-1], dtype=torch.long)
            target[c, :k] = torch.tensor(seq[1:], dtype=torch.long)
            real[c, :k] = True
        feed, target, real = feed.to(device), target.to(device), real.to(device)
        lengths = prompt_mask.sum(-1)  # true prompt lengths: first continuation position
        width = prompt_mask.shape[1] + rest_len
        max_rows = max(1, (_ROW_TOKENS * self.batch_size) // width)
        rest = torch.zeros(n_b * n_c, device=device)
        for lo in range(0, n_b * n_c, max_rows):
            rows = torch.arange(lo, min(lo + max_rows, n_b * n_c), device=device)  # row = b * C + c
            b_idx, c_idx = rows // n_c, rows % n_c
            # padded feed slots are masked and come after every real slot, so causality keeps them out
            mask = torch.cat([prompt_mask[b_idx], real[c_idx].long()], dim=1)
            positions = lengths[b_idx].unsqueeze(1) + torch.arange(rest_len, device=device).unsqueeze(0)
            out = self.model(input_ids=feed[c_idx], attention_mask=mask, position_ids=positions,
                             use_cache=True, **with_cache(self.model, _select_cache(cache, b_idx)))
            logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # (rows, rest_len, V)
            picked = logprobs.gather(-1, target[c_idx].unsqueeze(-1)).squeeze(-1)
            rest[rows] = picked.masked_fill(~real[c_idx], 0.0).sum(-1)
        return (scores + rest.view(n_b, n_c)).cpu().numpy()

    def _score_concat(self, seqs: list[list[int]], cont: list[list[int]]) -> np.ndarray:
        """Fallback without cache reuse: score every prompt+continuation concatenation directly."""
        import torch

        out = np.zeros((len(seqs), len(cont)), dtype=np.float32)
        for b, prompt in enumerate(seqs):
            ids, mask, positions = self._left_pad([prompt + c for c in cont])
            n = max(len(c) for c in cont)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=n + 1).logits[:, :-1].float()
            picked = torch.log_softmax(logits, -1).gather(-1, ids[:, -n:].unsqueeze(-1)).squeeze(-1)
            keep = torch.stack([torch.arange(n, device=ids.device) >= n - len(c) for c in cont])
            out[b] = (picked * keep).sum(-1).cpu().numpy()
        return out

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], *,
                            show_progress: bool | None = None) -> np.ndarray:
        """Full-vocabulary log-probabilities of the next token after each prompt, float32 ``(P, V)``."""
        import torch

        ids = _as_id_lists(prompts, "prompts")
        self._check_prompts(ids, 1, "the next token")
        rows: dict[int, np.ndarray] = {}
        batches = self._batches(ids)
        with torch.inference_mode(), self._progress(len(batches), "next-token", show_progress) as bar:
            shared = self._prefix_scorer(ids)
            for batch in batches:
                logprobs, _, _ = self._last_logprobs([ids[i] for i in batch], shared=shared)
                for row, i in enumerate(batch):
                    rows[i] = logprobs[row].cpu().numpy()
                bar.update(1)
        return np.stack([rows[i] for i in range(len(ids))]).astype(np.float32, copy=False)

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                 stop: Sequence[str] | None = None, do_sample: bool = False, temperature: float = 1.0,
                 seed: int | None = None, show_progress: bool | None = None) -> list[str]:
        """Continue each prompt by up to ``max_new_tokens`` tokens; returns only the new text.

        Greedy by default; ``do_sample=True`` samples at ``temperature`` (reproducible with ``seed``, which
        does not disturb the global RNG). The text is cut at the first occurrence of any ``stop`` string.
        """
        import torch

        check_positive_int("max_new_tokens", max_new_tokens)
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature!r}.")
        if isinstance(stop, str):
            stop = [stop]
        stops = [s for s in (stop or []) if s]
        ids = _as_id_lists(prompts, "prompts")
        self._check_prompts(ids, max_new_tokens, f"max_new_tokens={max_new_tokens}")
        texts: dict[int, str] = {}
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                                  "pad_token_id": self._pad_id}
        if do_sample:
            kwargs["temperature"] = float(temperature)
        else:  # silence "sampling flags set but do_sample=False" from checkpoints' generation configs
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if stops:
            kwargs.update(stop_strings=list(stops), tokenizer=self.tokenizer)
        batches = self._batches(ids)
        with torch.inference_mode(), _seeded(seed), \
                self._progress(len(batches), "generating", show_progress) as bar:
            for batch in batches:
                input_ids, mask, _ = self._left_pad([ids[i] for i in batch])
                out = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
                new = out[:, input_ids.shape[1]:]
                for row, i in enumerate(batch):
                    text = self.tokenizer.decode(new[row], skip_special_tokens=True)
                    texts[i] = _cut(text, stops)
                bar.update(1)
        return [texts[i] for i in range(len(ids))]


def _select_cache(cache: Any, index: Any) -> Any:
    """A new cache holding rows ``index`` of ``cache`` (which is left untouched)."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    new.batch_select_indices(index)
    return new


def _cut(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stops:
        at = text.find(s)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed torch inside the block only; the caller's RNG state is restored afterwards."""
    if seed is None:
        yield
        return
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
