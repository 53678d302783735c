"""The fine-tuning loop shared by every trainer in ragicl (:func:`train_model`): a public entry point.

:func:`ragicl.training.finetune.finetune`, :func:`ragicl.training.finetune.finetune_lm` and
:func:`ragicl.training.auxloss.train_with_fewshot_aux` differ only in their loss; each hands :func:`train_model`
a ``loss_fn(model, batch, pad_id, progress)`` (and, to train to convergence, an ``eval_fn`` scoring the
dev split). The loop: AdamW, ``transformers.get_linear_schedule_with_warmup`` (linear warm-up from 0,
then linear decay to 0 at the last step), gradient clipping, seeded shuffling, mixed precision on CUDA,
micro-batching under ``max_rows`` rows per forward pass (with example ``lengths`` given, each step's
batch is cut into passes of similar lengths, :func:`plan_passes`, so little compute goes to padding), dev
evaluation with early stopping and the best weights restored, and resumable checkpoints
(:mod:`ragicl.training.checkpoint`). Settings come from a :class:`ragicl.training.config.TrainConfig`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import require
from ..lm.hf import LanguageModel, TransformersLM
from . import checkpoint as ck
from .config import MODES, TrainConfig, default_eval_every

logger = logging.getLogger(__name__)

__all__ = ["FinetuneResult", "StepProgress", "plan_passes", "train_model", "trainable_names"]
LORA_RANK = 8
# What one extra forward+backward pass costs, in padded tokens of one row, when a step's batch is cut into
# passes of similar lengths (:func:`plan_passes`). Measured on a CPU (benchmarks/bench_finetune_padding.py,
# SmolLM2-135M): 64 and 128 were the fastest of 0 … 256 on SST-2 and RTE (1.17x and 1.74x a single padded
# pass). On an accelerator a small pass wastes the device, so there a batch stays whole (up to ``max_rows``).
PASS_OVERHEAD_TOKENS = {"cpu": 128.0}


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


def plan_passes(lengths: Sequence[int], max_rows: int, overhead: float, rows_per_example: int = 1
                ) -> list[list[int]]:
    """Cut a batch into forward passes: lists of positions into ``lengths`` (every position once).

    Each pass is padded to its longest example, so the batch is ordered by length and cut where the padded
    tokens saved outweigh ``overhead`` (the cost of one more pass, in tokens of one row); a pass holds at
    most ``max_rows`` rows (``rows_per_example`` per example). The cut is optimal (dynamic programming over
    the sorted lengths; a huge ``overhead`` gives the fewest passes ``max_rows`` allows). The loss of a batch
    is the same whichever way it is cut: the passes' mean losses are weighted by their sizes.

    >>> plan_passes([30, 5, 6, 31], max_rows=16, overhead=8)
    [[1, 2], [0, 3]]
    >>> plan_passes([30, 5, 6, 31], max_rows=16, overhead=1e9)  # a pass costs more than any padding
    [[1, 2, 0, 3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    size = max(1, max_rows // max(1, rows_per_example))
    cost = [0.0] + [math.inf] * n  # cost[j]: the cheapest cut of the j shortest examples
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(max(0, j - size), j):
            c = cost[i] + (j - i) * rows_per_example * longest + (overhead if i else 0.0)
            if c < cost[j]:
                cost[j], cut[j] = c, i
    passes: list[list[int]] = []
    j = n
    while j > 0:
        passes.append(order[cut[j]:j])
        j = cut[j]
    return passes[::-1]


def train_model(lm: str | LanguageModel, n: int, loss_fn: Callable[..., Any], *, config: TrainConfig,
                kind: str, longest: int, eval_fn: Callable[[Any, list[int], int], tuple[float, float | None]]
                | None = None, strata: Sequence[int] | None = None, rows_per_example: int = 1,
                max_rows: int = 256, out: str | os.PathLike | None = None, inplace: bool = False,
                show_progress: bool | None = None, fingerprint: str = "",
                on_step: Callable[[StepProgress], None] | None = None,
                meta_extra: dict[str, Any] | None = None, lengths: Sequence[int] | None = None
                ) -> FinetuneResult:
    """Train ``lm`` on examples ``0..n-1`` with ``loss_fn(model, batch, pad_id, progress)`` (mean loss).

    ``eval_fn(model, indices, pad_id) -> (mean loss, accuracy or None)`` scores the dev split (carved
    from the ``n`` examples, stratified by ``strata``); without it no dev split is made. ``longest`` is
    the longest example in tokens (checked against the context length). With ``out`` the trained model is
    saved there as a new version with ``ragicl_finetune.json`` (``meta_extra`` added; layout in
    :mod:`ragicl.training.folder`), and resumable checkpoints are written under ``out/checkpoint`` meanwhile;
    a folder holding files ragicl did not make is refused (``FileExistsError``) before anything is trained.
    ``fingerprint`` identifies the data so a checkpoint of other data is never resumed. ``on_step`` is called after every step (e.g. to stop a run). ``lengths``
    (tokens per example) lets a CPU step run its batch as passes of similar lengths (:func:`plan_passes`):
    the same loss and gradient with less padding; without it a step runs slices of ``max_rows`` rows.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    cfg = config
    if cfg.engine == "hf":
        from .hf_engine import train_model_hf

        return train_model_hf(lm, n, loss_fn, config=cfg, kind=kind, longest=longest, eval_fn=eval_fn,
                              strata=strata, rows_per_example=rows_per_example, max_rows=max_rows, out=out,
                              inplace=inplace, show_progress=show_progress, fingerprint=fingerprint,
                              on_step=on_step, meta_extra=meta_extra, lengths=lengths)
    if out is not None:
        ck.check_output(out)  # before any work: a folder of someone else's files is refused now, not after training
    frac = cfg.resolved_dev_fraction if eval_fn is not None else 0.0
    train_idx, dev_idx = ck.split_dev(n, frac, cfg.max_dev_examples, cfg.seed, strata)
    if frac > 0 and not dev_idx:
        logger.warning("only %d example(s): no dev split, so no early stopping", n)
    n_train = len(train_idx)
    per_step = min(cfg.batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / per_step)
    total = cfg.steps if cfg.fast else max(1, math.ceil(cfg.resolved_epochs * steps_per_epoch))
    eval_every = cfg.eval_every or default_eval_every(steps_per_epoch)
    ckpt_every = cfg.checkpoint_every if cfg.checkpoint_every is not None else (eval_every if dev_idx else 200)
    ckpt_every = ckpt_every if out is not None else 0
    fingerprint = ck.data_fingerprint(fingerprint, kind, n, cfg.to_json())

    target = _resolve_lm(lm, inplace, longest)
    base, tokenizer, pad_id = target.model, target.tokenizer, target._pad_id
    device = next(base.parameters()).device
    amp_dtype = _amp_dtype(base, device)
    if base.dtype != torch.float32:  # float32 master weights; autocast runs the matmuls in half precision
        logger.info("training with float32 weights (model was loaded in %s)", base.dtype)
        base.float()
    model = _prepare(base, cfg.mode, cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(cfg.warmup * total), total)
    generator = torch.Generator().manual_seed(cfg.seed)
    st: dict[str, Any] = {"step": 0, "order": [], "losses": [], "history": [], "best_loss": None,
                          "best_step": None, "best_weights": None, "bad": 0, "examples_seen": 0,
                          "seconds": 0.0, "stop_reason": "steps" if cfg.fast else "epochs"}
    saved = ck.load_state(out, fingerprint) if (out is not None and cfg.resume) else None
    if saved is not None:
        _load_trainable(model, saved["weights"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        st.update({k: saved[k] for k in st})
    logger.info("fine-tuning (%s, mode=%s): %d training + %d dev examples, %d steps x %d (%s), lr %g, "
                "%.1fM trainable parameters", kind, cfg.mode, n_train, len(dev_idx), total, per_step,
                "fixed steps" if cfg.fast else f"up to {cfg.resolved_epochs:g} epochs", cfg.lr, n_params / 1e6)

    def evaluate() -> tuple[float, float | None]:
        model.eval()
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            result = eval_fn(model, dev_idx, pad_id)  # type: ignore[misc]
        model.train()
        return result

    model.train()
    t_start = time.perf_counter() - st["seconds"]
    show = show_progress if show_progress is not None else target.show_progress
    bar = tqdm(range(total), initial=st["step"], desc=f"fine-tune ({cfg.mode})",
               disable=(None if show is None else not show))
    micro = max(1, max_rows // max(1, rows_per_example))
    overhead = PASS_OVERHEAD_TOKENS.get(device.type, 1e9)  # 1e9: fewest passes, then least padding
    if lengths is not None and len(lengths) != n:
        raise ValueError(f"lengths has {len(lengths)} entries for {n} examples; give one per example.")
    last_eval = st["history"][-1]["step"] if st["history"] else 0  # start of the train-loss window
    try:
        while st["step"] < total:
            batch: list[int] = []
            while len(batch) < per_step:  # seeded reshuffle at each epoch boundary
                if not st["order"]:
                    st["order"] = torch.randperm(n_train, generator=generator).tolist()
                batch.append(train_idx[st["order"].pop()])
            progress = StepProgress(st["step"], total, st["examples_seen"])
            optimizer.zero_grad(set_to_none=True)
            loss = 0.0
            # Gradient accumulation over micro-batches keeps a forward pass under max_rows sequences
            # (a 77-label task scores 77 prompt+label rows per example); the gradient is the same.
            if lengths is None:
                chunks = [batch[start:start + micro] for start in range(0, len(batch), micro)]
            else:
                chunks = [[batch[i] for i in part] for part in
                          plan_passes([lengths[b] for b in batch], max_rows, overhead, rows_per_example)]
            for chunk in chunks:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    part = loss_fn(model, chunk, pad_id, progress) * (len(chunk) / len(batch))
                part.backward()
                loss += float(part.detach())
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            st["losses"].append(loss)
            st["step"] += 1
            st["examples_seen"] += len(batch)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            step = st["step"]
            if dev_idx and (step % eval_every == 0 or step == total):
                dev_loss, dev_acc = evaluate()
                window = st["losses"][last_eval:]
                last_eval = step
                st["history"].append({"step": step, "examples_seen": st["examples_seen"],
                                      "train_loss": sum(window) / len(window), "dev_loss": dev_loss,
                                      "dev_accuracy": dev_acc})
                if st["best_loss"] is None or dev_loss < st["best_loss"] - cfg.min_delta:
                    st.update(best_loss=dev_loss, best_step=step, best_weights=_trainable_state(model), bad=0)
                else:
                    st["bad"] += 1
                logger.info("step %d/%d: train loss %.4f, dev loss %.4f%s (best %.4f at step %d)", step, total,
                            st["history"][-1]["train_loss"], dev_loss,
                            "" if dev_acc is None else f", dev accuracy {dev_acc:.3f}", st["best_loss"],
                            st["best_step"])
                if st["bad"] >= cfg.patience:
                    st["stop_reason"] = "early_stopping"
            if ckpt_every and step % ckpt_every == 0 and step < total and st["stop_reason"] != "early_stopping":
                st["seconds"] = time.perf_counter() - t_start
                ck.save_state(out, {**st, "fingerprint": fingerprint, "weights": _trainable_state(model),
                                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                    "generator": generator.get_state()})
            if on_step is not None:
                on_step(StepProgress(step - 1, total, st["examples_seen"], loss))
            if st["stop_reason"] == "early_stopping":
                break
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
    return _finish(model=model, target=target, tokenizer=tokenizer, cfg=cfg, st=st, n=n, n_train=n_train,
                   n_dev=len(dev_idx), total=total, n_params=n_params, kind=kind, out=out, inplace=inplace,
                   seconds=time.perf_counter() - t_start, meta_extra=meta_extra)


def _finish(*, model: Any, target: TransformersLM, tokenizer: Any, cfg: TrainConfig, st: dict[str, Any], n: int,
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

