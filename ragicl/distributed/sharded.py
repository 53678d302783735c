"""A sharded index folder, and the index that searches it in one process, without Ray.

Layout (written by :func:`ragicl.distributed.build_distributed`)::

    manifest.json            layout "sharded": embedder, dimension, count, schema, dataset_fingerprint,
                             shards [{shard, start, count, fingerprint}], sources, build (what was resumed)
    plan.json                the input files and the cut into shards (a resumed build must match it)
    shards/shard-NNNNN.parquet   row, id, example (JSON), key, vector (float32[d])
    shards/shard-NNNNN.faiss     IndexFlatIP over the shard's vectors
    shards/shard-NNNNN.json      count, fingerprint, embedder, checksums: written last (completion mark)

:func:`load_sharded` (also what ``ExampleIndex.load`` calls on such a folder: this module registers the
layout with ``ragicl.index.folder.register_layout`` on import, which ``import ragicl`` does) returns a
:class:`ShardedIndex`: an :class:`~ragicl.ExampleIndex` (so retrieval,
classifiers and ``save`` work unchanged) whose :meth:`~ShardedIndex.search_vectors` asks every shard for
its top-k and merges them with faiss's ``merge_knn_results``, which is exact: the union of the shards'
top-k holds the global top-k.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import EmbedderMismatchError, IndexFormatError
from ..index.core import ExampleIndex
from ..index.embed import Embedder, get_embedder
from ..index.folder import register_layout
from ..types import Dataset, SearchResult
from ._shards import _faiss, check_shard, read_shard_files

logger = logging.getLogger(__name__)

LAYOUT = "sharded"
FORMAT_VERSION = 1


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sharded index folder (its ``manifest.json`` says ``"layout": "sharded"``)."""
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("layout") == LAYOUT
    except (OSError, ValueError, AttributeError):
        return False


def read_manifest(path: Path) -> dict:
    """The manifest of a finished sharded folder; ``IndexFormatError`` if there is none or it is wrong."""
    fix = f"Fix: (re)run the build, e.g. `ragicl index build DATA --out {path} --ray auto` (it resumes)."
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        partial = " A build was started there but has not finished." if (path / "plan.json").is_file() else ""
        raise IndexFormatError(f"no sharded index at {path}: manifest.json is missing or unreadable "
                               f"({err}).{partial} {fix}") from err
    if manifest.get("layout") != LAYOUT or manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{path} is not a sharded index of format {FORMAT_VERSION} (layout "
                               f"{manifest.get('layout')!r}, version {manifest.get('format_version')!r}). "
                               f"{fix}")
    return manifest


