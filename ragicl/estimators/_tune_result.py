"""What :class:`~ragicl.estimators.tune.FusionTuner` reports: each setting tried (:class:`Trial`) and the
search's outcome (:class:`TuneResult`: what was searched and skipped, the LM work it cost, which rule chose and
why, the choice against the best plain system on the same dev queries)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._tune_rules import plain_name


@dataclass(frozen=True)
class Trial:
    """One evaluated setting on the dev queries."""

    params: Mapping[str, Any]
    accuracy: float
    log_loss: float
    lm_seconds: float


@dataclass(frozen=True)
class TuneResult:
    """What :class:`FusionTuner` searched, what it chose, by which rule and why, and what it compared."""

    params: Mapping[str, Any]
    dev_accuracy: float
    dev_log_loss: float
    baselines: Mapping[str, float]
    n_dev: int
    seconds: float
    trials: tuple[Trial, ...] = field(repr=False)
    #: LM configurations not scored, each with ``lm_tokens`` (its cost) and ``reason``
    skipped: tuple[Mapping[str, Any], ...] = ()
    prior: tuple[float, ...] | None = None
    n_dev_requested: int | None = None
    dev_log_loss_sharpened: float | None = None
    #: with ``vote_dev_size``: every vote setting (``knn_k``, ``knn_temperature``) on the leave-one-out queries
    vote_trials: tuple[Trial, ...] = field(default=(), repr=False)
    n_vote_dev: int | None = None
    #: the chosen setting's dev accuracy minus the best plain system's on the same dev queries, with its paired
    #: bootstrap 95% interval: (difference, low, high); None when the choice is that plain system or none is
    #: in the grid. An interval that includes 0 means the dev queries cannot tell the two apart.
    gain_over_plain: tuple[float, float, float] | None = None
    rule: str = "best"
    #: why the rule chose this setting
    rule_reason: str = ""
    #: the LM configurations scored, in search order, each with ``lm_tokens`` and ``seconds``
    searched: tuple[Mapping[str, Any], ...] = ()
    lm_budget: int | None = None
    #: LM tokens scored in all (prompt tokens + label tokens after the prompt), the unit of ``lm_budget``
    lm_tokens: int = 0
    max_seconds: float | None = None
    #: False when ``max_seconds`` skipped a configuration: another machine may search more and choose otherwise
    reproducible: bool = True
    #: what the unlabeled queries said (``fit(index, unlabeled=...)``), or None
    shift: Mapping[str, Any] | None = None
    #: with several retrievers searched: the best dev accuracy of the LM settings with each ("dense", "bm25",
    #: "dense+mmr"; the tuner's own first), else empty
    retrievers: Mapping[str, float] = field(default_factory=dict)
    #: the retriever of the chosen setting's prompts (None: not recorded)
    retriever: str | None = None

    @property
    def reason(self) -> str:
        plain = ("best plain system: {} {:.3f}".format(*max(self.baselines.items(), key=lambda kv: kv[1]))
                 if self.baselines else "no plain system in the grid")
        votes = ("" if not self.n_vote_dev else
                 f"; the vote's k={self.params.get('knn_k')} and temperature {self.params.get('knn_temperature')} "
                 f"chosen first, without the LM, on {self.n_vote_dev} leave-one-out training queries")
        if self.gain_over_plain is not None:
            d, lo, hi = self.gain_over_plain
            plain += ("; the choice gives the same answers as it on every dev query" if lo == hi == 0.0 else
                      f"; the choice {d:+.3f} [{lo:+.3f}, {hi:+.3f}] against it on the same queries, paired "
                      f"bootstrap 95%" + (", within the dev noise" if lo <= 0 <= hi else ""))
        why = self.rule_reason or "best dev accuracy, ties broken by log-loss, then by cost"
        shift = f"; {self.shift['description']}" if self.shift else ""
        return (f"rule {self.rule!r}: {why}; dev accuracy {self.dev_accuracy:.3f} (log-loss "
                f"{self.dev_log_loss:.3f}) on {self.n_dev} held-out training examples ({plain}){votes}"
                f"{self._sharpened()}{shift}{self.retriever_summary()}; {self.search_summary()}")

    def retriever_summary(self) -> str:
        """Which retriever the choice uses and how each did on dev (empty with one retriever searched)."""
        if not self.retrievers:
            return ""
        own = next(iter(self.retrievers))
        names = ", ".join(f"{name} {acc:.3f}" for name, acc in self.retrievers.items())
        top, acc = max(self.retrievers.items(), key=lambda kv: kv[1])
        lead = "" if top == own else f"; {top} {acc - self.retrievers[own]:+.3f} over {own}"
        no_prompt = float(self.params.get("knn_weight", 0.0)) >= 1.0 or not self.params.get("k")
        uses = "none (no demonstrations)" if no_prompt or self.retriever is None else self.retriever
        return f"; retriever of the choice: {uses} (best dev accuracy by retriever: {names}{lead})"

    def search_summary(self) -> str:
        """What was searched: configurations scored and skipped, LM tokens used of the budget."""
        budget = "no LM budget" if self.lm_budget is None else f"of an LM budget of {self.lm_budget:,}"
        names = "; ".join(_config_name(s) for s in self.searched)
        out = (f"searched {len(self.searched)} LM configuration(s) ({names}) and every vote, {self.lm_tokens:,} "
               f"LM tokens {budget}")
        if self.skipped:
            out += f", {len(self.skipped)} skipped (" + "; ".join(
                f"{_config_name(s)}: {s['reason']}" for s in self.skipped) + ")"
        if not self.reproducible:
            out += "; NOT REPRODUCIBLE: the seconds cap decided what was searched"
        return out

    def _sharpened(self) -> str:
        t = self.params.get("output_temperature", 1.0)
        if self.dev_log_loss_sharpened is None or t == 1.0:
            return ""
        return f"; output temperature {t:.3g} fitted on dev log-loss ({self.dev_log_loss:.3f} -> " \
               f"{self.dev_log_loss_sharpened:.3f})"

    def table(self, top: int = 10) -> str:
        """The chosen setting, the search, the plain systems and the best ``top`` trials, as text."""
        lines = [f"chosen: {dict(self.params)}", self.reason, "", "LM configurations scored (LM tokens, s):"]
        lines += [f"  {s['lm_tokens']:>10,}  {s['seconds']:7.1f}  {_config_name(s)}" for s in self.searched]
        lines += [f"  skipped: {_config_name(s)} ({s['lm_tokens']:,} LM tokens): {s['reason']}" for s in self.skipped]
        lines += ["", "dev accuracy of the plain systems:"]
        lines += [f"  {name:<24}{acc:.3f}" for name, acc in self.baselines.items()] or ["  (none in the grid)"]
        lines += ["", f"best {top} of {len(self.trials)} settings (accuracy, log-loss, LM s):"]
        for t in sorted(self.trials, key=_rank_key)[:top]:
            lines.append(f"  {t.accuracy:.3f}  {t.log_loss:.3f}  {t.lm_seconds:7.1f}  {dict(t.params)}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"params": dict(self.params), "dev_accuracy": self.dev_accuracy,
                "dev_log_loss": self.dev_log_loss, "baselines": dict(self.baselines), "n_dev": self.n_dev,
                "n_dev_requested": self.n_dev_requested or self.n_dev,
                "dev_log_loss_sharpened": self.dev_log_loss_sharpened,
                "seconds": self.seconds, "reason": self.reason, "prior": None if self.prior is None else
                list(self.prior), "skipped": [dict(s) for s in self.skipped],
                "searched": [dict(s) for s in self.searched], "rule": self.rule, "rule_reason": self.rule_reason,
                "lm_budget": self.lm_budget, "lm_tokens": self.lm_tokens, "max_seconds": self.max_seconds,
                "reproducible": self.reproducible, "shift": None if self.shift is None else dict(self.shift),
                "retrievers": dict(self.retrievers), "retriever": self.retriever,
                "trials": [{"params": dict(t.params), "accuracy": t.accuracy, "log_loss": t.log_loss}
                           for t in self.trials],
                "n_vote_dev": self.n_vote_dev,
                "gain_over_plain": None if self.gain_over_plain is None else dict(
                    zip(("difference", "low", "high"), self.gain_over_plain)),
                "vote_trials": [{"params": dict(t.params), "accuracy": t.accuracy, "log_loss": t.log_loss}
                                for t in self.vote_trials]}


def _config_name(cfg: Mapping[str, Any]) -> str:
    name = "zero-shot" if not cfg["k"] else f"k={cfg['k']}"
    if cfg.get("candidates") is not None:
        name += f", {cfg['candidates']} candidate labels"
    if cfg.get("search") is not None:
        selection = cfg.get("selection", "topk")
        name += ", " + (cfg["search"] if selection == "topk" else f"{cfg['search']}+{selection}")
    return name + (", label-aware" if cfg.get("label_aware") else "")


def _cost(params: Mapping[str, Any]) -> tuple:
    cand = params.get("candidates")
    return (params.get("k", 0), math.inf if cand is None else cand, params.get("knn_k", 0))


def _rank_key(t: Trial) -> tuple:
    return (-t.accuracy, round(t.log_loss, 9), _cost(t.params))


def _plain_trials(trials: Sequence[Trial]) -> dict[str, Trial]:
    """The plain systems found in the grid, by name (:func:`plain_name`): zero-shot, retrieved-k and the kNN
    votes k = 8 and 32, plain and weighted (the best copy of each)."""
    out: dict[str, Trial] = {}
    for t in trials:
        name = plain_name(t.params)
        if name is not None and (name not in out or t.accuracy > out[name].accuracy):
            out[name] = t
    return out
