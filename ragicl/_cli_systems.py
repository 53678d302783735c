"""The systems ``ragicl eval`` and ``ragicl demo`` compare: the plain ICL rows, the kNN votes and "ragicl best".

"ragicl best" is the :class:`~ragicl.estimators.fusion.FusionClassifier` that
:class:`~ragicl.estimators.tune.FusionTuner` chooses on dev queries drawn from the index's own training
examples (never the test set), within ``--tune-budget`` seconds; what it chose and why is logged and kept in
the report's notes.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger("ragicl.cli")

VOTE_KS = (8, 32)
_REUSED = "reused from "


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
                   help="seconds for tuning 'ragicl best' (default 600); on a slow machine fewer dev queries are "
                        "used (at least 50) so the budget holds")
    p.add_argument("--vote-dev-size", type=positive_int, default=None,
                   help="choose the kNN vote's size and temperature first, without the LM, by leave-one-out "
                        "accuracy over this many training queries (e.g. 2000), then the rest on the dev queries "
                        "(default: all jointly on the dev queries)")


def build_systems(args: argparse.Namespace, index: Any, finetuned: str | None, template: Any,
                  notes: list[str], reuse: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fitted systems in table order; appends what tuning chose to ``notes``.

    A name in ``reuse`` (saved predictions, :class:`PredictionsLog`) takes that object instead of being
    fitted: a reused "ragicl best" is not tuned again.
    """
    from .estimators.baselines import KNNVoteClassifier
    from .estimators.classifier import ICLClassifier
    from .lm.hf import TransformersLM

    reuse = reuse or {}
    lm = TransformersLM(args.lm, batch_size=args.batch_size, device=args.device)
    common = {"template": template, "max_prompt_tokens": args.max_prompt_tokens, "seed": args.seed}
    systems: dict[str, Any] = {}

    def put(name: str, make: Callable[[], Any]) -> None:
        systems[name] = reuse[name] if name in reuse else make()

    put("zero-shot", lambda: ICLClassifier(lm, k=0, **common).fit(index))
    if args.k != 0:  # --k 0: the zero-shot system alone (no "random-0"/"retrieved-0" copies of it)
        put(f"random-{args.k}", lambda: ICLClassifier(lm, k=args.k, selection="random", **common).fit(index))
        put(f"retrieved-{args.k}", lambda: ICLClassifier(lm, k=args.k, selection=args.selection,
                                                         **common).fit(index))
    if getattr(args, "vote", True):
        for k in VOTE_KS:
            put(f"kNN vote k={k}", lambda k=k: KNNVoteClassifier(k=k).fit(index))
    if getattr(args, "best", False) and args.k != 0:
        put("ragicl best", lambda: tune_best(args, index, template, notes, lm))
    if finetuned:
        put("fine-tuned", lambda: ICLClassifier(finetuned, k=0, batch_size=args.batch_size, device=args.device,
                                                **common).fit(index))
    return systems


def system_names(args: argparse.Namespace) -> list[str]:
    """The rows ``ragicl eval`` produces for ``args``, in table order (what ``--rescore`` may name)."""
    names = ["zero-shot"]
    if args.k != 0:
        names += [f"random-{args.k}", f"retrieved-{args.k}"]
    if getattr(args, "vote", True):
        names += [f"kNN vote k={k}" for k in VOTE_KS]
    if getattr(args, "best", False) and args.k != 0:
        names.append("ragicl best")
    if getattr(args, "finetuned", None):
        names.append("fine-tuned")
    return names


def tune_best(args: argparse.Namespace, index: Any, template: Any, notes: list[str], lm: Any = None) -> Any:
    """'ragicl best': the FusionClassifier that FusionTuner chooses on dev queries from the index's training
    examples (in this process); what it chose and why is logged and appended to ``notes``."""
    from .estimators.tune import FusionTuner
    from .lm.hf import TransformersLM

    lm = lm if lm is not None else TransformersLM(args.lm, batch_size=args.batch_size, device=args.device)
    tuner = FusionTuner(lm, template, max_prompt_tokens=args.max_prompt_tokens, selection=args.selection,
                        dev_size=args.dev_size, ks=(args.k,), time_budget=args.tune_budget,
                        batch_size=args.batch_size, device=args.device, seed=args.seed,
                        vote_dev_size=args.vote_dev_size).fit(index)
    res = tuner.result_
    logger.info("ragicl best:\n%s", res.table())
    notes.append(f"ragicl best = {_describe(res.params)}; chosen on {res.n_dev} dev queries from the "
                 f"training set in {res.seconds:.0f} s ({res.reason})")
    return tuner.best_estimator_


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
    if p.get("output_temperature", 1.0) != 1.0:
        parts.append(f"output temperature {p['output_temperature']:.3g}")
    return ", ".join(parts)


