"""IVF / IVF-PQ assembly of a sharded build: train once on a sample, add shards in parallel, merge lists.

faiss's distributed recipe (``faiss/contrib/ondisk.py``, the "1 billion vectors" demo): the coarse
quantizer (and PQ) is trained once on a sample — here the same ``train_size`` sample, drawn with the same
seed, that :meth:`ExampleIndex.build` draws from all vectors — each shard is added to a copy of the
trained, empty index (a Ray Data task per shard, ids = global positions), and the inverted lists are merged
shard by shard with ``IndexIVF.merge_from``. Each list then holds its entries in global order, exactly what
adding all vectors in one process gives, so the merged index searches like the single-process one.
(``merge_ondisk`` would merge into an ``OnDiskInvertedLists`` file when the lists exceed RAM; it stores
an absolute path, so the folder could no longer move, and is not used here.)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import require
from ._shards import SHARD_DIR, _atomic, _faiss, sha256_file

IVF_FILE = "ivf.faiss"


def shard_vectors(folder: Path, name: str, d: int) -> np.ndarray:
    pq = require("pyarrow.parquet", "data", "pyarrow")
    table = pq.read_table(str(folder / SHARD_DIR / f"{name}.parquet"), columns=["vector"])
    flat = table.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, d)


def train(folder: Path, entries: list[dict], factory: str, d: int, *, train_size: int = 100_000,
          seed: int = 0) -> Any:
    """The trained, empty index (the sample as ``ExampleIndex.build`` draws it), written to trained.faiss."""
    faiss = _faiss()
    n = sum(e["count"] for e in entries)
    if n > train_size:
        wanted = np.sort(np.random.default_rng(seed).choice(n, train_size, replace=False))
        parts = []
        for e in entries:
            local = wanted[(wanted >= e["start"]) & (wanted < e["start"] + e["count"])] - e["start"]
            if len(local):
                parts.append(shard_vectors(folder, e["name"], d)[local])
        sample = np.concatenate(parts)
    else:
        sample = np.concatenate([shard_vectors(folder, e["name"], d) for e in entries])
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ValueError(f"invalid faiss factory string {factory!r}: {str(err).strip()[:200]}.") from err
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        raise ValueError(f"a distributed build assembles 'Flat' or IVF factories ('IVF1024,Flat', "
                         f"'IVF1024,PQ16'); got {factory!r}.")
    ivf = faiss.downcast_index(ivf)
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False  # as ExampleIndex.build: minutes, and unused
    try:
        index.train(sample)
    except RuntimeError as err:
        raise ValueError(f"could not train {factory!r} on {len(sample)} vectors: {str(err).strip()[:200]}. "
                         f"Fix: fewer IVF lists (about n/39) or 'Flat'.") from err
    _atomic(folder / "trained.faiss", lambda p: faiss.write_index(index, str(p)))
    return index


def add_shards(batch: dict, *, folder: str, dimension: int) -> dict:
    """Ray Data task: add each shard's vectors (ids = global positions) to a copy of the trained index."""
    faiss = _faiss()
    root = Path(folder)
    trained = faiss.read_index(str(root / "trained.faiss"))
    seconds = []
    for name, start in zip(batch["name"], batch["start"]):
        t0 = time.perf_counter()
        x = shard_vectors(root, str(name), dimension)
        index = faiss.clone_index(trained)
        index.add_with_ids(x, np.arange(int(start), int(start) + len(x), dtype=np.int64))
        _atomic(root / SHARD_DIR / f"{name}.ivf.faiss", lambda p, ix=index: faiss.write_index(ix, str(p)))
        seconds.append(time.perf_counter() - t0)
    return {"name": batch["name"], "add_s": np.asarray(seconds)}


def merge(folder: Path, entries: list[dict]) -> dict:
    """Merge the shards' inverted lists, in shard order, into ``ivf.faiss``; its manifest record."""
    faiss = _faiss()
    merged = faiss.read_index(str(folder / "trained.faiss"))
    target = faiss.extract_index_ivf(merged)
    for e in entries:
        part = faiss.read_index(str(folder / SHARD_DIR / f"{e['name']}.ivf.faiss"))
        target.merge_from(faiss.extract_index_ivf(part), 0)
    merged.ntotal = target.ntotal
    _atomic(folder / IVF_FILE, lambda p: faiss.write_index(merged, str(p)))
    for e in entries:  # merged: the per-shard copies are no longer needed
        (folder / SHARD_DIR / f"{e['name']}.ivf.faiss").unlink(missing_ok=True)
    path = folder / IVF_FILE
    return {"file": IVF_FILE, "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "nlist": int(target.nlist), "ntotal": int(merged.ntotal)}


def run(ray: Any, folder: Path, entries: list[dict], factory: str, d: int) -> tuple[dict, dict]:
    """Train, add (Ray tasks), merge; returns the manifest's ``ivf`` record and the stage seconds."""
    t0 = time.perf_counter()
    train(folder, entries, factory, d)
    t1 = time.perf_counter()
    ds = ray.data.from_items([{"name": e["name"], "start": e["start"]} for e in entries],
                             override_num_blocks=len(entries))
    add_s = sum(float(r["add_s"]) for r in ds.map_batches(
        add_shards, batch_size=1, num_cpus=0.5, fn_kwargs={"folder": str(folder.resolve()), "dimension": d}
    ).iter_rows())
    t2 = time.perf_counter()
    record = merge(folder, entries)
    t3 = time.perf_counter()
    return record, {"train_s": round(t1 - t0, 3), "add_s": round(add_s, 3), "add_wall_s": round(t2 - t1, 3),
                    "merge_s": round(t3 - t2, 3)}


def read(folder: Path, record: dict, *, verify: bool) -> Any:
    """The merged IVF index of a sharded folder, checked against its manifest record."""
    from .._exceptions import IndexFormatError

    path = folder / record["file"]
    fix = "Fix: rebuild the index (the embedded shards are reused)."
    if not path.is_file() or path.stat().st_size != record["bytes"] or (
            verify and sha256_file(path) != record["sha256"]):
        raise IndexFormatError(f"{path} is missing or corrupted (size or SHA-256 differs from the manifest). "
                               f"{fix}")
    index = _faiss().read_index(str(path))
    if index.ntotal != record["ntotal"]:
        raise IndexFormatError(f"{path} holds {index.ntotal} vectors; the manifest says {record['ntotal']}. "
                               f"{fix}")
    return index
