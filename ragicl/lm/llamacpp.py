"""GGUF models run in process by llama.cpp (``llama-cpp-python``), as Ollama and LM Studio users have them.

:class:`LlamaCppLM` implements the :class:`~ragicl.lm.protocol.LanguageModel` protocol from llama.cpp's raw
logits: each call decodes token ids with ``llama_decode`` and reads ``llama_get_logits_ith`` only at the
positions it scores (the last prompt position, the label or continuation positions), so the LM head runs
there only. It never uses ``create_completion(echo=True, logprobs=...)``: in llama-cpp-python 0.3.36 those
prompt log-probs disagree with the logits (``../shared/wheels/README.md``; issue 36).

Prompts are token ids (the packer's, counted with :attr:`LlamaCppLM.tokenizer`, whose ids are llama.cpp's
own, checked at load). The KV cache holds one sequence; a prompt that starts with tokens already in the cache
(the previous prompt's prefix: a fixed instruction or demonstration set, a label's prompt, a sampled
sequence's previous step) decodes only the rest. Calls order their prompts so neighbours share prefixes.
llama.cpp decodes a lone token with other kernels than a batch, so no call ever decodes one token alone
(:func:`_bounds`: it re-decodes the token before it too); then a position's logits do not depend on what was
cached before: measured bit-identical to decoding the whole sequence afresh, for every split tried (Q4_1
and F32). ``reuse_prefix=False`` starts every prompt from an empty cache anyway (a prompt's own
continuations still reuse it).

:func:`resolve_gguf` maps the default model names to the GGUF files their PyPI packages ship.

>>> LlamaCppLM("SmolLM2-135M-Instruct", n_ctx=2048)
LlamaCppLM('SmolLM2-135M-Instruct', n_ctx=2048, not loaded)
"""

from __future__ import annotations

import itertools
import logging
import os
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from ragicl._exceptions import MissingDependencyError, check_positive_int, require
from ragicl.lm import _llama_tokenizer as ltok
from ragicl.lm._gguf import default_cache_name, resolve_gguf
from ragicl.lm.protocol import as_id_lists, check_pairs, check_prompts
from ragicl.models import DEFAULT_LM

logger = logging.getLogger(__name__)

__all__ = ["LlamaCppLM", "resolve_gguf"]

#: n_ctx when none is given: the model's training context, capped here (the KV cache is allocated up front)
MAX_DEFAULT_CTX = 8192
_INSTALL = ("Install it with: pip install 'ragicl[llamacpp]'  (or: pip install llama-cpp-python; the registry "
            "has the source only, which compiles "
            "llama.cpp: up to an hour on two cores; a prebuilt x86-64 Linux wheel for the ragicl development "
            "machines is in ../shared/wheels: pip install "
            "../shared/wheels/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl).")


def llama_cpp_module() -> Any:
    """``llama_cpp``, or :class:`MissingDependencyError` with the install line."""
    try:
        return require("llama_cpp", "llamacpp", "llama-cpp-python")
    except MissingDependencyError as err:
        raise MissingDependencyError(f"'llama_cpp' (llama-cpp-python) is needed for LlamaCppLM but is not "
                                     f"installed. {_INSTALL}") from err


