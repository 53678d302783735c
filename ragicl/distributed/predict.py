"""Batch ICL inference on Ray Data: ``map_batches`` over the test set with actors that load the LM once.

Each actor opens the index from shared storage (a saved :class:`~ragicl.ExampleIndex` folder or a sharded
one), fits an :class:`~ragicl.ICLClassifier` (loading the LM once, on its GPU when the cluster has GPUs)
and scores batches of queries; rows carry their input position, so the result is in input order whatever
order the actors finish in. :class:`DistributedClassifier` wraps it as a classifier that
:func:`ragicl.compare` (and ``ragicl eval --ray``) can run like a local one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import DataError, check_positive_int
from ..models import DEFAULT_LM
from ..types import Dataset, Example
from . import _ray

logger = logging.getLogger(__name__)


def load_index(path: str | os.PathLike, **kwargs: Any) -> Any:
    """A saved index folder of either layout: ``ExampleIndex.load``, which opens a sharded folder with
    :func:`load_sharded` (the layout is registered when :mod:`ragicl.distributed.sharded` is imported)."""
    from ..index.core import ExampleIndex

    return ExampleIndex.load(path, **kwargs)


#: what an actor runs: "icl" (:class:`~ragicl.ICLClassifier`) or "fusion" (:class:`~ragicl.FusionClassifier`:
#: the actors return its unmixed parts and the driver mixes them over the whole test set, so a batch
#: calibration sees every query, as in one process)
ESTIMATORS = ("icl", "fusion")


class _Predictor:
    """Ray Data actor: one index and one LM per actor, then label probabilities batch after batch."""

    def __init__(self, index_path: str, lm: Any, classifier_kwargs: dict, device: str,
                 estimator: str = "icl") -> None:
        from ..estimators.classifier import ICLClassifier
        from ..estimators.fusion import FusionClassifier

        index = load_index(index_path, device=device)
        cls = FusionClassifier if estimator == "fusion" else ICLClassifier
        self.estimator = estimator
        self.clf = cls(lm, device=device, **classifier_kwargs).fit(index)

    def __call__(self, batch: dict) -> dict:
        from .._exceptions import RagiclError

        examples = [Example.from_json(json.loads(s)) for s in batch["example"]]
        rows = np.asarray(batch["row"], np.int64)
        n, n_labels = len(rows), len(self.clf.classes_)
        try:
            if self.estimator == "fusion":  # unmixed, as predict_proba collects them (no LM for a vote alone)
                parts = self.clf.parts_for_mix(examples)
                out = {"lm_logp": parts.lm_logp, "neighbor_labels": parts.neighbor_labels,
                       "neighbor_scores": parts.neighbor_scores, "candidates": parts.candidates}
            else:
                out = {"probs": np.asarray(self.clf.predict_proba(examples), np.float64)}
            error = ""
        except RagiclError as err:  # returned as data (e.g. a query over the token budget); raised by the driver
            out, error = {"probs": np.full((n, n_labels), np.nan)}, _ray.error_text(err)
        return {"row": rows, **out, "error": np.asarray([error] * n, dtype=object)}


@dataclass(frozen=True)
class BatchPrediction:
    """Predictions for a test set, in its order: ``probs[i]`` is over ``classes`` for query ``i``."""

    classes: tuple[str, ...]
    labels: tuple[str, ...]
    probs: np.ndarray


def _queries(test: Dataset | Sequence[Example | Mapping | str] | str | os.PathLike,
             input_fields: Sequence[str]) -> list[Example]:
    from ..data import read_dataset
    from ..estimators.classifier import as_examples

    if isinstance(test, (str, os.PathLike)):
        test = read_dataset(test, input_fields=list(input_fields))
    if isinstance(test, Dataset):
        return list(test.examples)
    return as_examples(list(test), input_fields)


def predict_distributed(index: str | os.PathLike, test: Any, *, lm: Any = DEFAULT_LM,
                        address: str | None = "auto", workers: int | None = None,
                        num_gpus: int | None = None, batch_size: int = 32, estimator: str = "icl",
                        **classifier_kwargs: Any) -> BatchPrediction:
    """Run an :class:`~ragicl.ICLClassifier` (or a :class:`~ragicl.FusionClassifier`) over ``test`` on Ray.

    Args:
        index: path of a saved index (flat or sharded) on storage every node sees.
        test: a :class:`Dataset`, a data file path (read with :func:`ragicl.read_dataset`), or a list of
            queries (str, mappings of input fields, Examples).
        lm: the LM name/path each actor loads (once), or a ``LanguageModel`` object (shipped pickled).
        workers: actors; default one per GPU, else half the CPUs (at least 1).
        num_gpus: GPUs per actor; default 1 when the cluster has GPUs.
        batch_size: queries per actor call.
        estimator: ``"icl"`` or ``"fusion"``; for ``"fusion"`` the actors return each query's unmixed parts
            (LM label log-probabilities over its candidates, neighbour labels and scores) and the driver
            mixes them over the whole test set with :func:`ragicl.estimators.fusion.combine`.
        classifier_kwargs: arguments of that classifier (``k``, ``template``, ``max_prompt_tokens``,
            ``selection``, ``seed``, for fusion also ``knn_k``, ``knn_weight``, ``calibration``, ``prior``, ...;
            ``batch_size`` is ``lm_batch_size`` here).

    Returns the labels and probabilities in the order of ``test`` (equal to a local ``predict_proba`` up to
    the LM's batch-composition noise, ~1e-4).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}.")
    ray = _ray.ray_module()
    batch_size = check_positive_int("batch_size", batch_size)
    index = Path(index)
    from .sharded import is_sharded, read_manifest

    manifest = read_manifest(index) if is_sharded(index) else _flat_manifest(index)
    examples = _queries(test, manifest.get("input_fields") or [])
    if not examples:
        raise DataError("the test set is empty; pass at least one query.")
    ray = _ray.connect(address)
    gpus = _ray.cluster_gpus(ray)
    num_gpus = (1 if gpus else 0) if num_gpus is None else num_gpus
    cpus = float(ray.cluster_resources().get("CPU", 1))
    workers = workers or (max(1, gpus // max(num_gpus, 1)) if num_gpus else max(1, int(cpus) // 2))
    workers = min(workers, -(-len(examples) // batch_size))
    kwargs = dict(classifier_kwargs)
    if "lm_batch_size" in kwargs:
        kwargs["batch_size"] = kwargs.pop("lm_batch_size")
    items = [{"row": i, "example": json.dumps(ex.to_json(), ensure_ascii=False)}
             for i, ex in enumerate(examples)]
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 4 * workers)))
    ds = ds.map_batches(_Predictor, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers),
                        num_cpus=1.0 if cpus >= workers + 1 else max(0.1, 0.9 * cpus / workers),
                        num_gpus=num_gpus or None,
                        fn_constructor_kwargs={"index_path": str(index.resolve()), "lm": lm,
                                               "classifier_kwargs": kwargs, "estimator": estimator,
                                               "device": "cuda" if num_gpus else "cpu"})
    keys = ("lm_logp", "neighbor_labels", "neighbor_scores", "candidates") if estimator == "fusion" else ("probs",)
    rows: list[np.ndarray] = []
    columns: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for error, row in zip(batch["error"], batch["row"]):
            if error:
                _ray.raise_error_text(str(error), f"query {int(row)}")
        rows.append(batch["row"])
        for key in keys:
            columns[key].append(batch[key])
    order = np.concatenate(rows)
    if len(order) != len(examples) or not np.array_equal(np.sort(order), np.arange(len(examples))):
        raise RuntimeError(f"distributed predict returned {len(order)} rows for {len(examples)} queries.")
    at = np.argsort(order, kind="stable")
    got = {key: np.concatenate(parts)[at] for key, parts in columns.items()}
    classes = tuple(manifest["labels"])
    out = _mix(got, len(classes), kwargs) if estimator == "fusion" else got["probs"]
    return BatchPrediction(classes, tuple(classes[i] for i in out.argmax(1)), out)


def _mix(got: dict[str, np.ndarray], n_labels: int, kwargs: dict) -> np.ndarray:
    """The fused distribution from the actors' parts, with the classifier's own mixing defaults."""
    from ..estimators.fusion import FusionClassifier, FusionParts

    clf = FusionClassifier(**{k: v for k, v in kwargs.items() if k in FusionClassifier().get_params()})
    parts = FusionParts(got["lm_logp"], got["neighbor_labels"], got["neighbor_scores"], n_labels,
                        got["candidates"].astype(bool))
    return clf.mix(parts)


def _flat_manifest(path: Path) -> dict:
    from ..index.core import ExampleIndex

    return ExampleIndex.load(path).manifest


class DistributedClassifier:
    """A classifier whose ``predict_proba`` runs :func:`predict_distributed` (for :func:`ragicl.compare`).

    >>> clf = DistributedClassifier("indexes/sst2", k=16).fit()   # doctest: +SKIP
    >>> clf.predict(["a gripping film"])                           # doctest: +SKIP
    ['positive']
    """

    def __init__(self, index: str | os.PathLike, lm: Any = DEFAULT_LM, **kwargs: Any) -> None:
        self.index, self.lm, self.kwargs = index, lm, kwargs

    def fit(self, *_: Any) -> DistributedClassifier:
        from .sharded import is_sharded, read_manifest

        path = Path(self.index)
        manifest = read_manifest(path) if is_sharded(path) else _flat_manifest(path)
        self.classes_ = tuple(manifest["labels"])
        return self

    def predict_proba(self, queries: Any) -> np.ndarray:
        return predict_distributed(self.index, queries, lm=self.lm, **self.kwargs).probs

    def predict(self, queries: Any) -> list[str]:
        return [self.classes_[i] for i in self.predict_proba(queries).argmax(1)]
