"""What both fine-tuning loops share (:func:`ragicl.training.trainer.train_model`, ragicl's own, and
:func:`ragicl.training.hf_engine.train_model_hf`, on ``transformers.Trainer``): the result record, the
trainable parameters of each mode, the model to train, and the end of a run (:func:`finish`: best weights
restored, LoRA merged, the convergence record, the versioned save)."""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import require
from ..lm.hf import LanguageModel, TransformersLM
from . import checkpoint as ck
from .config import MODES, TrainConfig, default_eval_every

logger = logging.getLogger("ragicl.training.trainer")

LORA_RANK = 8


@dataclass(frozen=True)
class RunPlan:
    """The shape of a run, the same for both loops: the train/dev split, examples per step, steps."""

    train_idx: list[int]
    dev_idx: list[int]
    per_step: int
    steps_per_epoch: int
    total: int
    eval_every: int


def plan_run(n: int, cfg: TrainConfig, *, has_eval: bool, strata: Any, out: Any) -> RunPlan:
    """Check ``out`` (a folder of someone else's files is refused before any work), split the dev set
    (seeded, stratified) and count the steps of a run over ``n`` examples."""
    if out is not None:
        ck.check_output(out)
    frac = cfg.resolved_dev_fraction if has_eval else 0.0
    train_idx, dev_idx = ck.split_dev(n, frac, cfg.max_dev_examples, cfg.seed, strata)
    if frac > 0 and not dev_idx:
        logger.warning("only %d example(s): no dev split, so no early stopping", n)
    per_step = min(cfg.batch_size, len(train_idx))
    steps_per_epoch = math.ceil(len(train_idx) / per_step)
    total = cfg.steps if cfg.fast else max(1, math.ceil(cfg.resolved_epochs * steps_per_epoch))
    return RunPlan(train_idx, dev_idx, per_step, steps_per_epoch, total,
                   cfg.eval_every or default_eval_every(steps_per_epoch))


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning run produced: the saved folder (or None), wall seconds, per-step losses.

    ``steps`` is the number of optimizer steps run (including those before a resume). ``converged`` is
    True when early stopping ended the run (the rule is in ``ragicl.training.checkpoint.CONVERGENCE_RULE``);
    ``history`` has one dict per dev evaluation (step, examples_seen, train_loss, dev_loss,
    dev_accuracy). ``lm`` is the trained model wrapped as a :class:`TransformersLM` (LoRA merged); it is
    not part of equality or the repr.
    """

    path: Path | None
    seconds: float
    losses: tuple[float, ...]
    mode: str
    steps: int
    lm: TransformersLM | None = field(default=None, compare=False, repr=False)
    converged: bool = False
    stop_reason: str = "steps"
    examples_seen: int = 0
    dev_loss: float | None = None
    dev_accuracy: float | None = None
    history: tuple[dict, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class StepProgress:
    """Where training is: the 0-based optimizer ``step`` about to run (or just run, in ``on_step``) of
    ``total_steps`` planned (the epoch or step limit; early stopping may end sooner)."""

    step: int
    total_steps: int
    examples_seen: int = 0
    loss: float | None = None


def trainable_names(model: Any, mode: str) -> list[str]:
    """Names of the parameters ``mode`` trains in ``model`` (for ``"lora"``: the targeted weights).

    Matching is generic: a parameter is selected when its module's name ends with one of the mode's
    suffixes (``...self_attn.v_proj.weight`` for ``"value"``). Raises ``ValueError`` if none match.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}.")
    names = [name for name, _ in model.named_parameters()]
    suffixes = MODES[mode]
    if not suffixes:
        return names
    chosen = [n for n in names if n.rsplit(".", 1)[0].split(".")[-1] in suffixes]
    if not chosen:
        modules = sorted({n.rsplit(".", 1)[0].split(".")[-1] for n in names})
        raise ValueError(
            f"mode {mode!r} trains modules named {list(suffixes)}, but this model "
            f"({type(model).__name__}) has none; its modules are named {modules[:20]}. "
            "Use mode='full', or a model with llama-style attention projections.")
    return chosen


def _prepare(model: Any, mode: str, seed: int) -> Any:
    """Freeze/unfreeze for ``mode``; for LoRA wrap with peft. Returns the model to train."""
    chosen = set(trainable_names(model, mode))
    if mode == "lora":
        import torch

        peft = require("peft", "finetune")
        targets = sorted({n.rsplit(".", 1)[0].split(".")[-1] for n in chosen})
        config = peft.LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0,
                                 target_modules=targets, bias="none", task_type="CAUSAL_LM")
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            torch.manual_seed(seed)
            model = peft.get_peft_model(model, config)
        return model
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
    return model


