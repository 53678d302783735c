"""Fine-tune the base LM on the same prompts the ICL systems see: the reference side of the gap.

Classification (:func:`finetune`): each training example is its zero-shot prompt (token ids rendered by
the caller with the evaluation template) and a target label index. A label's logit is the summed
log-probability of its continuation after the prompt, exactly what
:meth:`ragicl.lm.TransformersLM.score_continuations` computes at evaluation; the loss is cross-entropy of
the softmax over labels. When every label is one distinct token this is one pass per batch keeping only
the last position's logits (``logits_to_keep=1``). ``objective="gold"`` trains instead on the negative
log-likelihood of the gold label's tokens alone (plain supervised fine-tuning): one row per example
whatever the number of labels, so a 77-label task with multi-token labels trains ~C× cheaper per step;
it raises the gold label's probability without pushing the other labels down explicitly.

Generation (:func:`finetune_lm`): the standard causal-LM loss on the output tokens only.

``mode`` picks what trains: ``"full"`` (all parameters), ``"attention"`` (q/k/v/o projections),
``"value"`` (v projections), ``"lora"`` (peft LoRA, r=8 on q and v; merged before saving so the saved
folder loads as a plain model). AdamW, linear warmup then linear decay, gradient clipping, seeded
shuffling. A model passed in is copied first unless ``inplace=True``, so the base stays usable.

>>> from ragicl.finetune import finetune                                             # doctest: +SKIP
>>> res = finetune("SmolLM2-135M-Instruct", prompts, targets, label_ids, steps=50, out="runs/ft")  # doctest: +SKIP
>>> res.path, res.losses[0], res.losses[-1]                                         # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragicl._exceptions import check_positive_int, require
from ragicl.lm import LanguageModel, TransformersLM

logger = logging.getLogger(__name__)

__all__ = ["MODES", "OBJECTIVES", "FinetuneResult", "finetune", "finetune_lm", "label_loss", "trainable_names"]

#: module-name suffixes trained by each mode (LoRA targets for ``"lora"``)
MODES: dict[str, tuple[str, ...]] = {
    "full": (),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "value": ("v_proj",),
    "lora": ("q_proj", "v_proj"),
}
LORA_RANK = 8
#: classification objectives of :func:`finetune`
OBJECTIVES = ("labels", "gold")


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning run produced: the saved folder (or None), wall seconds, per-step losses.

    ``lm`` is the trained model wrapped as a :class:`TransformersLM` (LoRA already merged); it is not
    part of equality or the repr.
    """

    path: Path | None
    seconds: float
    losses: tuple[float, ...]
    mode: str
    steps: int
    lm: TransformersLM | None = field(default=None, compare=False, repr=False)


# ---------------------------------------------------------------------------- parameter selection

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


# ---------------------------------------------------------------------------- losses

def _left_pad(seqs: list[list[int]], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def _sequence_logprobs(model: Any, prompts: list[list[int]], conts: list[list[int]], pad_id: int) -> Any:
    """Summed log-prob of ``conts[i]`` after ``prompts[i]`` (one row each), with gradients."""
    import torch

    seqs = [p + c for p, c in zip(prompts, conts)]
    ids, mask, positions = _left_pad(seqs, pad_id, next(model.parameters()).device)
    width = ids.shape[1]
    n_cont = max(len(c) for c in conts)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   logits_to_keep=n_cont + 1).logits.float()  # last n_cont+1 positions
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts the last n_cont tokens
    targets = ids[:, width - n_cont:]
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    lengths = torch.tensor([len(c) for c in conts], device=ids.device)
    keep = torch.arange(n_cont, device=ids.device).unsqueeze(0) >= (n_cont - lengths).unsqueeze(1)
    return (picked * keep).sum(-1)


_MAX_ROWS = 256  # prompt+label rows in one training forward pass, at most (micro-batching above this)


def _single_token(label_ids: Sequence[Sequence[int]]) -> bool:
    """True when every label is one token and the tokens differ: one last-position pass scores all."""
    firsts = [ids[0] for ids in label_ids]
    return all(len(ids) == 1 for ids in label_ids) and len(set(firsts)) == len(firsts)