# --------------------------------------------------------------------------------------------- the LM
class LlamaCppLM:
    """A GGUF model run by llama.cpp in process, scoring and generating from token ids.

    ``model`` is a ``.gguf`` path, a folder holding one, or a default model name (:func:`resolve_gguf`).
    ``n_ctx``: the context (KV cache) size, default the model's training context capped at 8,192;
    :attr:`context_length` reports it, so the packer's budget fits. ``n_threads`` (default: llama.cpp's
    choice), ``n_batch`` (tokens per ``llama_decode`` call), ``n_gpu_layers`` (layers offloaded to a GPU
    build of llama.cpp; -1 all) and any other ``Llama(...)`` keyword (``llama_kwargs``: ``flash_attn``,
    ``type_k``, ``main_gpu``, ...) go to ``llama_cpp.Llama``. ``tokenizer``: ``"auto"`` (the ``transformers``
    tokenizer extracted from the GGUF when its ids agree with llama.cpp's on a probe text, else the exact
    adapter over llama.cpp's tokenizer), ``"llama"`` (that adapter), ``"hf"`` (the extracted one, an error
    if it disagrees), another string (a tokenizer name or folder for :func:`ragicl.models.load_tokenizer`,
    an error if it disagrees) or a tokenizer object, used as given. ``reuse_prefix``: keep the KV cache of
    the tokens a prompt shares with the previous one (see the module docstring).

    The constructor stores only; :meth:`load` (or first use) loads the weights, :attr:`tokenizer` only the
    vocabulary. One call at a time (a llama.cpp context is not thread-safe).

    >>> lm = LlamaCppLM("SmolLM2-135M-Instruct", n_threads=1)                          # doctest: +SKIP
    >>> ids = lm.tokenizer("Review: great fun!\\nSentiment:")["input_ids"]             # doctest: +SKIP
    >>> labels = [lm.tokenizer(w)["input_ids"] for w in (" positive", " negative")]    # doctest: +SKIP
    >>> lm.score_continuations([ids], labels).shape                                    # doctest: +SKIP
    (1, 2)
    """

    def __init__(self, model: str | os.PathLike = DEFAULT_LM, *, n_ctx: int | None = None,
                 n_threads: int | None = None, n_batch: int = 512, n_gpu_layers: int = 0,
                 tokenizer: Any = "auto", reuse_prefix: bool = True, show_progress: bool | None = None,
                 **llama_kwargs: Any) -> None:
        self.model_name = str(model)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.n_gpu_layers = n_gpu_layers
        self.tokenizer_spec = tokenizer
        self.reuse_prefix = reuse_prefix
        self.show_progress = show_progress
        self.llama_kwargs = llama_kwargs
        self._reset_state()

    def _reset_state(self) -> None:
        self._path: str | None = None
        self._llama: Any = None
        self._vocab: Any = None  # a vocab-only llama.cpp model: tokenizer and metadata before load()
        self._tokenizer: Any = None if isinstance(self.tokenizer_spec, str) else self.tokenizer_spec
        self._batch: Any = None
        self._cached: list[int] = []  # the tokens whose KV the context holds (sequence 0)
        self._finalizers: list[weakref.finalize] = []

    # ------------------------------------------------------------------ loading
    def _check_params(self) -> None:
        if self.n_ctx is not None:
            check_positive_int("n_ctx", self.n_ctx)
        if self.n_threads is not None:
            check_positive_int("n_threads", self.n_threads)
        check_positive_int("n_batch", self.n_batch)
        if isinstance(self.n_gpu_layers, bool) or not isinstance(self.n_gpu_layers, int) or self.n_gpu_layers < -1:
            raise ValueError(f"n_gpu_layers must be an int >= -1 (-1: all layers), got {self.n_gpu_layers!r}.")
        if isinstance(self.tokenizer_spec, str) and not self.tokenizer_spec.strip():
            raise ValueError("tokenizer must be 'auto', 'llama', 'hf', a tokenizer name or folder, or a tokenizer "
                             "object; got an empty string.")
        if "vocab_only" in self.llama_kwargs or "model_path" in self.llama_kwargs:
            raise ValueError("vocab_only and model_path are set by LlamaCppLM; pass the model as its first argument.")

    @property
    def path(self) -> str:
        """The GGUF file (resolved on first access)."""
        if self._path is None:
            self._check_params()
            self._path = resolve_gguf(self.model_name)
        return self._path

    def _meta(self) -> Any:
        """A llama.cpp model with at least the vocabulary and hyper-parameters loaded."""
        if self._llama is not None:
            return self._llama
        if self._vocab is None:
            llama_cpp = llama_cpp_module()
            self._vocab = llama_cpp.Llama(self.path, vocab_only=True, verbose=False)
            self._vocab_free = weakref.finalize(self, _free, self._vocab, None)
            self._finalizers.append(self._vocab_free)
        return self._vocab

    def load(self) -> LlamaCppLM:
        """Load the weights and create the context (once); returns ``self``."""
        if self._llama is not None:
            return self
        llama_cpp = llama_cpp_module()
        from llama_cpp import llama_cpp as C

        n_ctx = self.context_length
        n_batch = max(2, min(self.n_batch, n_ctx))  # one micro-batch per decode: no lone-token tail inside it
        kwargs: dict[str, Any] = {"n_ctx": n_ctx, "n_batch": n_batch, "n_ubatch": n_batch,
                                  "n_gpu_layers": self.n_gpu_layers, "logits_all": False, "verbose": False}
        if self.n_threads is not None:
            kwargs.update(n_threads=self.n_threads, n_threads_batch=self.n_threads)
        if C.llama_model_n_swa(self._meta().model) > 0:
            kwargs["swa_full"] = True  # keep every position of sliding-window layers: prefixes stay reusable
        kwargs.update(self.llama_kwargs)
        logger.info("loading GGUF %s with llama.cpp (n_ctx %d)", self.path, n_ctx)
        llama = llama_cpp.Llama(self.path, **kwargs)
        batch = C.llama_batch_init(llama.n_batch, 0, 1)
        self._finalizers.append(weakref.finalize(self, _free, llama, batch))
        self._llama, self._batch, self._cached = llama, batch, []
        if self._vocab is not None:  # the model has the vocabulary too
            self._vocab_free()
            self._vocab = None
        return self

    def close(self) -> None:
        """Free the model, its context and the vocabulary (a later call loads them again; the tokenizer
        is kept and reloads the vocabulary when used)."""
        for finalizer in self._finalizers:
            finalizer()
        tokenizer = self._tokenizer
        self._reset_state()
        self._tokenizer = tokenizer

    _UNPICKLED = ("_llama", "_vocab", "_batch", "_finalizers", "_vocab_free")

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in self._UNPICKLED}
        state["_cached"] = []
        if isinstance(state.get("_tokenizer"), ltok.LlamaTokenizer):  # rebuilt from the file when needed
            state["_tokenizer"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._llama = self._vocab = self._batch = None
        self._finalizers = []

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (loads on first access)."""
        return self.load()._llama

    @property
    def tokenizer(self) -> Any:
        """A tokenizer whose ids are llama.cpp's (loads the vocabulary only, never the weights)."""
        if self._tokenizer is None:
            self._tokenizer = self._make_tokenizer()
        return self._tokenizer

    def _make_tokenizer(self) -> Any:
        meta, spec = self._meta(), self.tokenizer_spec
        if spec not in ("auto", "llama", "hf"):  # a tokenizer by name: it must give llama.cpp's ids
            from ragicl.models import load_tokenizer

            named = load_tokenizer(spec)
            problem = ltok.agrees(named, meta)
            if problem is not None:
                raise ValueError(f"tokenizer {spec!r} does not give {self.path}'s ids: {problem}. Leave "
                                 "tokenizer='auto' (the GGUF's own).")
            return named
        if spec != "llama":
            try:
                hf = ltok.hf_from_gguf(self.path, default_cache_name(self.model_name))
            except Exception as err:  # transformers cannot read every GGUF tokenizer
                if spec == "hf":
                    raise ValueError(f"transformers could not read the tokenizer of {self.path}: {err}") from err
                logger.info("transformers cannot read the tokenizer of %s (%s); using llama.cpp's", self.path, err)
            else:
                problem = ltok.agrees(hf, meta)
                if problem is None:
                    return hf
                if spec == "hf":
                    raise ValueError(f"the transformers tokenizer of {self.path} disagrees with llama.cpp: {problem}."
                                     " Use tokenizer='llama' (llama.cpp's own tokenizer).")
                logger.warning("the transformers tokenizer of %s disagrees with llama.cpp (%s); using llama.cpp's",
                               self.path, problem)
        return ltok.LlamaTokenizer(self._meta, self.model_name, self.context_length)

    @property
    def name(self) -> str:
        return self.model_name

    @property
    def context_length(self) -> int:
        """Tokens the context holds: ``n_ctx``, or the model's training context capped at 8,192."""
        if self._llama is not None:
            return int(self._llama.n_ctx())
        if self.n_ctx is not None:
            self._check_params()
            return int(self.n_ctx)
        meta = self._meta().metadata  # a vocab-only model reports no n_ctx_train: read the GGUF's key
        train = meta.get(f"{meta.get('general.architecture', '')}.context_length", "")
        return min(int(train), MAX_DEFAULT_CTX) if str(train).isdigit() and int(train) > 0 else 2048

    @property
    def vocab_size(self) -> int:
        """Width of the logits (llama.cpp's ``n_vocab``)."""
        return int(self._meta().n_vocab())

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Ids that end a sample: the vocabulary's end-of-sequence and end-of-turn tokens, and the tokenizer's."""
        from llama_cpp import llama_cpp as C

        vocab = C.llama_model_get_vocab(self._meta().model)
        ids = {int(C.llama_vocab_eos(vocab)), int(C.llama_vocab_eot(vocab)), self.tokenizer.eos_token_id}
        return frozenset(int(i) for i in ids if i is not None and 0 <= int(i) < self.vocab_size)

    def __repr__(self) -> str:
        state = "loaded" if self._llama is not None else "not loaded"
        ctx = f", n_ctx={self.n_ctx}" if self.n_ctx is not None else ""
        return f"LlamaCppLM({self.model_name!r}{ctx}, {state})"

    # ------------------------------------------------------------------ the decoding core
    def _logits(self, tokens: list[int], want: Sequence[int], keep: int) -> np.ndarray:
        """Raw float32 logits ``(len(want), V)`` at the positions ``want`` (ascending) of ``tokens``.

        The cached KV of the longest common prefix of ``tokens`` and the cached tokens, at most ``keep``
        tokens and never a wanted position, is kept; the rest is decoded in chunks of ``n_batch``.
        """
        from llama_cpp import llama_cpp as C

        llama = self.load()._llama
        mem = C.llama_get_memory(llama.ctx)
        start = 0
        limit = min(keep, want[0], len(self._cached))
        while start < limit and self._cached[start] == tokens[start]:
            start += 1
        if start == len(tokens) - 1 and start > 0:
            start -= 1  # never decode a lone token: see _bounds
        if start and (C.llama_memory_seq_pos_min(mem, 0) > 0 or not C.llama_memory_seq_rm(mem, 0, start, -1)):
            start = 0  # positions pruned (sliding window) or a state that cannot drop a part: start over
        if start == 0:
            C.llama_memory_clear(mem, True)
        self._cached = tokens[:start]
        out = np.empty((len(want), llama.n_vocab()), dtype=np.float32)
        wanted, row, batch = set(want), 0, self._batch
        bounds = _bounds(start, len(tokens), llama.n_batch)
        for lo, hi in itertools.pairwise(bounds):
            chunk = tokens[lo:hi]
            batch.n_tokens = len(chunk)
            flagged = []
            for i, tok in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, lo + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = (lo + i) in wanted
                if (lo + i) in wanted:
                    flagged.append(i)
            code = C.llama_decode(llama.ctx, batch)
            if code != 0:
                C.llama_memory_clear(mem, True)
                self._cached = []
                raise RuntimeError(f"llama_decode returned {code} at positions {lo}..{lo + len(chunk) - 1} of a "
                                   f"{len(tokens)}-token sequence (context {llama.n_ctx()}); a larger n_ctx may help.")
            self._cached.extend(chunk)
            for i in flagged:
                out[row] = np.ctypeslib.as_array(C.llama_get_logits_ith(llama.ctx, i), shape=(out.shape[1],))
                row += 1
        return out

    def _order(self, seqs: list[list[int]]) -> list[int]:
        """Positions of ``seqs`` in the order that lets neighbours share cached prefixes."""
        return sorted(range(len(seqs)), key=lambda i: seqs[i]) if self.reuse_prefix else list(range(len(seqs)))

    def _keep(self) -> int:
        return 1 << 62 if self.reuse_prefix else 0

    def _progress(self, total: int, desc: str, show: bool | None) -> Any:
        from tqdm.auto import tqdm

        show = self.show_progress if show is None else show
        return tqdm(total=total, desc=desc, disable=(None if show is None else not show), leave=False)

    # ------------------------------------------------------------------ scoring
    def score_continuations(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                            *, show_progress: bool | None = None) -> np.ndarray:
        """Summed log-probability of every continuation after every prompt, float32 ``(P, C)``.

        The prompt is decoded once; a continuation of several tokens is decoded (minus its last token) on
        the prompt's cache, and the tokens it shares with the previous continuation are not decoded again.
        """
        cont = as_id_lists(continuations, "continuations")
        if not cont or not all(cont):
            raise ValueError("continuations must be a non-empty list of non-empty token-id lists (e.g. the "
                             "token ids of each label's verbalization).")
        ids = as_id_lists(prompts, "prompts")
        check_prompts(ids, self.context_length, max(len(c) for c in cont), "the longest continuation")
        out = np.zeros((len(ids), len(cont)), dtype=np.float32)
        with self._progress(len(ids), "scoring", show_progress) as bar:
            for i in self._order(ids):
                p = ids[i]
                first = _log_softmax(self._logits(p, [len(p) - 1], self._keep()))[0]
                for c, seq in enumerate(cont):
                    total = float(first[seq[0]])
                    if len(seq) > 1:
                        rows = _log_softmax(self._logits(p + seq[:-1], range(len(p), len(p) + len(seq) - 1),
                                                         1 << 62))
                        total += float(rows[np.arange(len(seq) - 1), seq[1:]].sum())
                    out[i, c] = total
                bar.update(1)
        return out

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], *,
                            show_progress: bool | None = None) -> np.ndarray:
        """Full-vocabulary log-probabilities of the next token after each prompt, float32 ``(P, V)``."""
        ids = as_id_lists(prompts, "prompts")
        check_prompts(ids, self.context_length, 1, "the next token")
        out = np.zeros((len(ids), self.vocab_size), dtype=np.float32)
        with self._progress(len(ids), "next-token", show_progress) as bar:
            for i in self._order(ids):
                out[i] = _log_softmax(self._logits(ids[i], [len(ids[i]) - 1], self._keep()))[0]
                bar.update(1)
        return out

    def teacher_forced_logprobs(self, prompt: Sequence[int], continuation: Sequence[int]) -> np.ndarray:
        """Float32 full-vocabulary log-probs ``(T, V)``: row t is the distribution of continuation token t
        given the prompt and ``continuation[:t]``."""
        ids, cont = check_pairs(self.context_length, self.name, [prompt], [continuation])
        p, c = ids[0], cont[0]
        return _log_softmax(self._logits(p + c, range(len(p) - 1, len(p) + len(c) - 1), self._keep()))

    def token_logprobs(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *,
                       show_progress: bool | None = None) -> list[np.ndarray]:
        """Float32 log-probability of each token of ``continuations[i]`` after ``prompts[i]`` and the tokens
        before it (teacher forcing; one pair per row)."""
        ids, cont = check_pairs(self.context_length, self.name, prompts, continuations)
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(ids)
        with self._progress(len(ids), "token log-probs", show_progress) as bar:
            for i in self._order([p + c for p, c in zip(ids, cont)]):
                p, c = ids[i], cont[i]
                rows = _log_softmax(self._logits(p + c, range(len(p) - 1, len(p) + len(c) - 1), self._keep()))
                out[i] = rows[np.arange(len(c)), c].astype(np.float32)
                bar.update(1)
        return out

    # ------------------------------------------------------------------ sampling and generation
    def _continue(self, prompt: list[int], max_new_tokens: int, pick: Any, stops: Sequence[str]
                  ) -> tuple[list[int], bool]:
        """Extend ``prompt`` one token at a time with ``pick(logits)``; stop at an end-of-sequence id, a stop
        string in the decoded new tokens, or ``max_new_tokens`` (then ``truncated``)."""
        eos, new = self.eos_token_ids, []
        for step in range(max_new_tokens):
            seq = prompt + new
            token = int(pick(self._logits(seq, [len(seq) - 1], 1 << 62)[0]))
            new.append(token)
            if token in eos or (stops and any(s in self.tokenizer.decode(new) for s in stops)):
                return new, False
        return new, True

    def sample(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, seeds: Sequence[int],
               stop: Sequence[str] = ()) -> list[tuple[list[int], bool]]:
        """One sample per prompt from the exact softmax (temperature 1, no top-k/top-p), row i drawn with
        its own ``numpy`` generator seeded by ``seeds[i]``; ends at an :attr:`eos_token_ids` id, the first
        ``stop`` string or ``max_new_tokens``. Returns ``(new token ids, truncated)`` per prompt."""
        check_positive_int("max_new_tokens", max_new_tokens)
        ids = as_id_lists(prompts, "prompts")
        if not ids or not all(ids) or len(seeds) != len(ids):
            raise ValueError(f"need non-empty prompts and one seed each; got {len(ids)} prompts, "
                             f"{len(seeds)} seeds.")
        check_prompts(ids, self.context_length, max_new_tokens, f"max_new_tokens={max_new_tokens}")
        stops = tuple(s for s in stop if s)
        return [self._continue(p, max_new_tokens, _sampler(np.random.default_rng(int(s)), 1.0), stops)
                for p, s in zip(ids, seeds)]

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                 stop: Sequence[str] | None = None, do_sample: bool = False, temperature: float = 1.0,
                 seed: int | None = None, show_progress: bool | None = None) -> list[str]:
        """Continue each prompt by up to ``max_new_tokens`` tokens; returns only the new text (special tokens
        skipped), cut at the first ``stop`` string. Greedy by default; ``do_sample=True`` samples from the
        softmax at ``temperature`` (one ``numpy`` generator seeded with ``seed`` for the call)."""
        check_positive_int("max_new_tokens", max_new_tokens)
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature!r}.")
        stops = [s for s in ([stop] if isinstance(stop, str) else (stop or [])) if s]
        ids = as_id_lists(prompts, "prompts")
        check_prompts(ids, self.context_length, max_new_tokens, f"max_new_tokens={max_new_tokens}")
        pick = _sampler(np.random.default_rng(seed), float(temperature)) if do_sample else np.argmax
        texts = []
        with self._progress(len(ids), "generating", show_progress) as bar:
            for p in ids:
                new, _ = self._continue(p, max_new_tokens, pick, stops)
                texts.append(_cut(self.tokenizer.decode(new, skip_special_tokens=True), stops))
                bar.update(1)
        return texts


def _bounds(start: int, end: int, size: int) -> list[int]:
    """Chunk boundaries for decoding positions ``start..end-1`` in chunks of at most ``size`` tokens, none of
    them a lone token (unless the sequence is one token long). llama.cpp decodes a one-token batch with other
    kernels than a longer one: measured here, SmolLM2's last-position log-probs moved by up to 0.6 (Q4_1) and
    0.006 (F32) when that position was decoded alone on a cache, and by exactly 0 for any split into chunks
    of two or more tokens. So a position's logits do not depend on what was cached before.

    >>> _bounds(0, 10, 4), _bounds(0, 9, 4), _bounds(7, 9, 4), _bounds(0, 1, 4)
    ([0, 4, 8, 10], [0, 4, 7, 9], [7, 9], [0, 1])
    """
    bounds = list(range(start, end, size)) + [end]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds[-2] -= 1
    return bounds


def _free(llama: Any, batch: Any) -> None:
    """Free a llama.cpp batch and close a model (at garbage collection, :meth:`LlamaCppLM.close` or exit,
    before the interpreter tears the ``llama_cpp`` module down)."""
    from llama_cpp import llama_cpp as C

    if batch is not None:
        C.llama_batch_free(batch)
    llama.close()


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (returned as float32)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x.astype(np.float32)


def _sampler(rng: np.random.Generator, temperature: float) -> Any:
    """``pick(logits)``: a draw from ``softmax(logits / temperature)`` (inverse CDF, float64)."""
    def pick(logits: np.ndarray) -> int:
        x = logits.astype(np.float64) / temperature
        cdf = np.cumsum(np.exp(x - x.max()))
        return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))
    return pick


def _cut(text: str, stops: Sequence[str]) -> str:
    cuts = [at for at in (text.find(s) for s in stops) if at != -1]
    return text[:min(cuts)] if cuts else text
