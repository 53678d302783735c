"""Small frozen records that flow between the pipeline stages.

data  ──Dataset/Example──▶ index ──SearchResult──▶ retrieve ──Retrieved──▶ pack ──PackedPrompt──▶ lm
                                                                                                │
evaluate ◀──────────────────────────── Prediction (label + distribution) ◀──────────────────────┘

Everything here is plain data: no models, no I/O. Stages take and return these records so each can be
tested, replaced or cached on its own.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Task = Literal["classification", "generation"]


def normalize_text(text: str) -> str:
    """Canonical form used to detect exact duplicates: case-folded, whitespace collapsed."""
    return " ".join(text.split()).casefold()


def text_key(text: str) -> str:
    """Hash of the normalized text: the :meth:`Example.key` of an example whose input text is ``text``.

    >>> text_key("A  cat") == text_key("a cat") == Example("1", {"text": "a cat"}).key()
    True
    """
    return hashlib.sha1(normalize_text(text).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Example:
    """One labeled example: an id, its input fields, and a label (classification) or output (generation).

    >>> ex = Example(id="7", inputs={"premise": "A dog runs.", "hypothesis": "An animal moves."},
    ...              label="entailment")
    >>> ex.text()
    'A dog runs.\\nAn animal moves.'
    """

    id: str
    inputs: Mapping[str, str]
    label: str | None = None
    output: str | None = None

    def text(self, fields: Sequence[str] | None = None) -> str:
        """The input fields joined by newlines: what is embedded and compared for duplicates."""
        names = list(fields) if fields is not None else list(self.inputs)
        return "\n".join(self.inputs[name] for name in names)

    def key(self) -> str:
        """Hash of the normalized input text: two examples with the same key are exact duplicates."""
        return text_key(self.text())

    def to_json(self) -> dict:
        row: dict = {"id": self.id, "inputs": dict(self.inputs)}
        if self.label is not None:
            row["label"] = self.label
        if self.output is not None:
            row["output"] = self.output
        return row

    @classmethod
    def from_json(cls, row: Mapping) -> Example:
        return cls(id=str(row["id"]), inputs=dict(row["inputs"]), label=row.get("label"),
                   output=row.get("output"))

    __hash__ = None  # type: ignore[assignment]  # inputs is a mapping; compare by value, do not hash


Query = str | Mapping[str, str] | Example
"""What every stage accepts as a query: a plain string (single-input-field templates), a mapping of input
fields, or an :class:`Example` (its id is kept). The one definition; other modules import it."""


@dataclass(frozen=True)
class Dataset:
    """An ordered, immutable collection of examples with its schema.

    ``labels`` is the label set in a fixed order (empty for generation); ``input_fields`` names the input
    fields every example has. Build one with :func:`ragicl.read_dataset`.
    """

    examples: tuple[Example, ...]
    input_fields: tuple[str, ...]
    task: Task = "classification"
    labels: tuple[str, ...] = ()
    output_field: str | None = None
    name: str = ""

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    def fingerprint(self) -> str:
        """SHA-256 over ids, inputs and targets, in order: identifies the data an index was built from."""
        h = hashlib.sha256()
        for ex in self.examples:
            h.update(json.dumps(ex.to_json(), sort_keys=True, ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def subset(self, positions: Sequence[int], name: str | None = None) -> Dataset:
        return Dataset(tuple(self.examples[i] for i in positions), self.input_fields, self.task,
                       self.labels, self.output_field, self.name if name is None else name)

    def sample(self, n: int, seed: int = 0) -> Dataset:
        """A random subset of ``min(n, len(self))`` examples, in their original order."""
        if n >= len(self):
            return self
        rng = random.Random(seed)
        return self.subset(sorted(rng.sample(range(len(self)), n)))

    def label_array(self) -> np.ndarray:
        """Label indices (into ``labels``) of every example, as int64."""
        lookup = {lab: i for i, lab in enumerate(self.labels)}
        return np.array([lookup[ex.label] for ex in self.examples], dtype=np.int64)


@dataclass(frozen=True)
class SearchResult:
    """Raw nearest-neighbour output for a batch of queries: positions into the index, best first.

    ``positions[q, j] == -1`` where fewer than k neighbours exist. ``scores`` are inner products of
    normalized vectors (cosine similarity).
    """

    positions: np.ndarray  # (Q, k) int64
    scores: np.ndarray  # (Q, k) float32


@dataclass(frozen=True)
class Retrieved:
    """The examples chosen for one query, most relevant first (positions into the index)."""

    positions: tuple[int, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class PackedPrompt:
    """A prompt ready for the LM, with the accounting of what went into it.

    ``token_ids`` is exactly what the model receives; ``n_tokens == len(token_ids)`` and equals the
    tokenizer's count of ``text``. ``included`` lists example ids in prompt order (the most relevant last,
    nearest the query); ``excluded`` lists the candidates that did not fit.
    """

    text: str
    token_ids: tuple[int, ...]
    budget: int
    included: tuple[str, ...]
    excluded: tuple[str, ...]

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Prediction:
    """A classifier's answer for one query: the label, the distribution over the label set, the prompt."""

    label: str
    probs: Mapping[str, float]
    prompt: PackedPrompt | None = field(default=None, compare=False)
