"""Gap curves: how far base + ICL stays from the fine-tuned model as one knob moves.

Three sweeps, each returning a frozen :class:`Curve` (x, TV-to-reference and accuracy with 95% intervals):

* :func:`gap_vs_k` — number of demonstrations k;
* :func:`gap_vs_budget` — the prompt's token budget (``max_prompt_tokens``);
* :func:`gap_vs_data_fraction` — the share of the training set in the index (powers of two, several
  seeds). The training set is embedded **once**; each sub-index is built from the stored vectors through
  :class:`PrecomputedEmbedder`, so no example is re-embedded.

The reference distributions (``reference_probs``, ``(n_test, L)``) come from the fine-tuned model scored
once on ``test`` (``ICLClassifier(lm=checkpoint, k=0).fit(train).predict_proba(test.examples)``), so every
point compares against the same numbers. :func:`fit_data_curve` fits ε(n) ≈ a·n^(−b) to the data curve
(:func:`ragicl.analysis.bounds.fit_power_law`), and :func:`plot_bounds_vs_measured` draws the paper's bounds
(:mod:`ragicl.analysis.bounds`, with a user constant) beside the measured curve. Plots need matplotlib
(``pip install 'ragicl[report]'``), imported lazily with the Agg backend.

>>> import numpy as np
>>> from ragicl.evaluation.stats import Interval
>>> iv = Interval(0.2, 0.1, 0.3, 0.95, "percentile-bootstrap")
>>> c = Curve(x=(1.0, 2.0), tv=(iv, iv), accuracy=(iv, iv), meta={"knob": "k"})
>>> c.to_json()["x"], len(c)
([1.0, 2.0], 2)
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import BudgetError, DataError, require
from ..analysis.bounds import (
    PowerLawFit,
    fit_power_law,
    fixed_context_classification_bound,
    fixed_context_classification_explicit,
    linear_classification_bound,
    linear_classification_explicit,
)
from ..index.core import ExampleIndex
from ..index.embed import Embedder, PrecomputedEmbedder, get_embedder
from ..stats import Interval, bootstrap_ci, tv_distance
from ..types import Dataset

logger = logging.getLogger(__name__)

__all__ = ["Curve", "fit_data_curve", "gap_vs_budget", "gap_vs_data_fraction",
           "gap_vs_k", "plot_bounds_vs_measured", "plot_curve"]

DEFAULT_FRACTIONS: tuple[float, ...] = tuple(2.0 ** -i for i in range(6, -1, -1))  # 1/64 … 1


@dataclass(frozen=True)
class Curve:
    """One measured curve: for each x, the mean TV to the reference and the accuracy, with intervals.

    ``meta`` holds the knob name (``"knob"``), axis label, per-point details (``n_index`` for the data
    curve, per-seed means, seconds per point) and the settings.
    """

    x: tuple[float, ...]
    tv: tuple[Interval, ...]
    accuracy: tuple[Interval, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    def to_json(self) -> dict:
        """A JSON-ready dict with every number."""
        return {"x": list(self.x), "tv": [iv.to_json() for iv in self.tv],
                "accuracy": [iv.to_json() for iv in self.accuracy], "meta": _jsonable(self.meta)}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# ----------------------------------------------------------------------------------------- measuring
def _check_reference(test: Dataset, reference_probs: np.ndarray) -> np.ndarray:
    ref = np.asarray(reference_probs, dtype=np.float64)
    if len(test) == 0:
        raise DataError("the test set is empty; curves need at least one labeled query.")
    if ref.shape != (len(test), len(test.labels)):
        raise ValueError(f"reference_probs has shape {ref.shape}; expected (len(test), n_labels) = "
                         f"({len(test)}, {len(test.labels)}), the fine-tuned model's label distributions "
                         "on the same test examples in the same label order.")
    return ref


def _measure(clf: Any, data: Any, test: Dataset, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit ``clf`` on ``data``, score ``test``: per-query TV to ``ref``, per-query correctness, seconds."""
    clf.fit(data)
    if tuple(clf.classes_) != tuple(test.labels):
        raise ValueError(f"classifier labels {list(clf.classes_)} differ from the test labels {list(test.labels)}.")
    t0 = time.perf_counter()
    probs = np.asarray(clf.predict_proba(list(test.examples)), dtype=np.float64)
    seconds = time.perf_counter() - t0
    tv = np.atleast_1d(tv_distance(probs, ref))
    correct = (probs.argmax(1) == test.label_array()).astype(np.float64)
    return tv, correct, seconds


def _progress(iterable: Any, total: int, desc: str, show: bool | None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=None if show is None else not show)