def _label_logits(model: Any, prompts: list[list[int]], label_ids: list[list[int]], pad_id: int) -> Any:
    """``(B, L)`` label logits: summed continuation log-probs (one pass if labels are single tokens)."""
    import torch

    firsts = [ids[0] for ids in label_ids]
    if _single_token(label_ids):
        ids, mask, positions = _left_pad(prompts, pad_id, next(model.parameters()).device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=1).logits[:, -1, :].float()
        # restricting raw logits equals restricting log-probs up to a per-row constant: same softmax
        return logits[:, torch.tensor(firsts, device=logits.device)]
    return _shared_prompt_label_logits(model, prompts, label_ids, pad_id)


def _shared_prompt_label_logits(model: Any, prompts: list[list[int]], label_ids: list[list[int]],
                                pad_id: int) -> Any:
    """``(B, L)`` summed label log-probs with gradients, one pass over each prompt shared by all labels.

    The prompt pass keeps its KV cache; every (prompt, label) row then feeds only the label's tokens on
    top of its prompt's cached keys (``TransformersLM.score_continuations`` does the same without
    gradients). With 77 three-token labels after a 30-token prompt that is ~7x fewer tokens than scoring
    every prompt+label concatenation.
    """
    import torch

    from .lm import _select_cache

    device = next(model.parameters()).device
    ids, mask, positions = _left_pad(prompts, pad_id, device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    first_lp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
    n_b, n_c = len(prompts), len(label_ids)
    scores = first_lp[:, torch.tensor([c[0] for c in label_ids], device=device)]
    rest_len = max(len(c) for c in label_ids) - 1
    if rest_len == 0:
        return scores
    feed = torch.full((n_c, rest_len), pad_id, dtype=torch.long, device=device)
    target = torch.zeros((n_c, rest_len), dtype=torch.long, device=device)
    real = torch.zeros((n_c, rest_len), dtype=torch.bool, device=device)
    for c, seq in enumerate(label_ids):
        k = len(seq) - 1
        feed[c, :k] = torch.tensor(seq[:-1], dtype=torch.long, device=device)
        target[c, :k] = torch.tensor(seq[1:], dtype=torch.long, device=device)
        real[c, :k] = True
    rows = torch.arange(n_b * n_c, device=device)  # row = b * C + c
    b_idx, c_idx = rows // n_c, rows % n_c
    # right-padded label slots are masked and come after every real slot, so causality keeps them out
    mask2 = torch.cat([mask[b_idx], real[c_idx].long()], dim=1)
    positions2 = mask.sum(-1)[b_idx].unsqueeze(1) + torch.arange(rest_len, device=device).unsqueeze(0)
    out2 = model(input_ids=feed[c_idx], attention_mask=mask2, position_ids=positions2,
                 past_key_values=_select_cache(out.past_key_values, b_idx), use_cache=True)
    logprobs = torch.log_softmax(out2.logits.float(), dim=-1)
    picked = logprobs.gather(-1, target[c_idx].unsqueeze(-1)).squeeze(-1)
    rest = picked.masked_fill(~real[c_idx], 0.0).sum(-1)
    return scores + rest.view(n_b, n_c)


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
        return -_sequence_logprobs(model, prompts, [label_ids[t] for t in targets], pad_id).mean()
    logits = _label_logits(model, prompts, label_ids, pad_id)
    return torch.nn.functional.cross_entropy(logits, torch.tensor(targets, device=logits.device))


def _objective_train_kwargs(label_ids: Sequence[Sequence[int]], objective: str) -> dict[str, Any]:
    """``_train`` keywords an objective sets: rows per example (micro-batching) and, if not default, its name."""
    rows = 1 if objective == "gold" or _single_token(label_ids) else len(label_ids)
    return {"rows_per_example": rows, **({} if objective == "labels" else {"objective": objective})}


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

def finetune(lm: str | LanguageModel, prompts: Sequence[Sequence[int]], targets: Sequence[int],
             label_ids: Sequence[Sequence[int]], *, mode: str = "full", steps: int = 100,
             batch_size: int = 16, lr: float = 5e-5, warmup: float = 0.1, weight_decay: float = 0.0,
             max_grad_norm: float = 1.0, seed: int = 0, out: str | os.PathLike | None = None,
             inplace: bool = False, show_progress: bool | None = None,
             objective: str = "labels") -> FinetuneResult:
    """Fine-tune ``lm`` to pick ``targets[i]`` among ``label_ids`` after ``prompts[i]``.

    ``lm`` is a model name/path or a :class:`TransformersLM` (copied unless ``inplace``). ``warmup`` is
    the fraction of steps with linearly rising learning rate. With ``out`` the trained model, tokenizer and
    ``ragicl_finetune.json`` are saved there atomically. ``objective`` is ``"labels"`` (cross-entropy of
    the softmax over all labels: the distribution the evaluation compares) or ``"gold"`` (summed NLL of
    the gold label's tokens: one row per example, cheaper with many multi-token labels).
    """
    check_objective(objective)
    ids = _check_data(prompts, "prompts")
    labels = _check_data(label_ids, "label_ids")
    if len(labels) < 2:
        raise ValueError(f"label_ids has {len(labels)} label(s); classification needs at least 2.")
    tgt = _check_targets(targets, len(ids), len(labels))

    def loss_fn(model: Any, batch: list[int], pad_id: int) -> Any:
        return classification_loss(model, [ids[i] for i in batch], [tgt[i] for i in batch], labels, pad_id,
                                   objective)

    return _train(lm, len(ids), loss_fn, kind="classification",
                  mode=mode, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                  weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed, out=out,
                  inplace=inplace, show_progress=show_progress,
                  longest=max(map(len, ids)) + max(map(len, labels)), n_labels=len(labels),
                  **_objective_train_kwargs(labels, objective))


def finetune_lm(lm: str | LanguageModel, prompts: Sequence[Sequence[int]],
                outputs_ids: Sequence[Sequence[int]], *, mode: str = "full", steps: int = 100,
                batch_size: int = 16, lr: float = 5e-5, warmup: float = 0.1, weight_decay: float = 0.0,
                max_grad_norm: float = 1.0, seed: int = 0, out: str | os.PathLike | None = None,
                inplace: bool = False, show_progress: bool | None = None) -> FinetuneResult:
    """Generation fine-tuning: causal-LM loss (teacher forcing) on ``outputs_ids[i]`` after ``prompts[i]``.

    The loss is the mean negative log-likelihood per output token; prompt tokens are not trained on.
    Append an end-of-sequence id to each output if the model should learn to stop.
    """
    ids = _check_data(prompts, "prompts")
    outs = _check_data(outputs_ids, "outputs_ids", n=len(ids))

    def loss_fn(model: Any, batch: list[int], pad_id: int) -> Any:
        conts = [outs[i] for i in batch]
        total = _sequence_logprobs(model, [ids[i] for i in batch], conts, pad_id).sum()
        return -total / sum(len(c) for c in conts)

    return _train(lm, len(ids), loss_fn, kind="generation", mode=mode, steps=steps, batch_size=batch_size,
                  lr=lr, warmup=warmup, weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed,
                  out=out, inplace=inplace, show_progress=show_progress,
                  longest=max(len(p) + len(o) for p, o in zip(ids, outs)))


# ---------------------------------------------------------------------------- training loop

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
    model = copy.deepcopy(lm.model)
    return TransformersLM.from_model(model, lm.tokenizer, name=lm.name, batch_size=lm.batch_size,
                                     show_progress=lm.show_progress, share_prefix=lm.share_prefix)


def _amp_dtype(model: Any, device: Any) -> Any:
    """Half dtype for autocast: the model's own if it was loaded in half precision, bf16/fp16 on CUDA."""
    import torch

    if model.dtype in (torch.float16, torch.bfloat16):
        return model.dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def _lr_lambda(steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (steps - step) / max(1, steps - warmup_steps))

    return factor


def _train(lm: str | LanguageModel, n: int, loss_fn: Callable[[Any, list[int], int], Any], *, kind: str,
           mode: str, steps: int, batch_size: int, lr: float, warmup: float, weight_decay: float,
           max_grad_norm: float, seed: int, out: str | os.PathLike | None, inplace: bool,
           show_progress: bool | None, longest: int, rows_per_example: int = 1,
           **extra: Any) -> FinetuneResult:
    import torch
    from tqdm.auto import tqdm

    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}.")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}.")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {warmup!r}.")
    target = _resolve_lm(lm, inplace, longest)
    base, tokenizer, pad_id = target.model, target.tokenizer, target._pad_id
    device = next(base.parameters()).device
    amp_dtype = _amp_dtype(base, device)
    if base.dtype != torch.float32:  # float32 master weights; autocast runs the matmuls in half precision
        logger.info("training with float32 weights (model was loaded in %s)", base.dtype)
        base.float()
    model = _prepare(base, mode, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    logger.info("fine-tuning (%s, mode=%s): %d examples, %d steps x %d, lr %g, %.1fM trainable parameters",
                kind, mode, n, steps, batch_size, lr, n_train / 1e6)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps, round(warmup * steps)))
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses: list[float] = []
    log_every = max(1, steps // 10)
    model.train()
    t_start = time.perf_counter()
    show = show_progress if show_progress is not None else target.show_progress
    bar = tqdm(range(steps), desc=f"fine-tune ({mode})", disable=(None if show is None else not show))
    try:
        for step in bar:
            t_step = time.perf_counter()
            batch: list[int] = []
            while len(batch) < min(batch_size, n):  # seeded reshuffle at each epoch boundary
                if not order:
                    order = torch.randperm(n, generator=generator).tolist()
                batch.append(order.pop())
            optimizer.zero_grad(set_to_none=True)
            loss = 0.0
            # Gradient accumulation over micro-batches keeps a forward pass under _MAX_ROWS sequences
            # (a 77-label task scores 77 prompt+label rows per example); the gradient is the same.
            micro = max(1, _MAX_ROWS // max(1, rows_per_example))
            for start in range(0, len(batch), micro):
                chunk = batch[start:start + micro]
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    part = loss_fn(model, chunk, pad_id) * (len(chunk) / len(batch))
                part.backward()
                loss += float(part.detach())
            if max_grad_norm and max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(loss)
            dt = time.perf_counter() - t_step
            bar.set_postfix(loss=f"{losses[-1]:.4f}", s_per_step=f"{dt:.2f}")
            level = logging.INFO if (step + 1) % log_every == 0 or step == 0 else logging.DEBUG
            logger.log(level, "step %d/%d loss %.4f lr %.2e (%.2f s/step)", step + 1, steps, losses[-1],
                       scheduler.get_last_lr()[0], dt)
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t_start
    logger.info("fine-tuned %d steps in %.1f s (%.2f s/step); loss %.4f -> %.4f", steps, seconds,
                seconds / steps, losses[0], losses[-1])
    trained = _unwrap(model, mode)
    if inplace:
        target._model = trained
        result_lm = target
    else:
        result_lm = TransformersLM.from_model(trained, tokenizer, name=target.name,
                                              batch_size=target.batch_size, show_progress=target.show_progress,
                                              share_prefix=target.share_prefix)
    path = None
    if out is not None:
        meta = {"kind": kind, "base": target.name, "mode": mode, "steps": steps, "batch_size": batch_size,
                "lr": lr, "warmup": warmup, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm,
                "seed": seed, "examples": n, "trainable_parameters": n_train,
                "seconds": round(seconds, 3), "final_loss": losses[-1], "losses": losses, **extra}
        path = save_model(trained, tokenizer, out, meta)
    return FinetuneResult(path, seconds, tuple(losses), mode, steps, result_lm)


def save_model(model: Any, tokenizer: Any, out: str | os.PathLike, meta: dict | None = None) -> Path:
    """Save model + tokenizer (+ ``ragicl_finetune.json``) to ``out`` atomically.

    Everything is written to a sibling temporary folder which then replaces ``out``; if anything fails
    midway, a previous ``out`` is left untouched and no partial folder remains.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-tmp-", dir=out.parent))
    old: Path | None = None
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if meta is not None:
            (tmp / "ragicl_finetune.json").write_text(json.dumps(meta, indent=2))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            old.rmdir()
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        if old is not None and old.exists() and not out.exists():
            os.replace(old, out)  # put the previous checkpoint back
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("saved fine-tuned model to %s", out)
    return out
