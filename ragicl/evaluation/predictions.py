"""Per-query label distributions of every evaluated system, saved so an evaluation resumes and grows.

``ragicl eval --predictions FILE`` (or :func:`save_predictions`) writes, after each system finishes, the
test queries (ids and gold labels), the evaluation settings and each system's label distributions and
seconds. A rerun with the same file and settings reuses the systems it holds and scores only the others:
an interrupted evaluation loses at most the system in progress, and a reference trained later (``--finetuned``)
is added without scoring the ICL systems again. Researchers read the file with :func:`load_predictions` and
compute any metric post hoc, e.g. the TV gap between two saved systems:

>>> import numpy as np, tempfile, os
>>> from ragicl.evaluation.predictions import Predictions, load_predictions, save_predictions
>>> p = Predictions(dataset="toy", labels=("neg", "pos"), ids=("a", "b"), gold=("neg", "pos"),
...                 probs={"x": np.array([[0.9, 0.1], [0.3, 0.7]])}, seconds={"x": 0.5})
>>> path = os.path.join(tempfile.mkdtemp(), "preds.json")
>>> save_predictions(path, p)
>>> load_predictions(path).probs["x"].tolist()
[[0.9, 0.1], [0.3, 0.7]]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import DataError
from ..types import Dataset

FORMAT = "ragicl-predictions/1"
#: settings that decide one system's output only: a change scores that system again and reuses the rest
SYSTEM_SETTINGS: Mapping[str, tuple[str, ...]] = {"ragicl best": ("dev_size", "tune_budget", "vote_dev_size")}
_OWN = frozenset(k for keys in SYSTEM_SETTINGS.values() for k in keys)


@dataclass(frozen=True)
class Predictions:
    """What a predictions file holds: the queries, the settings and each system's distributions."""

    dataset: str
    labels: tuple[str, ...]
    ids: tuple[str, ...]
    gold: tuple[str, ...]
    probs: Mapping[str, np.ndarray] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: per system, what identifies its model beyond ``settings`` (e.g. the fine-tuned checkpoint's path)
    sources: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @classmethod
    def for_test(cls, test: Dataset, settings: Mapping[str, Any] | None = None) -> Predictions:
        """An empty record for ``test`` (ids and gold labels in order; its fingerprint joins the settings)."""
        return cls(test.name, tuple(test.labels), tuple(str(ex.id) for ex in test.examples),
                   tuple(str(ex.label) for ex in test.examples), {}, {},
                   {**dict(settings or {}), "test_fingerprint": test.fingerprint()})

    def with_system(self, name: str, probs: np.ndarray, seconds: float, source: str = "") -> Predictions:
        """A copy with ``name``'s distributions added (or replaced)."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(self.ids), len(self.labels)):
            raise ValueError(f"{name}: expected label distributions of shape ({len(self.ids)}, "
                             f"{len(self.labels)}), got {probs.shape}.")
        return replace(self, probs={**self.probs, name: probs}, seconds={**self.seconds, name: float(seconds)},
                       sources={**self.sources, name: source})

    def with_notes(self, notes: Sequence[str]) -> Predictions:
        return replace(self, notes=tuple(notes))

    def mismatch(self, other: Predictions) -> str | None:
        """Why the saved systems of ``self`` cannot stand in for a run described by ``other``, or None.

        Settings of one system alone (:data:`SYSTEM_SETTINGS`) are not compared here: a difference there
        only keeps that system from being reused (:func:`reusable_systems`)."""
        if self.labels != other.labels:
            return f"labels {list(self.labels)} vs {list(other.labels)}"
        if (self.ids, self.gold) != (other.ids, other.gold):
            return (f"a different test sample ({len(self.ids)} saved queries vs {len(other.ids)} now, or the "
                    "same count with other ids or labels)")
        diff = sorted(k for k in {*self.settings, *other.settings} - _OWN
                      if self.settings.get(k) != other.settings.get(k))
        if diff:
            return "settings " + ", ".join(f"{k}: saved {self.settings.get(k)!r}, now {other.settings.get(k)!r}"
                                           for k in diff)
        return None

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "dataset": self.dataset, "labels": list(self.labels),
                "queries": [{"id": i, "gold": g} for i, g in zip(self.ids, self.gold)],
                "settings": dict(self.settings), "notes": list(self.notes),
                "systems": {name: {"seconds": self.seconds.get(name, 0.0), "source": self.sources.get(name, ""),
                                   "probs": p.tolist()} for name, p in self.probs.items()}}


class SavedSystem:
    """A saved system's distributions behind the ``predict_proba`` interface ``compare`` calls.

    ``recorded_seconds`` is the time the system took when it was scored, reported instead of the
    (near-zero) time of handing back the saved array.
    """

    def __init__(self, name: str, classes: Sequence[str], probs: np.ndarray, seconds: float) -> None:
        self.name = name
        self.classes_ = list(classes)
        self.probs = probs
        self.recorded_seconds = seconds

    def predict_proba(self, queries: Sequence) -> np.ndarray:
        if len(queries) != len(self.probs):
            raise ValueError(f"saved predictions of {self.name!r} cover {len(self.probs)} queries, asked for "
                             f"{len(queries)}.")
        return self.probs


def save_predictions(path: str | os.PathLike, predictions: Predictions) -> None:
    """Write ``predictions`` to ``path`` atomically (a crash mid-write keeps the previous file)."""
    from .._atomic import write_json_atomic

    write_json_atomic(path, predictions.to_json())


def load_predictions(path: str | os.PathLike) -> Predictions:
    """Read a file written by :func:`save_predictions` / ``ragicl eval --predictions``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise DataError(f"{path}: not a readable predictions file ({err}). Expected the JSON that `ragicl "
                        "eval --predictions` writes; pass another path or delete this file.") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: format {got!r}, expected {FORMAT!r} (a file written by `ragicl eval "
                        "--predictions`); pass another path or delete this file.")
    def damaged(why: str) -> DataError:
        return DataError(f"{path}: damaged predictions file ({why}). Expected the JSON that `ragicl eval "
                         "--predictions` writes; delete it (or pass another path) and run the evaluation again.")

    shapes = {"labels": list, "queries": list, "systems": dict, "settings": dict, "notes": list}
    for key, kind in shapes.items():
        if key in ("settings", "notes") and key not in data:
            continue
        if not isinstance(data.get(key), kind):
            got = type(data[key]).__name__ if key in data else "nothing"
            raise damaged(f"{key!r} holds {got}, expected a JSON {'object' if kind is dict else 'list'}")
    if not all(isinstance(lab, str) for lab in data["labels"]) or len(set(data["labels"])) != len(data["labels"]):
        raise damaged(f"'labels' must be distinct strings, got {data['labels'][:10]!r}")
    if not all(isinstance(n, str) for n in data.get("notes", [])):
        raise damaged("'notes' must be strings")
    try:
        labels = tuple(data["labels"])
        ids = tuple(str(q["id"]) for q in data["queries"])
        gold = tuple(str(q["gold"]) for q in data["queries"])
        systems = data["systems"]
        probs = {n: np.asarray(s["probs"], dtype=np.float64).reshape(len(ids), len(labels))
                 for n, s in systems.items()}
        seconds = {n: float(s.get("seconds", 0.0)) for n, s in systems.items()}
        sources = {n: str(s.get("source", "")) for n, s in systems.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise damaged(f"{type(err).__name__}: {err}") from err
    return Predictions(str(data.get("dataset", "")), labels, ids, gold, probs, seconds,
                       dict(data.get("settings", {})), sources, tuple(data.get("notes", ())))


def reusable_systems(saved: Predictions, current: Predictions, sources: Mapping[str, str],
                     path: str | os.PathLike) -> dict[str, SavedSystem]:
    """The saved systems a run described by ``current`` can reuse; a clear error when the file is another run's.

    ``sources`` maps a system name to what identifies its model now (e.g. the ``--finetuned`` path); a
    saved system whose source differs is scored again rather than reused, as is one whose own settings
    (:data:`SYSTEM_SETTINGS`, e.g. the tuning budget of "ragicl best") differ.
    """
    why = saved.mismatch(current)
    if why is not None:
        raise DataError(f"{path} holds predictions of another evaluation ({why}). Pass a new --predictions "
                        "path, or delete the file to score every system again.")

    def same_own(name: str) -> bool:
        return all(saved.settings.get(k) == current.settings.get(k) for k in SYSTEM_SETTINGS.get(name, ()))

    return {name: SavedSystem(name, saved.labels, saved.probs[name], saved.seconds.get(name, 0.0))
            for name in saved.probs if saved.sources.get(name, "") == sources.get(name, "") and same_own(name)}
