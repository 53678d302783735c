"""The numbers the HTML report draws that a :class:`~ragicl.evaluation.compare.Report` does not hold itself.

* :func:`distributions` — each system's per-query label distributions (from the report, or from a
  :class:`~ragicl.evaluation.predictions.Predictions` record when the report came back from JSON) and the
  gold label ids when known;
* :func:`gap_closed` — the share of the zero-shot → reference gap a system closes, in accuracy and in TV,
  with paired percentile-bootstrap 95% intervals when the per-query numbers are there;
* :func:`confusion` — how one system's labels spread over the reference's (or the gold labels), per label;
* :func:`tune_dict`, :func:`curve_dicts` — a tuner result / curves in their JSON form, whatever was passed.

>>> import numpy as np
>>> share_interval(np.array([[1., 0, 1], [0, 1, 1]]).T, lambda m: m[:, 0] / m[:, 1], n_boot=50)[0]
1.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .compare import Report

ZERO_SHOT = "zero-shot"
BEST = "ragicl best"


@dataclass(frozen=True)
class Share:
    """A share of the gap closed with its interval (``low``/``high`` None when it cannot be bounded)."""

    estimate: float
    low: float | None
    high: float | None


@dataclass(frozen=True)
class GapClosed:
    """Share of the zero-shot → reference gap closed by one system: in accuracy, and in mean TV."""

    system: str
    accuracy: Share | None
    tv: Share | None


@dataclass(frozen=True)
class Confusion:
    """``matrix[i, j]``: queries where ``against`` says label i and ``system`` says label j."""

    system: str
    against: str  # the reference's name, or "gold"
    labels: tuple[str, ...]
    matrix: np.ndarray
    #: with gold labels: (label, support, recall of system, recall of the reference or None)
    per_label: tuple[tuple[str, int, float, float | None], ...] = ()


def distributions(report: Report, predictions: Any = None, gold: Sequence[str] | None = None
                  ) -> tuple[dict[str, np.ndarray], np.ndarray | None, list[str]]:
    """Per-system ``(n, L)`` distributions, gold label ids (or None) and notes on what was not usable."""
    n, labels, notes = report.n, tuple(report.labels), []
    probs = {s.name: np.asarray(s.probs, dtype=np.float64) for s in report.systems
             if np.ndim(s.probs) == 2 and np.shape(s.probs) == (n, len(labels))}
    if predictions is not None:
        p_labels, p_ids = tuple(getattr(predictions, "labels", ())), tuple(getattr(predictions, "ids", ()))
        if p_labels != labels or len(p_ids) != n:
            notes.append(f"the predictions given ({len(p_ids)} queries, labels {list(p_labels)[:6]}…) are not "
                         f"this report's ({n} queries, {len(labels)} labels): not used")
        else:
            for name, arr in getattr(predictions, "probs", {}).items():
                if name not in probs and np.shape(arr) == (n, len(labels)):
                    probs[name] = np.asarray(arr, dtype=np.float64)
            if gold is None:
                gold = getattr(predictions, "gold", None)
    gold_ids = None
    if gold is not None:
        lookup = {lab: i for i, lab in enumerate(labels)}
        gold = [str(g) for g in gold]
        if len(gold) != n or any(g not in lookup for g in gold):
            notes.append(f"the gold labels given ({len(gold)}) do not match this report's {n} queries and "
                         "labels: per-label recall and the gap-closed intervals in accuracy are left out")
        else:
            gold_ids = np.array([lookup[g] for g in gold], dtype=np.int64)
    return probs, gold_ids, notes


def share_interval(columns: np.ndarray, share: Callable[[np.ndarray], np.ndarray], *, n_boot: int = 2000,
                   seed: int = 0, chunk: int = 250) -> tuple[float, float | None, float | None]:
    """``share`` of the column means of ``columns`` (``(n, m)`` per-query values), with a paired percentile
    bootstrap 95% interval over queries; no interval (None) when over 2.5% of resamples leave it undefined
    (a denominator that is not clearly positive)."""
    columns = np.asarray(columns, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = float(share(columns.mean(0, keepdims=True))[0])
    rng = np.random.default_rng(seed)
    n = len(columns)
    draws = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        with np.errstate(divide="ignore", invalid="ignore"):
            draws.append(share(columns[idx].mean(1)))
    values = np.concatenate(draws)
    ok = np.isfinite(values)
    if ok.mean() < 0.975:
        return est, None, None
    low, high = np.quantile(values[ok], [0.025, 0.975])
    return est, float(low), float(high)


def _acc_share(m: np.ndarray) -> np.ndarray:  # columns: system, zero-shot, reference correctness
    den = m[:, 2] - m[:, 1]
    return np.where(den > 0, (m[:, 0] - m[:, 1]) / np.where(den > 0, den, 1.0), np.nan)


def _tv_share(m: np.ndarray) -> np.ndarray:  # columns: system's and zero-shot's TV to the reference
    return np.where(m[:, 1] > 0, 1.0 - m[:, 0] / np.where(m[:, 1] > 0, m[:, 1], 1.0), np.nan)


def gap_closed(report: Report, probs: Mapping[str, np.ndarray], gold_ids: np.ndarray | None, *,
               n_boot: int = 2000, seed: int = 0) -> tuple[list[GapClosed], str | None]:
    """For every system but zero-shot and the reference: ``(acc − acc_zero) / (acc_ref − acc_zero)`` and
    ``1 − TV / TV_zero`` (TV to the reference). Returns the rows and a note when they cannot be computed."""
    ref = report.reference
    names = [s.name for s in report.systems]
    if ref is None:
        return [], None
    if ZERO_SHOT not in names:
        return [], f"no {ZERO_SHOT!r} system in this report: the gap it measures starts there"
    by = {s.name: s for s in report.systems}
    gaps = {g.system: g for g in report.gaps}
    a0, ar = by[ZERO_SHOT].accuracy.estimate, by[ref].accuracy.estimate
    tv0 = gaps[ZERO_SHOT].tv.estimate if ZERO_SHOT in gaps else float("nan")
    note = None
    if not ar > a0:
        note = (f"{ref} ({ar:.3f}) is not more accurate than {ZERO_SHOT} ({a0:.3f}) on these queries: there is "
                "no accuracy gap to close")
    per_query = gold_ids is not None and all(k in probs for k in (ZERO_SHOT, ref))
    tv_zero_q = _tv_per_query(report, probs, ZERO_SHOT)
    rows = []
    for name in names:
        if name in (ZERO_SHOT, ref):
            continue
        acc = None
        if ar > a0:
            est = (by[name].accuracy.estimate - a0) / (ar - a0)
            acc = Share(est, None, None)
            if per_query and name in probs:
                cols = np.stack([(probs[k].argmax(1) == gold_ids).astype(np.float64)
                                 for k in (name, ZERO_SHOT, ref)], 1)
                acc = Share(*share_interval(cols, _acc_share, n_boot=n_boot, seed=seed))
        tv = None
        if name in gaps and tv0 > 0:
            tv = Share(1.0 - gaps[name].tv.estimate / tv0, None, None)
            tv_q = _tv_per_query(report, probs, name)
            if tv_q is not None and tv_zero_q is not None:
                tv = Share(*share_interval(np.stack([tv_q, tv_zero_q], 1), _tv_share, n_boot=n_boot, seed=seed))
        rows.append(GapClosed(name, acc, tv))
    return rows, note


def _tv_per_query(report: Report, probs: Mapping[str, np.ndarray], name: str) -> np.ndarray | None:
    for g in report.gaps:
        if g.system == name and np.ndim(g.tv_per_query) == 1 and len(g.tv_per_query) == report.n:
            return np.asarray(g.tv_per_query, dtype=np.float64)
    if name in probs and report.reference in probs:
        return 0.5 * np.abs(probs[name] - probs[report.reference]).sum(1)
    return None


def compared_system(report: Report, probs: Mapping[str, np.ndarray]) -> str | None:
    """The system the confusion shows: "ragicl best" when its distributions are known, else the most
    accurate other system that is not the reference (None when no distributions are known)."""
    if BEST in probs:
        return BEST
    others = [s for s in report.systems if s.name in probs and s.name != report.reference]
    return max(others, key=lambda s: s.accuracy.estimate).name if others else None


def confusion(report: Report, probs: Mapping[str, np.ndarray], gold_ids: np.ndarray | None) -> Confusion | None:
    """The labels of :func:`compared_system` against the reference's (or the gold labels without a
    reference), with per-label recall of both when the gold labels are known; None when not computable."""
    system = compared_system(report, probs)
    if system is None:
        return None
    against = report.reference if report.reference in probs else None
    if against is None and gold_ids is None:
        return None
    n_labels = len(report.labels)
    sys_pred = probs[system].argmax(1)
    rows = probs[against].argmax(1) if against is not None else gold_ids
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(matrix, (rows, sys_pred), 1)
    per_label: list[tuple[str, int, float, float | None]] = []
    if gold_ids is not None:
        ref_pred = probs[against].argmax(1) if against is not None else None
        for i, lab in enumerate(report.labels):
            mask = gold_ids == i
            support = int(mask.sum())
            if support == 0:
                continue
            rec_ref = float((ref_pred[mask] == i).mean()) if ref_pred is not None else None
            per_label.append((lab, support, float((sys_pred[mask] == i).mean()), rec_ref))
    return Confusion(system, against or "gold", tuple(report.labels), matrix, tuple(per_label))


def focus_labels(matrix: np.ndarray, limit: int) -> list[int]:
    """All label ids when there are at most ``limit``; else up to ``limit`` labels taken pair by pair from the
    most frequent disagreements (both labels of a pair, so the pair shows in the matrix), then by how many
    disagreements a label is in (its row and column); in label order."""
    n = len(matrix)
    if n <= limit:
        return list(range(n))
    chosen: dict[int, None] = {}
    for i, j, _ in top_pairs(matrix, n * n):
        if len(chosen) + (i not in chosen) + (j not in chosen) > limit:
            break
        chosen.update({i: None, j: None})
    off = matrix - np.diag(np.diag(matrix))
    score = off.sum(0) + off.sum(1)
    for i in sorted(range(n), key=lambda i: (-score[i], -matrix[i].sum(), i)):
        if len(chosen) >= limit:
            break
        chosen.setdefault(i, None)
    return sorted(chosen)


def top_pairs(matrix: np.ndarray, limit: int) -> list[tuple[int, int, int]]:
    """The ``limit`` most frequent (row label, column label, count) disagreements, most frequent first."""
    off = matrix - np.diag(np.diag(matrix))
    pairs = [(int(i), int(j), int(off[i, j])) for i, j in zip(*np.nonzero(off))]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))[:limit]


def tune_dict(tune: Any) -> dict[str, Any] | None:
    """A tuner result as :meth:`TuneResult.to_json`'s dict (a ``TuneResult``, that dict, or None)."""
    if tune is None:
        return None
    if hasattr(tune, "to_json"):
        tune = tune.to_json()
    if not isinstance(tune, Mapping):
        raise TypeError(f"tune must be a TuneResult or its to_json() dict; received {type(tune).__name__}. "
                        "Pass FusionTuner(...).fit(index).result_, or the JSON `ragicl tune --json` wrote.")
    return dict(tune)


def curve_dicts(curves: Any) -> list[tuple[str, dict[str, Any]]]:
    """``(title, Curve.to_json() dict)`` pairs from a Curve, its dict, a sequence of them or a mapping
    title → curve."""
    if curves is None:
        return []

    def one(c: Any) -> dict[str, Any]:
        d = c.to_json() if hasattr(c, "to_json") else c
        if not isinstance(d, Mapping) or not {"x", "tv", "accuracy"} <= set(d):
            raise TypeError(f"a curve must be a ragicl Curve or its to_json() dict (keys x, tv, accuracy); "
                            f"received {type(c).__name__}.")
        return dict(d)

    if hasattr(curves, "to_json") or (isinstance(curves, Mapping) and "x" in curves):
        curves = [curves]
    items = curves.items() if isinstance(curves, Mapping) else [(None, c) for c in curves]
    out = []
    for title, c in items:
        d = one(c)
        knob = (d.get("meta") or {}).get("knob", "x")
        out.append((str(title) if title is not None else f"gap vs {str(knob).replace('_', ' ')}", d))
    return out
