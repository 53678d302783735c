"""Servers that cannot run on this CPU (vLLM, SGLang, OpenAI's chat API), emulated in their documented wire
formats over ``httpx.MockTransport``, with a real model (``TransformersLM``) computing the numbers.

The response shapes follow the servers' documented protocols:

* vLLM (``vllm/entrypoints/openai/protocol.py``, ``CompletionResponseChoice``): ``prompt`` may be token ids;
  ``prompt_logprobs: int`` adds ``choices[i].prompt_logprobs = [None, {"<id>": {"logprob", "rank",
  "decoded_token"}}, ...]`` (the prompt's own token always included); ``logprobs: int`` gives the legacy
  ``logprobs`` object; ``return_tokens_as_token_ids`` keys tokens as ``"token_id:<id>"``; requests over
  ``--max-logprobs`` (default 20) are refused with HTTP 400; ``/v1/models`` reports ``max_model_len``;
  ``/tokenize`` answers ``{"count", "max_model_len", "tokens"}``.
* SGLang (OpenAI-compatible completions): text prompts; ``echo=true`` + ``logprobs`` returns the prompt's
  token log-probs in the legacy ``logprobs`` object (``None`` for the first token); no ``prompt_logprobs``.
* OpenAI chat completions: ``logprobs=true, top_logprobs=N`` gives
  ``choices[0].logprobs.content[0].top_logprobs = [{"token", "logprob", "bytes"}]``; no ``/v1/completions``.

These emulators exercise the client's code paths for those servers; ``tests/test_server_lm.py`` runs a
real server (llama-cpp-python) end to end.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np


class Emulator:
    """``kind`` is ``"vllm"``, ``"sglang"`` or ``"openai-chat"``; ``lm`` a loaded ``TransformersLM``."""

    def __init__(self, kind: str, lm: Any, *, model: str = "served-model", max_logprobs: int = 20) -> None:
        self.kind, self.lm, self.model, self.max_logprobs = kind, lm, model, max_logprobs
        self.tok = lm.tokenizer
        self.requests: list[tuple[str, dict]] = []

    def transport(self) -> Any:
        import httpx

        return httpx.MockTransport(self.handle)

    # ------------------------------------------------------------------ HTTP
    def handle(self, request: Any) -> Any:
        import httpx

        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        self.requests.append((path, body))
        try:
            status, payload = self.route(request.method, path, body)
        except ValueError as err:
            status, payload = 400, {"object": "error", "message": str(err), "type": "BadRequestError", "code": 400}
        return httpx.Response(status, json=payload)

    def route(self, method: str, path: str, body: dict) -> tuple[int, Any]:
        if method == "GET" and path == "/v1/models":
            entry = {"id": self.model, "object": "model", "created": 0, "owned_by": self.kind}
            if self.kind == "vllm":
                entry.update(root=self.model, parent=None, max_model_len=8192)
            return 200, {"object": "list", "data": [entry]}
        if self.kind == "vllm" and path == "/tokenize":
            ids = self.tok(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
            return 200, {"count": len(ids), "max_model_len": 8192, "tokens": ids}
        if path == "/v1/completions" and self.kind != "openai-chat":
            return 200, self.completion(body)
        if path == "/v1/chat/completions" and self.kind == "openai-chat":
            return 200, self.chat(body)
        return 404, {"detail": "Not Found"}

    # ------------------------------------------------------------------ numbers from the real model
    def ids_of(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list):
            if self.kind != "vllm":
                raise ValueError("prompt must be a string")
            return [int(t) for t in prompt]
        return list(self.tok(prompt, add_special_tokens=True)["input_ids"])

    def next_logprobs(self, ids: list[int]) -> np.ndarray:
        return self.lm.next_token_logprobs([ids])[0].astype(np.float64)

    def text(self, tid: int) -> str:
        return self.tok.decode([tid])

    def key(self, tid: int, as_ids: bool) -> str:
        return f"token_id:{tid}" if as_ids else self.text(tid)

    # ------------------------------------------------------------------ endpoints
    def completion(self, body: dict) -> dict:
        ids = self.ids_of(body["prompt"])
        n_logprobs = body.get("logprobs")
        n_prompt = body.get("prompt_logprobs")
        for n in (n_logprobs, n_prompt):
            if n is not None and n > self.max_logprobs:
                raise ValueError(f"Requested sample logprobs of {n}, which is greater than max allowed: "
                                 f"{self.max_logprobs}")
        if n_prompt is not None and self.kind != "vllm":
            n_prompt = None  # SGLang ignores the field
        as_ids = bool(body.get("return_tokens_as_token_ids")) and self.kind == "vllm"
        dist = self.next_logprobs(ids)
        gen = int(np.argmax(dist))
        choice: dict[str, Any] = {"index": 0, "text": self.text(gen), "finish_reason": "length", "stop_reason": None}
        prompt_lp = None
        if n_prompt is not None or body.get("echo"):
            prompt_lp = [None] + [float(v) for v in self.lm.token_logprobs([ids[:1]], [ids[1:]])[0]]
        if n_prompt is not None:
            entries: list[Any] = [None]
            for pos in range(1, len(ids)):
                entries.append({str(ids[pos]): {"logprob": prompt_lp[pos], "rank": 1,
                                                "decoded_token": self.text(ids[pos])}})
            choice["prompt_logprobs"] = entries
        if n_logprobs is not None:
            top = np.argsort(-dist)[:max(1, n_logprobs)]
            gen_top = {self.key(int(t), as_ids): float(dist[t]) for t in top}
            gen_top[self.key(gen, as_ids)] = float(dist[gen])
            tokens, values, tops = [self.key(gen, as_ids)], [float(dist[gen])], [gen_top]
            if body.get("echo"):
                tokens = [self.key(t, as_ids) for t in ids] + tokens
                values = prompt_lp + values  # type: ignore[operator]
                tops = [None] * len(ids) + tops
            choice["logprobs"] = {"text_offset": list(range(len(tokens))), "token_logprobs": values,
                                  "tokens": tokens, "top_logprobs": tops}
        else:
            choice["logprobs"] = None
        return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": self.model,
                "choices": [choice],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}}

    def chat(self, body: dict) -> dict:
        text = body["messages"][-1]["content"]
        ids = list(self.tok(text, add_special_tokens=True)["input_ids"])
        dist = self.next_logprobs(ids)
        gen = int(np.argmax(dist))
        n = body.get("top_logprobs") or 0
        if n > 20:
            raise ValueError("top_logprobs must be at most 20")
        logprobs = None
        if body.get("logprobs"):
            top = [{"token": self.text(int(t)), "logprob": float(dist[t]),
                    "bytes": list(self.text(int(t)).encode())} for t in np.argsort(-dist)[:n]]
            logprobs = {"content": [{"token": self.text(gen), "logprob": float(dist[gen]),
                                     "bytes": list(self.text(gen).encode()), "top_logprobs": top}]}
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text(gen)},
                             "logprobs": logprobs, "finish_reason": "length"}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}}
