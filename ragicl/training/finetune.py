"""Fine-tune the base LM on the same prompts the ICL systems see: the reference side of the gap.

Classification (:func:`finetune`): each training example is its zero-shot prompt (token ids rendered by
the caller with the evaluation template) and a target label index. A label's logit is the summed
log-probability of its continuation after the prompt, exactly what
:meth:`ragicl.lm.hf.TransformersLM.score_continuations` computes at evaluation; the loss is cross-entropy of
the softmax over labels. When every label is one distinct token this is one pass per batch keeping only
the last position's logits (``logits_to_keep=1``). ``objective="gold"`` trains instead on the negative
log-likelihood of the gold label's tokens alone (plain supervised fine-tuning): one row per example
whatever the number of labels, so a 77-label task with multi-token labels trains ~C× cheaper per step;
it raises the gold label's probability without pushing the other labels down explicitly.

Generation (:func:`finetune_lm`): the standard causal-LM loss on the output tokens only.

Settings come from a :class:`ragicl.training.config.TrainConfig` (``config=``; the keyword arguments
``mode=``, ``steps=``, ``lr=``... override its fields). By default a run trains **to convergence**: up to
10 epochs, early stopping on the dev-split loss (a seeded, label-stratified 10% of the training data),
best weights restored; ``steps=N`` is the fast fixed-length run, recorded as not converged. The loop is
:func:`ragicl.training.trainer.train_model` (AdamW, linear warm-up/decay, clipping, resumable checkpoints).
``mode`` picks what trains: ``"full"`` (all parameters), ``"attention"`` (q/k/v/o projections),
``"value"`` (v projections), ``"lora"`` (peft LoRA, r=8 on q and v; merged before saving so the saved
folder loads as a plain model). A model passed in is copied first unless ``inplace=True``.

>>> from ragicl.training.finetune import finetune                                             # doctest: +SKIP
>>> res = finetune("SmolLM2-135M-Instruct", prompts, targets, label_ids, out="runs/ft")  # doctest: +SKIP
>>> res.converged, res.steps, res.dev_loss                                          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from ..lm import scoring
from ..lm.hf import LanguageModel, TransformersLM
from .checkpoint import data_fingerprint, save_model
from .config import MODES, OBJECTIVES, TrainConfig, resolve_config
from .trainer import FinetuneResult, StepProgress, train_model, trainable_names

logger = logging.getLogger(__name__)

__all__ = ["MODES", "OBJECTIVES", "FinetuneResult", "TrainConfig", "finetune", "finetune_lm", "label_loss",
           "save_model", "trainable_names"]

# ---------------------------------------------------------------------------- losses

_MAX_ROWS = 256  # prompt+label rows in one training forward pass, at most (micro-batching above this)


def _single_token(label_ids: Sequence[Sequence[int]]) -> bool:
    """True when every label is one token and the tokens differ: one last-position pass scores all."""
    firsts = [ids[0] for ids in label_ids]
    return all(len(ids) == 1 for ids in label_ids) and len(set(firsts)) == len(firsts)


def _label_logits(model: Any, prompts: list[list[int]], label_ids: list[list[int]], pad_id: int) -> Any:
    """``(B, L)`` label logits: summed continuation log-probs (one pass if labels are single tokens)."""
    import torch

    if _single_token(label_ids):
        logits = scoring.last_logits(model, prompts, pad_id)
        # restricting raw logits equals restricting log-probs up to a per-row constant: same softmax
        return logits[:, torch.tensor([ids[0] for ids in label_ids], device=logits.device)]
    # one pass over each prompt shared by all labels, then only the labels' tokens on its KV cache
    # (scoring.continuation_scores, the same function TransformersLM.score_continuations uses)
    return scoring.continuation_scores(model, prompts, label_ids, pad_id)


def _check_data(prompts: Sequence[Sequence[int]], what: str, n: int | None = None) -> list[list[int]]:
    out = [[int(t) for t in p] for p in prompts]
    if not out:
        raise ValueError(f"{what} is empty; expected at least one training example.")
    if n is not None and len(out) != n:
        raise ValueError(f"{what} has {len(out)} entries but prompts has {n}; they must pair up.")
    for i, p in enumerate(out):
        if not p:
            raise ValueError(f"{what}[{i}] is empty; every entry needs at least one token id.")
    return out


def label_loss(lm: TransformersLM, prompts: Sequence[Sequence[int]], targets: Sequence[int],
               label_ids: Sequence[Sequence[int]], *, batch_size: int = 8) -> float:
    """Mean label cross-entropy of ``lm`` on the given examples (no gradients): the fine-tuning objective."""
    import torch

    ids = _check_data(prompts, "prompts")
    labels = _check_data(label_ids, "label_ids")
    tgt = _check_targets(targets, len(ids), len(labels))
    model, total = lm.model, 0.0
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            logits = _label_logits(model, ids[start:start + batch_size], labels, lm._pad_id)
            y = torch.tensor(tgt[start:start + batch_size], device=logits.device)
            total += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
    return total / len(ids)


def check_objective(objective: str) -> None:
    """Raise a clear ``ValueError`` unless ``objective`` is one of :data:`OBJECTIVES`."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}: 'labels' trains the "
                         "softmax over the labels, 'gold' the gold label's likelihood alone.")


