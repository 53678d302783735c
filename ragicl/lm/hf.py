"""Language models: score label continuations after token-id prompts, and generate.

Everything here works on token ids, never on text: the packer decides exactly what the model sees, and
the model scores exactly that. :class:`TransformersLM` wraps any causal LM that ``transformers`` loads.

The math lives in :mod:`ragicl.lm.scoring` (pure torch, shared with the trainer): one pass per prompt
shared by every continuation (single-token labels: the last position only; longer ones: the prompt's KV
cache reused per label), prompts bucketed by length and LEFT-padded with explicit ``position_ids``, so a
prompt scores the same alone or in a padded batch. ``share_prefix`` runs the tokens a batch's prompts
share once (:mod:`ragicl.lm.prefix`), with the same results.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ragicl._exceptions import check_positive_int
from ragicl.lm import _hf_load, scoring
from ragicl.lm.batching import auto_batch_tokens, check_batch_tokens, token_batches
from ragicl.lm.prefix import PrefixScorer, SharePrefix, check_share_prefix
from ragicl.lm.protocol import LanguageModel, as_id_lists, check_pairs, check_prompts
from ragicl.models import DEFAULT_LM, load_resolved, load_tokenizer

logger = logging.getLogger(__name__)

__all__ = ["LanguageModel", "TransformersLM"]

#: prompts per batch when batching by count (``batch_tokens=None``) and ``batch_size`` is not given
_DEFAULT_ROWS = 8
#: cached prompt tokens per prompt of ``batch_size`` in the continuation pass, when batching by count
_ROW_TOKENS = 4096
#: most bytes of float32 last-position logits one batch may produce (caps the rows of short prompts)
_LOGIT_BYTES = 2**30


class TransformersLM:
    """A causal LM loaded with ``transformers``, scoring and generating from token ids.

    ``model`` is a short name known to :func:`ragicl.models.resolve_lm`, a hub id, a local folder or a
    fine-tuned folder (``ragicl finetune --out``, which loads with the same options as its base model).
    ``device="auto"`` picks CUDA when available, else CPU; ``dtype="auto"`` is bfloat16 on CUDA (float16
    where bfloat16 is unsupported) and float32 on CPU. Nothing is loaded until :meth:`load` or first use.

    Large models (:mod:`ragicl.lm._hf_load`): ``device_map="auto"`` shards the layers over every visible
    GPU (then CPU) with accelerate, the model is then not moved with ``.to`` and inputs go to the device of
    its input embeddings (``device`` must stay ``"auto"``); ``device_map`` may also be a device or a dict.
    ``quantization_config`` is a ``transformers`` quantization config (``BitsAndBytesConfig``, ``GPTQConfig``,
    ...) or a dict (a ``BitsAndBytesConfig``'s keywords, or any config with ``quant_method``);
    ``load_in_8bit`` / ``load_in_4bit`` are bitsandbytes shortcuts (4-bit: NF4, double quantization, computing
    in ``dtype``), which need the ``bitsandbytes`` package and a CUDA GPU (a ``MissingDependencyError`` says
    which is missing). ``attn_implementation`` (``"eager"``, ``"sdpa"``, ``"flash_attention_2"``, ...) and
    ``model_kwargs`` (any other ``from_pretrained`` keyword: ``trust_remote_code``, ``revision``,
    ``max_memory``, ...; the ones that pick files go to the tokenizer too) are passed through.

    Batches are sized by tokens: length-sorted prompts are grouped while rows × the longest row stays
    within ``batch_tokens`` padded slots (``"auto"``: from the device's free memory and the model's
    per-token footprint on CUDA, 4,096 on a CPU; :mod:`ragicl.lm.batching`), so 2,000 short zero-shot
    prompts take a few passes and long prompts never overflow memory. ``batch_size`` caps the prompts per
    batch (``None``: no cap); ``batch_tokens=None`` batches by count alone (``batch_size``, default 8).
    Results are returned in one device-to-host copy per call; inputs reach the GPU from pinned memory.

    ``share_prefix`` runs the token prefix shared by a batch's prompts once (batch size 1, KV cache
    repeated over the batch) and only the suffixes per prompt. ``"auto"`` (default) does so when the prefix
    has at least 16 tokens, the batch at least 2 prompts and running the prefix once saves at least 10 % of
    the batch's forwarded token slots (:func:`ragicl.lm.prefix.worth_sharing`); ``True`` whenever there is a
    shared token; ``False`` never. It is skipped for caches where it is not exact (sliding windows the
    sequence does not fit in, chunked or linear attention). Scores equal the plain path up to float rounding.

    >>> lm = TransformersLM("SmolLM2-135M-Instruct", batch_tokens=2048)
    >>> ids = lm.tokenizer("Review: great fun!\\nSentiment:")["input_ids"]       # doctest: +SKIP
    >>> labels = [lm.tokenizer(w)["input_ids"] for w in (" positive", " negative")]  # doctest: +SKIP
    >>> lm.score_continuations([ids], labels).shape                              # doctest: +SKIP
    (1, 2)
    >>> big = TransformersLM("org/Model-70B", device_map="auto", load_in_4bit=True,  # 70B over the GPUs
    ...                      attn_implementation="sdpa", model_kwargs={"revision": "main"})
    >>> big.load_in_4bit, big.device_map, big._model is None    # stores only: loads on first use
    (True, 'auto', True)
    """

    def __init__(self, model: str = DEFAULT_LM, device: str = "auto", dtype: str = "auto",
                 batch_size: int | None = None, show_progress: bool | None = None,
                 share_prefix: SharePrefix = "auto", batch_tokens: int | str | None = "auto", *,
                 device_map: Any = None, quantization_config: Any = None, load_in_8bit: bool = False,
                 load_in_4bit: bool = False, attn_implementation: str | None = None,
                 model_kwargs: dict[str, Any] | None = None) -> None:
        self.model_name = model
        self.device = device
        self.dtype = dtype
        self.device_map = device_map
        self.quantization_config = quantization_config
        self.load_in_8bit = load_in_8bit
        self.load_in_4bit = load_in_4bit
        self.attn_implementation = attn_implementation
        self.model_kwargs = model_kwargs
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.show_progress = show_progress
        self.share_prefix = share_prefix
        self._model: Any = None
        self._tokenizer: Any = None
        self._auto_tokens: int | None = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_LM, **kwargs: Any) -> TransformersLM:
        """Construct and load at once: ``TransformersLM.from_pretrained("SmolLM2-135M-Instruct")``."""
        return cls(model, **kwargs).load()

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, name: str | None = None, batch_size: int | None = None,
                   show_progress: bool | None = None, share_prefix: SharePrefix = "auto",
                   batch_tokens: int | str | None = "auto") -> TransformersLM:
        """Wrap an already-loaded ``(model, tokenizer)`` pair (e.g. a model being fine-tuned)."""
        name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        lm = cls(str(name), device=str(next(model.parameters()).device), dtype=str(model.dtype),
                 batch_size=batch_size, show_progress=show_progress, share_prefix=share_prefix,
                 batch_tokens=batch_tokens)
        lm._check_batching()
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

        self._check_batching()
        check_share_prefix(self.share_prefix)
        extra = _hf_load.check_model_kwargs(self.model_kwargs)
        device = self._resolve_device()
        dtype = self._resolve_dtype(device)
        quant = _hf_load.quantization(self.quantization_config, self.load_in_8bit, self.load_in_4bit, dtype)
        device_map = self.device_map
        if quant is not None and device_map is None:  # a quantized model is placed at load, never moved
            device_map = {"": device}
        kwargs = _hf_load.from_pretrained_kwargs(dtype=dtype, device_map=device_map, quantization=quant,
                                                 attn_implementation=self.attn_implementation, model_kwargs=extra)

        def read(path: str) -> tuple[Any, Any]:  # a fine-tuned folder: both from one whole version
            logger.info("loading LM %s from %s on %s (%s)", self.model_name, path, device_map or device, dtype)
            tokenizer = self._tokenizer if self._tokenizer is not None else \
                AutoTokenizer.from_pretrained(path, **_hf_load.tokenizer_kwargs(extra))
            return tokenizer, AutoModelForCausalLM.from_pretrained(path, **kwargs)

        tokenizer, model = load_resolved(self.model_name, read)
        if device_map is None:  # a device_map placed it (over several devices, or quantized): never move it
            model.to(torch.device(device))
        model.eval()
        self._model, self._tokenizer = model, tokenizer
        return self

    def _resolve_device(self) -> str:

        if self.device_map is not None:
            _hf_load.check_device_map(self.device_map)
            if self.device != "auto":
                raise ValueError(f"pass device_map or device, not both (got device_map={self.device_map!r} and "
                                 f"device={self.device!r}); device_map places the model itself.")
            return _hf_load.placement_device(self.device_map)
        from .._device import resolve_device

        return resolve_device(self.device)

    def _resolve_dtype(self, device: str) -> Any:
        return _hf_load.resolve_dtype(self.dtype, device)

    @property
    def model(self) -> Any:
        """The underlying ``transformers`` model (loads on first access)."""
        return self.load()._model

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loaded alone on first access: counting tokens never loads or converts the model)."""
        if self._tokenizer is None:
            kwargs = _hf_load.tokenizer_kwargs(_hf_load.check_model_kwargs(self.model_kwargs))
            if kwargs:  # e.g. a revision or remote code: the tokenizer of the same files as the model
                from transformers import AutoTokenizer

                self._tokenizer = load_resolved(self.model_name, lambda path: AutoTokenizer.from_pretrained(
                    path, **kwargs), weights=False)
            else:
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
        options = "".join(f", {k}={getattr(self, k)!r}" for k in ("device_map", "quantization_config",
                          "load_in_8bit", "load_in_4bit", "attn_implementation", "model_kwargs") if getattr(self, k))
        return f"TransformersLM({self.model_name!r}, device={self.device!r}, dtype={self.dtype!r}{options}, {state})"

    # ------------------------------------------------------------------ helpers

    @property
    def _pad_id(self) -> int:
        tok = self.tokenizer
        for value in (tok.pad_token_id, tok.eos_token_id, 0):
            if value is not None:
                return int(value)
        return 0  # pragma: no cover

    def _check_batching(self) -> None:
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size)
        check_batch_tokens(self.batch_tokens)

    @property
    def token_budget(self) -> int | None:
        """Padded token slots per forward pass (``batch_tokens`` with ``"auto"`` resolved for the loaded
        model's device), or ``None`` when batching by count."""
        self._check_batching()
        if self.batch_tokens != "auto":
            return self.batch_tokens  # type: ignore[return-value]
        resolved = self._auto_tokens
        if resolved is None:
            resolved = self._auto_tokens = auto_batch_tokens(self.model)
        return resolved

    def _batches(self, prompts: list[list[int]], extra: int = 0) -> list[list[int]]:
        """Positions of prompts grouped into batches of similar length (longest first), each within the
        token budget (``extra`` tokens per row follow in the same pass) and ``batch_size`` rows."""
        budget = self.token_budget
        if budget is None:
            return token_batches([len(p) + extra for p in prompts], None, self.batch_size or _DEFAULT_ROWS)
        rows = max(1, _LOGIT_BYTES // (4 * self.vocab_size))  # float32 last-position logits of a batch
        return token_batches([len(p) + extra for p in prompts], budget, min(rows, self.batch_size or rows))

    def _cont_rows(self, width: int) -> int:
        """(prompt, continuation) rows per continuation pass over a cache of ``width`` tokens per row."""
        budget = self.token_budget
        if budget is None:
            budget = _ROW_TOKENS * (self.batch_size or _DEFAULT_ROWS)
        return max(1, budget // max(1, width))

    def _left_pad(self, seqs: list[list[int]]) -> tuple[Any, Any, Any]:
        return scoring.left_pad(seqs, self._pad_id, scoring.model_device(self.model))

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

        cont = as_id_lists(continuations, "continuations")
        if not cont:
            raise ValueError("continuations is empty; expected at least one continuation (e.g. the token "
                             "ids of each label's verbalization).")
        for c, seq in enumerate(cont):
            if not seq:
                raise ValueError(f"continuation {c} is empty; every continuation needs at least one token id.")
        ids = as_id_lists(prompts, "prompts")
        check_prompts(ids, self.context_length, max(len(c) for c in cont), "the longest continuation")
        rest_len = max(len(c) for c in cont) - 1
        batches = self._batches(ids, extra=rest_len)
        parts = []
        with torch.inference_mode(), self._progress(len(batches), "scoring", show_progress) as bar:
            shared = self._prefix_scorer(ids)
            prepared = scoring.continuation_inputs(cont, self._pad_id, scoring.model_device(self.model))
            for batch in batches:
                seqs = [ids[i] for i in batch]
                parts.append(self._score_single(seqs, prepared, shared) if rest_len == 0
                             else self._score_multi(seqs, cont, prepared, shared))
                bar.update(1)
            scores = torch.cat(parts).cpu().numpy() if parts else np.zeros((0, len(cont)), np.float32)
        out = np.zeros((len(ids), len(cont)), dtype=np.float32)
        out[[i for batch in batches for i in batch]] = scores  # one device-to-host copy per call
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
        if shared is not None:
            got = shared.last_logprobs(seqs, use_cache=use_cache, extra=extra)
            if got is not None:
                return got
        return scoring.last_logprobs(self.model, seqs, self._pad_id, use_cache=use_cache)

    def _score_single(self, seqs: list[list[int]], prepared: tuple[Any, ...],
                      shared: PrefixScorer | None = None) -> Any:
        """``(B, C)`` float32 scores of single-token continuations, left on the model's device."""
        logprobs, _, _ = self._last_logprobs(seqs, shared=shared)
        return logprobs[:, prepared[0]]

    def _score_multi(self, seqs: list[list[int]], cont: list[list[int]], prepared: tuple[Any, ...],
                     shared: PrefixScorer | None = None) -> Any:
        """Prompt pass with cache (through a shared prefix when worth it), then the continuations on
        re-indexed copies of that cache, as many (prompt, continuation) rows per pass as the token budget
        holds (:func:`ragicl.lm.scoring.continuation_scores`), so many labels do not multiply memory.
        ``(B, C)`` float32 on the model's device."""
        rest_len = prepared[1].shape[1]
        first = self._last_logprobs(seqs, use_cache=True, shared=shared, extra=rest_len)
        return scoring.continuation_scores(self.model, seqs, cont, self._pad_id,
                                           max_rows=self._cont_rows(first[2].shape[1] + rest_len),
                                           prompt_pass=first, prepared=prepared)

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], *,
                            show_progress: bool | None = None) -> np.ndarray:
        """Full-vocabulary log-probabilities of the next token after each prompt, float32 ``(P, V)``."""
        import torch

        ids = as_id_lists(prompts, "prompts")
        check_prompts(ids, self.context_length, 1, "the next token")
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

    # ------------------------------------------------------------------ the generation gap's side

    @property
    def vocab_size(self) -> int:
        """Width of the logits (the output embedding's rows; ``config.vocab_size`` without one)."""
        out = self.model.get_output_embeddings()
        return int(out.weight.shape[0]) if out is not None else int(self.model.config.vocab_size)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Ids that end a sample: the tokenizer's end-of-sequence id and the generation config's."""
        ids = {self.tokenizer.eos_token_id}
        extra = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
        return frozenset(int(i) for i in ids if i is not None)

    def token_logprobs(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *,
                       show_progress: bool | None = None) -> list[np.ndarray]:
        """Float32 log-probability of each token of ``continuations[i]`` after ``prompts[i]`` and the
        tokens before it (teacher forcing; one pair per row, batched by length)."""
        import torch

        ids, cont = check_pairs(self.context_length, self.name, prompts, continuations)
        rows: dict[int, np.ndarray] = {}
        batches = self._batches([p + c for p, c in zip(ids, cont)])
        with torch.inference_mode(), self._progress(len(batches), "token log-probs", show_progress) as bar:
            for batch in batches:
                got = scoring.token_logprobs(self.model, [ids[i] for i in batch], [cont[i] for i in batch],
                                             self._pad_id)
                rows.update((i, row.cpu().numpy()) for i, row in zip(batch, got))
                bar.update(1)
        return [rows[i] for i in range(len(ids))]

    def teacher_forced_logprobs(self, prompt: Sequence[int], continuation: Sequence[int]) -> np.ndarray:
        """Float32 full-vocabulary log-probs ``(T, V)``: row t is the distribution of continuation token t
        given the prompt and ``continuation[:t]`` (one pass; only those positions reach the LM head)."""
        import torch

        ids, cont = check_pairs(self.context_length, self.name, [prompt], [continuation])
        with torch.inference_mode():
            logprobs, _, _ = scoring.teacher_forced(self.model, ids, cont, self._pad_id)
        return logprobs[0].cpu().numpy()

    def sample(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, seeds: Sequence[int],
               stop: Sequence[str] = ()) -> list[tuple[list[int], bool]]:
        """One sample per prompt from the exact softmax (temperature 1, no top-k/top-p), row i drawn with
        its own generator seeded by ``seeds[i]``; ends at an :attr:`eos_token_ids` id, the first ``stop``
        string or ``max_new_tokens``. Returns ``(new token ids, truncated)`` per prompt."""
        import torch

        check_positive_int("max_new_tokens", max_new_tokens)
        ids = as_id_lists(prompts, "prompts")
        if not ids or not all(ids) or len(seeds) != len(ids):
            raise ValueError(f"need non-empty prompts and one seed each; got {len(ids)} prompts, "
                             f"{len(seeds)} seeds.")
        stops, tok, eos = tuple(s for s in stop if s), self.tokenizer, set(self.eos_token_ids)
        stopped = (lambda seq: any(s in tok.decode(seq) for s in stops)) if stops else None
        with torch.inference_mode():
            return scoring.sample_rows(self.model, ids, next(iter(eos), 0), seeds, max_new_tokens, eos, stopped)

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
        ids = as_id_lists(prompts, "prompts")
        check_prompts(ids, self.context_length, max_new_tokens, f"max_new_tokens={max_new_tokens}")
        texts: dict[int, str] = {}
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                                  "pad_token_id": self._pad_id}
        if do_sample:
            kwargs["temperature"] = float(temperature)
        else:  # silence "sampling flags set but do_sample=False" from checkpoints' generation configs
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if stops:
            kwargs.update(stop_strings=list(stops), tokenizer=self.tokenizer)
        batches = self._batches(ids, extra=max_new_tokens)  # the budget covers the generated tokens too
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
