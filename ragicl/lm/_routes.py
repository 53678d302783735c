"""The ways an OpenAI-compatible server can score tokens ("routes"): request bodies and response parsing.

* ``prompt_logprobs`` (vLLM's extension of ``/v1/completions``): the log-prob of every prompt token,
  ``choices[0].prompt_logprobs[i] = {"<token id>": {"logprob": ..., "rank": ..., "decoded_token": ...}}``
  (``None`` for the first token). Exact for any continuation; one request per (prompt, continuation).
* ``echo`` (the legacy OpenAI completions field, SGLang, llama-cpp-python): ``echo=true`` + ``logprobs``
  returns ``choices[0].logprobs.token_logprobs`` for the prompt tokens too. Exact when the server computes
  it right, which some do not (llama-cpp-python 0.3.36 pairs each token with the distribution that follows
  it when the prompt has no BOS token): the probe checks it before it is used.
* ``top_logprobs`` (every completions server): ``max_tokens=1, logprobs=N`` returns the ``N`` most likely
  next tokens after the prompt, keyed by their text (or ``"token_id:<id>"`` on vLLM with
  ``return_tokens_as_token_ids``). Exact for a continuation token that is among the ``N``; a continuation of
  several tokens needs one request per prefix.
* ``chat`` (``/v1/chat/completions`` only servers): the first generated token's ``top_logprobs``; the
  prompt reaches the model wrapped in the server's chat template.

Everything here is pure (bodies in, numbers out), so recorded responses test it without a server.

>>> parse_top_logprobs({"choices": [{"logprobs": {"top_logprobs": [{" yes": -0.1, " no": -2.4}]}}]})
{' yes': -0.1, ' no': -2.4}
>>> token_id_key("token_id:42"), token_id_key(" yes")
(42, None)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._http import ServerError

__all__ = ["ROUTES", "chat_body", "completion_body", "echo_logprobs", "logsumexp", "parse_chat_top_logprobs",
           "parse_prompt_logprobs", "parse_top_logprobs", "token_id_key", "usage_prompt_tokens"]

#: scoring routes in the order ``route="auto"`` prefers them (exact per pair first)
ROUTES = ("prompt_logprobs", "echo", "top_logprobs", "chat")

Prompt = "list[int] | str"


def completion_body(model: str, prompt: Any, *, max_tokens: int = 1, logprobs: int | None = None,
                    echo: bool = False, prompt_logprobs: int | None = None, token_id_keys: bool = False,
                    extra: dict[str, Any] | None = None, **sampling: Any) -> dict[str, Any]:
    """A ``/v1/completions`` body; greedy (``temperature=0``) unless ``sampling`` says otherwise."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
    body.update(sampling)
    if logprobs is not None:
        body["logprobs"] = logprobs
    if echo:
        body["echo"] = True
    if prompt_logprobs is not None:
        body["prompt_logprobs"] = prompt_logprobs
    if token_id_keys:
        body["return_tokens_as_token_ids"] = True
    if extra:
        body.update(extra)
    return body


