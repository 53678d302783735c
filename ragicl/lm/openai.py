"""An LM behind an OpenAI-compatible server: vLLM, SGLang, TGI, llama.cpp, LM Studio, Ollama, OpenAI.

:class:`OpenAICompatibleLM` implements the :class:`~ragicl.lm.protocol.LanguageModel` protocol over HTTP,
so the packer's prompts (token ids counted against the model's exact budget), ``ragicl best``, the gap
evaluator, the estimators and the integrations run on the model a user already serves.

On first use it probes the server (:mod:`ragicl.lm._probe`) and scores through the first route that passes
(:mod:`ragicl.lm._routes`): vLLM's ``prompt_logprobs``, then ``echo`` log-probs, then the next token's
``top_logprobs`` (one request per distinct label prefix), then, on chat-only servers, the first generated
token's ``top_logprobs``. Prompts go as token ids where the server takes them (vLLM), so the model reads
exactly what the packer counted; otherwise as text, whose tokenization the probe checks against the local
tokenizer. Requests run ``max_concurrency`` at a time with retries and backoff, and every answer is cached
on disk (:mod:`ragicl.lm._cache`): a rerun sends no request, a run whose server died resumes.

>>> lm = OpenAICompatibleLM("http://localhost:8000/v1", "Qwen/Qwen2.5-7B")   # nothing sent yet
>>> lm.name
'Qwen/Qwen2.5-7B'
>>> lm.score_continuations([[1, 2, 3]], [[4], [5]]).shape                     # doctest: +SKIP
(1, 2)
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import check_positive_int
from ._cache import ResponseCache, default_cache_path
from ._http import HttpClient, RequestStats, ServerError
from ._probe import ServerProfile, probe
from ._routes import (
    ROUTES,
    chat_body,
    completion_body,
    echo_logprobs,
    generated_text,
    logsumexp,
    parse_chat_top_logprobs,
    parse_prompt_logprobs,
    parse_top_logprobs,
    usage_prompt_tokens,
)
from ._tokens import TokenTexts, prompt_text
from .protocol import as_id_lists, check_pairs, check_prompts

logger = logging.getLogger(__name__)

__all__ = ["OpenAICompatibleLM", "ServerError"]

#: environment variables read for the API key, in order
API_KEY_ENV = ("RAGICL_API_KEY", "OPENAI_API_KEY")
#: the largest top_logprobs asked for when a label token is not among the first ``top_logprobs``
WIDE_TOP = 1000


class OpenAICompatibleLM:
    """A model served over an OpenAI-compatible ``/v1`` API, as a ragicl :class:`LanguageModel`.

    ``base_url`` is the API root (``http://host:8000/v1``); ``model`` the served model's id (``None``: the
    first one ``/v1/models`` lists). ``tokenizer`` counts the packer's tokens: ``None`` loads the model's
    own by its name (:func:`ragicl.models.load_tokenizer`: a hub id, a local folder, or a packaged default),
    a string loads that one, an object is used as is. ``api_key`` defaults to ``$RAGICL_API_KEY`` or
    ``$OPENAI_API_KEY``. ``route`` is ``"auto"`` (probe, then the best route that passes) or one of
    ``"prompt_logprobs"``, ``"echo"``, ``"top_logprobs"``, ``"chat"`` to force it (a forced route is
    trusted unchecked). ``chat=True`` talks to ``/v1/chat/completions`` only. ``cache`` is ``True`` (a file
    under ``$RAGICL_CACHE/server-responses``), a path, or ``False``. ``context_length`` overrides what the
    server reports (vLLM reports it; for others the tokenizer's limit, else 2,048 with a warning).

    Nothing is sent until :meth:`load` (or the first scoring call), which probes the server once; the
    probe's :class:`~ragicl.lm._probe.ServerProfile` is cached with the responses, so a rerun sends nothing.
    """

    def __init__(self, base_url: str, model: str | None = None, *, tokenizer: Any = None,
                 api_key: str | None = None, route: str = "auto", chat: bool = False, max_concurrency: int = 8,
                 timeout: float = 120.0, max_retries: int = 8, cache: bool | str | os.PathLike = True,
                 context_length: int | None = None, top_logprobs: int = 20,
                 extra_body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                 show_progress: bool | None = None, reprobe: bool = False, transport: Any = None) -> None:
        self.base_url = base_url
        self.model = model
        self.tokenizer_spec = tokenizer
        self.api_key = api_key
        self.route = route
        self.chat = chat
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.cache = cache
        self.context_length_override = context_length
        self.top_logprobs = top_logprobs
        self.extra_body = extra_body
        self.headers = headers
        self.show_progress = show_progress
        self.reprobe = reprobe
        self.transport = transport
        self._client: HttpClient | None = None
        self._profile: ServerProfile | None = None
        self._tokenizer: Any = None
        self._texts: TokenTexts | None = None
        self._wide_cap: int | None = None
        self._lock = threading.Lock()
        self.approximate_lookups = 0
        self.ambiguous_lookups = 0
        self.count_mismatches = 0

    # ------------------------------------------------------------------ setup
    def _check(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as 'http://localhost:8000/v1', got "
                             f"{self.base_url!r}.")
        if self.route not in ("auto", *ROUTES):
            raise ValueError(f"route must be 'auto' or one of {list(ROUTES)}, got {self.route!r}.")
        check_positive_int("max_concurrency", self.max_concurrency)
        check_positive_int("top_logprobs", self.top_logprobs)
        if not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}.")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}.")

    def _cache_obj(self) -> ResponseCache | None:
        if self.cache is False or self.cache is None:
            return None
        path = default_cache_path(self.base_url, self.model or "default") if self.cache is True else Path(self.cache)
        return ResponseCache(path)

    @property
    def client(self) -> HttpClient:
        """The HTTP client (created on first use)."""
        if self._client is None:
            self._check()
            key = self.api_key or next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)
            self._client = HttpClient(self.base_url, model=self.model or "default", api_key=key,
                                      headers=self.headers, timeout=self.timeout, max_retries=self.max_retries,
                                      max_concurrency=self.max_concurrency, cache=self._cache_obj(),
                                      transport=self.transport)
        return self._client

    @property
    def stats(self) -> RequestStats:
        """Requests sent, answered from the cache, retried and failed so far."""
        return self.client.stats

    @property
    def tokenizer(self) -> Any:
        """The tokenizer the packer counts with (loaded on first access, without contacting the server)."""
        if self._tokenizer is None:
            spec = self.tokenizer_spec
            if spec is None or isinstance(spec, str):
                from ..models import load_tokenizer

                name = spec or self.model
                if name is None:
                    raise ValueError("no tokenizer: pass model=... (its tokenizer is loaded by name) or "
                                     "tokenizer=... (a name, a folder or a tokenizer object).")
                self._tokenizer = load_tokenizer(name)
            else:
                self._tokenizer = spec
        return self._tokenizer

    def load(self) -> OpenAICompatibleLM:
        """Probe the server once (or read the cached profile); returns ``self``."""
        self.profile  # noqa: B018 - the property probes
        return self

    @property
    def profile(self) -> ServerProfile:
        """What the probe found (see :class:`~ragicl.lm._probe.ServerProfile`)."""
        with self._lock:
            if self._profile is None:
                self._profile = self._load_profile()
        return self._profile

    def _load_profile(self) -> ServerProfile:
        client, cache = self.client, self.client.cache
        key = cache.key(self.model or "default", "ragicl:profile", {"base_url": self.base_url, "chat": self.chat,
                                                                      "version": 1}) if cache is not None else None
        if key is not None and not self.reprobe:
            stored = cache.get(key)  # type: ignore[union-attr]
            if stored is not None:
                return ServerProfile.from_json(stored)
        profile = probe(client, self.model, self.tokenizer, chat=self.chat, top_n=self.top_logprobs)
        if self.model is None:
            self.model = profile.model
            client.model = profile.model
        if self.route == "auto" and profile.route is None:
            raise ServerError(f"{self.base_url} ({profile.model}, {profile.owned_by or 'unknown server'}) offers "
                              f"no usable way to score tokens: {profile.describe()}. ragicl needs prompt "
                              "log-probs (vLLM prompt_logprobs, or correct echo log-probs) or next-token "
                              "top_logprobs. Fix: serve the model with vLLM or SGLang, or run it in process "
                              "(TransformersLM, LlamaCppLM).")
        if profile.tokenizer_agrees is False and not profile.token_ids:
            raise ServerError(f"{self.base_url} tokenizes text differently from the local tokenizer "
                              f"({type(self.tokenizer).__name__}), and takes no token-id prompts: the packer's "
                              "token budget would not hold. Fix: pass tokenizer= the served model's tokenizer.")
        if key is not None:
            cache.put(key, profile.to_json())  # type: ignore[union-attr]
        return profile

    @property
    def active_route(self) -> str:
        """The route scoring uses: the forced one, else the probe's choice."""
        return self.route if self.route != "auto" else str(self.profile.route)

    # ------------------------------------------------------------------ the protocol's attributes
    @property
    def name(self) -> str:
        return self.model or f"{self.base_url} (first model)"

    @property
    def context_length(self) -> int:
        if self.context_length_override:
            return int(self.context_length_override)
        if self.profile.context_length:
            return int(self.profile.context_length)
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 10**7:
            return limit
        logger.warning("%s does not report its context length; assuming 2048 (pass context_length=)",
                       self.base_url)
        return 2048

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return frozenset([int(eos)]) if eos is not None else frozenset()

    def __repr__(self) -> str:
        return f"OpenAICompatibleLM({self.base_url!r}, {self.model!r}, route={self.route!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_client=None, _lock=None, _texts=None, transport=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ wire format
    def _wire(self, ids: Sequence[int]) -> Any:
        profile = self.profile
        if profile.token_ids:
            return [int(t) for t in ids]
        return prompt_text(self.tokenizer, ids, server_adds_bos=profile.server_adds_bos)

    def _body(self, ids: Sequence[int], **kwargs: Any) -> dict[str, Any]:
        return completion_body(self.profile.model, self._wire(ids), extra=self.extra_body, **kwargs)

    def _count(self, response: Any, ids: Sequence[int]) -> None:
        """Compare what the server read with what the packer counted (text prompts only)."""
        n = usage_prompt_tokens(response)
        if n is not None and n != len(ids) and not self.profile.token_ids:
            with self._lock:
                self.count_mismatches += 1
                first = self.count_mismatches == 1
            if first:
                logger.warning("%s read %d prompt tokens where the packer counted %d: its tokenizer differs "
                               "from the local one on this prompt", self.base_url, n, len(ids))

    # ------------------------------------------------------------------ scoring
    def score_continuations(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                            *, show_progress: bool | None = None) -> np.ndarray:
        """Summed log-probability of every continuation after every prompt, float32 ``(P, C)``."""
        cont = as_id_lists(continuations, "continuations")
        if not cont or not all(cont):
            raise ValueError("continuations must be a non-empty list of non-empty token-id lists.")
        ids = as_id_lists(prompts, "prompts")
        check_prompts(ids, self.context_length, max(len(c) for c in cont), "the longest continuation")
        show = self.show_progress if show_progress is None else show_progress
        route = self.active_route
        if route in ("prompt_logprobs", "echo"):
            pairs = [(p, c) for p in ids for c in cont]
            sums = [float(v.sum()) for v in self._pair_logprobs(pairs, route, show)]
            return np.asarray(sums, dtype=np.float32).reshape(len(ids), len(cont))
        return self._prefix_scores(ids, cont, show)

    def token_logprobs(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *,
                       show_progress: bool | None = None) -> list[np.ndarray]:
        """Float32 log-probability of each continuation token (teacher forcing), one pair per row."""
        ids, cont = check_pairs(self.context_length, self.name, prompts, continuations)
        route = self.active_route
        show = self.show_progress if show_progress is None else show_progress
        if route in ("prompt_logprobs", "echo"):
            return self._pair_logprobs(list(zip(ids, cont)), route, show)
        out = []
        for p, c in zip(ids, cont):
            out.append(np.array([self._prefix_scores([p + c[:j]], [[c[j]]], show)[0, 0] for j in range(len(c))],
                                dtype=np.float32))
        return out

    def _pair_logprobs(self, pairs: list[tuple[list[int], list[int]]], route: str,
                       show: bool | None) -> list[np.ndarray]:
        bodies = []
        for p, c in pairs:
            full = p + c
            bodies.append(self._body(full, prompt_logprobs=1) if route == "prompt_logprobs"
                          else self._body(full, logprobs=1, echo=True))
        responses = self.client.post_many("/completions", bodies, desc=f"scoring ({route})", show_progress=show)
        out = []
        for (p, c), resp in zip(pairs, responses):
            full = p + c
            self._count(resp, full)
            if route == "prompt_logprobs":
                values = parse_prompt_logprobs(resp, full)[-len(c):]
            else:
                tokens, vals = echo_logprobs(resp)
                usage = resp.get("usage") or {}
                n_gen = usage.get("completion_tokens", 1) if isinstance(usage, dict) else 1
                prompt_vals = vals[:len(vals) - int(n_gen or 0)]
                values = prompt_vals[-len(c):]
                got = "".join(tokens[len(prompt_vals) - len(c):len(prompt_vals)])
                want = self.tokenizer.decode(c, skip_special_tokens=False, clean_up_tokenization_spaces=False)
                if got.strip() != want.strip():
                    raise ServerError(f"{self.base_url} echoed the continuation as {got!r}, expected {want!r}: "
                                      "its tokenization differs from the local tokenizer's.")
            if len(values) != len(c) or any(v is None for v in values):
                raise ServerError(f"{self.base_url} returned no log-prob for some continuation tokens ({route}).")
            out.append(np.asarray(values, dtype=np.float32))
        return out

    def _prefix_scores(self, ids: list[list[int]], cont: list[list[int]], show: bool | None) -> np.ndarray:
        """Scores through next-token ``top_logprobs``: one request per prompt and distinct label prefix."""
        texts = self._texts_obj()
        chat = self.active_route == "chat"
        if chat and any(len(c) > 1 for c in cont):
            raise ServerError(f"{self.base_url} is scored through chat completions, which give the first "
                              "generated token only; these labels take several tokens. Fix: a completions "
                              "endpoint, or labels of one token each (a verbalizer).")
        keys: list[tuple[int, tuple[int, ...]]] = sorted({(i, tuple(c[:j])) for i in range(len(ids))
                                                          for c in cont for j in range(len(c))})
        index = {k: n for n, k in enumerate(keys)}
        bodies = [self._top_body(ids[i] + list(prefix), self.top_logprobs, chat) for i, prefix in keys]
        responses = self.client.post_many("/chat/completions" if chat else "/completions", bodies,
                                          desc="scoring (top_logprobs)", show_progress=show)
        tops = [parse_chat_top_logprobs(r) if chat else parse_top_logprobs(r) for r in responses]
        out = np.zeros((len(ids), len(cont)), dtype=np.float32)
        for i in range(len(ids)):
            for j, c in enumerate(cont):
                total = 0.0
                for t in range(len(c)):
                    n = index[(i, tuple(c[:t]))]
                    value = texts.lookup(tops[n], c[t])
                    if value is None:
                        value = self._wide_lookup(ids[i] + c[:t], c[t], tops[n], chat)
                    total += value
                out[i, j] = total
        return out

    def _top_body(self, ids: Sequence[int], n: int, chat: bool) -> dict[str, Any]:
        if chat:
            return chat_body(self.profile.model, prompt_text(self.tokenizer, ids,
                                                             server_adds_bos=self.profile.server_adds_bos),
                             top_logprobs=n, extra=self.extra_body)
        return self._body(ids, logprobs=n, token_id_keys=self.profile.token_id_keys)

    def _texts_obj(self) -> TokenTexts:
        if self._texts is None:
            self._texts = TokenTexts(self.tokenizer)
        return self._texts

    def _wide_lookup(self, ids: list[int], token: int, top: dict[str, float], chat: bool) -> float:
        """A token outside the first top_logprobs: ask for more; if still absent, the remaining probability
        mass spread evenly over the tokens not listed, capped at the smallest listed value (counted)."""
        texts = self._texts_obj()
        for n in (WIDE_TOP, self.vocab_size):  # a wider list, then the whole vocabulary (llama.cpp allows it)
            if chat or n <= max(self.top_logprobs, len(top)) or (self._wide_cap is not None and n > self._wide_cap):
                continue
            try:
                resp = self.client.post("/completions", self._body(ids, logprobs=n,
                                                                   token_id_keys=self.profile.token_id_keys))
                top = parse_top_logprobs(resp)
            except ServerError as err:
                logger.info("%s refused logprobs=%d (%s)", self.base_url, n, str(err)[:120])
                self._wide_cap = n - 1
                break
            value = texts.lookup(top, token)
            if value is not None:
                return value
        with self._lock:
            self.approximate_lookups += 1
            first = self.approximate_lookups == 1
        if first:
            logger.warning("a label token is outside the top %d log-probs %s returns; it is scored by an "
                           "estimate (raise the server's logprobs cap, e.g. vLLM --max-logprobs)", len(top),
                           self.base_url)
        rest = max(1e-30, 1.0 - math.exp(min(0.0, logsumexp(list(top.values())))))
        estimate = math.log(rest / max(1, self.vocab_size - len(top)))
        return min(estimate, min(top.values()) if top else estimate)

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], *,
                            show_progress: bool | None = None) -> np.ndarray:
        raise ServerError(f"{self.base_url} returns only the top log-probs of the next token, not the full "
                          f"vocabulary's ({self.vocab_size} tokens) that this method needs (kNN prompting). "
                          "Fix: run the model in process (TransformersLM or LlamaCppLM).")

    def teacher_forced_logprobs(self, prompt: Sequence[int], continuation: Sequence[int]) -> np.ndarray:
        raise ServerError(f"the exact per-position TV needs the full vocabulary's log-probs at every position; "
                          f"{self.base_url} returns only the top ones. Fix: run the model in process "
                          "(TransformersLM or LlamaCppLM) for the generation gap's teacher-forced TV.")

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                 stop: Sequence[str] | None = None, do_sample: bool = False, temperature: float = 1.0,
                 seed: int | None = None, show_progress: bool | None = None) -> list[str]:
        """Continue each prompt by up to ``max_new_tokens`` tokens (greedy unless ``do_sample``); new text only."""
        check_positive_int("max_new_tokens", max_new_tokens)
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature!r}.")
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        ids = as_id_lists(prompts, "prompts")
        check_prompts(ids, self.context_length, max_new_tokens, f"max_new_tokens={max_new_tokens}")
        sampling: dict[str, Any] = {"temperature": float(temperature) if do_sample else 0.0}
        if seed is not None:
            sampling["seed"] = int(seed)
        if stops:
            sampling["stop"] = stops[:4]  # the OpenAI API takes at most four; longer lists are cut locally
        chat = self.active_route == "chat"
        if chat:
            bodies = [chat_body(self.profile.model, prompt_text(self.tokenizer, p,
                                                                server_adds_bos=self.profile.server_adds_bos),
                                max_tokens=max_new_tokens, extra=self.extra_body, **sampling) for p in ids]
        else:
            bodies = [self._body(p, max_tokens=max_new_tokens, **sampling) for p in ids]
        responses = self.client.post_many("/chat/completions" if chat else "/completions", bodies,
                                          desc="generating", show_progress=show_progress)
        out = []
        for resp in responses:
            text = generated_text(resp, chat=chat)
            cut = min((text.find(s) for s in stops if s in text), default=len(text))
            out.append(text[:cut])
        return out

    def sample(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, seeds: Sequence[int],
               stop: Sequence[str] = ()) -> list[tuple[list[int], bool]]:
        """One temperature-1 sample per prompt (seeded by the server), re-tokenized locally; ``truncated``
        when it hit ``max_new_tokens``. The server's own sampling defaults apply beyond temperature and
        ``top_p=1`` (pass ``extra_body`` for e.g. ``top_k``)."""
        check_positive_int("max_new_tokens", max_new_tokens)
        ids = as_id_lists(prompts, "prompts")
        if not ids or not all(ids) or len(seeds) != len(ids):
            raise ValueError(f"need non-empty prompts and one seed each; got {len(ids)} prompts, "
                             f"{len(seeds)} seeds.")
        bodies = [self._body(p, max_tokens=max_new_tokens, temperature=1.0, top_p=1.0, seed=int(s),
                             **({"stop": list(stop)[:4]} if stop else {})) for p, s in zip(ids, seeds)]
        responses = self.client.post_many("/completions", bodies, desc="sampling")
        out = []
        for resp in responses:
            text = generated_text(resp)
            finish = resp["choices"][0].get("finish_reason")
            toks = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            out.append((toks, finish == "length"))
        return out
