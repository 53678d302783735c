"""Rows, input files and a tie-aware top-k comparison shared by the tests of ragicl.distributed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

try:
    import ray
    import ray.data  # noqa: F401

    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray[data] is not installed (pip install 'ragicl[ray]'); "
                                                    "CI installs it through scripts/setup.sh")

WORDS = ["red", "green", "blue", "cat", "dog", "fish", "runs", "jumps", "big", "small", "happy", "sad",
         "film", "plot", "dull", "great", "slow", "fast", "old", "new", "bright", "dark", "loud", "quiet"]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    # a few exact duplicate texts, so ties are exercised
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))) if i % 17 else "red cat",
             "label": rng.choice(["pos", "neg", "neu"])} for i in range(n)]


def write_inputs(folder: Path, rows: list[dict]) -> list[Path]:
    """The rows over three files of three formats (JSONL with blank lines, CSV, Parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    a, b = len(rows) // 3, 2 * len(rows) // 3
    with open(folder / "part-0.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + ("\n\n" if i % 10 == 3 else "\n") for i, r in enumerate(rows[:a]))
    import csv

    with open(folder / "part-1.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, ["text", "label"])
        w.writeheader()
        w.writerows(rows[a:b])
    pq.write_table(pa.Table.from_pylist(rows[b:]), str(folder / "part-2.parquet"), row_group_size=37)
    return [folder / "part-0.jsonl", folder / "part-1.csv", folder / "part-2.parquet"]


def assert_same_topk(a, b, scale: float = 1.0) -> None:
    """Same neighbours, allowing ties: scores equal within float32 rounding of inner products of unit
    vectors, and ids equal wherever the score differs from its row neighbours by more than that."""
    tol = 1e-5 * scale
    np.testing.assert_allclose(a.scores, b.scores, atol=tol, rtol=0)
    s = b.scores
    distinct = np.ones_like(s, dtype=bool)
    with np.errstate(invalid="ignore"):  # -inf padding
        distinct[:, 1:] &= np.abs(s[:, 1:] - s[:, :-1]) > 2 * tol
        distinct[:, :-1] &= np.abs(s[:, :-1] - s[:, 1:]) > 2 * tol
        distinct &= s > s[:, -1:] + 2 * tol  # a score tied with the k-th may tie with rows past k
    np.testing.assert_array_equal(a.positions[distinct], b.positions[distinct])
    # ties: the same set of positions at each tied score
    for q in range(s.shape[0]):
        with np.errstate(invalid="ignore"):
            full = (a.positions[q] >= 0) & (s[q] > s[q, -1] + 2 * tol)  # groups cut by k: not comparable
        assert set(a.positions[q][full].tolist()) == set(b.positions[q][full].tolist())


ROWS = make_rows(300, seed=1)
