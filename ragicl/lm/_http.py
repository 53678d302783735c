"""HTTP for the server LMs: bounded requests in flight, retries with backoff, timeouts, the response cache.

:class:`HttpClient` posts JSON to an OpenAI-compatible server (``httpx``, imported lazily: extra
``server``). Each request is first looked up in the :class:`~ragicl.lm._cache.ResponseCache`; a miss is
sent, retried on what a busy or restarting server answers (HTTP 408/409/425/429/5xx, timeouts, refused or
dropped connections) with exponential backoff and jitter (``Retry-After`` honoured), and the response is
stored as soon as it is checked. :meth:`HttpClient.post_many` keeps up to ``max_concurrency`` requests in
flight and returns the responses in order; when a request fails for good, the ones already answered stay
in the cache, so running the same thing again resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from .._exceptions import RagiclError, require
from ._cache import ResponseCache

logger = logging.getLogger(__name__)

__all__ = ["HttpClient", "RequestStats", "ServerError", "ServerRequestError"]

#: statuses a server returns when busy, overloaded or restarting: worth retrying
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class ServerError(RagiclError, RuntimeError):
    """The LM server could not be reached or kept failing, or it lacks what ragicl needs from it."""


class ServerRequestError(ServerError):
    """The server refused a request (a 4xx other than the retried ones): ``status`` and ``body`` say why."""

    def __init__(self, message: str, *, status: int, body: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass
class RequestStats:
    """What a client did: requests sent (each try counts), answered from the cache, retried, failed for good."""

    sent: int = 0
    cached: int = 0
    retries: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "cached": self.cached, "retries": self.retries, "failed": self.failed}


class HttpClient:
    """JSON over HTTP to one server, with the cache, retries and a bound on requests in flight.

    ``sleep`` and ``transport`` are seams for tests (an ``httpx.MockTransport`` replays recorded responses).
    """

    def __init__(self, base_url: str, *, model: str, api_key: str | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 120.0, max_retries: int = 8,
                 backoff: float = 0.5, max_backoff: float = 30.0, max_concurrency: int = 8,
                 cache: ResponseCache | None = None, transport: Any = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_concurrency = max_concurrency
        self.cache = cache
        self.stats = RequestStats()
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._transport = transport
        self._sleep = sleep
        self._client: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing
    def _http(self) -> Any:
        with self._lock:
            if self._client is None:
                httpx = require("httpx", "server", "httpx")
                limits = httpx.Limits(max_connections=self.max_concurrency,
                                      max_keepalive_connections=self.max_concurrency)
                self._client = httpx.Client(timeout=self.timeout, limits=limits, transport=self._transport,
                                            headers=self._headers)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def url(self, endpoint: str) -> str:
        """``endpoint`` relative to the base URL (``/completions``), or absolute from the host (``//tokenize``
        means ``http://host:port/tokenize``, for servers that put tokenizers outside ``/v1``)."""
        if endpoint.startswith("//"):
            scheme, _, rest = self.base_url.partition("://")
            return f"{scheme}://{rest.split('/', 1)[0]}{endpoint[1:]}"
        return self.base_url + endpoint

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            with contextlib.suppress(ValueError):
                return min(self.max_backoff, max(0.0, float(retry_after)))
        return min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)

    # ------------------------------------------------------------------ requests
    def request(self, method: str, endpoint: str, body: dict[str, Any] | None = None, *,
                retry: bool = True) -> Any:
        """One request with retries (no cache); the decoded JSON response. ``retry=False`` tries once
        (used by the probe, which asks for things a server may not have)."""
        httpx = require("httpx", "server", "httpx")
        url = self.url(endpoint)
        attempts = self.max_retries + 1 if retry else 1
        last, last_body = "", None
        for attempt in range(attempts):
            if attempt:
                with self._lock:
                    self.stats.retries += 1
            with self._lock:
                self.stats.sent += 1
            try:
                resp = self._http().request(method, url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as err:
                last = f"{type(err).__name__}: {err}"
                if attempt + 1 < attempts:
                    delay = self._delay(attempt, None)
                    logger.info("%s %s failed (%s); retrying in %.1f s", method, url, last, delay)
                    self._sleep(delay)
                continue
            if resp.status_code in RETRY_STATUSES:
                if resp.status_code == 500 and resp.text and resp.text == last_body and attempt >= 2:
                    # a server that keeps answering, with the same error, is refusing this request
                    raise ServerRequestError(f"{self.base_url} answered {method} {endpoint} with the same HTTP "
                                             f"500 three times: {resp.text[:500]}", status=500, body=resp.text)
                last_body = resp.text
                last = f"HTTP {resp.status_code}: {resp.text[:300]}"
                if attempt + 1 < attempts:
                    delay = self._delay(attempt, resp.headers.get("retry-after"))
                    logger.info("%s %s answered %s; retrying in %.1f s", method, url, resp.status_code, delay)
                    self._sleep(delay)
                continue
            if resp.status_code >= 400:
                raise ServerRequestError(f"{self.base_url} refused {method} {endpoint} with HTTP "
                                         f"{resp.status_code}: {resp.text[:500]}", status=resp.status_code,
                                         body=resp.text)
            try:
                return resp.json()
            except ValueError:
                raise ServerError(f"{url} answered HTTP {resp.status_code} with a body that is not JSON: "
                                  f"{resp.text[:300]!r}. Is {self.base_url} an OpenAI-compatible /v1 "
                                  "endpoint?") from None
        if retry:
            with self._lock:
                self.stats.failed += 1
        raise ServerError(f"{url} did not answer after {attempts} tries ({last}). Is the server running? "
                          "Answers already received are cached: run the same command again to resume.")

    def post(self, endpoint: str, body: dict[str, Any], *, check: Callable[[Any], None] | None = None,
             cache: bool = True) -> Any:
        """POST with the cache: a stored response is returned without a request; a new one is stored once
        ``check(response)`` (raising on a malformed answer) passes."""
        key = self.cache.key(self.model, endpoint, body) if (cache and self.cache is not None) else None
        if key is not None:
            hit = self.cache.get(key)  # type: ignore[union-attr]
            if hit is not None:
                with self._lock:
                    self.stats.cached += 1
                return hit
        response = self.request("POST", endpoint, body)
        if check is not None:
            check(response)
        if key is not None:
            self.cache.put(key, response)  # type: ignore[union-attr]
        return response

    def post_many(self, endpoint: str, bodies: Sequence[dict[str, Any]], *,
                  check: Callable[[Any], None] | None = None, desc: str = "requests",
                  show_progress: bool | None = None) -> list[Any]:
        """POST every body (up to ``max_concurrency`` in flight), responses in the order of ``bodies``."""
        from tqdm.auto import tqdm

        out: list[Any] = [None] * len(bodies)
        if not bodies:
            return out
        bar = tqdm(total=len(bodies), desc=desc, leave=False,
                   disable=(None if show_progress is None else not show_progress))
        try:
            if self.max_concurrency == 1 or len(bodies) == 1:
                for i, body in enumerate(bodies):
                    out[i] = self.post(endpoint, body, check=check)
                    bar.update(1)
                return out
            with ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="ragicl-http") as pool:
                futures = {pool.submit(self.post, endpoint, body, check=check): i for i, body in enumerate(bodies)}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in done:
                        err = fut.exception()
                        if err is not None:
                            for other in pending:
                                other.cancel()
                            answered = sum(1 for f in futures if f.done() and not f.cancelled()
                                           and f.exception() is None)
                            logger.error("%d of %d %s answered and cached before the failure", answered,
                                         len(bodies), desc)
                            raise err
                        out[futures[fut]] = fut.result()
                        bar.update(1)
        finally:
            bar.close()
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_client=None, _lock=None, _transport=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