def merge_topk(results: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> SearchResult:
    """Merge per-shard ``(scores, global positions)`` (each ``(Q, k_s)``, best first) into the top ``k``.

    Shards with fewer than ``k`` results are padded with ``-inf``/``-1``; the merge is faiss's
    ``merge_knn_results`` (keep the largest inner products). Exact: every global top-k neighbour is in
    its own shard's top-k.
    """
    faiss = _faiss()
    n_q = results[0][0].shape[0] if results else 0
    d_all = np.full((max(1, len(results)), n_q, k), -np.inf, np.float32)
    i_all = np.full((max(1, len(results)), n_q, k), -1, np.int64)
    for s, (scores, positions) in enumerate(results):
        w = min(k, scores.shape[1])
        d_all[s, :, :w], i_all[s, :, :w] = scores[:, :w], positions[:, :w]
    d_all[i_all < 0] = -np.inf
    scores, positions = faiss.merge_knn_results(d_all, i_all, keep_max=True)
    scores[positions < 0] = -np.inf
    return SearchResult(positions.astype(np.int64, copy=False), scores.astype(np.float32, copy=False))


def search_shards(shards: Sequence[tuple[int, Any]], x: np.ndarray, k: int) -> SearchResult:
    """Search every ``(offset, faiss index)`` shard for the top ``k`` and merge (global positions)."""
    results = []
    for offset, index in shards:
        kk = min(k, index.ntotal)
        if kk == 0:
            continue
        scores, local = index.search(np.ascontiguousarray(x, dtype=np.float32), kk)
        results.append((scores, np.where(local >= 0, local + offset, -1)))
    return merge_topk(results, k)


class ShardedIndex(ExampleIndex):
    """An :class:`~ragicl.ExampleIndex` over a sharded folder whose search fans out over the shards.

    Made by :func:`load_sharded` (or ``ExampleIndex.load`` on a sharded folder). Everything but search is
    the ordinary index over all rows in shard order; :meth:`search_vectors` searches each shard's own faiss
    file and merges the top-k exactly. After :meth:`add` it searches the whole index instead.

    >>> import tempfile, pathlib
    >>> from ragicl.distributed import build_distributed, load_sharded   # doctest: +SKIP
    >>> rows = [{"text": t, "label": "x"} for t in ["red", "green", "blue"]]
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "idx"                    # doctest: +SKIP
    >>> build_distributed(rows, out, embedder="hash-16", shard_size=2)    # doctest: +SKIP
    >>> load_sharded(out).search(["green"], k=1).positions.tolist()      # doctest: +SKIP
    [[1]]
    """

    _shard_indexes: list[tuple[int, Any]] | None = None
    _ivf: Any = None  # the merged IVF index (ids = positions) of an IVF build
    sharded_manifest: dict | None = None
    path: Path | None = None

    def search_vectors(self, x: np.ndarray, k: int, *, nprobe: int | None = None) -> SearchResult:
        """The top ``k`` of every shard, merged (exact; global positions into :attr:`examples`)."""
        if self._shard_indexes is None:
            return super().search_vectors(x, k, nprobe=nprobe)
        # the width ExampleIndex gives (k, or min(k, len) where it does not pad): asked with no query
        width = super().search_vectors(x[:0], k).positions.shape[1]
        if self._ivf is not None:
            res = self._search_ivf(x, max(k, 1), nprobe)
        elif nprobe is not None:
            raise ValueError(f"nprobe applies to IVF indexes; this sharded index is {self.factory!r}.")
        else:
            res = search_shards(self._shard_indexes, x, max(k, 1))
        return SearchResult(res.positions[:, :width], res.scores[:, :width])

    def _search_ivf(self, x: np.ndarray, k: int, nprobe: int | None) -> SearchResult:
        ivf = _faiss().extract_index_ivf(self._ivf)
        previous = ivf.nprobe
        ivf.nprobe = previous if nprobe is None else int(nprobe)
        try:
            scores, positions = self._ivf.search(np.ascontiguousarray(x, dtype=np.float32), min(k, len(self)))
        finally:
            ivf.nprobe = previous
        return merge_topk([(scores, positions)], k)

    def set_search_params(self, **params: Any) -> None:
        """``nprobe=`` on an IVF build (not saved to the sharded manifest); else as ``ExampleIndex``."""
        if self._ivf is None or set(params) - {"nprobe"}:
            return super().set_search_params(**params)
        _faiss().extract_index_ivf(self._ivf).nprobe = int(params["nprobe"])

    def add(self, examples: Any) -> None:
        """As :meth:`ExampleIndex.add`; afterwards searches run on the whole (unsharded) index."""
        super().add(examples)
        self._shard_indexes = self._ivf = None

    @property
    def n_shards(self) -> int:
        return len(self.sharded_manifest["shards"]) if self.sharded_manifest else 0


def load_sharded(path: str | os.PathLike, embedder: str | Embedder | None = None, device: str = "cpu", *,
                 verify: bool = True, batch_size: int | None = None,
                 show_progress: bool | None = None, **_: Any) -> ShardedIndex:
    """Open a sharded index folder in this process (no Ray needed).

    Every shard is checked against the manifest and its sidecar: present, same size and SHA-256
    (``verify=False`` skips the hashing), same count and fingerprint, same embedder. Raises
    ``IndexFormatError`` (missing/corrupted/inconsistent shard, naming it) or ``EmbedderMismatchError``
    (a shard from another embedder, or an explicit ``embedder`` other than the manifest's).
    Extra keyword arguments of ``ExampleIndex.load`` (e.g. ``mmap``) are accepted and ignored.
    """
    path = Path(path)
    manifest = read_manifest(path)
    name, dim = manifest["embedder"], int(manifest["dimension"])
    if embedder is not None:
        resolved = get_embedder(embedder, device=device, batch_size=batch_size or 64)
        if _canonical(resolved.name) != _canonical(name) or resolved.dimension != dim:
            raise EmbedderMismatchError(
                f"the index at {path} was built with {name!r} ({dim} dims); received embedder "
                f"{resolved.name!r} ({resolved.dimension} dims). Fix: load it without an embedder (uses "
                f"{name!r}), or rebuild the index with the new one.")
        embedder = resolved
    examples, keys, blocks, shards = [], [], [], []
    for entry in manifest["shards"]:
        sidecar = check_shard(path, entry, embedder=name, dimension=dim, verify=verify)
        ex, k, vectors, index = read_shard_files(path, sidecar)
        shards.append((len(examples), index))
        examples.extend(ex)
        keys.extend(k)
        blocks.append(vectors)
    if len(examples) != manifest["count"]:
        raise IndexFormatError(f"{path}: the shards hold {len(examples)} rows; the manifest says "
                               f"{manifest['count']}. Fix: rebuild the index.")
    dataset = Dataset(tuple(examples), tuple(manifest["input_fields"]), manifest["task"],
                      tuple(manifest["labels"]), manifest.get("output_field"), manifest.get("name") or "")
    vectors = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    index = ShardedIndex.from_vectors(vectors, dataset, embedder=embedder or name, factory="Flat",
                                      device=device, batch_size=batch_size, show_progress=show_progress)
    index._shard_indexes = shards
    if manifest.get("ivf"):
        from ._ivf import read

        index._ivf = read(path, manifest["ivf"], verify=verify)  # sharded_manifest["factory"] names it
    index.sharded_manifest = manifest
    index.path = path
    logger.info("loaded sharded index %s: %d examples in %d shards", path, len(index), len(shards))
    return index


register_layout(LAYOUT, load_sharded)  # ExampleIndex.load(path) on a sharded folder comes here


def _canonical(name: str) -> str:
    return name.strip().rstrip("/").lower().removeprefix("sentence-transformers/")
