#!/usr/bin/env python
"""Which selection rule makes "ragicl best" hold up on the test set? Every rule, from one LM pass.

Input: the folders ``experiments/tune_scores.py`` writes (each of FusionTuner's prompt configurations scored once on
the tuner's dev queries and once on the test sample). For each dataset the dev answers of every setting are
built exactly as ``FusionTuner.fit`` builds them (same configurations in the same search order, same mixing
grid, same code: :func:`ragicl.estimators.tune.grid_answers`), each rule × dev weighting chooses
(:func:`ragicl.estimators._tune_rules.choose`; the unlabeled queries are the test inputs, whose neighbours the
score files hold), and the chosen setting is mixed on the test queries by :func:`combine` (batch calibration
over the whole test sample, as ``ragicl eval`` mixes it). Each choice is compared with the plain systems on
the same test queries: retrieved-k, zero-shot and the kNN votes k = 8 and 32 (plain and weighted); the
target of issue 37 is ``max(retrieved-k, kNN vote k=8, kNN vote k=32) - 0.01``::

    python experiments/selection_rules.py --scores runs/tune37/smollm2 --datasets sst2,cr,subj --json rules.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "experiments"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import numpy as np
from tune_scores import config_name, load_parts

from ragicl.estimators._tune_rules import RULES, WEIGHTINGS, choose, estimate_shift, kind
from ragicl.estimators.fusion import FusionParts, _softmax_masked, combine
from ragicl.estimators.tune import FusionTuner, grid_answers, lm_configs
from ragicl.stats import bootstrap_ci

PLAIN_TEST = {"zero-shot": (8, None, 0.0), "kNN vote k=8": (8, None, 1.0), "kNN vote k=32": (32, None, 1.0),
              "kNN vote k=8 weighted": (8, 0.05, 1.0), "kNN vote k=32 weighted": (32, 0.05, 1.0)}
GRIDS = ("no zero-shot mix", "zero-shot mix")  # FusionTuner(zero_shot_mix=False) (the default), or True


def _key(cfg: Mapping[str, Any]) -> tuple:
    return (cfg["k"], cfg["candidates"], cfg["label_aware"])


class Scores:
    """One dataset's saved scores: per configuration the dev and test parts, in the tuner's search order."""

    def __init__(self, folder: Path, tuner: FusionTuner | None = None) -> None:
        self.meta = json.loads((folder / "meta.json").read_text())
        grid = self.meta.get("grid", {})
        self.tuner = tuner or FusionTuner(ks=(self.meta["k"],), **{k: tuple(v) if isinstance(v, list) else v
                                                                  for k, v in grid.items()})
        n_labels = len(self.meta["labels"])
        plain, extras = lm_configs(self.tuner.ks, self.tuner.candidates, self.tuner.label_aware, n_labels,
                                   self.tuner.max_full_labels)
        self.dev: dict[tuple, tuple[FusionParts, int]] = {}
        self.test: dict[tuple, FusionParts] = {}
        self.missing: list[str] = []
        for cfg in plain + extras:
            dev, test = folder / f"{config_name(cfg)}.dev.npz", folder / f"{config_name(cfg)}.test.npz"
            if not (dev.exists() and test.exists()):
                self.missing.append(config_name(cfg))
                continue
            parts, self.y_dev, info = load_parts(dev)
            self.dev[_key(cfg)] = (parts, info["lm_tokens"])
            self.test[_key(cfg)], self.y_test, _ = load_parts(test)
        # the tuner's order: the plain configurations, then the others cheapest first (dev LM tokens)
        rest = sorted((c for c in extras if _key(c) in self.dev), key=lambda c: self.dev[_key(c)][1])
        self.configs = [c for c in plain if _key(c) in self.dev] + rest
        self.n_plain = sum(_key(c) in self.dev for c in plain)

    def answers(self, budget: int | None = None, zero_shot_mix: bool | None = None
                ) -> tuple[list, dict[tuple, np.ndarray], list[str]]:
        """The dev answers of every setting (as ``FusionTuner.fit`` makes them), the LM prior of each
        configuration, and the configurations an ``lm_budget`` of ``budget`` tokens would skip
        (``zero_shot_mix``: None = the tuner's setting)."""
        zs_mix = self.tuner.zero_shot_mix if zero_shot_mix is None else zero_shot_mix
        out, priors, skipped, used = [], {}, [], 0
        for i, cfg in enumerate(self.configs):
            parts, tokens = self.dev[_key(cfg)]
            if i >= self.n_plain and budget is not None and used + tokens > budget:
                skipped.append(config_name(cfg))
                continue
            used += tokens
            priors[_key(cfg)] = _softmax_masked(parts.lm_logp).mean(0)
            out += [a for a, _ in grid_answers(parts, self.y_dev, cfg, priors[_key(cfg)], self.tuner.vote_grid(),
                                               self.tuner.weights, self.tuner.calibrations, keep_vote=i == 0,
                                               lm_tokens=tokens, mix=cfg["k"] != 0 or zs_mix)]
        return out, priors, skipped

    def test_distribution(self, params: Mapping[str, Any], priors: Mapping[tuple, np.ndarray]) -> np.ndarray:
        key = _key(params) if _key(params) in self.test else _key(self.configs[0])
        return combine(self.test[key], knn_k=int(params["knn_k"]), knn_temperature=params["knn_temperature"],
                       knn_weight=float(params["knn_weight"]), calibration=params["calibration"],
                       prior=priors.get(key))

    def plain_on_test(self) -> dict[str, np.ndarray]:
        """Per-query correctness of the plain systems on the test sample."""
        k = self.meta["k"]
        out = {}
        first = self.test[_key(self.configs[0])]
        for name, (knn_k, temp, w) in PLAIN_TEST.items():
            parts = first if name != "zero-shot" else self.test[(0, None, False)]
            p = combine(parts, knn_k=knn_k, knn_temperature=temp, knn_weight=w)
            out[name] = p.argmax(1) == self.y_test
        ret = self.test.get((k, None, False))
        if ret is not None:
            out[f"retrieved-{k}"] = combine(ret, knn_k=8, knn_temperature=None, knn_weight=0.0).argmax(1) == self.y_test
        return out

    def weights(self, weighting: str) -> np.ndarray | None:
        if weighting == "none":
            return None
        dev, test = self.dev[_key(self.configs[0])][0], self.test[_key(self.configs[0])]
        return estimate_shift(self.y_dev, dev.neighbor_labels, dev.neighbor_scores, test.neighbor_labels,
                              test.neighbor_scores, dev.n_labels, weighting).weights


def evaluate(scores: Scores, rules: Sequence[str] = RULES, weightings: Sequence[str] = WEIGHTINGS,
             grids: Sequence[str] = GRIDS, budget: int | None = None) -> dict[str, Any]:
    """Every rule's choice and its test accuracy against the plain systems, for one dataset."""
    plain = scores.plain_on_test()
    k = scores.meta["k"]
    target_names = [n for n in (f"retrieved-{k}", "kNN vote k=8", "kNN vote k=32") if n in plain]
    target = max(target_names, key=lambda n: plain[n].mean())
    rows = {}
    for grid in grids:
        pool, priors, skipped = scores.answers(budget, zero_shot_mix=grid == "zero-shot mix")
        for weighting in weightings:
            w = scores.weights(weighting)
            for rule in rules:
                choice = choose(pool, scores.y_dev, rule, w)
                a = pool[choice.index]
                correct = scores.test_distribution(a.params, priors).argmax(1) == scores.y_test
                diff = correct.astype(float) - plain[target].astype(float)
                ci = bootstrap_ci(diff)
                rows[f"{rule}|{weighting}|{grid}"] = {
                    "params": dict(a.params), "kind": kind(a.params), "dev_accuracy": float(np.mean(a.pred == scores.y_dev)),
                    "test_accuracy": float(correct.mean()), "minus_target": float(diff.mean()),
                    "minus_target_ci": [float(ci.low), float(ci.high)], "reason": choice.reason}
    return {"dataset": scores.meta["dataset"], "n_test": len(scores.y_test), "n_dev": len(scores.y_dev),
            "plain": {n: float(c.mean()) for n, c in plain.items()}, "target": target,
            "target_accuracy": float(plain[target].mean()), "missing": scores.missing, "skipped": skipped,
            "lm_tokens_dev": {config_name(c): scores.dev[_key(c)][1] for c in scores.configs}, "rules": rows}


def summary(results: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table: per rule, the mean and worst margin over the target and the misses (< -0.01)."""
    names = list(results[0]["rules"])
    lines = ["| rule (selector, dev weights, grid) | mean test acc | mean − target | worst − target | misses "
             "(< −0.01) |" + "".join(f" {r['dataset']} |" for r in results),
             "|---|---|---|---|---|" + "---|" * len(results)]
    for name in sorted(names, key=lambda n: -np.mean([r["rules"][n]["minus_target"] for r in results])):
        m = [r["rules"][name]["minus_target"] for r in results]
        acc = [r["rules"][name]["test_accuracy"] for r in results]
        lines.append(f"| {name.replace('|', ', ')} | {np.mean(acc):.4f} | {np.mean(m):+.4f} | {min(m):+.3f} | "
                     f"{sum(x < -0.01 - 1e-12 for x in m)} |" + "".join(f" {x:+.3f} |" for x in m))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scores", required=True, help="folder of experiments/tune_scores.py output (one folder per dataset)")
    ap.add_argument("--datasets", default=None, help="comma-separated (default: every complete folder)")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--weightings", default=",".join(WEIGHTINGS))
    ap.add_argument("--lm-budget", type=int, default=None, help="re-derive the choices under this lm_budget")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    root = Path(args.scores)
    names = args.datasets.split(",") if args.datasets else sorted(p.name for p in root.iterdir()
                                                                  if (p / "meta.json").exists())
    results = []
    for name in names:
        scores = Scores(root / name)
        if scores.missing:
            print(f"{name}: not complete (missing {scores.missing}); skipped", flush=True)
            continue
        res = evaluate(scores, args.rules.split(","), args.weightings.split(","), budget=args.lm_budget)
        results.append(res)
        plain = ", ".join(f"{n} {a:.3f}" for n, a in res["plain"].items())
        print(f"{name} ({res['n_test']} test, {res['n_dev']} dev): {plain}; target {res['target']} "
              f"{res['target_accuracy']:.3f}", flush=True)
    if results:
        print(summary(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