def chat_body(model: str, text: str, *, max_tokens: int = 1, top_logprobs: int | None = None,
              extra: dict[str, Any] | None = None, **sampling: Any) -> dict[str, Any]:
    """A ``/v1/chat/completions`` body with ``text`` as the one user message."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}],
                            "max_tokens": max_tokens, "temperature": 0.0}
    body.update(sampling)
    if top_logprobs is not None:
        body.update(logprobs=True, top_logprobs=top_logprobs)
    if extra:
        body.update(extra)
    return body


def _choice(response: Any) -> dict[str, Any]:
    try:
        choice = response["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise ServerError(f"the server's answer has no choices: {str(response)[:300]}") from None
    if not isinstance(choice, dict):
        raise ServerError(f"the server's answer has a malformed choice: {str(choice)[:300]}")
    return choice


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ServerError(f"the server returned {value!r} as {what}; expected a number.")
    return float(value)


def logsumexp(values: Sequence[float]) -> float:
    """``log(sum(exp(v)))`` computed stably (``-inf`` for no values)."""
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    top = max(finite)
    return top + math.log(sum(math.exp(v - top) for v in finite))


def token_id_key(key: str) -> int | None:
    """The id in a ``"token_id:<id>"`` key (vLLM's ``return_tokens_as_token_ids``), else None."""
    if key.startswith("token_id:"):
        tail = key[len("token_id:"):]
        if tail.isdigit():
            return int(tail)
    return None


def parse_top_logprobs(response: Any, position: int = 0) -> dict[str, float]:
    """``{token text: log-prob}`` of the generated token at ``position`` (completions endpoint)."""
    logprobs = _choice(response).get("logprobs")
    tops = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
    if not isinstance(tops, list) or len(tops) <= position or not isinstance(tops[position], dict):
        raise ServerError("the server's completion has no top_logprobs for the generated token (asked for "
                          f"logprobs); it answered logprobs={str(logprobs)[:200]}")
    return {str(k): _number(v, f"the log-prob of {k!r}") for k, v in tops[position].items()}


def parse_chat_top_logprobs(response: Any) -> dict[str, float]:
    """``{token text: log-prob}`` of the first generated token (chat completions endpoint)."""
    logprobs = _choice(response).get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        raise ServerError("the server's chat completion has no logprobs.content (asked for logprobs=true, "
                          f"top_logprobs); it answered logprobs={str(logprobs)[:200]}")
    out: dict[str, float] = {}
    for entry in content[0].get("top_logprobs") or []:
        if isinstance(entry, dict) and "token" in entry:
            out.setdefault(str(entry["token"]), _number(entry.get("logprob"), "a chat log-prob"))
    if not out:
        raise ServerError("the server's chat completion lists no top_logprobs for its first token.")
    return out


def echo_logprobs(response: Any) -> tuple[list[str], list[float | None]]:
    """Tokens and log-probs of the echoed prompt and the generated tokens (``echo=true``), in order."""
    logprobs = _choice(response).get("logprobs")
    if not isinstance(logprobs, dict):
        raise ServerError("the server ignored echo/logprobs: its completion has no logprobs.")
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        raise ServerError(f"malformed echo logprobs (tokens {type(tokens).__name__}, token_logprobs "
                          f"{type(values).__name__}).")
    return [str(t) for t in tokens], [None if v is None else _number(v, "an echoed log-prob") for v in values]


def parse_prompt_logprobs(response: Any, ids: Sequence[int]) -> list[float | None]:
    """The log-prob of each prompt token (vLLM ``prompt_logprobs``), checked against the ids sent."""
    entries = _choice(response).get("prompt_logprobs")
    if not isinstance(entries, list):
        raise ServerError("the server's completion has no prompt_logprobs (a vLLM extension).")
    if len(entries) != len(ids):
        raise ServerError(f"the server returned prompt_logprobs for {len(entries)} tokens; {len(ids)} were sent "
                          "(it tokenized the prompt differently).")
    out: list[float | None] = []
    for pos, (entry, tid) in enumerate(zip(entries, ids)):
        if entry is None:
            out.append(None)
            continue
        hit = entry.get(str(tid)) if isinstance(entry, dict) else None
        if hit is None and isinstance(entry, dict):
            hit = entry.get(tid)  # type: ignore[call-overload]
        if not isinstance(hit, dict):
            raise ServerError(f"prompt_logprobs at position {pos} lack the prompt's own token {tid}.")
        out.append(_number(hit.get("logprob"), f"the prompt log-prob at position {pos}"))
    return out


def usage_prompt_tokens(response: Any) -> int | None:
    """``usage.prompt_tokens`` when the server reports it."""
    usage = response.get("usage") if isinstance(response, dict) else None
    value = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def generated_text(response: Any, *, chat: bool = False) -> str:
    """The text a completion (or chat completion) generated."""
    choice = _choice(response)
    if chat:
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    if not isinstance(text, str):
        raise ServerError(f"the server's completion has no text: {str(choice)[:200]}")
    return text
