"""The examples an index holds, in position order, and the lookups derived from them.

Private (held by :class:`~ragicl.index.core.ExampleIndex`): the ids, labels and duplicate keys retrieval
asks about, computed once and kept until :meth:`Rows.extend` adds examples.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .._exceptions import DataError
from ..types import Dataset, Example


def schema_of(source: Dataset | Mapping[str, Any]) -> dict[str, Any]:
    """The schema an index keeps (and writes to its manifest), from a :class:`Dataset` or a manifest."""
    if isinstance(source, Dataset):
        return {"input_fields": list(source.input_fields), "task": source.task, "labels": list(source.labels),
                "output_field": source.output_field, "name": source.name}
    return {"input_fields": source.get("input_fields") or [], "task": source.get("task"),
            "labels": source.get("labels") or [], "output_field": source.get("output_field"),
            "name": source.get("name") or ""}


class Rows:
    """Examples in position order with their ``Example.key()``; cached id, label and key lookups.

    >>> rows = Rows([Example("a", {"text": "hi"}, "x"), Example("b", {"text": "hi"}, "y")])
    >>> rows.position_of("b"), rows.duplicates_of(rows.keys[0]), rows.label_ids(("x", "y")).tolist()
    (1, (0, 1), [0, 1])
    """

    def __init__(self, examples: Iterable[Example] = (), keys: Iterable[str] | None = None) -> None:
        self._examples = list(examples)
        self._keys = [ex.key() for ex in self._examples] if keys is None else list(keys)
        self._cache: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._examples)

    def extend(self, examples: Sequence[Example]) -> None:
        """Append ``examples`` (checked first with :meth:`check_new`) and drop the cached lookups."""
        self._examples.extend(examples)
        self._keys.extend(ex.key() for ex in examples)
        self._cache.clear()

    @property
    def examples(self) -> tuple[Example, ...]:
        if "examples" not in self._cache:
            self._cache["examples"] = tuple(self._examples)
        return self._cache["examples"]

    @property
    def keys(self) -> tuple[str, ...]:
        """``Example.key()`` of every example, in position order."""
        if "key_tuple" not in self._cache:
            self._cache["key_tuple"] = tuple(self._keys)
        return self._cache["key_tuple"]

    def label_ids(self, labels: Sequence[str]) -> np.ndarray:
        """Index into ``labels`` of every example's label (``-1`` for none), int64."""
        cached = self._cache.get("label_ids")
        if cached is None or cached[0] != tuple(labels):
            lookup = {lab: i for i, lab in enumerate(labels)}
            ids = np.array([lookup.get(ex.label, -1) for ex in self._examples], np.int64)
            self._cache["label_ids"] = cached = (tuple(labels), ids)
        return cached[1]

    def _ids(self) -> dict[str, int]:
        if "ids" not in self._cache:
            self._cache["ids"] = {ex.id: i for i, ex in enumerate(self._examples)}
        return self._cache["ids"]

    def position_of(self, example_id: str) -> int | None:
        """Position of the example with this id, or ``None``."""
        return self._ids().get(example_id)

    def duplicates_of(self, key: str) -> tuple[int, ...]:
        """Positions of every example whose ``Example.key()`` equals ``key`` (exact duplicates)."""
        if "keys" not in self._cache:
            groups: dict[str, list[int]] = {}
            for i, k in enumerate(self._keys):
                groups.setdefault(k, []).append(i)
            self._cache["keys"] = {k: tuple(v) for k, v in groups.items()}
        return self._cache["keys"].get(key, ())

    def check_new(self, examples: Sequence[Example], schema: Mapping[str, Any]) -> list[Example]:
        """``examples`` as a list if they may join: Examples with the schema's input fields, labels inside
        its label set (classification), ids new and distinct; else ``DataError``/``TypeError``."""
        fields = schema["input_fields"]
        labels = set(schema["labels"])
        known = self._ids() if self._examples else {}
        seen: set[str] = set()
        for i, ex in enumerate(examples):
            if not isinstance(ex, Example):
                raise TypeError(f"examples[{i}] is a {type(ex).__name__}; expected ragicl.Example.")
            missing = [f for f in fields if f not in ex.inputs]
            if missing:
                raise DataError(f"example {ex.id!r} lacks input field(s) {missing}; the index expects "
                                f"{fields}. Fix: read the data with input_fields={fields}.")
            if schema["task"] == "classification" and labels and ex.label not in labels:
                raise DataError(f"example {ex.id!r} has label {ex.label!r}, outside the index's label set "
                                f"{sorted(labels)}. Fix: rebuild the index with labels=[...] including it.")
            if ex.id in seen or ex.id in known:
                raise DataError(f"example id {ex.id!r} is already in the index; ids must be unique. Fix: read "
                                "the data with id_field=..., or give the new examples distinct ids (e.g. a prefix).")
            seen.add(ex.id)
        return list(examples)
