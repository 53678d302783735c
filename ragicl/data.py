"""Reading datasets into :class:`~ragicl.types.Dataset`: files, DataFrames, HF datasets, lists of dicts.

>>> ds = from_records([{"text": "great film", "label": "positive"},
...                    {"text": "dull plot", "label": "negative"}])
>>> ds.input_fields, ds.labels, ds[1].id
(('text',), ('negative', 'positive'), '1')

A ``meta.json`` beside a data file (the layout of ``../shared/datasets``: ``task``, ``input``, ``labels``,
``output``) fills in whatever the arguments leave out. Every problem with the data raises
:class:`~ragicl.DataError` saying what was received, what was expected and how to fix it.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import numbers
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._exceptions import DataError, require
from .types import Dataset, Example

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
#: Unicode categories a label may not contain: control characters (\n, \r, \t, ...), line/paragraph separators
_BREAKING = frozenset({"Cc", "Zl", "Zp"})
_TASKS = ("classification", "generation")


def read_dataset(
    source: str | os.PathLike | Any,
    *,
    input_fields: Sequence[str] | None = None,
    label_field: str | None = "label",
    output_field: str | None = None,
    labels: Sequence[str] | None = None,
    id_field: str | None = "id",
    task: str | None = None,
    name: str | None = None,
) -> Dataset:
    """Read a labeled dataset from a file, a DataFrame, an HF ``datasets.Dataset`` or a list of dicts.

    Args:
        source: path to ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet``; a pandas DataFrame; any object with
            ``to_pandas()`` (HF ``datasets.Dataset``) or an iterable of mappings.
        input_fields: input column names, in prompt order. Default: ``meta.json``'s ``input``, else every
            string column except the label, id and output columns.
        label_field: label column (classification). ``None`` reads unlabeled examples (``label=None``).
            Labels are names: the values of the column must be of one kind, and become names this way:
            text as it is; numbers by value, integral ones without a decimal part (``1`` and ``1.0`` are
            the label ``"1"``, ``2.5`` is ``"2.5"``); booleans ``"true"``/``"false"``. A column mixing
            kinds (``1`` and ``"1"``, ``true`` and ``"True"``) raises ``DataError`` naming the first row of
            each kind, since its values would silently merge. A label must be one line of text: a line
            break or other control character raises ``DataError`` (it would write prompt lines, e.g. a
            fake demonstration, into every prompt that shows the example). CSV values are always text.
        output_field: target column of a generation dataset; giving it makes the task ``"generation"``.
        labels: the label set in a fixed order. Default: ``meta.json``'s ``labels``, else the sorted unique
            labels. A row whose label is outside an explicit/meta label set raises ``DataError``.
        id_field: column holding stable ids. Default ``"id"``: a column named ``id``, when the data has
            one, gives the ids (never an input field; every row needs one and duplicates are an error);
            without that column the ids are the row numbers (``"0"``, ``"1"``, ...). ``None``: row numbers
            always (an ``id`` column is then ignored, still not an input). Another name: that column, required.
        task: ``"classification"`` or ``"generation"``; default from ``output_field`` / ``meta.json``.
        name: dataset name; default from the file name (``"sst2-train"`` for ``sst2/train.jsonl``).

    >>> read_dataset([{"q": "2+2?", "a": "4"}], output_field="a").task
    'generation'
    """
    meta: dict = {}
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        rows, where = _read_file(path)
        meta = _read_meta(path)
        if name is None:
            name = f"{path.parent.name}-{path.stem}" if meta else path.stem
    else:
        rows, where = _rows_from_object(source, label_field)
    if not rows:
        raise DataError(f"the dataset {_describe(source)} is empty: received 0 rows, expected at least one. "
                        "Fix: check the path/filter, or pass a non-empty dataset.")
    if task is not None and task not in _TASKS:
        raise ValueError(f"task must be one of {list(_TASKS)}, got {task!r}.")
    task = task or ("generation" if output_field else meta.get("task") or "classification")
    if task == "generation":
        output_field = output_field or meta.get("output") or ("output" if "output" in rows[0] else None)
        if output_field is None:
            raise DataError(f"a generation dataset needs an output field; received none (columns "
                            f"{list(rows[0])}). Fix: pass output_field='<column>'.")
    if input_fields is None and meta.get("input"):
        input_fields = meta["input"]
    if id_field == "id" and not any(isinstance(r, Mapping) and "id" in r for r in rows):
        id_field = None  # the default: row numbers when the data has no ``id`` column
    if input_fields is None:
        input_fields = _infer_input_fields(rows, exclude={label_field, id_field, output_field, "id"})
    input_fields = _check_fields(input_fields)
    if task == "classification" and labels is None and meta.get("labels"):
        labels = meta["labels"]
    label_set = _check_labels(labels) if labels is not None and task == "classification" else None

    examples: list[Example] = []
    seen_ids: dict[str, int] = {}
    kinds: dict[str, tuple[int, Any]] = {}  # label kind -> (first row, its value): one kind per column
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataError(f"{where(i)} is a {type(row).__name__}; expected an object with fields "
                            f"{list(input_fields)}. Fix: every row must be a JSON object / record.")
        inputs = {}
        for f in input_fields:
            value = row.get(f)
            if _is_missing(value) or not str(value).strip():
                what = "missing" if _is_missing(value) else "empty"
                raise DataError(f"{where(i)}: input field {f!r} is {what}; expected non-empty text in "
                                f"{list(input_fields)} (row has {sorted(row)}). Fix: fill or drop the row, or "
                                "pass input_fields=[...] naming the right columns.")
            inputs[f] = value if isinstance(value, str) else str(value)
        label = output = None
        if task == "classification" and label_field is not None:
            value = row.get(label_field)
            if _is_missing(value):
                raise DataError(f"{where(i)}: label field {label_field!r} is missing; expected one of "
                                f"{list(label_set) if label_set else 'the labels'} (row has {sorted(row)}). "
                                "Fix: label the row, pass label_field='<column>', or label_field=None "
                                "for unlabeled data.")
            kind = _label_kind(value)
            if kind is None:
                raise DataError(f"{where(i)}: label {value!r} is a {type(value).__name__}; expected text, a "
                                "number or a boolean. Fix: write the label as a string.")
            kinds.setdefault(kind, (i, value))
            if len(kinds) > 1:
                raise _mixed_labels(kinds, label_field, where)
            label = _label_str(value)
            _check_label_text(label, f"{where(i)}: label {label!r}")
            if not label.strip():
                raise DataError(f"{where(i)}: label field {label_field!r} is empty ({value!r}); expected a "
                                "non-empty label. Fix: label the row or drop it (or label_field=None for "
                                "unlabeled data).")
            if label_set is not None and label not in label_set:
                raise DataError(f"{where(i)}: label {label!r} is not in the label set {list(label_set)}. "
                                "Fix: correct the row, or pass labels=[...] including it.")
        elif task == "generation":
            value = row.get(output_field)
            if _is_missing(value):
                raise DataError(f"{where(i)}: output field {output_field!r} is missing; expected the "
                                f"target text (row has {sorted(row)}). Fix: fill or drop the row.")
            output = value if isinstance(value, str) else str(value)
        if id_field is not None:
            value = row.get(id_field)
            if _is_missing(value) or not str(value).strip():
                raise DataError(f"{where(i)}: id field {id_field!r} is missing (row has {sorted(row)}). "
                                "Fix: give every row an id, or pass id_field=None to use row numbers.")
            ex_id = _id_str(value)
            if ex_id in seen_ids:
                raise DataError(f"{where(i)}: id {ex_id!r} repeats {where(seen_ids[ex_id])}; ids must be "
                                "unique. Fix: deduplicate the ids, or pass id_field=None (row numbers).")
            seen_ids[ex_id] = i
        else:
            ex_id = str(i)
        examples.append(Example(id=ex_id, inputs=inputs, label=label, output=output))

    if task == "classification":
        if label_set is None:
            label_set = tuple(sorted({ex.label for ex in examples if ex.label is not None}))
    else:
        label_set = ()
    logger.debug("read %d examples from %s (fields %s, %d labels)", len(examples), _describe(source),
                 input_fields, len(label_set))
    return Dataset(examples=tuple(examples), input_fields=input_fields, task=task,  # type: ignore[arg-type]
                   labels=label_set, output_field=output_field if task == "generation" else None,
                   name=name or "")


def from_records(records: Iterable[Mapping[str, Any]], **kwargs: Any) -> Dataset:
    """:func:`read_dataset` over an in-memory list of dicts (same keyword arguments).

    >>> from_records([{"text": "hi", "label": "greeting"}]).labels
    ('greeting',)
    """
    return read_dataset(list(records), **kwargs)


# --------------------------------------------------------------------------- sources
def _read_file(path: Path) -> tuple[list, Any]:
    if not path.exists():
        raise DataError(f"no dataset file at {str(path)!r} (resolved {path.resolve()}). Expected an existing "
                        f"{'/'.join(SUPPORTED_SUFFIXES)} file. Fix: check the path.")
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in SUPPORTED_SUFFIXES)
        raise DataError(f"{str(path)!r} is a folder; expected a data file. Fix: pass a file inside it "
                        f"(found: {found or 'none'}).")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".json":
            return _read_json(path), lambda i: f"row {i} of {path}"
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as fh:
                rows = list(csv.DictReader(fh))
            return rows, lambda i: f"row {i} (line {i + 2}) of {path}"
        if suffix == ".parquet":
            pq = require("pyarrow.parquet", "data", "pyarrow")
            return pq.read_table(str(path)).to_pylist(), lambda i: f"row {i} of {path}"
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"could not read {str(path)!r}: {err}. Fix: check the file is readable text in "
                        "UTF-8 (or valid parquet).") from err
    except DataError:
        raise
    except Exception as err:  # pyarrow raises its own error types for corrupt files
        if suffix == ".parquet":
            raise DataError(f"could not read parquet file {str(path)!r}: {err}. Fix: check the file is "
                            "valid parquet.") from err
        raise
    raise DataError(f"unknown dataset format {path.suffix!r} for {str(path)!r}; expected one of "
                    f"{list(SUPPORTED_SUFFIXES)}. Fix: convert the file, or load it with pandas and pass "
                    "the DataFrame.")


def parse_jsonl_line(line: str | bytes, lineno: int, path: Any) -> Any:
    """One JSONL line parsed, or a :class:`DataError` naming the file, the line and the fix."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"line {lineno} of {path} is not valid JSON ({err.msg} at column "
                        f"{err.colno}): {line[:80]!r}. Expected one JSON object per line. "
                        "Fix: repair or remove that line.") from err
    except RecursionError:
        raise DataError(f"line {lineno} of {path} nests JSON arrays/objects too deeply to read "
                        f"({line[:80]!r}...). Expected one JSON object per line whose fields are text, numbers "
                        "or booleans. Fix: repair or remove that line.") from None


