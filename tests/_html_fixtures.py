"""A real :class:`~ragicl.evaluation.compare.Report` from ``compare`` over synthetic systems, for the HTML
report tests: each system's label distributions are drawn around the gold label with its own accuracy, so the
numbers (accuracy, TV, gap closed, confusion) are those ``compare`` computes, only the systems are stand-ins."""

from __future__ import annotations

import numpy as np

from ragicl.evaluation.compare import compare
from ragicl.types import Dataset, Example

#: (system, share of queries it labels right, sharpness of its distributions)
SYSTEMS = (("zero-shot", 0.45, 1.0), ("retrieved-8", 0.7, 2.0), ("kNN vote k=32", 0.72, 3.0),
           ("ragicl best", 0.82, 2.5), ("fine-tuned", 0.9, 3.0))


class Synthetic:
    """``predict_proba`` of a classifier right on ``accuracy`` of the queries, wrong on a fixed 'confusable'
    label (the next one) otherwise."""

    def __init__(self, labels, gold, accuracy, sharpness, seed):
        self.classes_ = list(labels)
        rng = np.random.default_rng(seed)
        n, k = len(gold), len(labels)
        right = rng.random(n) < accuracy
        said = np.where(right, gold, (gold + 1 + (rng.random(n) < 0.3) * rng.integers(1, k, n)) % k)
        logits = rng.normal(0, 0.5, (n, k))
        logits[np.arange(n), said] += sharpness + 1.0
        p = np.exp(logits - logits.max(1, keepdims=True))
        self.probs = p / p.sum(1, keepdims=True)

    def predict_proba(self, queries):
        return self.probs[: len(queries)]


def synthetic_report(n_labels=6, n=200, *, reference=True, labels=None, systems=SYSTEMS, seed=0, n_boot=200):
    """``(report, test)``: ``compare`` over :data:`SYSTEMS` on ``n`` queries with ``n_labels`` labels."""
    labels = tuple(labels or [f"label-{i}" for i in range(n_labels)])
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, len(labels), n)
    gold[: len(labels)] = np.arange(len(labels))  # every label occurs
    test = Dataset(tuple(Example(str(i), {"text": f"query {i}"}, labels[g]) for i, g in enumerate(gold)),
                   ("text",), labels=labels, name="synthetic")
    chosen = [s for s in systems if reference or s[0] != "fine-tuned"]
    clfs = {name: Synthetic(labels, gold, acc, sharp, seed + i) for i, (name, acc, sharp) in enumerate(chosen)}
    report = compare(test, clfs, reference="fine-tuned" if reference else None, n_boot=n_boot,
                     notes=("synthetic systems",))
    return report, test


def trec_fixture(tmp_path):
    """``(report, predictions, tune dict, curve dict, command)`` of the real TREC evaluation saved in
    tests/fixtures/report-trec (see its README.md); skips when the folder is missing."""
    import gzip
    import json
    from pathlib import Path

    import pytest

    from ragicl.evaluation.compare import Report
    from ragicl.evaluation.predictions import load_predictions

    folder = Path(__file__).parent / "fixtures" / "report-trec"
    if not (folder / "report.json").exists():
        pytest.skip(f"fixture {folder} missing")
    report = Report.from_json(json.loads((folder / "report.json").read_text(encoding="utf-8")))
    path = tmp_path / "predictions.json"
    path.write_bytes(gzip.decompress((folder / "predictions.json.gz").read_bytes()))
    tune = json.loads(gzip.decompress((folder / "tune.json.gz").read_bytes()))
    curve = json.loads((folder / "curve-k.json").read_text(encoding="utf-8"))
    return report, load_predictions(path), tune, curve, (folder / "COMMAND").read_text(encoding="utf-8").strip()
