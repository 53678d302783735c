"""Evaluation: task metrics per system and the gap of each system to a reference (the fine-tuned model).

The gap is measured the way Sharma 2025 defines the approximation error: the total-variation distance
between the two systems' output distributions, here the per-query label distributions. ``compare``
reports its mean with a bootstrap 95% interval, upper quantiles, and the agreement rate of the argmax
labels, next to accuracy and macro-F1 of every system.

>>> import numpy as np
>>> from ragicl.evaluation.compare import gap
>>> p = np.array([[0.9, 0.1], [0.2, 0.8]]); q = np.array([[0.7, 0.3], [0.2, 0.8]])
>>> round(gap(p, q, n_boot=200).tv.estimate, 3)
0.1
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .._atomic import write_json_atomic
from .._exceptions import DataError, MissingDependencyError
from ..stats import Interval, accuracy, bootstrap_ci, exceedance, macro_f1, tv_distance
from ..training.checkpoint import read_meta, training_note
from ..types import Dataset

logger = logging.getLogger(__name__)

#: default thresholds ε for the share of queries with TV > ε reported in every :class:`Gap`
DEFAULT_EPSILONS: tuple[float, ...] = (0.05, 0.1, 0.2)


@runtime_checkable
class ProbabilisticClassifier(Protocol):
    """Anything with ``classes_`` and ``predict_proba(examples) -> (n, L)``: ICL systems, the fine-tuned
    model (an ``ICLClassifier`` with ``k=0``), baselines."""

    classes_: Sequence[str]

    def predict_proba(self, queries: Sequence) -> np.ndarray: ...


@dataclass(frozen=True)
class SystemResult:
    """Task metrics of one system on the test set, and its measured inference cost."""

    name: str
    n: int
    accuracy: Interval
    macro_f1: float
    seconds: float
    probs: np.ndarray = field(repr=False, compare=False)

    @property
    def seconds_per_query(self) -> float:
        return self.seconds / max(self.n, 1)

    def to_json(self) -> dict:
        return {"name": self.name, "n": self.n, "accuracy": self.accuracy.to_json(),
                "macro_f1": self.macro_f1, "seconds": self.seconds,
                "seconds_per_query": self.seconds_per_query}


@dataclass(frozen=True)
class Gap:
    """Distance of one system's label distributions to the reference's, query by query."""

    system: str
    reference: str
    tv: Interval
    tv_quantiles: Mapping[str, float]
    agreement: float
    tv_per_query: np.ndarray = field(repr=False, compare=False)
    #: ε → share of queries with TV > ε, with its Clopper–Pearson 95% interval (empty without scipy)
    exceed: Mapping[float, Interval] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict:
        return {"system": self.system, "reference": self.reference, "tv": self.tv.to_json(),
                "tv_quantiles": dict(self.tv_quantiles), "agreement": self.agreement,
                "exceed": {f"{eps:g}": iv.to_json() for eps, iv in self.exceed.items()}}


@dataclass(frozen=True)
class Report:
    """Everything ``compare`` measured; ``table()`` for people, ``to_json()`` for programs."""

    dataset: str
    n: int
    labels: tuple[str, ...]
    systems: tuple[SystemResult, ...]
    gaps: tuple[Gap, ...]
    reference: str | None
    notes: tuple[str, ...] = ()
    #: the reference's training record (from its ``ragicl_finetune.json``) when it is a fine-tuned
    #: checkpoint: steps, examples seen, dev loss/accuracy, ``converged``, and ``note`` when not converged
    reference_training: Mapping | None = field(default=None, compare=False)

    def system(self, name: str) -> SystemResult:
        for s in self.systems:
            if s.name == name:
                return s
        raise KeyError(f"no system named {name!r}; systems are {[s.name for s in self.systems]}")

    def table(self) -> str:
        """A plain-text table: one row per system; gap columns are empty for the reference."""
        gaps = {g.system: g for g in self.gaps}
        with_gap = self.reference is not None  # no reference: no TV / agreement columns
        head = f"{'system':<22} {'accuracy [95% CI]':<24} {'macro-F1':>8}  "
        if with_gap:
            head += f"{'TV to ' + str(self.reference) + ' [95% CI]':<30} {'agree':>6} "
        head += f"{'s/query':>8}"
        lines = [f"{self.dataset}: {self.n} test examples, labels {list(self.labels)}", head,
                 "-" * len(head)]
        for s in self.systems:
            line = f"{s.name:<22} {s.accuracy!s:<24} {s.macro_f1:>8.3f}  "
            if with_gap:
                g = gaps.get(s.name)
                tv = str(g.tv) if g else (self.reference_label() if s.name == self.reference else "")
                agree = f"{g.agreement:.3f}" if g else ""
                line += f"{tv:<30} {agree:>6} "
            lines.append(line + f"{s.seconds_per_query:>8.3f}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def reference_label(self) -> str:
        """``(reference)``, or ``(reference, not converged)`` when its training record says so."""
        flagged = bool(self.reference_training and self.reference_training.get("note"))
        return "(reference, not converged)" if flagged else "(reference)"

    @classmethod
    def from_json(cls, data: Mapping) -> Report:
        """A report back from :meth:`to_json`'s dict (or the JSON ``ragicl eval --json`` wrote), for tables.

        The per-query arrays are not in the JSON, so ``probs`` and ``tv_per_query`` come back empty.

        >>> r = Report("toy", 2, ("a", "b"), (), (), None, notes=("sampled",))
        >>> Report.from_json(r.to_json()) == r
        True
        """
        empty = np.empty((0,))
        systems = tuple(SystemResult(s["name"], s["n"], Interval(**s["accuracy"]), s["macro_f1"], s["seconds"],
                                     empty) for s in data["systems"])
        gaps = tuple(Gap(g["system"], g["reference"], Interval(**g["tv"]), dict(g["tv_quantiles"]), g["agreement"],
                         empty, {float(e): Interval(**iv) for e, iv in g.get("exceed", {}).items()})
                     for g in data.get("gaps") or [])
        return cls(data["dataset"], data["n"], tuple(data["labels"]), systems, gaps, data.get("reference"),
                   tuple(data.get("notes") or ()), data.get("reference_training"))

    def to_json(self, path: str | os.PathLike | None = None) -> dict:
        """The report as a dict; also written atomically to ``path`` when given."""
        data = {"dataset": self.dataset, "n": self.n, "labels": list(self.labels),
                "reference": self.reference, "systems": [s.to_json() for s in self.systems],
                "gaps": [g.to_json() for g in self.gaps], "notes": list(self.notes),
                "reference_training": dict(self.reference_training) if self.reference_training else None}
        if path is not None:
            write_json_atomic(path, data)
        return data


def gap(probs: np.ndarray, reference_probs: np.ndarray, *, system: str = "system",
        reference: str = "reference", n_boot: int = 2000, seed: int = 0,
        epsilons: Sequence[float] = DEFAULT_EPSILONS) -> Gap:
    """TV gap between two systems' per-query label distributions (rows of ``probs``).

    Besides the mean TV (bootstrap interval) and its upper quantiles, ``exceed[ε]`` is the share of
    queries with TV > ε and its exact Clopper–Pearson interval, for each ε in ``epsilons`` (skipped, with
    a warning, when scipy is not installed).
    """
    probs = np.asarray(probs, dtype=np.float64)
    reference_probs = np.asarray(reference_probs, dtype=np.float64)
    if probs.shape != reference_probs.shape:
        raise ValueError(f"label distributions differ in shape: {system} {probs.shape} vs {reference} "
                         f"{reference_probs.shape}; both systems must score the same queries and labels.")
    tv = tv_distance(probs, reference_probs)
    quantiles = {f"q{int(q * 100)}": float(np.quantile(tv, q)) for q in (0.5, 0.9, 0.95)}
    quantiles["max"] = float(tv.max())
    agreement = float(np.mean(probs.argmax(1) == reference_probs.argmax(1)))
    try:
        exceed = {float(eps): exceedance(tv, float(eps)) for eps in epsilons}
    except MissingDependencyError as err:
        logger.warning("share of queries with TV > ε skipped: %s", err)
        exceed = {}
    return Gap(system, reference, bootstrap_ci(tv, n_boot=n_boot, seed=seed), quantiles, agreement, tv,
               exceed)


def _gold(test: Dataset, systems: Mapping[str, ProbabilisticClassifier]
          ) -> tuple[tuple[str, ...], np.ndarray, str | None]:
    """The systems' common labels, the gold label ids of ``test`` in them, and a note when the test set
    covers only some of them (``None`` when it covers all)."""
    named = {name: tuple(str(c) for c in getattr(sys_, "classes_", ())) for name, sys_ in systems.items()}
    first, labels = next(iter(named.items()))
    for name, classes in named.items():
        if classes != labels:
            raise ValueError(f"system {name!r} predicts labels {list(classes)} but system {first!r} predicts "
                             f"{list(labels)}; fit every system on the same index (same labels, same order).")
    lookup = {lab: i for i, lab in enumerate(labels)}
    gold = [ex.label for ex in test.examples]
    unknown = sorted({str(lab) for lab in gold if lab not in lookup})
    if unknown:
        raise DataError(f"the test set has label(s) {unknown} that the systems cannot predict (system "
                        f"{first!r} predicts labels {list(labels)}). Fix: evaluate on a test set of the same task, or fit the "
                        "systems on data that has those labels.")
    y = np.array([lookup[lab] for lab in gold], dtype=np.int64)
    missing = [lab for lab in labels if lab not in set(gold)]
    if not missing:
        return labels, y, None
    note = (f"the test set holds {len(labels) - len(missing)} of the {len(labels)} labels (none of "
            f"{missing}): the systems still choose among all {len(labels)}; accuracy is over the test "
            "examples, macro-F1 averages the labels in the test set or in a system's predictions (a missing "
            "label a system predicts counts with F1 0)")
    return labels, y, note


_TRAINING_KEYS = ("kind", "base", "mode", "objective", "steps", "batch_size", "epochs", "examples_seen",
                  "epochs_seen", "final_loss", "dev_loss", "dev_accuracy", "dev_examples", "converged",
                  "dev_loss_still_falling", "stop_reason", "fast", "convergence_rule", "seconds")


def reference_training(name: str, system: object) -> dict | None:
    """The training record of a system that scores with a fine-tuned checkpoint, or None.

    The checkpoint is found from the system's LM: a folder path given as ``lm`` (``ICLClassifier(
    "runs/ft", k=0)``) or a loaded :class:`~ragicl.lm.hf.TransformersLM` made from one. The record keeps
    the convergence fields of its ``ragicl_finetune.json`` and adds ``note`` (the report footnote) when
    the model did not converge.
    """
    lm = getattr(system, "lm", None)
    path = lm if isinstance(lm, (str, os.PathLike)) else getattr(lm, "model_name", None)
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_dir():
        return None
    meta = read_meta(path)
    if meta is None:
        return None
    record = {k: meta[k] for k in _TRAINING_KEYS if k in meta}
    record["path"] = str(path)
    record.setdefault("converged", False)  # checkpoints from before convergence was recorded: fixed steps
    note = training_note(name, meta)
    if note:
        record["note"] = note
    return record


def compare(test: Dataset, systems: Mapping[str, ProbabilisticClassifier], *,
            reference: str | None = "auto", n_boot: int = 2000, seed: int = 0,
            notes: Sequence[str] = (),
            on_result: Callable[[SystemResult], None] | None = None) -> Report:
    """Run every system on ``test`` and measure accuracy, macro-F1 and the TV gap to ``reference``.

    ``systems`` maps a display name to a fitted classifier; all must share the same ``classes_`` (same
    labels, same order), and every gold label of ``test`` must be one of them. A test set that covers only
    some of the systems' labels is fine: the systems still choose among all their labels, accuracy is
    over the test examples, and macro-F1 averages the per-label F1 over the labels that occur in the gold
    labels or in the system's predictions (a label the test set lacks counts only if the system predicts
    it, with F1 0); a note in the report names the labels the test set lacks. ``Report.labels`` are the
    systems' labels. ``reference="auto"`` (default) measures the gap to a system named ``"fine-tuned"`` when
    there is one and skips the gap columns otherwise; ``reference=None`` always skips them; a name must be
    one of ``systems``. When the reference scores with a fine-tuned checkpoint, its
    training record is attached (``Report.reference_training``) and a reference that did not converge
    is flagged in the notes (table, Markdown and JSON).

    ``on_result`` is called with each system's result as soon as it is scored (``ragicl eval
    --predictions`` saves it there). A system with a ``recorded_seconds`` attribute (a saved system of
    :mod:`ragicl.evaluation.predictions`) reports that time instead of the time of the call.
    """
    if len(test) == 0:
        raise DataError("the test set is empty; pass a dataset with at least one labeled example.")
    if test.task != "classification":
        raise DataError(f"compare() scores label distributions; got a {test.task!r} dataset. Use the "
                        "generation gap tools for generation tasks.")
    if not systems:
        raise ValueError("systems is empty; pass e.g. {'retrieved-16': clf, 'fine-tuned': ft}.")
    if reference == "auto":
        reference = "fine-tuned" if "fine-tuned" in systems else None
    if reference is not None and reference not in systems:
        raise ValueError(f"reference {reference!r} is not among the systems {list(systems)}; "
                         "pass reference=None to skip the gap, or add it.")
    labels, y, coverage = _gold(test, systems)
    if coverage is not None:
        logger.info("%s", coverage)
        notes = [*notes, coverage]
    results: list[SystemResult] = []
    for name, sys_ in systems.items():
        logger.info("evaluating %s on %d examples", name, len(test))
        t0 = time.perf_counter()
        probs = np.asarray(sys_.predict_proba(list(test.examples)), dtype=np.float64)
        seconds = time.perf_counter() - t0
        recorded = getattr(sys_, "recorded_seconds", None)
        if recorded is not None:
            seconds = float(recorded)
        pred = probs.argmax(1)
        correct = (pred == y).astype(np.float64)
        results.append(SystemResult(name, len(test), bootstrap_ci(correct, n_boot=n_boot, seed=seed),
                                    macro_f1(y, pred, len(labels)), seconds, probs))
        if on_result is not None:
            on_result(results[-1])
        logger.info("%s: accuracy %.3f in %.1f s", name, accuracy(y, pred), seconds)
    gaps: list[Gap] = []
    if reference is not None:
        ref = next(r for r in results if r.name == reference)
        gaps = [gap(r.probs, ref.probs, system=r.name, reference=reference, n_boot=n_boot, seed=seed)
                for r in results if r.name != reference]
    training = reference_training(reference, systems[reference]) if reference is not None else None
    if training and training.get("note"):
        logger.warning("%s", training["note"])
        notes = [*notes, training["note"]]
    notes = tuple(dict.fromkeys(notes))  # once each: a rerun that reuses saved rows brings their notes back
    return Report(test.name, len(test), labels, tuple(results), tuple(gaps), reference, notes, training)
