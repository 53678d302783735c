"""Fine-tuning with an auxiliary few-shot loss whose shots come from ragicl's own retriever.

Lee, Sohn & Lee (2026, arXiv 2602.23197) add to the zero-shot fine-tuning objective a few-shot term —
the same target predicted after k demonstrations — with a weight annealed over training; it helps
in-context learning on the target task and hurts it on other tasks. Here, for training example i at step
t of T:

    loss = CE(label_i | zero-shot prompt_i) + λ_t · CE(label_i | k-shot prompt_i)

The k-shot prompt is what :meth:`ragicl.ICLClassifier.prompts` builds at evaluation: the k nearest
training examples from the index (the example itself and its exact duplicates excluded by the
retriever), packed under ``max_prompt_tokens``. Prompts are built lazily, only for the examples a batch
draws, and cached.

**Schedule (an approximation).** Only the paper's abstract was accessible while this was written, so its
exact annealing rule is not reproduced. :func:`anneal` implements documented stand-ins, λ0 → 0 over the
run: ``"linear"`` λ_t = λ0·(1 − t/T) (default), ``"cosine"`` λ_t = λ0·½(1 + cos(π t/T)), and
``"constant"`` λ_t = λ0 (no annealing, for ablations).

The training loop is :func:`ragicl.training.trainer.train_model`, the one :func:`ragicl.training.finetune.finetune` uses
(same modes, optimizer, schedule, dev split, early stopping, checkpoint format); only the loss differs. The
settings are a :class:`ragicl.training.config.TrainConfig`; T is the planned number of steps (the step limit,
or the epoch limit when training to convergence). The dev split is scored by the zero-shot label
cross-entropy, the quantity the reference is compared on. The per-step loss components are kept in memory
only: a resumed run records them from the resume point on.

>>> [round(anneal(t, 4, 1.0, "linear"), 2) for t in range(4)]
[1.0, 0.75, 0.5, 0.25]
>>> [round(anneal(t, 4, 2.0, "cosine"), 3) for t in (0, 2)]
[2.0, 1.0]
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from .._exceptions import DataError
from ..estimators.classifier import ICLClassifier
from ..index.core import ExampleIndex
from ..lm.hf import LanguageModel, TransformersLM
from ..models import DEFAULT_LM
from ..prompt.step import PromptStep, make_packer
from ..prompt.template import PromptTemplate
from ..types import Dataset
from .checkpoint import data_fingerprint
from .config import TrainConfig, resolve_config
from .finetune import (
    FinetuneResult,
    check_objective,
    classification_eval,
    classification_loss,
    rows_per_example,
)
from .trainer import StepProgress, train_model

logger = logging.getLogger(__name__)

__all__ = ["SCHEDULES", "AuxFinetuneResult", "anneal", "train_with_fewshot_aux"]

SCHEDULES = ("linear", "cosine", "constant")


def anneal(step: int, steps: int, lambda0: float, schedule: str = "linear") -> float:
    """Weight λ_t of the few-shot loss at 0-based ``step`` of ``steps`` (see the module docstring)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}; got {schedule!r}.")
    if steps <= 0 or not 0 <= step < steps:
        raise ValueError(f"need 0 <= step < steps; got step={step}, steps={steps}.")
    frac = step / steps
    if schedule == "linear":
        return lambda0 * (1.0 - frac)
    if schedule == "cosine":
        return lambda0 * 0.5 * (1.0 + math.cos(math.pi * frac))
    return float(lambda0)


@dataclass(frozen=True)
class AuxFinetuneResult:
    """The fine-tuning result plus the two loss components and λ_t at every step."""

    finetune: FinetuneResult
    zero_shot_losses: tuple[float, ...]
    fewshot_losses: tuple[float, ...]
    lambdas: tuple[float, ...]
    k: int
    schedule: str
    lambda0: float

    @property
    def path(self) -> Any:
        return self.finetune.path

    @property
    def seconds(self) -> float:
        return self.finetune.seconds

    def to_json(self) -> dict:
        return {"path": str(self.finetune.path), "seconds": self.finetune.seconds, "mode": self.finetune.mode,
                "steps": self.finetune.steps, "losses": list(self.finetune.losses), "k": self.k,
                "schedule": self.schedule, "lambda0": self.lambda0,
                "zero_shot_losses": list(self.zero_shot_losses), "fewshot_losses": list(self.fewshot_losses),
                "lambdas": list(self.lambdas)}