def _read_jsonl(path: Path) -> tuple[list, Any]:
    rows: list = []
    lines: list[int] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            rows.append(parse_jsonl_line(line, lineno, path))
            lines.append(lineno)
    return rows, lambda i: f"row {i} (line {lines[i]}) of {path}"


def _read_json(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}). "
                        "Fix: repair the file; for one object per line use the .jsonl suffix.") from err
    except RecursionError:
        raise DataError(f"{path} nests JSON arrays/objects too deeply to read. Expected a list of objects "
                        "whose fields are text, numbers or booleans. Fix: repair the file.") from None
    if isinstance(data, Mapping):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path} holds a JSON {type(data).__name__}; expected a list of objects (or an "
                        "object with one list of objects, e.g. {\"data\": [...]}). Fix: reshape the file.")
    return data


def _read_meta(path: Path) -> dict:
    meta_path = path.parent / "meta.json"
    if not meta_path.exists():
        return {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, RecursionError) as err:
        raise DataError(f"could not read {meta_path}: {type(err).__name__}: {err}. Expected a JSON object with task/input/labels/"
                        "output. Fix: repair or remove it.") from err
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path} holds a JSON {type(meta).__name__}; expected an object. Fix: repair it.")
    logger.debug("using %s", meta_path)
    return meta


