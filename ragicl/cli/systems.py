"""The systems ``ragicl eval`` and ``ragicl demo`` compare: the plain ICL rows, the kNN votes and "ragicl best".

"ragicl best" is the :class:`~ragicl.estimators.fusion.FusionClassifier` that
:class:`~ragicl.estimators.tune.FusionTuner` chooses on dev queries drawn from the index's own training
examples (never the test set), within ``--tune-budget`` LM tokens (the same search and choice on any machine;
``--tune-max-seconds`` is an optional cap that makes it machine-dependent); what it searched, skipped and chose,
and why, is logged and kept in the report's notes (and ``eval --json``'s ``tune``). Everything here takes the typed settings of :mod:`ragicl.cli.settings`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..estimators.vote import VOTE_KS, vote_name
from ..lm.factory import LMSpec
from .settings import BestOptions, EvalOptions, PromptOptions

logger = logging.getLogger("ragicl.cli")


def build_systems(index: Any, template: Any, *, lm: LMSpec, opts: EvalOptions, best: BestOptions,
                  prompt: PromptOptions, notes: list[str], reuse: Mapping[str, Any] | None = None,
                  lm_object: Any = None, tuned: dict[str, Any] | None = None,
                  unlabeled: Any = None) -> dict[str, Any]:
    """Fitted systems in table order; appends what tuning chose to ``notes``.

    A name in ``reuse`` (saved predictions, :class:`~ragicl.cli.predlog.PredictionsLog`) takes that object
    instead of being fitted: a reused "ragicl best" is not tuned again. ``lm_object`` is the LM built from
    ``lm`` (shared by every LM system; built here when not given). ``tuned`` receives the tuner's result
    (``"result"``) when "ragicl best" is tuned; ``unlabeled`` (the test inputs) goes to :func:`tune_best`.
    """
    from ..estimators.baselines import KNNVoteClassifier
    from ..estimators.classifier import ICLClassifier

    reuse = reuse or {}
    model = lm_object if lm_object is not None else lm.build()
    common = {"template": template, "max_prompt_tokens": prompt.max_prompt_tokens, "seed": opts.seed}
    systems: dict[str, Any] = {}

    def put(name: str, make: Callable[[], Any]) -> None:
        systems[name] = reuse[name] if name in reuse else make()

    put("zero-shot", lambda: ICLClassifier(model, k=0, **common).fit(index))
    if opts.k != 0:  # --k 0: the zero-shot system alone (no "random-0"/"retrieved-0" copies of it)
        put(f"random-{opts.k}", lambda: ICLClassifier(model, k=opts.k, selection="random", **common).fit(index))
        put(f"retrieved-{opts.k}", lambda: ICLClassifier(model, k=opts.k, **opts.retrieval, **common).fit(index))
    if best.vote:
        for k in VOTE_KS:
            put(vote_name(k, None), lambda k=k: KNNVoteClassifier(k=k).fit(index))
    if best.best and opts.k != 0:
        put("ragicl best", lambda: tune_best(index, template, lm=model, opts=opts, best=best, prompt=prompt,
                                             notes=notes, tuned=tuned, unlabeled=unlabeled))
    if opts.finetuned:
        put("fine-tuned", lambda: ICLClassifier(finetuned_spec(lm, opts.finetuned), k=0, **common).fit(index))
    return systems


def finetuned_spec(lm: LMSpec, folder: str) -> LMSpec:
    """The fine-tuned reference loads like its base: in process with transformers, with the same loading
    options (dtype, device map, quantization, attention), whatever engine serves the base for ICL."""
    return dataclasses.replace(lm, model=str(folder), engine="transformers", url=None, tokenizer=None)


def system_names(opts: EvalOptions, best: BestOptions) -> list[str]:
    """The rows ``ragicl eval`` produces, in table order (what ``--rescore`` may name)."""
    names = ["zero-shot"]
    if opts.k != 0:
        names += [f"random-{opts.k}", f"retrieved-{opts.k}"]
    if best.vote:
        names += [vote_name(k, None) for k in VOTE_KS]
    if best.best and opts.k != 0:
        names.append("ragicl best")
    if opts.finetuned:
        names.append("fine-tuned")
    return names


def tune_best(index: Any, template: Any, *, lm: Any, opts: EvalOptions, best: BestOptions, prompt: PromptOptions,
              notes: list[str], tuned: dict[str, Any] | None = None, unlabeled: Any = None) -> Any:
    """'ragicl best': the FusionClassifier that FusionTuner chooses on dev queries from the index's training
    examples (in this process), within ``best``'s LM-token budget; what it searched, skipped and chose, and
    why, is logged and appended to ``notes``.

    ``unlabeled`` (the test inputs; their labels are never read) reaches the tuner only when its default
    ``dev_weights`` uses them (:func:`uses_unlabeled`); otherwise they could not change the choice."""
    from ..estimators.tune import FusionTuner

    model = lm.build() if isinstance(lm, LMSpec) else lm
    kwargs = best.tuner_kwargs(1, prompt.max_prompt_tokens, opts.search, opts.selection)
    warn_seconds_cap(best)
    tuner = FusionTuner(model, template, max_prompt_tokens=prompt.max_prompt_tokens, ks=(opts.k,), seed=opts.seed,
                        **kwargs)
    tuner.fit(index, unlabeled=unlabeled if uses_unlabeled() else None)
    res = tuner.result_
    if tuned is not None:
        tuned["result"] = res
    logger.info("ragicl best:\n%s", res.table())
    warn_small_budget(res, best)
    notes.append(f"ragicl best = {_describe(res.params)}; chosen on {res.n_dev} dev queries from the "
                 f"training set in {res.seconds:.0f} s ({res.reason})")
    return tuner.best_estimator_


def uses_unlabeled() -> bool:
    """Whether the tuner's default uses unlabeled queries (its ``dev_weights`` is not ``"none"``): only then
    does ``ragicl eval`` hand it the test inputs."""
    from .options import default_tune

    return default_tune("dev_weights") != "none"


def warn_seconds_cap(best: BestOptions) -> None:
    if best.tune_max_seconds is not None:
        logger.warning("--tune-max-seconds %g: the search now depends on this machine's speed; a configuration "
                       "the cap skips is listed and the result marked NOT reproducible (--tune-budget, in LM "
                       "tokens, is the same on any machine)", best.tune_max_seconds)


def warn_small_budget(res: Any, best: BestOptions) -> None:
    """Warn when an explicit ``--tune-budget`` did not even cover the plain systems (always scored): most
    likely a value meant as seconds, which the option used to be."""
    if res.lm_budget is None or res.lm_budget == 0 or res.lm_tokens <= res.lm_budget:
        return
    logger.warning("--tune-budget %s is LM tokens (it used to be seconds): the plain systems alone, always "
                   "scored, took %s LM tokens, so no other prompt configuration was searched (%d skipped). Fix: "
                   "omit --tune-budget (default auto), give LM tokens (e.g. --tune-budget 600k), or 0 for the "
                   "plain systems only; for a time limit use --tune-max-seconds", f"{res.lm_budget:,}",
                   f"{res.lm_tokens:,}", len(res.skipped))


def _describe(params: Any) -> str:
    p = dict(params)
    parts = [f"k={p['k']}", f"vote k={p['knn_k']}", f"weight {p['knn_weight']:.2f}"]
    parts.append("plain vote" if p["knn_temperature"] is None else f"temperature {p['knn_temperature']}")
    if p.get("candidates") is not None:
        parts.append(f"{p['candidates']} candidate labels")
    if p.get("label_aware"):
        parts.append("label-aware prompt")
    if p.get("search") is not None:
        sel = p.get("selection", "topk")
        parts.append(f"demonstrations by {p['search']}" + ("" if sel == "topk" else f" + {sel}"))
    if p.get("calibration", "none") != "none":
        parts.append(f"{p['calibration']} calibration")
    if p.get("output_temperature", 1.0) != 1.0:
        parts.append(f"output temperature {p['output_temperature']:.3g}")
    return ", ".join(parts)
