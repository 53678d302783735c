"""Persistence of :class:`~ragicl.index.ExampleIndex`: the folder format, atomic save, checked load.

Private: use ``ExampleIndex.save`` / ``ExampleIndex.load`` (and ``ragicl.index.build_and_save``). The folder
holds ``manifest.json``, ``index.faiss`` (CPU form), ``examples.jsonl`` (one example per line, with its
duplicate ``key``) and ``embeddings.npy`` (memory-mapped on load). A save writes a sibling temp folder,
fsyncs it and swaps it in, so a crash midway leaves the previous index intact; a load checks the manifest
against the files before trusting any of them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._exceptions import EmbedderMismatchError, IndexFormatError, require
from .embed import Embedder, get_embedder
from .models import DEFAULT_EMBEDDER
from .types import Dataset, Example

if TYPE_CHECKING:
    from .index import ExampleIndex

logger = logging.getLogger("ragicl.index")

FORMAT_VERSION = 1
FILES = ("index.faiss", "embeddings.npy", "examples.jsonl")


def _faiss() -> Any:
    return require("faiss", "cpu", "faiss-cpu")


def canonical_name(name: str) -> str:
    """An embedder name as compared on load (``sentence-transformers/`` prefix, case, slashes ignored)."""
    return name.strip().rstrip("/").lower().removeprefix("sentence-transformers/")


def fsync(path: Path) -> None:
    """Flush a file or folder to disk (folders: where the filesystem allows it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    os.close(fd)


def make_manifest(index: ExampleIndex, files: dict[str, int]) -> dict[str, Any]:
    """What ``manifest.json`` holds for ``index`` with these file sizes (bytes)."""
    cache = index._cache
    if "fingerprint" not in cache:
        cache["fingerprint"] = index.dataset.fingerprint()
    return {"format_version": FORMAT_VERSION, "embedder": index.embedder.name, "dimension": index.dimension,
            "metric": "inner_product", "factory": index.factory, "dataset_fingerprint": cache["fingerprint"],
            "count": len(index), **index._schema, "search_params": dict(index._search_params), "files": files,
            "faiss_version": getattr(_faiss(), "__version__", "?"),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def save(index: ExampleIndex, path: Path) -> dict[str, Any]:
    """Write ``index`` to the folder ``path`` atomically and return the manifest written."""
    faiss = _faiss()
    if path.exists() and not (path / "manifest.json").exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not an ExampleIndex folder (no manifest.json); "
                              "refusing to replace it. Fix: choose another path or remove it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    old: Path | None = None
    try:
        faiss.write_index(index._cpu_index(), str(tmp / "index.faiss"))
        with open(tmp / "embeddings.npy", "wb") as fh:
            np.save(fh, np.ascontiguousarray(index._embeddings, dtype=np.float32))
        with open(tmp / "examples.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({**ex.to_json(), "key": key}, ensure_ascii=False) + "\n"
                          for ex, key in zip(index._examples, index._keys))
        for name in FILES:
            fsync(tmp / name)
        manifest = make_manifest(index, {name: (tmp / name).stat().st_size for name in FILES})
        with open(tmp / "manifest.json", "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        fsync(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
        os.replace(tmp, path)
        fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return manifest


@dataclass(frozen=True)
class IndexFolder:
    """The contents of a saved index folder, read and checked against its manifest."""

    manifest: dict[str, Any]
    faiss_index: Any  # the CPU faiss index
    vectors: np.ndarray  # (count, dimension) float32, memory-mapped unless read with mmap=False
    examples: list[Example]
    keys: list[str]


def read(path: Path, *, mmap: bool = True) -> IndexFolder:
    """Read the folder ``path``; ``IndexFormatError`` for anything missing, truncated or inconsistent."""
    faiss = _faiss()
    rebuild = f"Fix: rebuild it, e.g. `ragicl index build DATA --out {path}`."
    if not (path / "manifest.json").is_file():
        old = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        hint = f" An interrupted save left the previous version at {old[-1]}." if old else ""
        what = "has no manifest.json" if path.is_dir() else "does not exist"
        raise IndexFormatError(f"no index at {path}: the folder {what}; expected a folder written by "
                               f"ExampleIndex.save.{hint} {rebuild}")
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        count, dim = int(manifest["count"]), int(manifest["dimension"])
        files = {name: int(manifest["files"][name]) for name in FILES}
        version = manifest["format_version"]
    except (ValueError, KeyError, TypeError) as err:
        raise IndexFormatError(f"{path / 'manifest.json'} is unreadable or incomplete ({err!r}). "
                               f"{rebuild}") from err
    if version != FORMAT_VERSION:
        raise IndexFormatError(f"{path} has index format version {version!r}; this ragicl reads version "
                               f"{FORMAT_VERSION}. {rebuild}")
    for name, size in files.items():
        if not (path / name).is_file():
            raise IndexFormatError(f"{path} is missing {name} (listed in its manifest). {rebuild}")
        if (actual := (path / name).stat().st_size) != size:
            raise IndexFormatError(f"{path / name} is {actual} bytes; the manifest says {size} (truncated "
                                   f"or modified after saving). {rebuild}")
    try:
        cpu = faiss.read_index(str(path / "index.faiss"))
        vectors = np.load(path / "embeddings.npy", mmap_mode="r" if mmap else None)
        with open(path / "examples.jsonl", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        examples = [Example.from_json(row) for row in rows]
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        raise IndexFormatError(f"could not read the index files in {path}: {err}. {rebuild}") from err
    counts = {"index.faiss": cpu.ntotal, "embeddings.npy": vectors.shape[0], "examples.jsonl": len(examples)}
    if any(c != count for c in counts.values()) or vectors.shape[1:] != (dim,) or cpu.d != dim:
        raise IndexFormatError(f"{path} is inconsistent: the manifest says {count} examples of dimension "
                               f"{dim}, the files hold {counts} (vectors {vectors.shape}, faiss d={cpu.d}). "
                               f"{rebuild}")
    keys = [row.get("key") or ex.key() for row, ex in zip(rows, examples)]
    return IndexFolder(manifest, cpu, vectors, examples, keys)


def check_embedder(path: Path, manifest: dict[str, Any], embedder: str | Embedder, *, device: str,
                   batch_size: int) -> Embedder:
    """``embedder`` resolved, or ``EmbedderMismatchError`` if it is not the one the index was built with."""
    resolved = get_embedder(embedder, device=device, batch_size=batch_size)
    dim = int(manifest["dimension"])
    if canonical_name(resolved.name) != canonical_name(manifest["embedder"]) or resolved.dimension != dim:
        raise EmbedderMismatchError(
            f"the index at {path} was built with {manifest['embedder']!r} ({dim} dims); received "
            f"embedder {resolved.name!r} ({resolved.dimension} dims). Fix: load it without an "
            f"embedder (uses {manifest['embedder']!r}), or rebuild the index with the new one.")
    return resolved


def build_and_save(source: str | os.PathLike | Dataset, out: str | os.PathLike, *,
                   embedder: str | Embedder = DEFAULT_EMBEDDER, factory: str = "Flat", device: str = "auto",
                   batch_size: int | None = 64, input_fields: Sequence[str] | None = None,
                   label_field: str | None = "label", output_field: str | None = None,
                   show_progress: bool | None = None) -> ExampleIndex:
    """Read a dataset, build an :class:`~ragicl.index.ExampleIndex`, save it to ``out`` and log a summary.

    Shared by ``scripts/build_index.py`` and ``ragicl index build``. The conventional ``out`` is
    ``indexes/<dataset name>``. Import it from :mod:`ragicl.index`.

    >>> import tempfile, pathlib
    >>> from ragicl.index import build_and_save
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "indexes" / "pets"
    >>> rows = [{"text": "a cat", "label": "x"}, {"text": "a dog", "label": "y"}]
    >>> build_and_save(rows, out, embedder="hash-8").summary()["count"]
    2
    """
    from .data import read_dataset
    from .index import ExampleIndex

    start = time.perf_counter()
    dataset = source if isinstance(source, Dataset) else read_dataset(
        source, input_fields=input_fields, label_field=label_field, output_field=output_field)
    index = ExampleIndex.build(dataset, embedder=embedder, factory=factory, device=device,
                               batch_size=batch_size, show_progress=show_progress)
    index.save(out)
    s = index.summary()
    s["seconds"] = round(time.perf_counter() - start, 2)
    logger.info("built %s: %d examples, dim %d, factory %r, embedder %s, fingerprint %s, %.1f MB, %.1f s",
                out, s["count"], s["dimension"], s["factory"], s["embedder"], s["fingerprint"][:12],
                (s["bytes_on_disk"] or 0) / 1e6, s["seconds"])
    return index
