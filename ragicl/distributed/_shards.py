"""One shard on disk: ``shard-NNNNN.parquet`` (rows + vectors), ``shard-NNNNN.faiss`` (its exact index)
and ``shard-NNNNN.json`` (count, fingerprint, embedder, checksums), the last written last.

No Ray here. Every file is written to a temp name, fsynced and renamed, and the ``.json`` sidecar is the
completion mark: a shard without it (a worker killed mid-write) does not exist for a resumed build, and a
shard with it is trusted only after its files match the recorded sizes and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import EmbedderMismatchError, IndexFormatError, require
from ..types import Dataset, Example
from ._plan import example_json

SHARD_DIR = "shards"


def shard_name(s: int) -> str:
    return f"shard-{s:05d}"


def _faiss() -> Any:
    return require("faiss", "cpu", "faiss-cpu")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(lines: list[str]) -> str:
    """SHA-256 of the examples' canonical JSON lines, as :meth:`Dataset.fingerprint` computes it."""
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_shard(folder: Path, shard: dict, ds: Dataset, vectors: np.ndarray, embedder: str,
                seconds: dict[str, float]) -> dict:
    """Write the three files of ``shard`` (sidecar last) and return the sidecar."""
    pa = require("pyarrow", "data", "pyarrow")
    pq = require("pyarrow.parquet", "data", "pyarrow")
    faiss = _faiss()
    name = shard_name(shard["shard"])
    out = folder / SHARD_DIR
    out.mkdir(parents=True, exist_ok=True)
    lines = [example_json(ex) for ex in ds.examples]
    n, d = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    table = pa.table({"row": pa.array(np.arange(shard["start"], shard["start"] + n, dtype=np.int64)),
                      "id": [ex.id for ex in ds.examples], "example": lines,
                      "key": [ex.key() for ex in ds.examples],
                      "vector": pa.FixedSizeListArray.from_arrays(flat, d)})
    _atomic(out / f"{name}.parquet", lambda p: pq.write_table(table, str(p)))
    index = faiss.IndexFlatIP(d)
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _atomic(out / f"{name}.faiss", lambda p: faiss.write_index(index, str(p)))
    files = {f"{name}.{ext}": {"bytes": (out / f"{name}.{ext}").stat().st_size,
                               "sha256": sha256_file(out / f"{name}.{ext}")} for ext in ("parquet", "faiss")}
    labels = sorted({ex.label for ex in ds.examples if ex.label is not None})
    sidecar = {"shard": shard["shard"], "name": name, "start": shard["start"], "count": n,
               "fingerprint": fingerprint(lines), "embedder": embedder, "dimension": d, "labels": labels,
               "files": files, "seconds": {k: round(v, 4) for k, v in seconds.items()}}
    _atomic(out / f"{name}.json", lambda p: p.write_text(json.dumps(sidecar, indent=1), encoding="utf-8"))
    return sidecar


def check_shard(folder: Path, entry: dict, *, embedder: str | None, dimension: int | None,
                verify: bool = True) -> dict:
    """The sidecar of a shard, checked against ``entry`` (count, fingerprint), the files and the embedder.

    Raises ``IndexFormatError`` (missing, truncated or modified file; another count) or
    ``EmbedderMismatchError`` (embedded by another model), naming the shard.
    """
    name = shard_name(entry["shard"])
    where = folder / SHARD_DIR
    fix = f"Fix: rebuild the shard by re-running the build into {folder} (finished shards are kept)."
    try:
        sidecar = json.loads((where / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise IndexFormatError(f"shard {name} of {folder} has no readable {name}.json ({err}). "
                               f"{fix}") from err
    if embedder is not None and (sidecar.get("embedder") != embedder
                                 or (dimension is not None and sidecar.get("dimension") != dimension)):
        raise EmbedderMismatchError(
            f"shard {name} of {folder} was embedded with {sidecar.get('embedder')!r} "
            f"({sidecar.get('dimension')} dims); the index uses {embedder!r} ({dimension} dims). Shards from "
            f"different embedders cannot be searched together. {fix}")
    for key in ("count", "fingerprint", "start"):
        if key in entry and sidecar.get(key) != entry[key]:
            raise IndexFormatError(f"shard {name} of {folder}: its {key} is {sidecar.get(key)!r}, the "
                                   f"manifest says {entry[key]!r}. {fix}")
    for fname, info in sidecar["files"].items():
        path = where / fname
        if not path.is_file():
            raise IndexFormatError(f"shard {name} of {folder} is missing {fname}. {fix}")
        if path.stat().st_size != info["bytes"] or (verify and sha256_file(path) != info["sha256"]):
            raise IndexFormatError(f"shard {name} of {folder}: {fname} is corrupted (its size or SHA-256 "
                                   f"differs from {name}.json). {fix}")
    return sidecar


def read_shard_files(folder: Path, sidecar: dict) -> tuple[list[Example], list[str], np.ndarray, Any]:
    """Examples, keys, vectors ``(count, d)`` and the faiss index of a checked shard."""
    pq = require("pyarrow.parquet", "data", "pyarrow")
    name, d, n = sidecar["name"], sidecar["dimension"], sidecar["count"]
    where = folder / SHARD_DIR
    try:
        table = pq.read_table(str(where / f"{name}.parquet"))
        vectors = table.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, d)
        examples = [Example.from_json(json.loads(s)) for s in table.column("example").to_pylist()]
        keys = table.column("key").to_pylist()
        index = _faiss().read_index(str(where / f"{name}.faiss"))
    except Exception as err:  # pyarrow/faiss raise their own types
        raise IndexFormatError(f"shard {name} of {folder} could not be read ({err}). "
                               "Fix: rebuild it.") from err
    if len(examples) != n or vectors.shape[0] != n or index.ntotal != n or index.d != d:
        raise IndexFormatError(f"shard {name} of {folder} is inconsistent: {name}.json says {n} rows of "
                               f"dimension {d}; the files hold {len(examples)} rows, {vectors.shape} "
                               "vectors, "
                               f"a faiss index of {index.ntotal} x {index.d}. Fix: rebuild it.")
    return examples, keys, vectors, index