class PredictionsLog:
    """``eval --predictions FILE``: reuse the systems FILE holds for this very run; save each new one at once.

    The file identifies the run by the test sample (its fingerprint), the index, the LM and the prompt
    settings; the fine-tuned system also by its checkpoint (path and training record). A file of another
    run is an error (nothing is overwritten); systems missing from it are scored and added one by one, so an
    interrupted evaluation resumes and a reference trained later joins without re-scoring the rest.
    """

    def __init__(self, path: str, args: argparse.Namespace, index: Any, test: Any) -> None:
        self.path = path
        self.args = args
        self.index = index
        self.test = test
        self.record: Any = None
        self.sources: dict[str, str] = {}

    def settings(self) -> dict[str, Any]:
        m, a = self.index.manifest, self.args
        return {"index": m.get("dataset_fingerprint"), "embedder": m.get("embedder"), "factory": m.get("factory"),
                "lm": a.lm, "k": str(a.k), "selection": a.selection, "template": a.template,
                "instruction": a.instruction, "max_prompt_tokens": a.max_prompt_tokens, "seed": a.seed,
                "dev_size": getattr(a, "dev_size", None), "tune_budget": getattr(a, "tune_budget", None),
                **({"vote_dev_size": a.vote_dev_size} if getattr(a, "vote_dev_size", None) else {})}

    def start(self, notes: list[str]) -> dict[str, Any]:
        """The saved systems this run reuses (name → a ``predict_proba`` stand-in); extends ``notes``."""
        from pathlib import Path

        from .evaluation.predictions import Predictions, load_predictions, reusable_systems

        if self.args.finetuned:
            self.sources["fine-tuned"] = _checkpoint_source(self.args.finetuned)
        self.record = Predictions.for_test(self.test, self.settings())
        if not Path(self.path).exists():
            return {}
        saved = load_predictions(self.path)
        reuse = reusable_systems(saved, self.record, self.sources, self.path)
        redo = [name for name in (getattr(self.args, "rescore", None) or []) if name in reuse]
        for name in redo:
            del reuse[name]
        if redo:
            logger.info("--rescore: scoring %s again (saved in %s)", ", ".join(redo), self.path)
        for name, system in reuse.items():
            self.record = self.record.with_system(name, system.probs, system.recorded_seconds,
                                                  self.sources.get(name, ""))
        stale = [name for name in saved.probs if name not in reuse]  # scored again: their old notes go
        notes.extend(n for n in saved.notes if n not in notes and not any(n.startswith(f"{r} ") for r in stale))
        if reuse:
            logger.info("--predictions %s: reusing %s", self.path, ", ".join(reuse))
            notes.append(f"{_REUSED}{self.path}: {', '.join(reuse)} (scored in an earlier run)")
        return reuse

    def add(self, result: Any, notes: list[str]) -> None:
        """Save ``result`` (a :class:`~ragicl.evaluation.compare.SystemResult`) now, atomically."""
        from .evaluation.predictions import save_predictions

        self.record = self.record.with_system(result.name, result.probs, result.seconds,
                                              self.sources.get(result.name, "")).with_notes(
            [n for n in notes if not n.startswith(_REUSED)])
        save_predictions(self.path, self.record)


def _checkpoint_source(folder: str) -> str:
    """The fine-tuned checkpoint's resolved path and a hash of its training record (a retrained folder differs;
    the record of a versioned folder names its model version, so every save differs). A damaged record is a
    clear ``FinetuneFormatError`` (checked by ``read_finetune_record``), not a silently different source."""
    import hashlib
    from pathlib import Path

    from .models import FINETUNE_RECORD, read_finetune_record

    p = Path(folder).resolve()
    if read_finetune_record(p) is None:
        return f"{p}#no-record"
    return f"{p}#{hashlib.sha256((p / FINETUNE_RECORD).read_bytes()).hexdigest()[:16]}"
