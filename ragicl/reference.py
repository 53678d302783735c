"""The fine-tuned reference: train the base LM on a labeled dataset with the *same* template the ICL
systems use, and load it back as a classifier, so the measured gap compares like with like.

>>> from ragicl.reference import train_reference                     # doctest: +SKIP
>>> result = train_reference(train, out="runs/ft-sst2", steps=60)    # doctest: +SKIP
>>> ft = ICLClassifier(lm=str(result.path), k=0).fit(train)          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ._exceptions import DataError
from .finetune import FinetuneResult, check_objective, finetune
from .lm import LanguageModel, TransformersLM
from .models import DEFAULT_LM
from .pack import Packer
from .template import PromptTemplate
from .types import Dataset

logger = logging.getLogger(__name__)


def train_reference(train: Dataset, *, lm: str | LanguageModel = DEFAULT_LM,
                    template: PromptTemplate | None = None, out: str | os.PathLike,
                    mode: str = "full", steps: int = 100, batch_size: int = 16, lr: float = 5e-5,
                    max_prompt_tokens: int | None = 256, seed: int = 0, reuse: bool = True,
                    show_progress: bool | None = None, objective: str = "labels") -> FinetuneResult:
    """Fine-tune ``lm`` on ``train`` (cross-entropy over the verbalized labels) and save it to ``out``.

    Each training example becomes the zero-shot prompt the evaluation uses (template query cue, no
    demonstrations); its target is the label's continuation. With ``reuse=True`` an existing checkpoint at
    ``out`` trained with the same settings and data is returned instead of training again.
    ``objective="gold"`` trains the gold label's likelihood alone (see :func:`ragicl.finetune.finetune`).
    """
    check_objective(objective)
    if len(train) == 0:
        raise DataError("the training set is empty; nothing to fine-tune on.")
    if train.task != "classification" or not train.labels:
        raise DataError(f"train_reference fine-tunes a classifier; got a {train.task!r} dataset.")
    template = template or PromptTemplate.default(train.input_fields)
    model = lm if not isinstance(lm, str) else TransformersLM(lm, show_progress=show_progress)
    settings = {"lm": getattr(model, "name", str(lm)), "template": repr(template), "mode": mode,
                "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                "max_prompt_tokens": max_prompt_tokens, "data": train.fingerprint()}
    if objective != "labels":  # the default stays out of the stamp, so earlier checkpoints stay reusable
        settings["objective"] = objective
    out = Path(out)
    stamp = out / "ragicl_reference.json"
    if reuse and stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved.get("settings") == settings:
            logger.info("reusing fine-tuned reference at %s (same data and settings)", out)
            return FinetuneResult(**{**saved["result"], "path": out, "losses": tuple(saved["result"]["losses"])})
    if hasattr(model, "load"):
        model.load()
    packer = Packer(model.tokenizer, template, max_prompt_tokens=max_prompt_tokens,
                    context_length=model.context_length).fit([], labels=train.labels)
    prompts, targets, skipped = [], [], 0
    lookup = {label: i for i, label in enumerate(train.labels)}
    from ._exceptions import BudgetError

    for ex in train.examples:
        try:
            prompts.append(list(packer.pack(ex, []).token_ids))
        except BudgetError:
            skipped += 1
            continue
        targets.append(lookup[ex.label])
    if skipped:
        logger.warning("skipped %d training examples longer than max_prompt_tokens=%s", skipped,
                       max_prompt_tokens)
    label_ids = [list(packer.answer_ids(label)) for label in train.labels]
    result = finetune(model, prompts, targets, label_ids, mode=mode, steps=steps, batch_size=batch_size,
                      lr=lr, seed=seed, out=out, show_progress=show_progress, objective=objective,
                      inplace=isinstance(lm, str))  # our own copy: no need to protect it
    record = {"settings": settings, "result": {"seconds": result.seconds, "losses": list(result.losses),
                                               "mode": result.mode, "steps": result.steps}}
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, stamp)
    return result
