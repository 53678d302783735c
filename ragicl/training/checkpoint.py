"""Fine-tuning bookkeeping: the dev split, resumable checkpoints, the convergence record, the saved record.

A resumable checkpoint is one file, ``<out>/checkpoint/state.pt``, holding everything the training loop
needs to continue bit-for-bit: the trainable weights, the optimizer and scheduler states, the shuffling
generator and the rest of the epoch's order, the step, the losses, the dev history and the best weights
so far. It is written atomically (temporary file, fsync, rename, under the folder's lock; a temp file left
by a killed write is removed by the next one) and only reused when its ``fingerprint`` (the training
settings and a hash of the data) matches the run being started. The final :func:`save_model` publishes the
model as a new version of the output folder and removes the checkpoint (:mod:`ragicl.training.folder`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import _atomic
from ..models import FINETUNE_RECORD, POINTER_KEYS, read_finetune_record
from . import folder as _folder
from .folder import CHECKPOINT_DIR, STATE_FILE, check_output

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_DIR", "CONVERGENCE_RULE", "META_FILE", "STATE_FILE", "base_mismatch_note", "check_output",
           "checkpoint_path", "convergence_meta", "data_fingerprint", "load_state", "read_meta", "save_model",
           "save_state", "split_dev", "training_note"]
META_FILE = FINETUNE_RECORD

#: how ``converged`` is decided, recorded next to it in every checkpoint's meta
CONVERGENCE_RULE = ("converged = training stopped early because the dev loss had not improved by more than "
                    "min_delta for `patience` evaluations in a row; a run that ended at its step or epoch "
                    "limit, or had no dev split, is not converged")


def data_fingerprint(*parts: Any) -> str:
    """A short hash of JSON-serialisable training data and settings (what a checkpoint must match)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def split_dev(n: int, fraction: float, max_dev: int, seed: int,
              strata: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """Seeded (train, dev) index split; with ``strata`` (e.g. label indices) each stratum keeps its share.

    The dev split has ``min(max_dev, round(fraction * n))`` examples (at least one when ``fraction > 0``)
    and the training split keeps at least one. Quotas per stratum are proportional, largest remainder.
    """
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    n_dev = min(max_dev, max(1, round(fraction * n)), n - 1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n).tolist()
    if strata is None:
        dev = sorted(order[:n_dev])
    else:
        groups: dict[int, list[int]] = {}
        for i in order:
            groups.setdefault(int(strata[i]), []).append(i)
        exact = {g: n_dev * len(m) / n for g, m in groups.items()}
        quota = {g: int(v) for g, v in exact.items()}
        for g in sorted(groups, key=lambda g: (quota[g] - exact[g], g))[:n_dev - sum(quota.values())]:
            quota[g] += 1
        dev = sorted(i for g, members in groups.items() for i in members[:quota[g]])
    chosen = set(dev)
    return [i for i in range(n) if i not in chosen], dev


def checkpoint_path(out: str | os.PathLike) -> Path:
    return Path(out) / CHECKPOINT_DIR / STATE_FILE


def save_state(out: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a training state atomically to ``<out>/checkpoint/state.pt`` (under the folder's lock; temp
    files a killed write left are removed first)."""
    import torch

    path = checkpoint_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic.exclusive_lock(Path(out) / _folder.LOCK):
        _folder.clean_state_temps(path.parent)
        tmp = path.parent / _atomic.unique_name(f".{STATE_FILE}.tmp-")
        try:
            with open(tmp, "xb") as fh:  # 0o666 minus the umask, like any new file
                torch.save(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            _folder.save_step("state-written")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _atomic.fsync(path.parent)
    logger.info("checkpoint at step %d -> %s", state["step"], path)
    return path


def load_state(out: str | os.PathLike, fingerprint: str) -> dict[str, Any] | None:
    """The saved training state in ``out`` if its fingerprint matches, else None (with a log line)."""
    import torch

    path = checkpoint_path(out)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    except Exception as err:  # noqa: BLE001 — an unreadable checkpoint only means starting afresh
        logger.warning("ignoring unreadable checkpoint %s (%s); training from the start", path, err)
        return None
    if state.get("fingerprint") != fingerprint:
        logger.warning("checkpoint %s was made with other settings or data; training from the start", path)
        return None
    logger.info("resuming from %s at step %d", path, state["step"])
    return state


def convergence_meta(*, history: Sequence[dict], stop_reason: str, has_dev: bool, patience: int,
                     fast: bool, best_step: int | None) -> dict[str, Any]:
    """The convergence record: ``converged``, whether the dev loss was still falling, the rule, and the
    dev loss/accuracy of the weights kept (those of ``best_step``, restored at the end)."""
    converged = stop_reason == "early_stopping"
    losses = [h["dev_loss"] for h in history]
    still_falling = bool(losses and not converged and int(np.argmin(losses)) >= len(losses) - patience)
    best = next((h for h in history if h["step"] == best_step), {})
    return {"converged": converged, "dev_loss_still_falling": still_falling if has_dev else None,
            "stop_reason": stop_reason, "fast": fast, "convergence_rule": CONVERGENCE_RULE,
            "dev_loss": best.get("dev_loss"), "dev_accuracy": best.get("dev_accuracy")}


def save_model(model: Any, tokenizer: Any, out: str | os.PathLike, meta: dict | None = None, *,
               refuse_foreign: bool = True) -> Path:
    """Save model + tokenizer (+ the training record ``meta``) as a new version of the folder ``out``,
    crash-safely (:func:`ragicl.training.folder.save`: a kill at any point leaves the old or the new model,
    and the next save removes what it left). Returns ``out``; load it with ``TransformersLM(str(out))`` or
    plain transformers on :func:`ragicl.models.finetuned_model_path`. With ``refuse_foreign`` a folder
    holding files ragicl did not make is refused (``FileExistsError``); nothing ragicl did not make is removed.
    """
    return _folder.save(model, tokenizer, out, meta, refuse_foreign=refuse_foreign)


def read_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The training record of a fine-tuned model folder (its ``ragicl_finetune.json`` without the pointer
    fields), or None when there is none; :class:`ragicl.models.FinetuneFormatError` when it is damaged."""
    record = read_finetune_record(path)
    if record is None:
        return None
    return {k: v for k, v in record.items() if k not in POINTER_KEYS}


def base_mismatch_note(path: str | os.PathLike, lm: str) -> str | None:
    """A report note when the fine-tuned model in ``path`` was trained from another base LM than ``lm``.

    Names are compared by their last path component, case-insensitively, so a hub id and the packaged short
    name of the same model match. None when they match or when ``path`` has no ``ragicl_finetune.json``.

    >>> import json, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = (Path(folder) / META_FILE).write_text(json.dumps({"base": "gemma-3-270m"}))
    >>> base_mismatch_note(folder, "HuggingFaceTB/SmolLM2-135M-Instruct")[:53]
    'the reference was fine-tuned from gemma-3-270m, while'
    >>> base_mismatch_note(folder, "google/gemma-3-270m") is None
    True
    """
    base = (read_meta(path) or {}).get("base")
    if not base:
        return None

    def short(name: str) -> str:
        return Path(str(name).rstrip("/\\")).name.lower()

    if short(base) == short(lm):
        return None
    return (f"the reference was fine-tuned from {base}, while the ICL systems use {lm}: the gap and TV compare "
            f"two base models (pass --lm {base} to compare like with like)")


def training_note(name: str, meta: dict[str, Any]) -> str | None:
    """A report footnote for a reference whose ``ragicl_finetune.json`` says it did not converge (else None).

    Checkpoints saved before convergence was recorded (no ``converged`` key) were fixed-step runs.
    """
    if meta.get("converged"):
        return None
    steps, bs = meta.get("steps"), meta.get("batch_size")
    seen = meta.get("examples_seen", steps * bs if isinstance(steps, int) and isinstance(bs, int) else None)
    seen_txt = f", {seen} examples seen" if seen is not None else ""
    if "converged" not in meta or meta.get("fast"):
        how = "fast reference" if "converged" in meta else "fixed-step reference (no convergence record)"
        return (f"reference {name!r} not converged: {how}, {steps} steps x {bs}{seen_txt}, no early stopping; "
                "its gap mostly measures the short training (train it with `ragicl finetune` without --steps)")
    if meta.get("dev_loss_still_falling"):
        return (f"reference {name!r} not converged: dev loss still falling at step {steps}{seen_txt} "
                f"(stopped by the {meta.get('stop_reason')} limit); train longer (--epochs)")
    return (f"reference {name!r} not converged: stopped by the {meta.get('stop_reason')} limit at step "
            f"{steps}{seen_txt} before early stopping confirmed a plateau")
