"""The fine-tuning loop run by Hugging Face ``transformers.Trainer`` (``TrainConfig(engine="hf")``).

The same run as :func:`ragicl.training.trainer.train_model`: the objective is ragicl's ``loss_fn(model,
batch, pad_id, progress)`` (label-only loss, gold loss, the auxiliary few-shot loss: a ``compute_loss``
override), the trainable parameters are chosen by ``mode`` before the optimizer is built (value-only,
attention, LoRA), AdamW with linear warm-up and decay over the same number of steps, gradient clipping, the
same seeded, stratified dev split scored by ``eval_fn`` on the same schedule, early stopping after
``patience`` evaluations without improvement and the best dev-loss weights restored, and the output folder
written by ragicl (:mod:`ragicl.training.folder`: a new version behind an atomically replaced pointer, a
folder of someone else's files refused before training). What ``Trainer`` adds: its launchers (mixed
precision on CUDA, ``torchrun``/``accelerate`` multi-GPU, FSDP and DeepSpeed through ``TrainingArguments``).

Differences, by design or not yet done:

* ``Trainer`` writes its own ``checkpoint-N`` folders, rotated by deletion, which ragicl's folder contract
  does not allow in the user's folder; it runs in a private temporary folder with saving off, so this engine
  writes **no resumable checkpoint** (``resume`` has no effect; ragicl's own loop resumes).
* A step's batch is cut into equal micro-batches (``gradient_accumulation_steps``), not into passes of
  similar lengths (:func:`~ragicl.training.trainer.plan_passes`), and ``Trainer`` shuffles with its own
  seeded sampler: the same data, settings and seed give the same run here, not the same order as ragicl's loop.
* Weight decay skips biases and norms (``Trainer``'s rule); ragicl's default weight decay is 0.

>>> from ragicl.training.config import TrainConfig
>>> TrainConfig(engine="hf", steps=8).to_json()["engine"]
'hf'
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._common import (
    FinetuneResult,
    StepProgress,
    _amp_dtype,
    _prepare,
    _resolve_lm,
    _trainable_state,
    finish,
    plan_run,
)
from .config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["micro_batches", "train_model_hf"]


def micro_batches(per_step: int, max_rows: int, rows_per_example: int) -> tuple[int, int]:
    """``(examples per micro-batch, micro-batches per step)`` so a forward pass holds at most ``max_rows``
    rows and a step about ``per_step`` examples (at most one example more per micro-batch).

    >>> micro_batches(16, 256, 1), micro_batches(16, 256, 77), micro_batches(5, 2, 1)
    ((16, 1), (3, 6), (2, 3))
    """
    most = max(1, max_rows // max(1, rows_per_example))
    accumulate = math.ceil(per_step / most)
    return math.ceil(per_step / accumulate), accumulate


def train_model_hf(lm: Any, n: int, loss_fn: Callable[..., Any], *, config: TrainConfig, kind: str, longest: int,
                   eval_fn: Callable[[Any, list[int], int], tuple[float, float | None]] | None = None,
                   strata: Sequence[int] | None = None, rows_per_example: int = 1, max_rows: int = 256,
                   out: str | os.PathLike | None = None, inplace: bool = False, show_progress: bool | None = None,
                   fingerprint: str = "", on_step: Callable[[StepProgress], None] | None = None,
                   meta_extra: dict[str, Any] | None = None, lengths: Sequence[int] | None = None
                   ) -> FinetuneResult:
    """:func:`ragicl.training.trainer.train_model` run by ``transformers.Trainer`` (same arguments and
    result; ``fingerprint`` and ``lengths`` are not used: no checkpoint is written, micro-batches are equal)."""
    import torch
    import transformers
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    cfg = config
    run = plan_run(n, cfg, has_eval=eval_fn is not None, strata=strata, out=out)
    train_idx, dev_idx, per_step, total, eval_every = (run.train_idx, run.dev_idx, run.per_step, run.total,
                                                      run.eval_every)
    n_train = len(train_idx)
    micro, accumulate = micro_batches(per_step, max_rows, rows_per_example)

    target = _resolve_lm(lm, inplace, longest)
    base, tokenizer, pad_id = target.model, target.tokenizer, target._pad_id
    device = next(base.parameters()).device
    amp = _amp_dtype(base, device)
    if base.dtype != torch.float32:
        base.float()
    model = _prepare(base, cfg.mode, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    st: dict[str, Any] = {"step": 0, "losses": [], "history": [], "best_loss": None, "best_step": None,
                          "best_weights": None, "bad": 0, "examples_seen": 0,
                          "stop_reason": "steps" if cfg.fast else "epochs"}
    pending: list[float] = []  # the micro-batch losses of the step being run

    class Run(Trainer):
        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, **_: Any) -> Any:
            batch = inputs["idx"]
            loss = loss_fn(model, batch, pad_id, StepProgress(st["step"], total, st["examples_seen"]))
            pending.append(float(loss.detach()))
            st["examples_seen"] += len(batch)
            return loss

    class Schedule(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
            step = st["step"] = state.global_step
            loss = sum(pending) / max(len(pending), 1)  # Trainer averages the micro-batches equally too
            pending.clear()
            st["losses"].append(loss)
            if dev_idx and (step % eval_every == 0 or step == total):
                _evaluate(model, step)
                if st["bad"] >= cfg.patience:
                    st["stop_reason"] = "early_stopping"
                    control.should_training_stop = True
            if on_step is not None:
                on_step(StepProgress(step - 1, total, st["examples_seen"], loss))
            return control

    last = [0]

    def _evaluate(model: Any, step: int) -> None:
        was_training = model.training
        model.eval()
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            dev_loss, dev_acc = eval_fn(model, dev_idx, pad_id)  # type: ignore[misc]
        if was_training:
            model.train()
        window = st["losses"][last[0]:]
        last[0] = step
        st["history"].append({"step": step, "examples_seen": st["examples_seen"],
                              "train_loss": sum(window) / len(window), "dev_loss": dev_loss, "dev_accuracy": dev_acc})
        if st["best_loss"] is None or dev_loss < st["best_loss"] - cfg.min_delta:
            st.update(best_loss=dev_loss, best_step=step, best_weights=_trainable_state(model), bad=0)
        else:
            st["bad"] += 1
        logger.info("step %d/%d: train loss %.4f, dev loss %.4f%s (best %.4f at step %d)", step, total,
                    st["history"][-1]["train_loss"], dev_loss, "" if dev_acc is None else
                    f", dev accuracy {dev_acc:.3f}", st["best_loss"], st["best_step"])

    show = show_progress if show_progress is not None else target.show_progress
    logger.info("fine-tuning with transformers.Trainer (%s, mode=%s): %d training + %d dev examples, %d steps x "
                "%d (%d x %d), lr %g, %.1fM trainable parameters", kind, cfg.mode, n_train, len(dev_idx), total,
                micro * accumulate, accumulate, micro, cfg.lr, n_params / 1e6)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ragicl-hf-trainer-") as scratch:
        args = TrainingArguments(
            output_dir=scratch, max_steps=total, per_device_train_batch_size=micro,
            gradient_accumulation_steps=accumulate, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
            warmup_steps=round(cfg.warmup * total), lr_scheduler_type="linear", max_grad_norm=cfg.max_grad_norm,
            seed=cfg.seed, data_seed=cfg.seed, save_strategy="no", eval_strategy="no", logging_strategy="no",
            report_to=[], remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=False,
            disable_tqdm=show is False, use_cpu=device.type == "cpu",
            bf16=amp is torch.bfloat16 and device.type == "cuda", fp16=amp is torch.float16 and device.type == "cuda")
        trainer = Run(model=model, args=args, train_dataset=_Indices(train_idx),
                      data_collator=lambda rows: {"idx": list(rows)}, callbacks=[Schedule()])
        trainer.remove_callback(PrinterCallback)  # progress goes to ragicl's logger, not print()
        trainer.train()
    model = trainer.model
    return finish(model=model, target=target, tokenizer=tokenizer, cfg=cfg, st=st, n=n, n_train=n_train,
                   n_dev=len(dev_idx), total=total, n_params=n_params, kind=kind, out=out, inplace=inplace,
                   seconds=time.perf_counter() - t0, meta_extra=meta_extra,
                   engine={"trainer": f"transformers.Trainer {transformers.__version__}",
                           "micro_batches": [micro, accumulate]})


class _Indices:
    """The training examples as ``Trainer`` reads a dataset: their positions (``loss_fn`` builds the rows)."""

    def __init__(self, positions: Sequence[int]) -> None:
        self.positions = list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> int:
        return self.positions[i]
