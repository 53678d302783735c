"""First contact with a server: what it offers, and whether its numbers can be trusted.

Servers differ, and some are wrong (llama.cpp's ``llama-server`` returns no prompt log-probs; llama-cpp-python
0.3.36 echoes prompt log-probs that are off by one token for prompts without a BOS token). :func:`probe`
sends a fixed probe text once and records a :class:`ServerProfile`:

1. ``GET /models``: the model is served; its context length when the server says (vLLM's ``max_model_len``).
2. Token-id prompts: a completion with the probe's ids as the prompt is accepted and the server reports
   reading exactly that many tokens.
3. Tokenization: the server's tokenize endpoint (vLLM ``/tokenize``, llama-cpp-python ``/extras/tokenize``,
   llama-server ``/tokenize``) gives the local tokenizer's ids on probe texts (non-ASCII included).
4. ``top_logprobs`` at a few positions of the probe: present, normalised (their probabilities sum to at most
   1) and consistent with greedy decoding (the generated token is the most likely one). This is the path
   every server uses to sample, so it is the reference for the next two.
5. ``echo`` and ``prompt_logprobs``: the log-prob each gives a probe token agrees with the ``top_logprobs``
   value of that token at that position, within :data:`AGREE_NATS`.

The first route that passes in :data:`ragicl.lm._routes.ROUTES` order is used. If none passes, one
:class:`~ragicl.lm._http.ServerError` names the server and what it lacks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ._http import HttpClient, ServerError, ServerRequestError
from ._routes import (
    chat_body,
    completion_body,
    echo_logprobs,
    logsumexp,
    parse_chat_top_logprobs,
    parse_prompt_logprobs,
    parse_top_logprobs,
    usage_prompt_tokens,
)
from ._tokens import TokenTexts, prompt_text

logger = logging.getLogger(__name__)

__all__ = ["AGREE_NATS", "PROBE_TEXT", "RouteCheck", "ServerProfile", "probe"]

PROBE_TEXT = ("Review: a gripping, beautifully shot film\nSentiment: positive\n"
              "Review: dull and far too long\nSentiment: negative\nReview: a joy to watch\nSentiment: positive")
TOKENIZE_TEXTS = (PROBE_TEXT, "Критика: 映画は素晴らしい — café ☕ 👍\nMetin: güzel")
#: how far two routes may disagree on a probe token's log-prob (nats) and still both be trusted: float
#: noise between a server's batched prompt pass and its decode pass (bf16 on GPUs) stays well below;
#: llama-cpp-python's off-by-one echo is off by 2-8 nats on this probe
AGREE_NATS = 0.1
#: probe positions checked (the last tokens of the probe text)
PROBE_POSITIONS = 4
_TOKENIZE_ENDPOINTS = (("//tokenize", "prompt"), ("//extras/tokenize", "input"), ("//tokenize", "content"))


@dataclass(frozen=True)
class RouteCheck:
    """One route's probe result: usable or not, why, and the largest disagreement seen (nats)."""

    ok: bool
    reason: str
    max_diff: float | None = None


@dataclass(frozen=True)
class ServerProfile:
    """What :func:`probe` found out about a server and model (stored with the response cache)."""

    base_url: str
    model: str
    owned_by: str | None
    routes: dict[str, RouteCheck]
    route: str | None
    token_ids: bool
    token_id_keys: bool
    tokenize_endpoint: str | None
    tokenizer_agrees: bool | None
    server_adds_bos: bool
    context_length: int | None
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerProfile:
        routes = {k: RouteCheck(**v) for k, v in data["routes"].items()}
        return cls(**{**data, "routes": routes, "notes": tuple(data.get("notes", ()))})

    def describe(self) -> str:
        """One line per route: what the probe found (for errors and logs)."""
        lines = [f"{name}: {'ok' if c.ok else 'no'} ({c.reason})" for name, c in self.routes.items()]
        return "; ".join(lines)


