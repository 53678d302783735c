"""The fine-tuned reference: train the base LM on a labeled dataset with the *same* template the ICL
systems use, and load it back as a classifier, so the measured gap compares like with like.

>>> from ragicl.training.reference import train_reference                     # doctest: +SKIP
>>> result = train_reference(train, out="runs/ft-sst2")             # doctest: +SKIP
>>> result.converged, result.steps, result.dev_accuracy             # doctest: +SKIP
>>> ft = ICLClassifier(lm=str(result.path), k=0).fit(train)          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .. import _atomic
from .._exceptions import DataError
from ..lm.hf import LanguageModel, TransformersLM
from ..models import DEFAULT_LM
from ..prompt.step import PromptStep, make_packer
from ..prompt.template import PromptTemplate
from ..types import Dataset
from .config import TrainConfig, resolve_config
from .finetune import FinetuneResult, finetune
from .folder import REFERENCE_STAMP, check_output, current_version

logger = logging.getLogger(__name__)


def _stamp_fields(cfg: TrainConfig) -> dict:
    """The training settings a reused reference must match (``resume`` does not change the result; the
    default objective stays out, as in stamps written before the option existed)."""
    fields = {k: v for k, v in cfg.to_json().items() if k != "resume"}
    if fields["objective"] == "labels":
        del fields["objective"]
    return fields


def train_reference(train: Dataset, *, lm: str | LanguageModel = DEFAULT_LM,
                    template: PromptTemplate | None = None, out: str | os.PathLike,
                    config: TrainConfig | None = None, mode: str | None = None, steps: int | None = None,
                    batch_size: int | None = None, lr: float | None = None,
                    max_prompt_tokens: int | None = 256, seed: int | None = None, reuse: bool = True,
                    show_progress: bool | None = None, objective: str | None = None) -> FinetuneResult:
    """Fine-tune ``lm`` on ``train`` (cross-entropy over the verbalized labels) and save it to ``out``.

    Each training example becomes the zero-shot prompt the evaluation uses (template query cue, no
    demonstrations); its target is the label's continuation. By default it trains to convergence
    (:class:`~ragicl.training.config.TrainConfig`: up to 10 epochs, early stopping on a stratified dev split
    of ``train``, best weights restored, checkpoints in ``out/checkpoint`` so an interrupted run resumes);
    ``steps=N`` is a fast fixed-length run, flagged as not converged in every report that uses it. The
    keyword settings override ``config``'s fields. With ``reuse=True`` an existing reference at ``out``
    trained with the same settings and data is returned instead of training again (its stamp,
    ``ragicl_reference.json``, names the model version it describes: a folder saved over since is retrained).
    An ``out`` holding files ragicl did not make is refused (``FileExistsError``) before any work.
    ``objective="gold"`` trains the gold label's likelihood alone (see :func:`ragicl.training.finetune.finetune`).
    """
    cfg = resolve_config(config, mode=mode, steps=steps, batch_size=batch_size, lr=lr, seed=seed, objective=objective)
    if len(train) == 0:
        raise DataError("the training set is empty; nothing to fine-tune on.")
    if train.task != "classification" or not train.labels:
        raise DataError(f"train_reference fine-tunes a classifier; got a {train.task!r} dataset.")
    template = template or PromptTemplate.default(train.input_fields)
    model = lm if not isinstance(lm, str) else TransformersLM(lm, show_progress=show_progress)
    settings = {"lm": getattr(model, "name", str(lm)), "template": repr(template),
                "max_prompt_tokens": max_prompt_tokens, "data": train.fingerprint(),
                **_stamp_fields(cfg)}
    out = check_output(out)
    stamp = out / REFERENCE_STAMP
    if reuse and (saved := _reusable(out, settings)) is not None:
        logger.info("reusing fine-tuned reference at %s (same data and settings)", out)
        rec = saved["result"]
        return FinetuneResult(**{**rec, "path": out, "losses": tuple(rec["losses"]),
                                 "history": tuple(rec.get("history", ()))})
    if hasattr(model, "load"):
        model.load()
    packer = make_packer(model, template, max_prompt_tokens=max_prompt_tokens, labels=train.labels)
    prompts, targets, skipped = [], [], 0
    lookup = {label: i for i, label in enumerate(train.labels)}
    for ex, packed in zip(train.examples, PromptStep(packer).pack_each(train.examples)):
        if packed is None:  # the query alone exceeds the budget
            skipped += 1
            continue
        prompts.append(list(packed.token_ids))
        targets.append(lookup[ex.label])
    if skipped:
        logger.warning("skipped %d training examples longer than max_prompt_tokens=%s", skipped,
                       max_prompt_tokens)
    label_ids = [list(packer.answer_ids(label)) for label in train.labels]
    result = finetune(model, prompts, targets, label_ids, config=cfg, out=out, show_progress=show_progress,
                      inplace=isinstance(lm, str))  # our own copy: no need to protect it
    record = {"settings": settings, "result": {
        "seconds": result.seconds, "losses": list(result.losses), "mode": result.mode, "steps": result.steps,
        "converged": result.converged, "stop_reason": result.stop_reason, "examples_seen": result.examples_seen,
        "dev_loss": result.dev_loss, "dev_accuracy": result.dev_accuracy, "history": list(result.history)}}
    record["model_version"] = current_version(out)
    _atomic.write_atomic(stamp, json.dumps(record, indent=2))
    return result


def _reusable(out: Path, settings: dict) -> dict[str, Any] | None:
    """The stamp in ``out`` if it was made with ``settings`` for the model version the folder holds now."""
    try:
        saved = json.loads((out / REFERENCE_STAMP).read_text(encoding="utf-8"))
        version = current_version(out)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # FinetuneFormatError included: train again, which replaces it
        logger.warning("not reusing the reference at %s (%s); training it again", out, err)
        return None
    if not isinstance(saved, dict) or saved.get("settings") != settings or not isinstance(saved.get("result"), dict):
        return None
    if saved.get("model_version") != version:  # stamps of the flat layout name none, as does its record
        logger.info("the stamp in %s describes another model version than the folder holds; training again", out)
        return None
    return saved
