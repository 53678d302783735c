"""Planning a distributed build: which files, how many rows, which rows go into which shard.

No Ray here. A build is cut into shards of ``shard_size`` consecutive *global* rows (rows of the input
files in sorted-path order, numbered from 0 across files); the cut depends only on the input and
``shard_size``, never on the number of workers, so every build of the same input writes the same shards.
A row's id is its ``id_field`` value or its global row number, exactly what :func:`ragicl.read_dataset`
gives for a single file. Each row is validated by :func:`ragicl.read_dataset` itself (called on the rows
of one shard piece), and its messages are rewritten to name the file, row and line.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .._exceptions import DataError, require
from ..data import _read_meta, parse_jsonl_line, read_dataset
from ..types import Dataset, Example

SUFFIXES = (".jsonl", ".csv", ".parquet")


def expand_sources(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files named by paths, folders (their data files, sorted) and globs, in order, without repeats."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[Path] = []
    for src in sources:
        text = str(src)
        if any(c in text for c in "*?["):
            found = [Path(p) for p in sorted(glob.glob(text, recursive=True)) if Path(p).is_file()]
            if not found:
                raise DataError(f"the pattern {text!r} matches no file. Fix: check the glob.")
        elif Path(text).is_dir():
            found = sorted(p for p in Path(text).iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                raise DataError(f"the folder {text!r} holds no {'/'.join(SUFFIXES)} file. Fix: pass the "
                                "files or a glob.")
        elif Path(text).is_file():
            found = [Path(text)]
        else:
            raise DataError(f"no dataset file at {text!r} (resolved {Path(text).resolve()}). Expected a "
                            f"{'/'.join(SUFFIXES)} file, a folder of them or a glob. Fix: check the path.")
        for path in found:
            if path.suffix.lower() not in SUFFIXES:
                hint = " (a .json array cannot be read in blocks: convert it to .jsonl)" if \
                    path.suffix.lower() == ".json" else ""
                raise DataError(f"{str(path)!r} has the format {path.suffix!r}; a distributed build reads "
                                f"{list(SUFFIXES)}{hint}. Fix: convert the file.")
            if path.resolve() not in {p.resolve() for p in out}:
                out.append(path)
    return out


def count_rows(path: Path, global_start: int, shard_size: int) -> tuple[int, dict[int, tuple[int, int]]]:
    """Rows in ``path`` and, for JSONL, the (byte offset, line number) of every row that starts a piece."""
    suffix = path.suffix.lower()
    marks: dict[int, tuple[int, int]] = {}
    try:
        if suffix == ".jsonl":
            n, pos = 0, 0
            with open(path, "rb") as fh:
                for lineno, line in enumerate(fh, start=1):
                    if line.strip():
                        if n == 0 or (global_start + n) % shard_size == 0:
                            marks[n] = (pos, lineno)
                        n += 1
                    pos += len(line)
            return n, marks
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as fh:
                return sum(1 for _ in csv.DictReader(fh)), marks
        pq = require("pyarrow.parquet", "data", "pyarrow")
        return int(pq.ParquetFile(str(path)).metadata.num_rows), marks
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"could not read {str(path)!r}: {err}. Fix: check the file is readable.") from err
    except Exception as err:  # pyarrow's own error types for corrupt parquet
        if suffix == ".parquet":
            raise DataError(f"could not read parquet file {str(path)!r}: {err}. Fix: check the file is "
                            "valid parquet.") from err
        raise


def plan_shards(files: list[Path], shard_size: int) -> tuple[list[dict], list[dict]]:
    """``(sources, shards)``: per file its path, bytes and rows; per shard its global rows and pieces."""
    sources: list[dict] = []
    pieces_by_file: list[tuple[int, int, int, dict]] = []  # (global start, rows, file index, marks)
    total = 0
    for i, path in enumerate(files):
        n, marks = count_rows(path, total, shard_size)
        sources.append({"path": str(path.resolve()), "bytes": path.stat().st_size, "rows": n})
        pieces_by_file.append((total, n, i, marks))
        total += n
    if total == 0:
        raise DataError(f"the dataset {[str(f) for f in files]} is empty: received 0 rows, expected at "
                        "least one. Fix: check the paths.")
    shards: list[dict] = []
    for s, start in enumerate(range(0, total, shard_size)):
        end = min(total, start + shard_size)
        pieces = []
        for g0, n, i, marks in pieces_by_file:
            lo, hi = max(start, g0), min(end, g0 + n)
            if lo < hi:
                piece = {"file": i, "start": lo - g0, "n": hi - lo}
                if lo - g0 in marks:
                    piece["offset"], piece["line"] = marks[lo - g0]
                pieces.append(piece)
        shards.append({"shard": s, "start": start, "count": end - start, "pieces": pieces})
    return sources, shards


def raw_rows(path: Path, piece: dict) -> tuple[list, list[str]]:
    """The raw rows of one piece and, per row, where it is (for error messages)."""
    start, n = piece["start"], piece["n"]
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows, where = [], []
        lineno = piece.get("line", 1) - 1
        with open(path, "rb") as fh:
            fh.seek(piece.get("offset", 0))
            for line in fh:
                lineno += 1
                if not line.strip():
                    continue
                rows.append(parse_jsonl_line(line, lineno, path))
                where.append(f"row {start + len(where)} (line {lineno}) of {path}")
                if len(rows) == n:
                    break
        return rows, where
    if suffix == ".csv":
        import itertools

        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(itertools.islice(csv.DictReader(fh), start, start + n))
        return rows, [f"row {r} (line {r + 2}) of {path}" for r in range(start, start + n)]
    pq = require("pyarrow.parquet", "data", "pyarrow")
    pf = pq.ParquetFile(str(path))
    groups, first, seen = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        rows_g = pf.metadata.row_group(g).num_rows
        if seen + rows_g > start and seen < start + n:
            groups.append(g)
            first = seen if first is None else first
        seen += rows_g
    table = pf.read_row_groups(groups).slice(start - (first or 0), n)
    return table.to_pylist(), [f"row {r} of {path}" for r in range(start, start + n)]


@dataclasses.dataclass(frozen=True)
class Schema:
    """What every shard is validated against (resolved once, on the driver)."""

    input_fields: tuple[str, ...]
    task: str
    label_field: str | None
    output_field: str | None
    labels: tuple[str, ...] | None  # explicit or meta.json label set; None = the union found in the data
    id_field: str | None
    name: str


def resolve_schema(files: list[Path], first_rows: list, first_where: list[str], *,
                   input_fields: Sequence[str] | None,
                   label_field: str | None, output_field: str | None, labels: Sequence[str] | None,
                   id_field: str | None, task: str | None, name: str | None) -> Schema:
    """The dataset's schema as :func:`read_dataset` resolves it (with ``meta.json`` beside the first file).

    ``first_rows`` are the first (up to 1000) rows, the ones ``read_dataset`` infers input fields from.
    """
    meta = _read_meta(files[0])
    task = task or ("generation" if output_field else meta.get("task") or "classification")
    if task == "generation":
        output_field = output_field or meta.get("output") or (
            "output" if first_rows and isinstance(first_rows[0], dict) and "output" in first_rows[0]
            else None)
    if input_fields is None and meta.get("input"):
        input_fields = meta["input"]
    if task == "classification" and labels is None and meta.get("labels"):
        labels = meta["labels"]
    try:
        sample = read_dataset(first_rows, input_fields=input_fields, label_field=label_field,
                              output_field=output_field, labels=labels, id_field=id_field, task=task)
    except DataError as err:
        raise DataError(_locate(str(err), first_where)) from err
    if name is None:
        first = files[0]
        name = (f"{first.parent.name}-{first.stem}" if meta else first.stem) if len(files) == 1 \
            else first.parent.name
    return Schema(tuple(sample.input_fields), sample.task, label_field if task == "classification" else None,
                  sample.output_field, tuple(sample.labels) if labels is not None else None, id_field, name)


_ROW = re.compile(r"\brow (\d+)\b")


def _locate(message: str, where: list[str]) -> str:
    """``read_dataset``'s "row i" (of the rows it was given) -> the file, its row and line."""
    return _ROW.sub(lambda m: where[int(m.group(1))] if int(m.group(1)) < len(where) else m.group(0), message)