def _rows_from_object(source: Any, label_field: str | None) -> tuple[list, Any]:
    def where(i: int) -> str:
        return f"row {i}"

    if isinstance(source, (bytes, bytearray)):
        raise TypeError("read_dataset got bytes; pass a path, a DataFrame, an HF Dataset or a list of dicts.")
    if isinstance(source, Mapping):
        raise DataError("read_dataset got a single mapping; expected a list of dicts (one per example). "
                        "Fix: wrap it in a list, or pass a DataFrame.")
    names = _class_label_names(source, label_field)
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas DataFrame
        rows = source.to_dict("records")
    elif hasattr(source, "to_pandas") and not isinstance(source, Sequence):  # HF datasets.Dataset, arrow
        rows = source.to_pandas().to_dict("records")
    elif isinstance(source, Iterable):
        rows = list(source)
    else:
        raise TypeError(f"read_dataset cannot read a {type(source).__name__}; expected a path, a pandas "
                        "DataFrame, an HF datasets.Dataset or a list of dicts.")
    if names is not None:  # HF ClassLabel: integer labels -> their names
        rows = [{**r, label_field: names[r[label_field]]}
                if isinstance(r, Mapping) and isinstance(r.get(label_field), int)
                and 0 <= r[label_field] < len(names) else r for r in rows]
    return rows, where