def _sweep(knob: str, xs: Sequence[float], data: Any, test: Dataset, reference_probs: np.ndarray,
           make_classifier: Callable[[Any], Any], *, n_boot: int, seed: int, show_progress: bool | None,
           label: str, extra_meta: Mapping[str, Any] | None = None) -> Curve:
    ref = _check_reference(test, reference_probs)
    if not xs:
        raise ValueError(f"give at least one {knob} value.")
    tvs, accs, seconds, per_query = [], [], [], []
    for x in _progress(xs, len(xs), f"gap vs {knob}", show_progress):
        tv, correct, sec = _measure(make_classifier(x), data, test, ref)
        tvs.append(bootstrap_ci(tv, n_boot=n_boot, seed=seed))
        accs.append(bootstrap_ci(correct, n_boot=n_boot, seed=seed))
        seconds.append(sec)
        per_query.append(tv.tolist())
        logger.info("%s=%s: TV %s, accuracy %s (%.1f s)", knob, x, tvs[-1], accs[-1], sec)
    return Curve(tuple(float(x) for x in xs), tuple(tvs), tuple(accs),
                 {"knob": knob, "xlabel": label, "n_test": len(test), "seconds": seconds,
                  "tv_per_query": per_query, **(extra_meta or {})})


def gap_vs_k(index: ExampleIndex, test: Dataset, reference_probs: np.ndarray, ks: Sequence[int],
             make_classifier: Callable[[int], Any], *, n_boot: int = 1000, seed: int = 0,
             show_progress: bool | None = None) -> Curve:
    """TV to the reference and accuracy for each number of shots in ``ks``.

    ``make_classifier(k)`` returns an unfitted classifier (e.g. ``lambda k: ICLClassifier(lm, k=k)`` with
    a loaded ``TransformersLM`` so the model is loaded once); it is fitted on ``index``.
    """
    return _sweep("k", [int(k) for k in ks], index, test, reference_probs, make_classifier, n_boot=n_boot,
                  seed=seed, show_progress=show_progress, label="shots k")


def gap_vs_budget(index: ExampleIndex, test: Dataset, reference_probs: np.ndarray, budgets: Sequence[int],
                  make_classifier: Callable[[int], Any], *, n_boot: int = 1000, seed: int = 0,
                  show_progress: bool | None = None, too_small: str = "error") -> Curve:
    """TV and accuracy for each prompt budget (tokens), e.g. ``(256, 512, 1024, 2048)``.

    ``make_classifier(budget)`` returns e.g. ``ICLClassifier(lm, k=64, max_prompt_tokens=budget)``: a
    large k so the budget, not k, decides how many demonstrations fit.

    Before any scoring, every test query is packed alone under each budget: a budget below what the longest
    query needs by itself could not score that query at all. ``too_small="error"`` (default) raises
    :class:`~ragicl.BudgetError` naming those budgets and the smallest usable one; ``"skip"`` drops them
    with a warning and records them in ``meta["skipped_budgets"]`` (budget → tokens needed).
    """
    if too_small not in ("error", "skip"):
        raise ValueError(f"too_small must be 'error' or 'skip', got {too_small!r}.")
    xs = [int(b) for b in budgets]
    needed = _query_alone_tokens(index, test, make_classifier, xs)
    bad = {b: needed for b in xs if needed is not None and b < needed}
    if bad:
        msg = (f"prompt budgets {sorted(bad)} are below the {needed} tokens the longest test query needs with no "
               f"demonstration, so that query could not be scored under them. Fix: use budgets ≥ {needed}, or "
               f"too_small='skip' to leave them out of the curve.")
        if too_small == "error" or len(bad) == len(xs):
            raise BudgetError(msg, needed=needed, budget=min(bad))
        logger.warning("%s Skipping them.", msg)
        xs = [b for b in xs if b not in bad]
    extra = {"skipped_budgets": {int(b): int(n) for b, n in sorted(bad.items())}} if bad else None
    return _sweep("budget", xs, index, test, reference_probs, make_classifier, n_boot=n_boot, seed=seed,
                  show_progress=show_progress, label="prompt budget (tokens)", extra_meta=extra)


def _query_alone_tokens(index: ExampleIndex, test: Dataset, make_classifier: Callable[[int], Any],
                        budgets: Sequence[int]) -> int | None:
    """The most prompt tokens any test query needs with no demonstration (its packer's own count), or
    ``None`` when the classifier exposes no packer. Packs under the largest budget, so nothing overflows
    unless even that one is too small."""
    if not budgets:
        return None
    clf = make_classifier(max(budgets)).fit(index)
    packer = getattr(clf, "packer_", None)
    if packer is None:
        return None
    worst = 0
    for ex in test.examples:
        try:
            worst = max(worst, len(packer.pack(ex, []).token_ids))
        except BudgetError as exc:
            worst = max(worst, exc.needed if exc.needed is not None else max(budgets) + 1)
    return worst