def classification_loss(model: Any, prompts: list[list[int]], targets: list[int],
                        label_ids: list[list[int]], pad_id: int, objective: str = "labels") -> Any:
    """Mean training loss of a batch, with gradients: label cross-entropy or gold-label NLL (``objective``)."""
    import torch

    if objective == "gold":
        return -scoring.sequence_logprobs(model, prompts, [label_ids[t] for t in targets], pad_id).mean()
    logits = _label_logits(model, prompts, label_ids, pad_id)
    return torch.nn.functional.cross_entropy(logits, torch.tensor(targets, device=logits.device))


def rows_per_example(label_ids: Sequence[Sequence[int]], objective: str) -> int:
    """Sequences one example puts through a training forward pass (sets the micro-batch size)."""
    return 1 if objective == "gold" or _single_token(label_ids) else len(label_ids)


def _check_targets(targets: Sequence[int], n: int, n_labels: int) -> list[int]:
    tgt = [int(t) for t in targets]
    if len(tgt) != n:
        raise ValueError(f"targets has {len(tgt)} entries but prompts has {n}; give one label index each.")
    bad = [t for t in tgt if not 0 <= t < n_labels]
    if bad:
        raise ValueError(f"targets must be label indices in [0, {n_labels}) (one per label_ids entry); "
                         f"got {bad[:5]}.")
    return tgt


# ---------------------------------------------------------------------------- public entry points

def classification_eval(ids: list[list[int]], tgt: list[int], labels: list[list[int]]
                        ) -> Callable[[Any, list[int], int], tuple[float, float]]:
    """A dev scorer for :func:`ragicl.training.trainer.train_model`: mean label cross-entropy and accuracy."""
    def evaluate(model: Any, idx: list[int], pad_id: int) -> tuple[float, float]:
        import torch

        chunk = max(1, _MAX_ROWS // (1 if _single_token(labels) else len(labels)))
        idx = sorted(idx, key=lambda i: len(ids[i]))  # passes of similar lengths: little padding, same sums
        total = correct = 0.0
        for start in range(0, len(idx), chunk):
            part = idx[start:start + chunk]
            logits = _label_logits(model, [ids[i] for i in part], labels, pad_id).float()
            y = torch.tensor([tgt[i] for i in part], device=logits.device)
            total += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(-1) == y).sum())
        return total / len(idx), correct / len(idx)

    return evaluate


