"""An on-disk cache of server responses, keyed by what was asked, so a rerun sends no request.

One SQLite file (WAL mode: several processes may read and write it at once) maps the SHA-256 of a
canonical request (the model, the endpoint and the JSON body) to the JSON response. Only complete,
checked responses are stored; a response is committed as soon as it arrives, so a run that dies (or whose
server dies) resumes from where it stopped and nothing is asked twice. The reference point is lm-eval's
``--use_cache``.

>>> import tempfile, pathlib
>>> cache = ResponseCache(pathlib.Path(tempfile.mkdtemp()) / "responses.sqlite")
>>> key = cache.key("smol", "/completions", {"prompt": [1, 2], "max_tokens": 1})
>>> cache.get(key) is None
True
>>> cache.put(key, {"choices": [{"text": "!"}]})
>>> cache.get(key)
{'choices': [{'text': '!'}]}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["ResponseCache", "default_cache_path"]


def default_cache_path(base_url: str, model: str) -> Path:
    """``$RAGICL_CACHE/server-responses/<host>-<model>.sqlite`` (one file per server and model)."""
    from ..models import cache_dir

    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model}")[:80]
    digest = hashlib.sha256(f"{base_url}\0{model}".encode()).hexdigest()[:10]
    return cache_dir() / "server-responses" / f"{stem}-{digest}.sqlite"


class ResponseCache:
    """A thread-safe, multi-process SQLite map from request keys to JSON responses (see module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, body TEXT NOT NULL)")
            self._conn = conn
        return self._conn

    @staticmethod
    def key(model: str, endpoint: str, body: dict[str, Any]) -> str:
        """The SHA-256 of the canonical JSON of (model, endpoint, body)."""
        canon = json.dumps({"model": model, "endpoint": endpoint, "body": body}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canon.encode("ascii")).hexdigest()

    def get(self, key: str) -> Any | None:
        """The stored response, or None (an unreadable entry counts as missing and is logged)."""
        with self._lock:
            row = self._connect().execute("SELECT body FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError:
            logger.warning("ignoring an unreadable cached response in %s", self.path)
            return None

    def put(self, key: str, response: Any) -> None:
        """Store ``response`` under ``key`` (committed at once)."""
        body = json.dumps(response, separators=(",", ":"))
        with self._lock:
            self._connect().execute("INSERT OR REPLACE INTO responses (key, body) VALUES (?, ?)", (key, body))

    def __len__(self) -> int:
        with self._lock:
            return int(self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __getstate__(self) -> dict[str, Any]:  # connections and locks do not pickle: reopen on use
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._conn = None
        self._lock = threading.Lock()