def _text(ex: Any, fields: Sequence[str]) -> str:
    return "\n".join(str(ex.inputs[f]) for f in fields)


def gap_vs_data_fraction(train: Dataset | ExampleIndex, test: Dataset, reference_probs: np.ndarray, *,
                         make_classifier: Callable[[float], Any],
                         fractions: Sequence[float] = DEFAULT_FRACTIONS, seeds: Sequence[int] = (0, 1, 2),
                         embedder: str | Embedder = "all-MiniLM-L6-v2", n_boot: int = 1000,
                         show_progress: bool | None = None) -> Curve:
    """TV and accuracy when only a random ``fraction`` of ``train`` is indexed, averaged over ``seeds``.

    ``train`` is a dataset (embedded once with ``embedder``) or an :class:`ExampleIndex` (its stored
    vectors are reused, nothing is embedded but the test queries). For each fraction f and seed, a
    seeded random subset of ``max(1, round(f·N))`` examples is indexed from the stored vectors and
    ``make_classifier(f)`` is fitted on it. Per point, the interval is a bootstrap over test queries of
    the per-query TV (resp. correctness) averaged over seeds; ``meta`` keeps per-seed means, their
    standard deviation and ``n_index`` (the sub-index sizes, the n of :func:`fit_data_curve`).
    """
    ref = _check_reference(test, reference_probs)
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1]; received {list(fractions)}.")
    if not seeds:
        raise ValueError("give at least one seed.")
    if isinstance(train, ExampleIndex):
        dataset, base = train.dataset, train.embedder
        fields = tuple(dataset.input_fields)
        vectors = np.asarray(train.embeddings, dtype=np.float32)
    else:
        dataset, base = train, get_embedder(embedder)
        fields = tuple(dataset.input_fields)
        logger.info("embedding %d training examples once", len(dataset))
        vectors = np.asarray(base.encode([_text(ex, fields) for ex in dataset.examples]), dtype=np.float32)
    texts = [_text(ex, fields) for ex in dataset.examples]
    q_texts = [_text(ex, fields) for ex in test.examples]
    q_vectors = np.asarray(base.encode(q_texts), dtype=np.float32)
    pre = PrecomputedEmbedder(base, texts + q_texts, np.concatenate([vectors, q_vectors]))
    n_total = len(dataset)
    tvs, accs, n_index, seed_tv, seed_acc, seed_sd = [], [], [], [], [], []
    jobs = [(f, s) for f in fractions for s in seeds]
    bar = _progress(jobs, len(jobs), "gap vs data fraction", show_progress)
    results: dict[tuple[float, int], tuple[np.ndarray, np.ndarray]] = {}
    for f, s in bar:
        size = max(1, round(f * n_total))
        rng = np.random.default_rng(s)
        positions = np.sort(rng.choice(n_total, size=size, replace=False)) if size < n_total else np.arange(n_total)
        sub = ExampleIndex.build(dataset.subset(positions.tolist()), embedder=pre, device="cpu",
                                 show_progress=False)
        tv, correct, _ = _measure(make_classifier(f), sub, test, ref)
        results[(f, s)] = (tv, correct)
        logger.info("fraction %.4g (n=%d), seed %d: TV %.3f, accuracy %.3f", f, size, s, tv.mean(), correct.mean())
    for f in fractions:
        tv_m = np.stack([results[(f, s)][0] for s in seeds])
        acc_m = np.stack([results[(f, s)][1] for s in seeds])
        tvs.append(bootstrap_ci(tv_m.mean(0), n_boot=n_boot, seed=0))
        accs.append(bootstrap_ci(acc_m.mean(0), n_boot=n_boot, seed=0))
        n_index.append(max(1, round(f * n_total)))
        seed_tv.append(tv_m.mean(1).tolist())
        seed_acc.append(acc_m.mean(1).tolist())
        seed_sd.append(float(tv_m.mean(1).std(ddof=1)) if len(seeds) > 1 else math.nan)
    return Curve(tuple(float(f) for f in fractions), tuple(tvs), tuple(accs),
                 {"knob": "data_fraction", "xlabel": "fraction of the training set indexed",
                  "n_index": n_index, "n_train": n_total, "seeds": list(seeds), "tv_per_seed": seed_tv,
                  "accuracy_per_seed": seed_acc, "tv_seed_sd": seed_sd, "n_test": len(test),
                  "embedder": base.name, "embedded_once": True})


def fit_data_curve(curve: Curve) -> PowerLawFit:
    """Fit ε(n) ≈ a·n^(−b) to a :func:`gap_vs_data_fraction` curve (n = indexed examples, ε = mean TV)."""
    if "n_index" not in curve.meta:
        raise ValueError("fit_data_curve needs a gap_vs_data_fraction curve (meta['n_index']).")
    return fit_power_law(list(curve.meta["n_index"]), [iv.estimate for iv in curve.tv])