def _models(client: HttpClient, model: str | None) -> tuple[str, str | None, int | None]:
    try:
        listing = client.request("GET", "/models", retry=True)
    except ServerRequestError as err:
        if model is None:
            raise ServerError(f"{client.base_url}/models failed (HTTP {err.status}); pass model=... "
                              "explicitly.") from err
        return model, None, None
    data = listing.get("data") if isinstance(listing, dict) else None
    entries = [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
    ids = [str(d.get("id")) for d in entries]
    if model is None:
        if not ids:
            raise ServerError(f"{client.base_url}/models lists no model; pass model=... explicitly.")
        model = ids[0]
    elif ids and model not in ids:
        raise ServerError(f"{client.base_url} does not serve {model!r}; it serves {ids}. Fix: pass one of "
                          "those as the model (--lm).")
    entry = next((d for d in entries if str(d.get("id")) == model), {})
    ctx = entry.get("max_model_len")
    return model, entry.get("owned_by"), ctx if isinstance(ctx, int) and ctx > 0 else None


def _try(client: HttpClient, endpoint: str, body: dict[str, Any]) -> tuple[Any, str | None]:
    """(response, None) or (None, why not): the probe asks for things a server may not have (refusals are
    not retried; a busy or slow server is, as for any request)."""
    try:
        return client.request("POST", endpoint, body), None
    except ServerRequestError as err:
        return None, f"HTTP {err.status}: {err.body[:160]}"
    except ServerError as err:
        return None, str(err)[:200]


def _tokenize(client: HttpClient, model: str, tokenizer: Any) -> tuple[str | None, bool | None, bool]:
    """(endpoint, agrees with the local tokenizer, server adds BOS) from the first tokenize endpoint found."""
    for endpoint, key in _TOKENIZE_ENDPOINTS:
        body = {key: TOKENIZE_TEXTS[0]} | ({"model": model} if key == "prompt" else {})
        got, _ = _try(client, endpoint, body)
        tokens = got.get("tokens") if isinstance(got, dict) else None
        if not isinstance(tokens, list):
            continue
        agree, adds_bos = True, False
        for text in TOKENIZE_TEXTS:
            got, _ = _try(client, endpoint, {key: text} | ({"model": model} if key == "prompt" else {}))
            server = got.get("tokens") if isinstance(got, dict) else None
            plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            full = list(tokenizer(text, add_special_tokens=True)["input_ids"])
            if server == full and full != plain:
                adds_bos = True
            elif server != plain and server != full:
                agree = False
        return endpoint, agree, adds_bos
    return None, None, False


def _top_at(client: HttpClient, model: str, prompt: Any, n: int, token_id_keys: bool,
            chat: bool) -> tuple[dict[str, float] | None, str | None, str | None]:
    """(top log-probs, generated text, error) of the next token after ``prompt``."""
    if chat:
        resp, err = _try(client, "/chat/completions", chat_body(model, prompt, top_logprobs=n))
        if resp is None:
            return None, None, err
        try:
            top = parse_chat_top_logprobs(resp)
            text = resp["choices"][0]["message"]["content"]
        except (ServerError, KeyError, IndexError, TypeError) as e:
            return None, None, str(e)[:200]
        return top, text, None
    resp, err = _try(client, "/completions", completion_body(model, prompt, logprobs=n,
                                                               token_id_keys=token_id_keys))
    if resp is None:
        return None, None, err
    try:
        return parse_top_logprobs(resp), resp["choices"][0].get("text"), None
    except ServerError as e:
        return None, None, str(e)[:200]


def probe(client: HttpClient, model: str | None, tokenizer: Any, *, chat: bool = False,
          top_n: int = 20) -> ServerProfile:
    """Probe the server behind ``client`` (see the module docstring)."""
    model, owned_by, ctx = _models(client, model)
    texts = TokenTexts(tokenizer)
    ids = list(tokenizer(PROBE_TEXT, add_special_tokens=True)["input_ids"])
    endpoint, agrees, adds_bos = _tokenize(client, model, tokenizer)
    notes: list[str] = []
    routes: dict[str, RouteCheck] = {}

    # token-id prompts
    token_ids = False
    if not chat:
        resp, err = _try(client, "/completions", completion_body(model, ids, logprobs=1))
        n_read = usage_prompt_tokens(resp) if resp is not None else None
        token_ids = resp is not None and (n_read is None or n_read == len(ids))
        if resp is not None and not token_ids:
            notes.append(f"took token ids but read {n_read} tokens for {len(ids)} sent: sending text")

    def wire(seq: Sequence[int]) -> Any:
        return list(seq) if token_ids else prompt_text(tokenizer, seq, server_adds_bos=adds_bos)

    # vLLM's token-id keys for top_logprobs
    token_id_keys = False
    if not chat:
        top, _, _ = _top_at(client, model, wire(ids[:-1]), top_n, True, False)
        token_id_keys = bool(top) and all(k.startswith("token_id:") for k in top)

    # the reference route: next-token top_logprobs at the probe positions
    positions = list(range(max(1, len(ids) - PROBE_POSITIONS), len(ids)))
    reference: dict[int, float] = {}
    top_problem = None
    for pos in positions:
        top, text, err = _top_at(client, model, wire(ids[:pos]) if not chat else prompt_text(
            tokenizer, ids[:pos], server_adds_bos=adds_bos), top_n, token_id_keys, chat)
        if top is None:
            top_problem = err or "no top_logprobs"
            break
        total = logsumexp(list(top.values()))
        if total > 1e-3:
            top_problem = f"top_logprobs are not normalised (their probabilities sum to {math.exp(total):.3f})"
            break
        best = max(top, key=top.__getitem__)
        if text is not None and text != "" and best != text and not best.startswith("token_id:") \
                and top[best] - top.get(text, -math.inf) > 1e-4:
            top_problem = f"the greedy token {text!r} is not the most likely in top_logprobs ({best!r})"
            break
        value = texts.lookup(top, ids[pos])
        if value is not None:
            reference[pos] = value
    name = "chat" if chat else "top_logprobs"
    routes[name] = RouteCheck(top_problem is None, top_problem or
                              f"normalised, greedy-consistent at {len(positions)} probe positions")
    if chat:
        route = "chat" if top_problem is None else None
        return _finish(client, model, owned_by, routes, route, False, False, endpoint, agrees, adds_bos, ctx,
                       notes)

    def compare(values: dict[int, float], what: str) -> RouteCheck:
        common = [p for p in values if p in reference]
        if len(common) < 2:
            return RouteCheck(False, f"{what}: too few probe tokens to check against top_logprobs "
                              f"({len(common)}); not trusted")
        diff = max(abs(values[p] - reference[p]) for p in common)
        if diff > AGREE_NATS:
            return RouteCheck(False, f"{what} disagree with next-token top_logprobs by up to {diff:.2f} nats "
                              f"(tolerance {AGREE_NATS})", diff)
        return RouteCheck(True, f"{what} agree with top_logprobs within {diff:.3f} nats", diff)

    # prompt_logprobs (vLLM)
    resp, err = _try(client, "/completions", completion_body(model, wire(ids), prompt_logprobs=1))
    if resp is None or not isinstance(resp.get("choices", [{}])[0].get("prompt_logprobs"), list):
        routes["prompt_logprobs"] = RouteCheck(False, err or "the server ignores prompt_logprobs")
    elif top_problem is not None:
        routes["prompt_logprobs"] = RouteCheck(False, "cannot be checked: top_logprobs unusable")
    else:
        try:
            got = parse_prompt_logprobs(resp, ids)
            offset = len(got) - len(ids)
            routes["prompt_logprobs"] = compare({p: got[p + offset] for p in positions
                                                 if got[p + offset] is not None}, "prompt_logprobs")
        except ServerError as e:
            routes["prompt_logprobs"] = RouteCheck(False, str(e)[:200])

    # echo
    resp, err = _try(client, "/completions", completion_body(model, wire(ids), logprobs=1, echo=True))
    if resp is None:
        routes["echo"] = RouteCheck(False, err or "no answer")
    elif top_problem is not None:
        routes["echo"] = RouteCheck(False, "cannot be checked: top_logprobs unusable")
    else:
        try:
            _, values = echo_logprobs(resp)
            n_gen = _completion_tokens(resp)
            prompt_vals = values[:len(values) - n_gen]
            offset = len(prompt_vals) - len(ids)
            routes["echo"] = compare({p: prompt_vals[p + offset] for p in positions
                                      if 0 <= p + offset < len(prompt_vals) and prompt_vals[p + offset] is not None},
                                     "echo log-probs")
        except ServerError as e:
            routes["echo"] = RouteCheck(False, str(e)[:200])

    route = next((r for r in ("prompt_logprobs", "echo", "top_logprobs") if routes.get(r, RouteCheck(False, ""))
                  .ok), None)
    return _finish(client, model, owned_by, routes, route, token_ids, token_id_keys, endpoint, agrees, adds_bos,
                   ctx, notes)


def _completion_tokens(resp: Any) -> int:
    usage = resp.get("usage") if isinstance(resp, dict) else None
    n = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return n if isinstance(n, int) and n >= 0 else 1


def _finish(client: HttpClient, model: str, owned_by: str | None, routes: dict[str, RouteCheck], route: str | None,
            token_ids: bool, token_id_keys: bool, endpoint: str | None, agrees: bool | None, adds_bos: bool,
            ctx: int | None, notes: list[str]) -> ServerProfile:
    profile = ServerProfile(client.base_url, model, owned_by, routes, route, token_ids, token_id_keys, endpoint,
                            agrees, adds_bos, ctx, tuple(notes))
    logger.info("probed %s (%s): route %s; %s", client.base_url, model, route, profile.describe())
    return profile
