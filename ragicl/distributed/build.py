"""Distributed build on Ray Data: read in blocks, embed in an actor pool, write Parquet shards, resume.

Pipeline (one Ray Data dataset, streamed)::

    from_items(shards to do) ─map_batches(_read_shard: CPU tasks)─▶ one row per shard: its validated
    examples ─map_batches(_EmbedShard: actor pool, num_gpus=1 per actor on GPU clusters)─▶ embedder loaded
    once per actor; writes shard-NNNNN.{parquet,faiss,json} to the output folder ─▶ per-shard summary

The output folder must be storage every node sees (NFS, a mounted bucket). The cut into shards comes from
the input alone (``shard_size`` global rows each, :mod:`._plan`), so the result does not depend on the
number of workers; a shard is finished when its ``.json`` sidecar exists and its files match it, so a
build killed anywhere (a worker: Ray restarts the actor and retries the shard; the driver: run the same
build again) resumes from the finished shards, and nothing is counted twice because a shard's files are
keyed by its number and replaced atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._exceptions import DataError, EmbedderMismatchError, IndexFormatError, RagiclError, check_positive_int
from ..index.embed import Embedder, get_embedder
from ..models import DEFAULT_EMBEDDER
from ..types import Example
from . import _ivf, _plan, _ray
from ._shards import SHARD_DIR, check_shard, fingerprint, shard_name, write_shard
from .sharded import FORMAT_VERSION, LAYOUT, ShardedIndex, load_sharded

logger = logging.getLogger(__name__)


def _read_shard(batch: dict, *, files: list[str], schema: dict) -> dict:
    """Ray Data task: the validated examples of one shard as canonical JSON lines (one output row)."""
    import numpy as np

    out: dict[str, list] = {"shard": [], "start": [], "lines": [], "count": [], "read_s": [], "error": []}
    for spec in batch["spec"]:
        start = time.perf_counter()
        shard = json.loads(spec)
        try:
            labels = None if schema["labels"] is None else tuple(schema["labels"])
            ds = _plan.read_shard(files, shard, _plan.Schema(
                **{**schema, "input_fields": tuple(schema["input_fields"]), "labels": labels}))
            lines, error = "\n".join(_plan.example_json(ex) for ex in ds.examples), ""
        except RagiclError as err:  # returned as data: Ray would keep only its text
            lines, error = "", _ray.error_text(err)
        out["shard"].append(shard["shard"])
        out["start"].append(shard["start"])
        out["lines"].append(lines)
        out["count"].append(len(ds) if not error else 0)
        out["read_s"].append(time.perf_counter() - start)
        out["error"].append(error)
    return {k: np.asarray(v, dtype=object if k in ("lines", "error") else None) for k, v in out.items()}


class _EmbedShard:
    """Ray Data actor: loads the embedder once, then embeds and writes whole shards."""

    def __init__(self, embedder: str | Embedder, folder: str, input_fields: list[str], device: str,
                 batch_size: int) -> None:
        self.embedder = get_embedder(embedder, device=device, batch_size=batch_size)
        if hasattr(self.embedder, "load"):
            self.embedder.load()
        self.folder, self.fields = Path(folder), input_fields
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from ..types import Dataset

        out: dict[str, list] = {k: [] for k in ("shard", "count", "read_s", "embed_s", "write_s", "error")}
        for s, start, lines, read_s, error in zip(batch["shard"], batch["start"], batch["lines"],
                                                  batch["read_s"], batch["error"]):
            if error:  # a bad row: passed on to the driver
                for key, value in (("shard", int(s)), ("count", 0), ("read_s", float(read_s)),
                                   ("embed_s", 0.0), ("write_s", 0.0), ("error", str(error))):
                    out[key].append(value)
                continue
            shard = {"shard": int(s), "start": int(start)}
            examples = tuple(Example.from_json(json.loads(line)) for line in lines.split("\n"))
            t0 = time.perf_counter()
            texts = ["\n".join(ex.inputs[f] for f in self.fields) for ex in examples]
            vectors = np.asarray(self.embedder.encode(texts, batch_size=self.batch_size, show_progress=False),
                                 dtype=np.float32)
            t1 = time.perf_counter()
            ds = Dataset(examples, tuple(self.fields))
            write_shard(self.folder, shard, ds, vectors, self.embedder.name,
                        {"read": float(read_s), "embed": t1 - t0})
            for key, value in (("shard", int(s)), ("count", len(examples)), ("read_s", float(read_s)),
                               ("embed_s", t1 - t0), ("write_s", time.perf_counter() - t1), ("error", "")):
                out[key].append(value)
        return {k: np.asarray(v, dtype=object if k == "error" else None) for k, v in out.items()}


def build_distributed(source: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike, *,
                      embedder: str | Embedder = DEFAULT_EMBEDDER, factory: str = "Flat",
                      address: str | None = "auto", workers: int | None = None, shard_size: int = 50_000,
                      num_gpus: int | None = None, batch_size: int = 64, resume: bool = True,
                      input_fields: Sequence[str] | None = None, label_field: str | None = "label",
                      output_field: str | None = None, labels: Sequence[str] | None = None,
                      id_field: str | None = None, task: str | None = None, name: str | None = None,
                      load: bool = True) -> ShardedIndex | Path:
    """Embed and index the files of ``source`` on a Ray cluster into the sharded folder ``out``.

    Args:
        source: a ``.jsonl``/``.csv``/``.parquet`` file, a folder of them, a glob, or a list of these;
            rows are read in sorted-path order and validated as :func:`ragicl.read_dataset` does
            (``input_fields`` ... ``name`` mean the same; ``meta.json`` beside the first file counts).
        out: the output folder (shared storage on a multi-node cluster). A folder holding an unfinished
            build of the same input resumes (``resume=False`` starts over); one holding anything else is
            refused.
        embedder: name or :class:`~ragicl.index.embed.Embedder` (shipped to each actor, loaded there once).
        factory: ``"Flat"`` (exact: search fans out over the shards) or an IVF factory (``"IVF1024,Flat"``,
            ``"IVF1024,PQ16"``): trained once on a sample, shards added in Ray tasks, inverted lists merged
            into ``ivf.faiss`` (a re-run with another factory reuses the embedded shards).
        address: ``"auto"``, ``"local"``, ``"host:port"`` or ``"ray://host:port"`` (see :func:`connect`).
        workers: embedding actors; default one per GPU, else half the cluster's CPUs (at least 1).
        shard_size: rows per shard (the unit of work, of resume and of search fan-out).
        num_gpus: GPUs per actor; default 1 when the cluster has GPUs, else 0.
        load: return the loaded :class:`ShardedIndex` (``False``: return the folder's path).

    Returns the index (or path). Its manifest's ``build`` says how many runs it took and which shards were
    reused from an earlier, interrupted run.
    """
    _ray.ray_module()  # the install hint before any work
    if factory != "Flat" and not factory.replace(" ", "").upper().startswith(("IVF", "OPQ", "PCA")):
        raise ValueError(f"a distributed build assembles factory='Flat' (exact, sharded) or an IVF factory "
                         f"('IVF1024,Flat', 'IVF1024,PQ16'); got {factory!r}. Fix: use one of those, or "
                         "build other factories in one process with ExampleIndex.build.")
    shard_size = check_positive_int("shard_size", shard_size)
    out = Path(out)
    files = _plan.expand_sources(source)
    sources, shards = _plan.plan_shards(files, shard_size)
    first, where = _plan.raw_rows(files[0], {"start": 0, "n": min(1000, sources[0]["rows"])})
    schema = _plan.resolve_schema(files, first, where, input_fields=input_fields, label_field=label_field,
                                  output_field=output_field, labels=labels, id_field=id_field, task=task,
                                  name=name)
    emb_name = get_embedder(embedder).name
    plan = {"layout": LAYOUT, "format_version": FORMAT_VERSION, "embedder": emb_name, "factory": factory,
            "shard_size": shard_size, "sources": sources, "schema": dataclasses.asdict(schema),
            "shards": shards}
    plan = json.loads(json.dumps(plan))  # as plan.json holds it (lists, not tuples), to compare on resume
    runs = _prepare_folder(out, plan, resume)
    done, corrupt = _finished_shards(out, shards, emb_name)
    todo = [s for s in shards if s["shard"] not in done]
    ray = _ray.connect(address)
    started = time.perf_counter()
    summaries, workers = _run(ray, out, files, schema, todo, embedder, workers, num_gpus, batch_size) \
        if todo else ([], 0)
    seconds = time.perf_counter() - started
    manifest = _assemble(out, plan, schema, runs, done, corrupt, summaries, seconds, workers)
    if factory != "Flat":  # train once, add shards in Ray tasks, merge the inverted lists
        manifest["ivf"], stage = _ivf.run(ray, out, manifest["shards"], factory, manifest["dimension"])
        manifest["build"]["stage_seconds"].update(stage)
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out / "manifest.json")  # the build is finished
    logger.info("built %s: %d examples in %d shards (%d reused) in %.1f s", out, manifest["count"],
                len(shards), len(done), seconds)
    return load_sharded(out) if load else out


def _prepare_folder(out: Path, plan: dict, resume: bool) -> int:
    """Create or check ``out``; return this run's number (1 for a fresh build)."""
    plan_path = out / "plan.json"
    if out.exists() and not plan_path.is_file() and (
            (out / "manifest.json").is_file() or not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not a distributed build folder (no plan.json); "
                              "refusing to write into it. Fix: choose another --out or remove it.")
    if plan_path.is_file() and not resume:
        for name in ("manifest.json", "plan.json", "runs.jsonl"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / SHARD_DIR, ignore_errors=True)
    if plan_path.is_file():
        old = json.loads(plan_path.read_text(encoding="utf-8"))
        diff = [k for k in plan if old.get(k) != plan[k] and k != "factory"]  # shards serve any factory
        if diff:
            raise DataError(f"{out} holds a build of other input or settings (differs in {diff}); a resumed "
                            "build must use the same files, shard_size, embedder and schema. Fix: pass the "
                            "same arguments, another --out, or resume=False to start over.")
        (out / "manifest.json").unlink(missing_ok=True)  # rewritten when this run finishes
        if old.get("factory") != plan["factory"]:
            tmp = out / ".plan.json.tmp"
            tmp.write_text(json.dumps(plan), encoding="utf-8")
            os.replace(tmp, plan_path)
    else:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".plan.json.tmp"
        tmp.write_text(json.dumps(plan), encoding="utf-8")
        os.replace(tmp, plan_path)
    for stale in (out / SHARD_DIR).glob(".*.tmp-*") if (out / SHARD_DIR).is_dir() else []:
        stale.unlink(missing_ok=True)  # a killed writer's leftovers
    runs_path = out / "runs.jsonl"
    run = 1 + (len(runs_path.read_text(encoding="utf-8").splitlines()) if runs_path.is_file() else 0)
    with open(runs_path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"run": run, "started": _now()}) + "\n")
    return run


