"""One frozen record of every fine-tuning setting, validated in one place.

:class:`TrainConfig` is what :func:`ragicl.training.finetune.finetune`, :func:`ragicl.training.finetune.finetune_lm`,
:func:`ragicl.training.reference.train_reference` and :func:`ragicl.training.auxloss.train_with_fewshot_aux` take as
``config=``; their older keyword arguments (``steps=``, ``lr=``, ...) still work and override the matching
field (:meth:`TrainConfig.with_overrides`).

Two ways to train:

* **to convergence** (the default, ``steps=None``): up to ``epochs`` passes over the training set
  (default :data:`DEFAULT_EPOCHS`), evaluated every ``eval_every`` steps on a dev split carved from the
  training data (``dev_fraction``, seeded, stratified by label), stopped once the dev loss has not improved by
  more than ``min_delta`` for ``patience`` evaluations in a row, and the best evaluated weights restored.
* **fast** (``steps=N``): exactly N optimizer steps, no dev split unless ``dev_fraction`` is given. The
  result is labelled *not converged* wherever it is reported.

>>> cfg = TrainConfig(steps=16, batch_size=8)
>>> cfg.fast, cfg.resolved_dev_fraction
(True, 0.0)
>>> TrainConfig().fast, TrainConfig().resolved_dev_fraction, TrainConfig().resolved_epochs
(False, 0.1, 10.0)
>>> TrainConfig(lr=0)
Traceback (most recent call last):
...
ragicl.training.config.TrainConfigError: lr must be a finite number in (0, inf), got 0; e.g. lr=5e-5.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .._exceptions import RagiclError

__all__ = ["DEFAULT_EPOCHS", "ENGINES", "MODES", "OBJECTIVES", "TrainConfig", "TrainConfigError", "resolve_config"]

#: module-name suffixes trained by each mode (LoRA targets for ``"lora"``)
MODES: dict[str, tuple[str, ...]] = {
    "full": (),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "value": ("v_proj",),
    "lora": ("q_proj", "v_proj"),
}
#: what runs the training loop: ragicl's own, or Hugging Face ``transformers.Trainer``
ENGINES = ("ragicl", "hf")
#: classification objectives of :func:`ragicl.training.finetune.finetune`
OBJECTIVES = ("labels", "gold")
#: the most passes over the training set when training to convergence (early stopping usually ends sooner)
DEFAULT_EPOCHS = 10.0
#: dev split share when training to convergence and ``dev_fraction`` is not given
DEFAULT_DEV_FRACTION = 0.1
EVALS_PER_EPOCH = 4  # dev evaluations per epoch by default
MAX_EVAL_EVERY = 200  # ... but at least every this many steps on large training sets


def default_eval_every(steps_per_epoch: int) -> int:
    """Steps between dev evaluations when ``eval_every`` is None: a quarter epoch, at most 200 steps.

    Four evaluations per epoch find the lowest dev loss to within a quarter epoch, and with ``patience`` 3 a
    run stops within about an epoch of it (once per epoch, a model best after its first epoch trained four).

    >>> [default_eval_every(n) for n in (1, 2, 169, 390, 10_000)]
    [1, 1, 43, 98, 200]
    """
    return max(1, min(math.ceil(steps_per_epoch / EVALS_PER_EPOCH), MAX_EVAL_EVERY))


class TrainConfigError(RagiclError, ValueError):
    """A fine-tuning setting is out of range or two settings contradict each other."""


def _int(name: str, value: Any, *, minimum: int, hint: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TrainConfigError(f"{name} must be an integer >= {minimum}{' or None' if optional else ''}, "
                               f"got {value!r}; {hint}.")


def _num(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False,
         hint: str) -> None:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi))
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise TrainConfigError(f"{name} must be a finite number in {rng}, got {value!r}; {hint}.")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a fine-tuning run (see the module docstring for the two ways to train).

    mode: what trains: ``"full"``, ``"attention"``, ``"value"`` or ``"lora"``.
    steps: a fixed number of optimizer steps (the fast, not-converged run); None trains to convergence.
    epochs: the most passes over the training split when ``steps`` is None (default 10).
    batch_size, lr, warmup (fraction of the steps with rising learning rate), weight_decay, max_grad_norm
    (0 disables clipping), seed (shuffling, dev split, LoRA init), objective (``"labels"``/``"gold"``).
    dev_fraction: share of the training data held out as the dev split (None: 0.1 when training to
    convergence, 0 for a fixed-step run); at most ``max_dev_examples`` examples are held out.
    patience: evaluations without a dev-loss improvement larger than ``min_delta`` before stopping.
    eval_every: steps between dev evaluations (None: :func:`default_eval_every`, four times per epoch, at most
        every 200 steps).
    checkpoint_every: steps between resumable checkpoints in the output folder (None: at every
    evaluation, or every 200 steps without a dev split; 0 disables).
    resume: continue from a checkpoint with the same settings and data found in the output folder.
    engine: what runs the loop: ``"ragicl"`` (the default, :func:`ragicl.training.trainer.train_model`) or
        ``"hf"`` (Hugging Face ``transformers.Trainer`` with the same objective, schedule, dev evaluation, early
        stopping and best-weights restore, :mod:`ragicl.training.hf_engine`; it brings ``Trainer``'s mixed
        precision and multi-GPU launch, but writes no resumable checkpoint yet).

    >>> TrainConfig(steps=8).with_overrides(lr=1e-4, batch_size=None).lr
    0.0001
    """

    mode: str = "full"
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 16
    lr: float = 5e-5
    warmup: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    objective: str = "labels"
    dev_fraction: float | None = None
    max_dev_examples: int = 1000
    patience: int = 3
    min_delta: float = 0.0
    eval_every: int | None = None
    checkpoint_every: int | None = None
    resume: bool = True
    engine: str = "ragicl"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise TrainConfigError(f"engine must be one of {ENGINES}, got {self.engine!r}: 'ragicl' runs ragicl's "
                                   "own loop, 'hf' the same training through transformers.Trainer.")
        if self.mode not in MODES:
            raise TrainConfigError(f"mode must be one of {sorted(MODES)}, got {self.mode!r}.")
        if self.objective not in OBJECTIVES:
            raise TrainConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}: 'labels' "
                                   "trains the softmax over the labels, 'gold' the gold label's likelihood alone.")
        _int("steps", self.steps, minimum=1, optional=True,
             hint="pass steps=N for a fast fixed-length run, or None to train to convergence")
        if self.epochs is not None:
            _num("epochs", self.epochs, 0, math.inf, lo_open=True, hi_open=True,
                 hint="the most passes over the training data, e.g. epochs=3")
            if self.steps is not None:
                raise TrainConfigError(f"got both steps={self.steps} and epochs={self.epochs}; give steps for "
                                       "a fixed-length run or epochs to train to convergence, not both.")
        _int("batch_size", self.batch_size, minimum=1, hint="examples per optimizer step, e.g. 16")
        _num("lr", self.lr, 0, math.inf, lo_open=True, hi_open=True, hint="e.g. lr=5e-5")
        _num("warmup", self.warmup, 0, 1, hi_open=True, hint="a fraction of the steps, e.g. 0.1")
        _num("weight_decay", self.weight_decay, 0, math.inf, hi_open=True, hint="e.g. 0.0 or 0.01")
        _num("max_grad_norm", self.max_grad_norm, 0, math.inf, hi_open=True, hint="0 disables clipping")
        _int("seed", self.seed, minimum=0, hint="any non-negative integer")
        if self.dev_fraction is not None:
            _num("dev_fraction", self.dev_fraction, 0, 1, hi_open=True,
                 hint="the share of training data held out for early stopping, e.g. 0.1 (0: none)")
        _int("max_dev_examples", self.max_dev_examples, minimum=1, hint="caps the dev split, e.g. 1000")
        _int("patience", self.patience, minimum=1, hint="evaluations without improvement before stopping")
        _num("min_delta", self.min_delta, 0, math.inf, hi_open=True, hint="e.g. 0.0")
        _int("eval_every", self.eval_every, minimum=1, optional=True, hint="steps between dev evaluations")
        _int("checkpoint_every", self.checkpoint_every, minimum=0, optional=True,
             hint="steps between checkpoints; 0 disables them")
        if not isinstance(self.resume, bool):
            raise TrainConfigError(f"resume must be True or False, got {self.resume!r}.")

    @property
    def fast(self) -> bool:
        """True for a fixed-step run (``steps`` given): reported as not trained to convergence."""
        return self.steps is not None

    @property
    def resolved_epochs(self) -> float:
        return DEFAULT_EPOCHS if self.epochs is None else float(self.epochs)

    @property
    def resolved_dev_fraction(self) -> float:
        if self.dev_fraction is not None:
            return float(self.dev_fraction)
        return 0.0 if self.fast else DEFAULT_DEV_FRACTION

    def with_overrides(self, **values: Any) -> TrainConfig:
        """A copy with the given fields replaced; ``None`` values are ignored (keyword defaults).

        Giving ``steps`` clears ``epochs`` and the reverse, so ``finetune(..., config=cfg, steps=4)`` is
        a fast run whatever ``cfg`` said.
        """
        names = {f.name for f in fields(self)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TrainConfigError(f"unknown training setting(s) {unknown}; TrainConfig has {sorted(names)}.")
        given = {k: v for k, v in values.items() if v is not None}
        if "steps" in given and "epochs" not in given:
            given["epochs"] = None
        if "epochs" in given and "steps" not in given:
            given["steps"] = None
        return replace(self, **given) if given else self

    def to_json(self) -> dict[str, Any]:
        """Every field, but ``engine`` only when it is not the default (records and data fingerprints made
        before it existed stay the same)."""
        out = asdict(self)
        if out["engine"] == ENGINES[0]:
            del out["engine"]
        return out


def resolve_config(config: TrainConfig | None, **overrides: Any) -> TrainConfig:
    """``config`` (default :class:`TrainConfig`) with the keyword arguments that are not None applied.

    >>> resolve_config(None, steps=4, lr=None).steps
    4
    """
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a ragicl TrainConfig, got {type(config).__name__}; "
                        "e.g. config=TrainConfig(epochs=3).")
    return (config or TrainConfig()).with_overrides(**overrides)