def _unwrap(model: Any, mode: str) -> Any:
    """After training: merge LoRA into the base weights; make every parameter trainable-free."""
    if mode == "lora":
        model = model.merge_and_unload()
    for param in model.parameters():
        param.requires_grad_(False)
    model.eval()
    return model


def _resolve_lm(lm: str | LanguageModel, inplace: bool, longest: int) -> TransformersLM:
    """The model to train (loaded; a copy unless ``inplace``), after checking the data fits its context."""
    if isinstance(lm, (str, os.PathLike)):
        lm = TransformersLM(str(lm), dtype="float32")
        inplace = True  # our own instance: nothing to protect
    if not isinstance(lm, TransformersLM):
        raise TypeError(f"finetune needs a model name/path or a TransformersLM, got {type(lm).__name__}; "
                        "other LanguageModel implementations cannot be trained here.")
    lm.load()
    if longest > lm.context_length:
        raise ValueError(f"the longest training example needs {longest} tokens (prompt + target), over the "
                         f"model's context length of {lm.context_length}; drop or shorten it.")
    if inplace:
        return lm
    return TransformersLM.from_model(copy.deepcopy(lm.model), lm.tokenizer, name=lm.name,
                                     batch_size=lm.batch_size, show_progress=lm.show_progress,
                                     share_prefix=lm.share_prefix)


def _amp_dtype(model: Any, device: Any) -> Any:
    """Half dtype for autocast: the model's own if it was loaded in half precision, bf16/fp16 on CUDA."""
    import torch

    if model.dtype in (torch.float16, torch.bfloat16):
        return model.dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def _trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: Any, weights: dict[str, Any]) -> None:
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))


def finish(*, model: Any, target: TransformersLM, tokenizer: Any, cfg: TrainConfig, st: dict[str, Any], n: int,
            n_train: int, n_dev: int, total: int, n_params: int, kind: str, out: str | os.PathLike | None,
            inplace: bool, seconds: float, meta_extra: dict[str, Any] | None,
            engine: dict[str, Any] | None = None) -> FinetuneResult:
    """The end of a run, whichever loop ran it: the best dev-loss weights restored, LoRA merged, the
    convergence record, the model saved as a new version of ``out`` (``engine``: what ran it, in the
    record), the :class:`FinetuneResult`."""
    if st["best_weights"] is not None and st["best_step"] != st["step"]:
        logger.info("restoring the best dev-loss weights (step %d)", st["best_step"])
        _load_trainable(model, st["best_weights"])
    losses = st["losses"]
    conv = ck.convergence_meta(history=st["history"], stop_reason=st["stop_reason"], has_dev=bool(n_dev),
                               patience=cfg.patience, fast=cfg.fast, best_step=st["best_step"])
    logger.info("fine-tuned %d steps in %.1f s; loss %.4f -> %.4f; %s", st["step"], seconds, losses[0],
                losses[-1], "converged (early stopping)" if conv["converged"] else
                f"NOT converged ({conv['stop_reason']})")
    trained = _unwrap(model, cfg.mode)
    if inplace:
        target._model = trained
        result_lm = target
    else:
        result_lm = TransformersLM.from_model(trained, tokenizer, name=target.name,
                                              batch_size=target.batch_size, show_progress=target.show_progress,
                                              share_prefix=target.share_prefix)
    path = None
    if out is not None:
        flat = {k: v for k, v in cfg.to_json().items() if not (k == "objective" and v == "labels")}
        meta = {"kind": kind, "base": target.name, **flat, "config": cfg.to_json(), "steps": st["step"],
                "planned_steps": total, "examples": n, "train_examples": n_train, "dev_examples": n_dev,
                "examples_seen": st["examples_seen"], "epochs_seen": st["examples_seen"] / n_train,
                "trainable_parameters": n_params, "seconds": round(seconds, 3), "final_loss": losses[-1],
                "best_step": st["best_step"], **conv, "losses": losses, "dev_history": st["history"],
                **(engine or {}), **(meta_extra or {})}
        path = ck.save_model(trained, tokenizer, out, meta, refuse_foreign=False)  # checked before training
    return FinetuneResult(path, seconds, tuple(losses), cfg.mode, st["step"], result_lm, conv["converged"],
                          st["stop_reason"], st["examples_seen"], conv["dev_loss"], conv["dev_accuracy"],
                          tuple(st["history"]))