def read_shard(files: Sequence[str], shard: dict, schema: Schema) -> Dataset:
    """The validated examples of one shard (ids: ``id_field`` values or global row numbers)."""
    rows: list = []
    where: list[str] = []
    for piece in shard["pieces"]:
        r, w = raw_rows(Path(files[piece["file"]]), piece)
        if len(r) != piece["n"]:
            raise DataError(f"{files[piece['file']]} has fewer rows than when the build was planned "
                            f"(expected {piece['n']} from row {piece['start']}, found {len(r)}): the file "
                            "changed during the build. Fix: rebuild from a fresh output folder.")
        rows.extend(r)
        where.extend(w)
    try:
        ds = read_dataset(rows, input_fields=schema.input_fields, label_field=schema.label_field,
                          output_field=schema.output_field, labels=schema.labels, id_field=schema.id_field,
                          task=schema.task, name=schema.name)
    except DataError as err:
        raise DataError(f"shard {shard['shard']}: {_locate(str(err), where)}") from err
    if schema.id_field is None:
        start = shard["start"]
        ds = dataclasses.replace(ds, examples=tuple(dataclasses.replace(ex, id=str(start + i))
                                                   for i, ex in enumerate(ds.examples)))
    return ds


def example_json(ex: Example) -> str:
    """The canonical JSON of an example: what :meth:`Dataset.fingerprint` hashes (one line each)."""
    return json.dumps(ex.to_json(), sort_keys=True, ensure_ascii=False)
