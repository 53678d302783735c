"""Fine-tuning the reference: one training loop, its configuration, checkpoints, the auxiliary few-shot loss.

- ``config``: :class:`TrainConfig`, checked in one place;
- ``trainer``: :func:`train_model`, the loop (early stopping on a dev split, resumable checkpoints);
- ``finetune``: classification and LM objectives on top of it; ``auxloss``: Lee et al.'s few-shot term;
- ``reference``: :func:`train_reference`, the reference with the evaluation's own template;
- ``checkpoint``: dev split, checkpoint files, the convergence record, saving a model;
- ``folder``: the fine-tune output folder (versions named by ``ragicl_finetune.json``, crash-safe saves).
"""

from .config import TrainConfig, TrainConfigError
from .reference import train_reference

__all__ = ["TrainConfig", "TrainConfigError", "train_reference"]
