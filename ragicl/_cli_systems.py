"""The systems ``ragicl eval`` and ``ragicl demo`` compare: the plain ICL rows, the kNN votes and "ragicl best".

"ragicl best" is the :class:`~ragicl.estimators.fusion.FusionClassifier` that
:class:`~ragicl.estimators.tune.FusionTuner` chooses on dev queries drawn from the index's own training
examples (never the test set), within ``--tune-budget`` seconds; what it chose and why is logged and kept in
the report's notes.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

logger = logging.getLogger("ragicl.cli")

VOTE_KS = (8, 32)


def add_best_args(p: argparse.ArgumentParser) -> None:
    """Options of the tuned system and the kNN rows (shared by eval and demo)."""
    from ._cli_checks import non_negative_int, positive_int

    p.add_argument("--no-best", dest="best", action="store_false",
                   help="skip the tuned 'ragicl best' system (tuning scores dev queries with the LM)")
    p.add_argument("--no-vote", dest="vote", action="store_false",
                   help=f"skip the kNN-vote rows (k = {', '.join(map(str, VOTE_KS))}; no LM)")
    p.add_argument("--dev-size", type=positive_int, default=150,
                   help="dev queries drawn from the index's training examples to tune 'ragicl best' (default 150)")
    p.add_argument("--tune-budget", type=non_negative_int, default=600,
                   help="seconds for tuning prompt configurations; the first always runs (default 600)")


def build_systems(args: argparse.Namespace, index: Any, finetuned: str | None, template: Any,
                  notes: list[str]) -> dict[str, Any]:
    """Fitted systems in table order; appends what tuning chose to ``notes``."""
    from .estimators.baselines import KNNVoteClassifier
    from .estimators.classifier import ICLClassifier
    from .estimators.tune import FusionTuner
    from .lm.hf import TransformersLM

    lm = TransformersLM(args.lm, batch_size=args.batch_size, device=args.device)
    common = {"template": template, "max_prompt_tokens": args.max_prompt_tokens, "seed": args.seed}
    systems = {"zero-shot": ICLClassifier(lm, k=0, **common).fit(index)}
    if args.k != 0:  # --k 0: the zero-shot system alone (no "random-0"/"retrieved-0" copies of it)
        systems[f"random-{args.k}"] = ICLClassifier(lm, k=args.k, selection="random", **common).fit(index)
        systems[f"retrieved-{args.k}"] = ICLClassifier(lm, k=args.k, selection=args.selection,
                                                       **common).fit(index)
    if getattr(args, "vote", True):
        for k in VOTE_KS:
            systems[f"kNN vote k={k}"] = KNNVoteClassifier(k=k).fit(index)
    if getattr(args, "best", False) and args.k != 0:
        tuner = FusionTuner(lm, template, max_prompt_tokens=args.max_prompt_tokens, selection=args.selection,
                            dev_size=args.dev_size, ks=(args.k,), time_budget=args.tune_budget,
                            batch_size=args.batch_size, device=args.device, seed=args.seed).fit(index)
        res = tuner.result_
        logger.info("ragicl best:\n%s", res.table())
        systems["ragicl best"] = tuner.best_estimator_
        notes.append(f"ragicl best = {_describe(res.params)}; chosen on {res.n_dev} dev queries from the "
                     f"training set in {res.seconds:.0f} s ({res.reason})")
    if finetuned:
        systems["fine-tuned"] = ICLClassifier(finetuned, k=0, batch_size=args.batch_size, device=args.device,
                                              **common).fit(index)
    return systems


def _describe(params: Any) -> str:
    p = dict(params)
    parts = [f"k={p['k']}", f"vote k={p['knn_k']}", f"weight {p['knn_weight']:.2f}"]
    parts.append("plain vote" if p["knn_temperature"] is None else f"temperature {p['knn_temperature']}")
    if p.get("candidates") is not None:
        parts.append(f"{p['candidates']} candidate labels")
    if p.get("label_aware"):
        parts.append("label-aware prompt")
    if p.get("calibration", "none") != "none":
        parts.append(f"{p['calibration']} calibration")
    return ", ".join(parts)