# -------------------------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    matplotlib = require("matplotlib", "report", "matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errorbar(ax: Any, x: Sequence[float], ivs: Sequence[Interval], **kw: Any) -> None:
    est = np.array([iv.estimate for iv in ivs])
    err = np.array([[iv.estimate - iv.low for iv in ivs], [iv.high - iv.estimate for iv in ivs]])
    ax.errorbar(x, est, yerr=np.clip(err, 0, None), marker="o", capsize=3, **kw)


def plot_curve(curve: Curve, path: str | os.PathLike, *, title: str | None = None,
               fit: PowerLawFit | None = None) -> Path:
    """Save a two-panel PNG: TV to the reference (left) and accuracy (right) against x, with 95% intervals.

    Data-fraction curves are drawn against the number of indexed examples on log axes, with ``fit``
    overlaid when given.
    """
    plt = _pyplot()
    is_data = "n_index" in curve.meta
    x = list(curve.meta["n_index"]) if is_data else list(curve.x)
    fig, (ax_tv, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    _errorbar(ax_tv, x, curve.tv, label="measured (95% CI)")
    _errorbar(ax_acc, x, curve.accuracy, color="tab:green")
    if fit is not None and is_data:
        grid = np.geomspace(min(x), max(x), 50)
        ax_tv.plot(grid, fit.predict(grid), "--", color="tab:red",
                   label=f"fit {fit.a:.3g}·n^({-fit.b:+.3f}) (R²={fit.r2:.2f})")
    xlabel = "indexed examples n" if is_data else curve.meta.get("xlabel", "x")
    for ax, ylabel in ((ax_tv, "mean TV to fine-tuned"), (ax_acc, "accuracy")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if is_data or curve.meta.get("knob") == "budget":
            ax.set_xscale("log", base=2)
    if is_data:
        ax_tv.set_yscale("log")
    ax_tv.legend(fontsize=8)
    fig.suptitle(title or f"gap vs {curve.meta.get('knob', 'x')}")
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bounds_vs_measured(curve: Curve, path: str | os.PathLike, *, fit: PowerLawFit | None = None,
                            constant: float = 1.0, delta: float = 0.05, n_labels: int = 2,
                            dim: int | None = None, title: str | None = None) -> Path:
    """Save a log-log PNG of the measured ε(n) (data curve) beside the paper's sample-size bounds.

    Each bound gives the n needed for error ε; it is drawn as the ε it guarantees at n (the inverse,
    over an ε grid). Drawn: the paper's O-forms with the user ``constant`` —
    fixed-context classification ``C·ln(1/δ)/ε²`` and, with ``dim``, linear classification ``C·d/ε`` —
    and the explicit finite-sample versions (:func:`~ragicl.analysis.bounds.fixed_context_classification_explicit`
    with ``n_labels``, :func:`~ragicl.analysis.bounds.linear_classification_explicit`). The bounds concern
    sample sizes for approximating a distribution / learning a halfspace, not this pipeline's exact
    setting: read the figure as orders of magnitude, not as a test.
    """
    if "n_index" not in curve.meta:
        raise ValueError("plot_bounds_vs_measured needs a gap_vs_data_fraction curve (meta['n_index']).")
    plt = _pyplot()
    n = np.asarray(curve.meta["n_index"], dtype=float)
    eps_grid = np.geomspace(1e-3, 0.999, 200)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    _errorbar(ax, n, curve.tv, label="measured mean TV (95% CI)", color="black")
    if fit is not None:
        grid = np.geomspace(n.min(), n.max() * 64, 50)
        ax.plot(grid, fit.predict(grid), "--", color="gray", label=f"fit {fit.a:.3g}·n^({-fit.b:+.3f})")
    bounds = [(f"paper O-form C·ln(1/δ)/ε² (C={constant:g})",
               fixed_context_classification_bound(eps_grid, delta, constant)),
              (f"explicit fixed-context ({n_labels} labels)",
               fixed_context_classification_explicit(eps_grid, delta, n_labels))]
    if dim is not None:
        bounds += [(f"paper O-form C·d/ε (d={dim}, C={constant:g})",
                    linear_classification_bound(eps_grid, dim, constant)),
                   (f"explicit linear (VC, d={dim})", linear_classification_explicit(eps_grid, delta, dim))]
    for name, needed in bounds:
        ax.plot(needed, eps_grid, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(max(1.0, n.min() / 4), max(n.max() * 64, 1e4))
    ax.set_ylim(1e-3, 1.0)
    ax.set_xlabel("n (indexed examples / samples)")
    ax.set_ylabel("ε (TV)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(title or f"measured gap vs bounds (δ={delta:g})")
    fig.tight_layout()
    return _save(fig, plt, path)
