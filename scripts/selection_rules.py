"""Would another rule have picked "ragicl best" better than the tuner's best dev accuracy?

The tuner (``FusionTuner``) keeps the setting with the best accuracy on its dev queries (ties: log-loss, then
cost). Two alternatives are scored here on a test set, against that rule:

- ``fallback``: keep the choice only when its paired dev interval against the best plain system
  (``TuneResult.gain_over_plain``) lies above 0; otherwise take that plain system (retrieved-k or a kNN vote);
- ``log-loss``: the setting with the lowest dev log-loss (a smoother score than accuracy on 200 queries).

Input: a ``ragicl tune --json`` file (every trial's dev accuracy and log-loss), the index it was tuned on, and
the test sample of ``ragicl eval --n N --seed 0``. Each trial's test distribution is rebuilt with the tuner's
own ``combine`` from one LM pass, the retrieved-k prompt's label distribution on the test queries (read from a
``ragicl eval --predictions`` file, or scored here with ``--lm``), plus the index's neighbours; settings that
need other LM passes (label-aware order, ``prior`` calibration, another k) are left out unless they are the
tuner's own choice, whose test accuracy the predictions file's "ragicl best" row gives::

    ragicl tune --index indexes/cr --lm gemma-3-270m --ks 8 --dev-size 200 --tune-budget 2400 --json runs/tune/cr.json
    python scripts/selection_rules.py --tune runs/tune/cr.json --index indexes/cr \\
        --test ../shared/datasets/cr/test.jsonl --n 500 --predictions runs/best-gemma/cr.predictions.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragicl import ExampleIndex, ICLClassifier, read_dataset
from ragicl.estimators.fusion import (
    CANDIDATE_POOL,
    CANDIDATE_TEMPERATURE,
    FusionParts,
    candidate_labels,
    combine,
    knn_distribution,
    neighbours,
)
from ragicl.estimators.tune import Trial, _plain_trials, _rank_key
from ragicl.prompt.template import PromptTemplate

DEPTH = 128  # neighbours collected per test query: the deepest vote of the tuner's default grid


def parts_on_test(index: ExampleIndex, examples: Sequence[Any], lm_probs: np.ndarray) -> FusionParts:
    """The test queries' parts as ``FusionClassifier.parts`` collects them for the retrieved-k prompt (every
    label scored), from that prompt's label distribution ``lm_probs`` (``(n, L)``, ``index.labels`` order)."""
    _, labels, scores = neighbours(index, list(examples), DEPTH)
    n, n_labels = lm_probs.shape
    with np.errstate(divide="ignore"):
        logp = np.log(np.asarray(lm_probs, dtype=np.float64))
    return FusionParts(logp, labels, scores, n_labels, np.ones((n, n_labels), dtype=bool))


def rebuildable(params: Mapping[str, Any], k: int) -> bool:
    """Whether a trial's test distribution follows from the retrieved-``k`` pass alone."""
    return params["k"] == k and not params["label_aware"] and params["calibration"] != "prior"


def trial_distribution(parts: FusionParts, params: Mapping[str, Any]) -> np.ndarray:
    """A rebuildable trial's ``(n, L)`` test distribution: candidates mask the LM's label scores (the same
    numbers scored alone, renormalized over the candidates) and the vote is mixed in by ``combine``."""
    ranked = knn_distribution(parts.neighbor_labels, parts.neighbor_scores, parts.n_labels, k=CANDIDATE_POOL,
                              temperature=CANDIDATE_TEMPERATURE, smoothing=0.0)
    mask = candidate_labels(ranked, params["candidates"])
    masked = FusionParts(np.where(mask, parts.lm_logp, -np.inf), parts.neighbor_labels, parts.neighbor_scores,
                         parts.n_labels, mask)
    return combine(masked, knn_k=int(params["knn_k"]), knn_temperature=params["knn_temperature"],
                   knn_weight=float(params["knn_weight"]), calibration=params["calibration"])