def _finished_shards(out: Path, shards: list[dict], emb_name: str) -> tuple[set[int], list[str]]:
    """Shards already written and intact; corrupt ones are listed (and rebuilt)."""
    done, corrupt = set(), []
    for shard in shards:
        if not (out / SHARD_DIR / f"{shard_name(shard['shard'])}.json").is_file():
            continue
        try:
            check_shard(out, shard, embedder=emb_name, dimension=None)
            done.add(shard["shard"])
        except EmbedderMismatchError:
            raise
        except IndexFormatError as err:
            logger.warning("rebuilding %s: %s", shard_name(shard["shard"]), err)
            corrupt.append(shard_name(shard["shard"]))
    return done, corrupt


def _run(ray: Any, out: Path, files: list[Path], schema: _plan.Schema, todo: list[dict],
         embedder: str | Embedder, workers: int | None, num_gpus: int | None,
         batch_size: int) -> tuple[list[dict], int]:
    cpus = float(ray.cluster_resources().get("CPU", 1))
    gpus = _ray.cluster_gpus(ray)
    num_gpus = (1 if gpus else 0) if num_gpus is None else num_gpus
    workers = workers or (max(1, gpus // max(num_gpus, 1)) if num_gpus else max(1, int(cpus) // 2))
    workers = min(workers, len(todo))
    actor_cpus = 1.0 if cpus >= workers + 1 else max(0.1, 0.9 * cpus / workers)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = [{"spec": json.dumps(s)} for s in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(_read_shard, batch_size=1, num_cpus=0.1,
                        fn_kwargs={"files": [str(f.resolve()) for f in files],
                                   "schema": dataclasses.asdict(schema)})
    ds = ds.map_batches(_EmbedShard, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
                        num_cpus=actor_cpus, num_gpus=num_gpus or None,
                        fn_constructor_kwargs={"embedder": embedder, "folder": str(out.resolve()),
                                               "input_fields": list(schema.input_fields),
                                               "device": "cuda" if num_gpus else "cpu",
                                               "batch_size": batch_size})
    summaries = []
    for row in ds.iter_rows():
        if row["error"]:  # the DataError of a bad row, naming file, row and line
            _ray.raise_error_text(str(row["error"]), f"shard {row['shard']}")
        summaries.append({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items() if k != "error"})
        logger.info("shard %s written (%d/%d)", row["shard"], len(summaries), len(todo))
    return summaries, workers


def _assemble(out: Path, plan: dict, schema: _plan.Schema, run: int, reused: set[int], corrupt: list[str],
              summaries: list[dict], seconds: float, workers: int | None) -> dict:
    """Check every shard and return the manifest (written by the caller, last)."""
    pq = _plan.require("pyarrow.parquet", "data", "pyarrow")
    entries, labels, dims, owner = [], set(), set(), {}
    whole = hashlib.sha256()  # Dataset.fingerprint of all rows, streamed shard by shard
    for shard in plan["shards"]:
        sidecar = check_shard(out, shard, embedder=plan["embedder"], dimension=None, verify=False)
        name = sidecar["name"]
        table = pq.read_table(str(out / SHARD_DIR / f"{name}.parquet"), columns=["id", "example"])
        lines = table.column("example").to_pylist()
        if fingerprint(lines) != sidecar["fingerprint"]:
            raise IndexFormatError(f"shard {name} of {out}: its rows do not match its fingerprint. Fix: "
                                   "run the build again (the shard is rebuilt).")
        for line in lines:
            whole.update(line.encode("utf-8"))
            whole.update(b"\n")
        if schema.id_field is not None:  # row-number ids are unique by construction
            for ex_id in table.column("id").to_pylist():
                if ex_id in owner:
                    raise DataError(f"id {ex_id!r} appears in {owner[ex_id]} and {name}; ids must be "
                                    "unique. Fix: deduplicate the id column, or leave id_field=None.")
                owner[ex_id] = name
        labels.update(sidecar["labels"])
        dims.add(sidecar["dimension"])
        entries.append({k: sidecar[k] for k in ("shard", "name", "start", "count", "fingerprint")})
    if len(dims) != 1:
        raise EmbedderMismatchError(f"the shards of {out} have different dimensions {sorted(dims)}. Fix: "
                                    "rebuild with resume=False.")
    stage = {k: round(sum(s[k] for s in summaries), 3) for k in ("read_s", "embed_s", "write_s")}
    built = sorted(shard_name(s["shard"]) for s in summaries)
    manifest = {
        "layout": LAYOUT, "format_version": FORMAT_VERSION, "embedder": plan["embedder"],
        "dimension": dims.pop(), "metric": "inner_product", "factory": plan["factory"],
        "dataset_fingerprint": whole.hexdigest(),
        "count": sum(e["count"] for e in entries), "task": schema.task,
        "labels": list(schema.labels) if schema.labels is not None else sorted(labels),
        "input_fields": list(schema.input_fields), "output_field": schema.output_field, "name": schema.name,
        "search_params": {}, "shard_size": plan["shard_size"], "shards": entries,
        "sources": plan["sources"],
        "build": {"runs": run, "resumed": bool(reused), "shards_reused": sorted(map(shard_name, reused)),
                  "shards_built": built, "shards_rebuilt_corrupt": corrupt, "workers": workers,
                  "seconds": round(seconds, 3), "stage_seconds": stage, "finished": _now()},
    }
    return manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
