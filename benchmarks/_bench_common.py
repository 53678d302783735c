"""Shared helpers of the ``benchmarks/bench_*.py`` benchmarks: environment report, timing, tables, caches.

Not part of the library. Each benchmark prints the environment line first (machine, versions, load) so a
pasted table always says where it was measured.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

logger = logging.getLogger("ragicl.bench")

SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
CACHE = Path(os.environ.get("RAGICL_BENCH_CACHE", Path.home() / ".cache" / "ragicl" / "bench"))


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:  # pragma: no cover
        return "?"


def environment(device: str = "cpu") -> dict[str, str]:
    """Machine, versions and load, as printed at the top of every benchmark."""
    import torch
    from _hardware import describe_device

    info = {"machine": describe_device("cpu"), "device": describe_device(device) if device != "cpu" else "cpu",
            "python": sys.version.split()[0], "torch": torch.__version__,
            "torch_threads": str(torch.get_num_threads()), "load_avg_1_5_15": load_average()}
    for name in ("faiss", "transformers", "sentence_transformers", "langchain_core", "numpy"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            info[name] = "not installed"
    return info


def print_environment(device: str = "cpu", argv: Sequence[str] | None = None) -> dict[str, str]:
    info = environment(device)
    cmd = " ".join(["python", *(argv if argv is not None else sys.argv)])
    print(f"# command: {cmd}")
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    return info


def timeit(fn: Callable[[], Any], repeat: int = 3, warmup: int = 1, sync: Callable[[], None] | None = None,
           clock: Callable[[], float] = time.perf_counter) -> tuple[float, Any]:
    """Best time of ``repeat`` calls after ``warmup`` calls (wall clock, or ``clock`` such as
    ``time.process_time`` for CPU seconds), and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
        if sync:
            sync()
    times = []
    for _ in range(repeat):
        t = clock()
        result = fn()
        if sync:
            sync()
        times.append(clock() - t)
    return min(times), result


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top-k ids found, over all queries (rows of ``found`` and ``truth``)."""
    k = truth.shape[1]
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth))
    return hits / (k * len(truth))


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> None:
    """A GitHub-markdown table of ``rows`` (dicts with the same keys), so output pastes into the docs."""
    if not rows:
        return
    cols = list(rows[0])
    for row in rows[1:]:
        cols += [c for c in row if c not in cols]
    cells = [[fmt(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    if title:
        print(f"\n### {title}\n")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |")
    sys.stdout.flush()


def save_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        print(f"# wrote {path}")


def dataset_file(name: str, split: str) -> Path:
    path = SHARED_DATASETS / name / f"{split}.jsonl"
    if not path.exists():
        raise SystemExit(f"dataset file {path} not found; the benchmarks expect ../shared/datasets beside the "
                         "repository.")
    return path


class CachedEmbedder:
    """An :class:`ragicl.index.embed.Embedder` that returns precomputed vectors for known texts.

    Unknown texts go to ``fallback`` (the real model) and are remembered. Used so that selection/packing
    benchmarks compare ragicl and LangChain on the same vectors without timing the embedding model
    (embedding is timed separately, once, for both).
    """

    def __init__(self, name: str, vectors: dict[str, np.ndarray], dimension: int, fallback: Any = None):
        self._name = name
        self._vectors = vectors
        self._dimension = dimension
        self.fallback = fallback

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None,
               show_progress: bool | None = None) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            if self.fallback is None:
                raise KeyError(f"{len(missing)} texts have no precomputed vector, e.g. {missing[0]!r}")
            for t, v in zip(missing, self.fallback.encode(missing)):
                self._vectors[t] = v
        if not texts:
            return np.zeros((0, self._dimension), np.float32)
        return np.stack([self._vectors[t] for t in texts]).astype(np.float32, copy=False)


class RowEmbedder:
    """An embedder over precomputed matrices: the text ``"d123"`` is row 123 of ``database``, ``"q7"`` row 7
    of ``queries``. Lets :class:`ragicl.index.core.ExampleIndex` index synthetic vectors (no text model)."""

    def __init__(self, database: np.ndarray, queries: np.ndarray | None = None, name: str = "synthetic"):
        self.database = database
        self.queries = queries
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return int(self.database.shape[1])

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None,
               show_progress: bool | None = None) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        src = self.queries if texts[0][0] == "q" else self.database
        rows = np.fromiter((int(t[1:]) for t in texts), dtype=np.int64, count=len(texts))
        return np.ascontiguousarray(src[rows])


def sst2_embeddings(texts: Sequence[str], tag: str, embedder: Any | None = None) -> tuple[np.ndarray, float]:
    """MiniLM vectors of ``texts``, cached on disk under ``tag``; also the seconds embedding took (0 if cached
    — the cache file stores the time measured when it was made)."""
    import hashlib

    h = hashlib.sha1("\x00".join(texts).encode("utf-8")).hexdigest()[:12]
    path = CACHE / f"minilm-{tag}-{len(texts)}-{h}.npz"
    if path.exists():
        data = np.load(path)
        return data["vectors"], float(data["seconds"])
    from ragicl.index.embed import SentenceTransformerEmbedder

    emb = embedder or SentenceTransformerEmbedder(device="cpu", batch_size=64, show_progress=False)
    emb.load()
    t = time.perf_counter()
    vectors = emb.encode(list(texts))
    seconds = time.perf_counter() - t
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, vectors=vectors, seconds=seconds)
    return vectors, seconds