def _class_label_names(source: Any, label_field: str | None) -> list[str] | None:
    features = getattr(source, "features", None)
    if label_field is None or not isinstance(features, Mapping):
        return None
    names = getattr(features.get(label_field), "names", None)
    return list(names) if names else None


# --------------------------------------------------------------------------- checks
def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return type(value).__name__ in {"NAType", "NaTType"}


def _id_str(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def _label_kind(value: Any) -> str | None:
    """``"text"``, ``"number"`` or ``"boolean"``: the kind of a label value (``None``: not a label)."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, (numbers.Integral, numbers.Real)):
        return "number"
    return None


def _label_str(value: Any) -> str:
    """A label value as its name: text as is, ``true``/``false``, integral numbers without ``.0``.

    >>> [_label_str(v) for v in ("1", 1, 1.0, 2.5, True, False)]
    ['1', '1', '1', '2.5', 'true', 'false']
    """
    kind = _label_kind(value)
    if kind == "text":
        return value
    if kind == "boolean":
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if kind == "number":
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value)


def _show(value: Any) -> str:
    """A value as the data file spells it (JSON: ``true``, ``"1"``), else its repr."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _check_label_text(label: str, what: str) -> None:
    """A label is a name on one line: no line break or other control character (it would write prompt lines)."""
    bad = sorted({ch for ch in label if unicodedata.category(ch) in _BREAKING})
    if bad:
        raise DataError(f"{what} contains {', '.join(repr(ch) for ch in bad)}; a label is a name written on "
                        "the answer line of every prompt that shows it, and a line break or control character "
                        "in it would add prompt lines of its own (e.g. a fake demonstration). Fix: correct the "
                        "label in the data (one line of text), or name it differently and give the words "
                        "through the template's verbalizer.")


def _mixed_labels(kinds: Mapping[str, tuple[int, Any]], label_field: str, where: Any) -> DataError:
    found = "; ".join(f"{kind} {_show(value)} at {where(row)}" for kind, (row, value) in kinds.items())
    return DataError(f"label field {label_field!r} mixes kinds of values: {found}. Labels are names, and "
                     "values of different kinds (e.g. 1 and \"1\", or true and \"True\") would silently "
                     "become one label. Expected one kind per column: all text, all numbers (1 and 1.0 are the "
                     "same label \"1\") or all booleans (\"true\"/\"false\"). Fix: write every label the "
                     "same way, e.g. all as strings.")


def _infer_input_fields(rows: list, exclude: set) -> tuple[str, ...]:
    columns: dict[str, bool] = {}
    for row in rows[:1000]:
        if not isinstance(row, Mapping):
            continue
        for col, value in row.items():
            is_text = isinstance(value, str) or _is_missing(value)
            columns[col] = columns.get(col, True) and is_text
    fields = tuple(c for c, text in columns.items() if text and c not in exclude)
    if not fields:
        raise DataError(f"could not infer the input fields: no text columns besides {sorted(map(str, exclude - {None}))} "
                        f"among {list(columns)}. Fix: pass input_fields=[...].")
    return fields


def _check_fields(fields: Sequence[str]) -> tuple[str, ...]:
    if isinstance(fields, str):
        fields = [fields]
    fields = tuple(fields)
    if not fields or not all(isinstance(f, str) and f for f in fields) or len(set(fields)) != len(fields):
        raise DataError(f"input_fields must be distinct non-empty names; received {list(fields)}.")
    return fields


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    if isinstance(labels, str):
        raise DataError(f"labels must be a list of label names, received the string {labels!r}. "
                        f"Fix: labels=[{labels!r}, ...].")
    out = tuple(_label_str(lab) for lab in labels)
    for lab in out:
        _check_label_text(lab, f"label {lab!r} of the label set")
    if any(not lab.strip() for lab in out):
        raise DataError(f"labels must be non-empty names; received {list(out)}. Fix: drop or name the empty "
                        "label.")
    if not out or len(set(out)) != len(out):
        raise DataError(f"labels must be a non-empty list of distinct names; received {list(out)}.")
    return out


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(str(source))
    return f"<{type(source).__name__}>"
