"""ICL retention: does the fine-tuned model still learn in context, on its own task and on another one?

Lee, Sohn & Lee (2026, arXiv 2602.23197) show that fine-tuning all attention weights can destroy
in-context learning, that updating only the value matrices improves zero-shot accuracy while keeping it,
and that an auxiliary few-shot loss helps the target task at the expense of others. This module measures
it with ragicl's own retriever: for each task, the same k retrieved demonstrations are given to the base
model and to the fine-tuned model, and four accuracies are measured on the same queries —
base 0-shot, base k-shot, fine-tuned 0-shot, fine-tuned k-shot.

* ``base_gain = acc(base k) − acc(base 0)``, ``ft_gain = acc(ft k) − acc(ft 0)``;
* ``retention = ft_gain − base_gain`` (0: fine-tuning kept the ICL gain; < 0: it lost some), with a
  paired bootstrap interval over queries; ``retention_ratio = ft_gain / base_gain`` (NaN when the base
  gain is within 1e-9 of 0).

>>> from ragicl.evaluation.stats import Interval
>>> iv = lambda e: Interval(e, e - 0.05, e + 0.05, 0.95, "percentile-bootstrap")
>>> t = TaskRetention("sst2", 100, 4, iv(0.5), iv(0.8), iv(0.85), iv(0.9), iv(-0.2))
>>> round(t.base_gain, 2), round(t.ft_gain, 2), round(t.retention_ratio, 3)
(0.3, 0.05, 0.167)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..estimators.classifier import ICLClassifier
from ..index.core import ExampleIndex
from ..lm.hf import LanguageModel, TransformersLM
from ..prompt.template import PromptTemplate
from ..stats import Interval, bootstrap_ci
from ..types import Dataset

logger = logging.getLogger(__name__)

__all__ = ["RetentionReport", "TaskRetention", "icl_retention"]

SYSTEMS = ("base 0-shot", "base k-shot", "ft 0-shot", "ft k-shot")


@dataclass(frozen=True)
class TaskRetention:
    """Accuracies (95% bootstrap intervals) of base/fine-tuned × 0/k shots on one task, and the retention."""

    task: str
    n: int
    k: int
    base_zero: Interval
    base_k: Interval
    ft_zero: Interval
    ft_k: Interval
    retention: Interval  # paired: (ft k − ft 0) − (base k − base 0), per query
    correct: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def base_gain(self) -> float:
        return self.base_k.estimate - self.base_zero.estimate

    @property
    def ft_gain(self) -> float:
        return self.ft_k.estimate - self.ft_zero.estimate

    @property
    def retention_ratio(self) -> float:
        return self.ft_gain / self.base_gain if abs(self.base_gain) > 1e-9 else math.nan

    def to_json(self) -> dict:
        return {"task": self.task, "n": self.n, "k": self.k, "base_zero": self.base_zero.to_json(),
                "base_k": self.base_k.to_json(), "ft_zero": self.ft_zero.to_json(), "ft_k": self.ft_k.to_json(),
                "base_gain": self.base_gain, "ft_gain": self.ft_gain, "retention": self.retention.to_json(),
                "retention_ratio": None if math.isnan(self.retention_ratio) else self.retention_ratio}


@dataclass(frozen=True)
class RetentionReport:
    """Retention on the fine-tuning task (``own``) and, optionally, on a task it was not trained on."""

    finetuned: str
    own: TaskRetention
    other: TaskRetention | None = None

    def tasks(self) -> tuple[TaskRetention, ...]:
        return (self.own,) if self.other is None else (self.own, self.other)

    def table(self) -> str:
        """Markdown table: one row per task."""
        head = ("| task | n | k | base 0-shot | base k-shot | ft 0-shot | ft k-shot | base gain | ft gain "
                "| retention (ft gain − base gain) [95% CI] |")
        lines = [head, "|" + "---|" * 10]
        for t in self.tasks():
            lines.append(f"| {t.task} | {t.n} | {t.k} | {t.base_zero} | {t.base_k} | {t.ft_zero} | {t.ft_k} "
                         f"| {t.base_gain:+.3f} | {t.ft_gain:+.3f} | {t.retention} |")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"finetuned": self.finetuned, "tasks": [t.to_json() for t in self.tasks()]}


def _as_lm(lm: str | LanguageModel, batch_size: int, show_progress: bool | None) -> LanguageModel:
    if isinstance(lm, str):
        return TransformersLM(lm, batch_size=batch_size, show_progress=show_progress).load()
    return lm


def _task(name: str, base: LanguageModel, ft: LanguageModel, index: ExampleIndex, test: Dataset, k: int,
          template: PromptTemplate | None, max_prompt_tokens: int | None, n_boot: int, seed: int,
          show_progress: bool | None) -> TaskRetention:
    if len(test) == 0:
        raise ValueError(f"the {name!r} test set is empty.")
    y = test.label_array()
    correct: dict[str, np.ndarray] = {}
    for system, lm, shots in zip(SYSTEMS, (base, base, ft, ft), (0, k, 0, k)):
        clf = ICLClassifier(lm, template, k=shots, max_prompt_tokens=max_prompt_tokens,
                            show_progress=show_progress, seed=seed).fit(index)
        if tuple(clf.classes_) != tuple(test.labels):
            raise ValueError(f"{name}: index labels {list(clf.classes_)} differ from test labels {list(test.labels)}.")
        probs = clf.predict_proba(list(test.examples))
        correct[system] = (probs.argmax(1) == y).astype(np.float64)
        logger.info("retention %s: %s accuracy %.3f", name, system, correct[system].mean())
    ivs = [bootstrap_ci(correct[s], n_boot=n_boot, seed=seed) for s in SYSTEMS]
    paired = (correct["ft k-shot"] - correct["ft 0-shot"]) - (correct["base k-shot"] - correct["base 0-shot"])
    return TaskRetention(name, len(test), k, *ivs, bootstrap_ci(paired, n_boot=n_boot, seed=seed), correct)


def icl_retention(base_lm: str | LanguageModel, finetuned_lm: str | LanguageModel, *,
                  own: tuple[ExampleIndex, Dataset], other: tuple[ExampleIndex, Dataset] | None = None,
                  k: int = 4, templates: tuple[PromptTemplate | None, PromptTemplate | None] = (None, None),
                  max_prompt_tokens: int | None = 1024, n_boot: int = 1000, seed: int = 0,
                  batch_size: int = 8, show_progress: bool | None = None,
                  names: tuple[str, str] | None = None) -> RetentionReport:
    """Measure ICL retention of ``finetuned_lm`` against ``base_lm`` with ``k`` retrieved shots.

    ``own`` is (index, test) of the task the model was fine-tuned on, ``other`` of a different task;
    ``templates`` gives each task's template (None: built from the index's fields). Models given by
    name/path are loaded once and shared by the four systems of each task.

    >>> rep = icl_retention("SmolLM2-135M-Instruct", "runs/ft-value", own=(idx, test), k=4)  # doctest: +SKIP
    >>> print(rep.table())                                                                  # doctest: +SKIP
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer (the shots whose gain is measured); got {k!r}.")
    base = _as_lm(base_lm, batch_size, show_progress)
    ft = _as_lm(finetuned_lm, batch_size, show_progress)
    tasks: list[TaskRetention] = []
    pairs: list[Any] = [own] + ([other] if other is not None else [])
    for i, (index, test) in enumerate(pairs):
        name = names[i] if names else (test.name or ("own" if i == 0 else "other"))
        tasks.append(_task(name, base, ft, index, test, k, templates[i], max_prompt_tokens, n_boot, seed,
                           show_progress))
    return RetentionReport(getattr(ft, "name", str(finetuned_lm)), tasks[0], tasks[1] if len(tasks) > 1 else None)