def picks(result: Mapping[str, Any]) -> dict[str, Trial]:
    """Each rule's pick among the trials of a saved :class:`TuneResult` (``to_json``)."""
    if result.get("vote_trials"):
        raise ValueError("this tuning run ranked its votes leave-one-out first (vote_dev_size); its plain votes are "
                         "not among its trials, so the fallback rule cannot be rebuilt: tune without it.")
    trials = [Trial(t["params"], t["accuracy"], t["log_loss"], 0.0) for t in result["trials"]]
    choice = min(trials, key=_rank_key)
    plain = _plain_trials(trials)
    rival = max(plain.values(), key=lambda t: t.accuracy)
    gain = result.get("gain_over_plain")
    fallback = choice if gain is None or gain["low"] > 0 else rival
    return {"accuracy": choice, "fallback": fallback, "log-loss": min(trials, key=lambda t: (t.log_loss,
                                                                                             _rank_key(t)))}


def evaluate(result: Mapping[str, Any], parts: FusionParts, gold: np.ndarray, k: int,
             best_row: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Each rule's pick with its dev and test accuracy (None where the pick cannot be rebuilt)."""
    chosen = {key: v for key, v in result["params"].items() if key != "output_temperature"}
    out = {}
    for rule, t in picks(result).items():
        if rebuildable(t.params, k):
            test = float((trial_distribution(parts, t.params).argmax(1) == gold).mean())
        elif dict(t.params) == chosen and best_row is not None:
            test = float((best_row.argmax(1) == gold).mean())
        else:
            test = None
        out[rule] = {"params": dict(t.params), "dev_accuracy": t.accuracy, "dev_log_loss": t.log_loss,
                     "test_accuracy": test}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tune", required=True, help="a `ragicl tune --json` file")
    ap.add_argument("--index", required=True, help="the index it was tuned on")
    ap.add_argument("--test", required=True, help="test dataset file")
    ap.add_argument("--n", type=int, default=500, help="test queries (seed 0), as ragicl eval --n")
    ap.add_argument("--predictions", default=None, help="`ragicl eval --predictions` file of the same test sample")
    ap.add_argument("--lm", default=None, help="without --predictions: score the retrieved-k prompt with this LM")
    ap.add_argument("--max-prompt-tokens", type=int, default=1024)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    result = json.loads(Path(args.tune).read_text())
    k = int(result["params"]["k"])
    index = ExampleIndex.load(args.index, device="cpu")
    labels = tuple(index.labels)
    test = read_dataset(args.test)
    test = test.sample(args.n, seed=0) if args.n < len(test) else test
    gold = np.array([labels.index(ex.label) for ex in test.examples])
    best_row = None
    if args.predictions:
        from ragicl.evaluation.predictions import load_predictions

        saved = load_predictions(args.predictions)
        if tuple(saved.labels) != labels or [labels.index(g) for g in saved.gold] != gold.tolist():
            raise SystemExit(f"{args.predictions} is not this test sample (labels or gold answers differ); give "
                             "the --n and test file of its `ragicl eval` run.")
        if f"retrieved-{k}" not in saved.probs:
            raise SystemExit(f"{args.predictions} has no 'retrieved-{k}' row (it has {sorted(saved.probs)}); the "
                             f"tuning run's k is {k}: give the predictions of `ragicl eval --k {k}`, or --lm.")
        lm_probs, best_row = saved.probs[f"retrieved-{k}"], saved.probs.get("ragicl best")
    elif args.lm:
        lm_probs = ICLClassifier(args.lm, PromptTemplate.default(index.dataset.input_fields), k=k,
                                 max_prompt_tokens=args.max_prompt_tokens, seed=0).fit(index).predict_proba(
            list(test.examples))
    else:
        raise SystemExit("give --predictions (a `ragicl eval --predictions` file) or --lm (to score retrieved-k)")
    parts = parts_on_test(index, test.examples, lm_probs)
    print(f"retrieved-{k} on the test sample: {float((lm_probs.argmax(1) == gold).mean()):.3f}; "
          f"dev interval of the choice against the best plain system: {result.get('gain_over_plain')}")
    rows = evaluate(result, parts, gold, k, best_row)
    for rule, row in rows.items():
        test_acc = "not rebuildable" if row["test_accuracy"] is None else f"{row['test_accuracy']:.3f}"
        print(f"{rule:>9}: dev {row['dev_accuracy']:.3f} (log-loss {row['dev_log_loss']:.3f}), test {test_acc}  "
              f"{row['params']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