def train_with_fewshot_aux(train: Dataset, index: ExampleIndex, *, lm: str | LanguageModel = DEFAULT_LM,
                           template: PromptTemplate | None = None, k: int = 4, lambda0: float = 1.0,
                           schedule: str = "linear", config: TrainConfig | None = None,
                           mode: str | None = None, steps: int | None = None, batch_size: int | None = None,
                           lr: float | None = None, max_prompt_tokens: int | None = 1024,
                           seed: int | None = None, out: str | os.PathLike | None = None,
                           show_progress: bool | None = None, objective: str | None = None) -> AuxFinetuneResult:
    """Fine-tune ``lm`` on ``train`` with loss CE(zero-shot) + λ_t·CE(k-shot, retrieved from ``index``).

    Training settings come from ``config`` (default ``TrainConfig(batch_size=8)``: to convergence, early
    stopping on a dev split); ``mode``, ``steps``, ``batch_size``, ``lr``, ``seed``, ``objective`` override
    its fields. ``objective`` is that of :func:`ragicl.training.finetune.finetune` for both terms: ``"labels"`` (cross-entropy
    over the labels) or ``"gold"`` (the gold label's NLL alone, cheaper with many multi-token labels).

    ``index`` is normally built over ``train`` (the retriever excludes each example itself). Examples
    whose zero-shot prompt exceeds ``max_prompt_tokens`` are skipped. ``lm`` is a name/path or a
    :class:`~ragicl.lm.hf.TransformersLM` (copied, never modified). Returns an :class:`AuxFinetuneResult`;
    with ``out``, the checkpoint is saved like :func:`ragicl.training.finetune.finetune` does (its
    ``ragicl_finetune.json`` includes the auxiliary settings and loss components).

    >>> res = train_with_fewshot_aux(train, index, k=4, steps=40, out="runs/ft-aux")   # doctest: +SKIP
    >>> res.lambdas[0], res.lambdas[-1]                                                # doctest: +SKIP
    (1.0, 0.025)
    """
    if len(train) == 0 or train.task != "classification" or not train.labels:
        raise DataError("train_with_fewshot_aux needs a non-empty classification dataset with a label set.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer (shots of the auxiliary loss); got {k!r}.")
    if not (isinstance(lambda0, (int, float)) and math.isfinite(lambda0) and lambda0 >= 0):
        raise ValueError(f"lambda0 must be a finite number ≥ 0; got {lambda0!r}.")
    anneal(0, 1, lambda0, schedule)  # validates the schedule name early
    cfg = resolve_config(config or TrainConfig(batch_size=8), mode=mode, steps=steps, batch_size=batch_size, lr=lr,
                  seed=seed, objective=objective)
    objective = cfg.objective
    check_objective(objective)
    if tuple(index.dataset.labels) != tuple(train.labels):
        raise DataError(f"index labels {list(index.dataset.labels)} differ from train labels {list(train.labels)}.")
    model = lm if not isinstance(lm, str) else TransformersLM(lm, dtype="float32", show_progress=show_progress)
    if hasattr(model, "load"):
        model.load()
    template = template or PromptTemplate.default(train.input_fields)
    packer = make_packer(model, template, max_prompt_tokens=max_prompt_tokens, labels=train.labels)
    lookup = {label: i for i, label in enumerate(train.labels)}
    examples, zero, targets = [], [], []
    for ex, packed in zip(train.examples, PromptStep(packer).pack_each(train.examples)):
        if packed is None:  # the query alone exceeds the budget
            continue
        zero.append(list(packed.token_ids))
        examples.append(ex)
        targets.append(lookup[ex.label])
    if not examples:
        raise DataError(f"every training example exceeds max_prompt_tokens={max_prompt_tokens}.")
    if len(examples) < len(train):
        logger.warning("skipped %d examples longer than max_prompt_tokens", len(train) - len(examples))
    label_ids = [list(packer.answer_ids(label)) for label in train.labels]
    shots = ICLClassifier(model, template, k=k, max_prompt_tokens=max_prompt_tokens, seed=cfg.seed,
                          show_progress=False).fit(index)
    fewshot: dict[int, list[int]] = {}
    zs_losses: list[float] = []
    fs_losses: list[float] = []
    lambdas: list[float] = []

    def loss_fn(net: Any, batch: list[int], pad_id: int, progress: StepProgress) -> Any:
        lam = anneal(progress.step, progress.total_steps, float(lambda0), schedule)
        y = [targets[i] for i in batch]
        loss_zero = classification_loss(net, [zero[i] for i in batch], y, label_ids, pad_id, objective)
        loss = loss_zero
        fs_value = math.nan
        if lam > 0:
            missing = [i for i in batch if i not in fewshot]
            if missing:
                for i, p in zip(missing, shots.prompts([examples[i] for i in missing])):
                    fewshot[i] = list(p.token_ids)
            loss_fs = classification_loss(net, [fewshot[i] for i in batch], y, label_ids, pad_id, objective)
            loss = loss_zero + lam * loss_fs
            fs_value = float(loss_fs.detach())
        lambdas.append(lam)
        zs_losses.append(float(loss_zero.detach()))
        fs_losses.append(fs_value)
        return loss

    logger.info("fine-tuning with auxiliary %d-shot loss (λ0=%g, %s anneal), %d examples", k, lambda0,
                schedule, len(examples))
    budget = getattr(shots.packer_, "budget_", None) or max(map(len, zero))
    result = train_model(model, len(examples), loss_fn, config=cfg, kind="classification",
                         longest=max(budget, max(map(len, zero))) + max(map(len, label_ids)),
                         eval_fn=classification_eval(zero, targets, label_ids), strata=targets,
                         rows_per_example=rows_per_example(label_ids, objective), out=out, inplace=False,
                         show_progress=show_progress, on_step=None,
                         fingerprint=data_fingerprint(zero, targets, label_ids, k, lambda0, schedule),
                         meta_extra={"n_labels": len(label_ids), "aux_fewshot": {
                             "k": k, "lambda0": lambda0, "schedule": schedule,
                             "schedule_note": "approximation of Lee, Sohn & Lee 2026 (annealed λ0 → 0)",
                             "zero_shot_losses": zs_losses, "fewshot_losses": fs_losses, "lambdas": lambdas}})
    return AuxFinetuneResult(result, tuple(zs_losses), tuple(fs_losses), tuple(lambdas), k, schedule,
                             float(lambda0))