def finetune(lm: str | LanguageModel, prompts: Sequence[Sequence[int]], targets: Sequence[int],
             label_ids: Sequence[Sequence[int]], *, config: TrainConfig | None = None, mode: str | None = None,
             steps: int | None = None, batch_size: int | None = None, lr: float | None = None,
             warmup: float | None = None, weight_decay: float | None = None,
             max_grad_norm: float | None = None, seed: int | None = None, objective: str | None = None,
             out: str | os.PathLike | None = None, inplace: bool = False, show_progress: bool | None = None,
             on_step: Callable[[StepProgress], None] | None = None) -> FinetuneResult:
    """Fine-tune ``lm`` to pick ``targets[i]`` among ``label_ids`` after ``prompts[i]``.

    ``lm`` is a model name/path or a :class:`TransformersLM` (copied unless ``inplace``). Settings come
    from ``config`` (default: train to convergence with early stopping on a stratified dev split); the
    keyword arguments given override its fields (``steps=N``: a fast fixed-length run). ``objective`` is
    ``"labels"`` (cross-entropy of the softmax over all labels: the distribution the evaluation compares)
    or ``"gold"`` (summed NLL of the gold label's tokens; the dev split is still scored by the label
    cross-entropy). With ``out`` the trained model and tokenizer are saved there as a new version
    (``out/model-<id>/``, named by ``out/ragicl_finetune.json``, the training record; crash-safe, see
    :mod:`ragicl.training.folder`; a folder holding files ragicl did not make is refused before training),
    and resumable checkpoints are written to ``out/checkpoint`` while training; a
    rerun with the same data and settings resumes from the last one (``TrainConfig(resume=False)``
    starts over). ``on_step`` is called with a :class:`ragicl.training.trainer.StepProgress` after every step.
    """
    cfg = resolve_config(config, mode=mode, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                  weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed, objective=objective)
    ids = _check_data(prompts, "prompts")
    labels = _check_data(label_ids, "label_ids")
    if len(labels) < 2:
        raise ValueError(f"label_ids has {len(labels)} label(s); classification needs at least 2.")
    tgt = _check_targets(targets, len(ids), len(labels))

    def loss_fn(model: Any, batch: list[int], pad_id: int, progress: StepProgress) -> Any:
        return classification_loss(model, [ids[i] for i in batch], [tgt[i] for i in batch], labels, pad_id,
                                   cfg.objective)

    return train_model(lm, len(ids), loss_fn, config=cfg, kind="classification",
                       longest=max(map(len, ids)) + max(map(len, labels)),
                       eval_fn=classification_eval(ids, tgt, labels), strata=tgt,
                       rows_per_example=rows_per_example(labels, cfg.objective), max_rows=_MAX_ROWS, out=out,
                       inplace=inplace, show_progress=show_progress, on_step=on_step,
                       fingerprint=data_fingerprint(ids, tgt, labels), meta_extra={"n_labels": len(labels)},
                       lengths=[len(p) for p in ids])


def finetune_lm(lm: str | LanguageModel, prompts: Sequence[Sequence[int]],
                outputs_ids: Sequence[Sequence[int]], *, config: TrainConfig | None = None,
                mode: str | None = None, steps: int | None = None, batch_size: int | None = None,
                lr: float | None = None, warmup: float | None = None, weight_decay: float | None = None,
                max_grad_norm: float | None = None, seed: int | None = None,
                out: str | os.PathLike | None = None, inplace: bool = False, show_progress: bool | None = None,
                on_step: Callable[[StepProgress], None] | None = None) -> FinetuneResult:
    """Generation fine-tuning: causal-LM loss (teacher forcing) on ``outputs_ids[i]`` after ``prompts[i]``.

    The loss is the mean negative log-likelihood per output token; prompt tokens are not trained on.
    Append an end-of-sequence id to each output if the model should learn to stop. Settings, dev split,
    early stopping and checkpoints as in :func:`finetune` (the dev split is scored by the same loss).
    """
    cfg = resolve_config(config, mode=mode, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                  weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed)
    ids = _check_data(prompts, "prompts")
    outs = _check_data(outputs_ids, "outputs_ids", n=len(ids))

    def nll(model: Any, batch: list[int], pad_id: int) -> tuple[Any, int]:
        conts = [outs[i] for i in batch]
        return -scoring.sequence_logprobs(model, [ids[i] for i in batch], conts, pad_id).sum(), sum(map(len, conts))

    def loss_fn(model: Any, batch: list[int], pad_id: int, progress: StepProgress) -> Any:
        total, count = nll(model, batch, pad_id)
        return total / count

    def eval_fn(model: Any, idx: list[int], pad_id: int) -> tuple[float, None]:
        idx = sorted(idx, key=lambda i: len(ids[i]) + len(outs[i]))  # little padding, same sums
        parts = [nll(model, idx[s:s + _MAX_ROWS], pad_id) for s in range(0, len(idx), _MAX_ROWS)]
        return float(sum(float(t) for t, _ in parts)) / sum(c for _, c in parts), None

    return train_model(lm, len(ids), loss_fn, config=cfg, kind="generation",
                       longest=max(len(p) + len(o) for p, o in zip(ids, outs)), eval_fn=eval_fn,
                       max_rows=_MAX_ROWS, out=out, inplace=inplace, show_progress=show_progress,
                       on_step=on_step, fingerprint=data_fingerprint(ids, outs),
                       lengths=[len(p) + len(o) for p, o in zip(ids, outs)])
