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

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..lm.hf import LanguageModel
from . import checkpoint as ck
from ._common import (  # FinetuneResult, StepProgress, trainable_names: re-exported (public here)
    FinetuneResult,
    StepProgress,
    _amp_dtype,
    _load_trainable,
    _prepare,
    _resolve_lm,
    _trainable_state,
    finish,
    plan_run,
    trainable_names,
)
from .config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["FinetuneResult", "StepProgress", "plan_passes", "train_model", "trainable_names"]

# What one extra forward+backward pass costs, in padded tokens of one row, when a step's batch is cut into
# passes of similar lengths (:func:`plan_passes`). Measured on a CPU (benchmarks/bench_finetune_padding.py,
# SmolLM2-135M): 64 and 128 were the fastest of 0 … 256 on SST-2 and RTE (1.17x and 1.74x a single padded
# pass). On an accelerator a small pass wastes the device, so there a batch stays whole (up to ``max_rows``).
PASS_OVERHEAD_TOKENS = {"cpu": 128.0}


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
    run = plan_run(n, cfg, has_eval=eval_fn is not None, strata=strata, out=out)
    train_idx, dev_idx, per_step, total, eval_every = (run.train_idx, run.dev_idx, run.per_step, run.total,
                                                      run.eval_every)
    n_train = len(train_idx)
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
    return finish(model=model, target=target, tokenizer=tokenizer, cfg=cfg, st=st, n=n, n_train=n_train,
                   n_dev=len(dev_idx), total=total, n_params=n_params, kind=kind, out=out, inplace=inplace,
                   seconds=time.perf_counter() - t_start, meta_extra=meta_extra)
