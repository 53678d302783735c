"""The LM stage: the :class:`LanguageModel` protocol and its transformers backend.

- ``protocol``: the :class:`LanguageModel` protocol and its input checks;
- ``scoring``: the scoring math (pure torch, with or without gradients), shared with the trainer;
- ``hf``: :class:`TransformersLM` (label scoring, next-token distributions, generation, the gap side);
- ``prefix``: running a batch's shared prompt prefix once;
- ``sequence``: token- and sequence-level distributions for the generation gap.
"""

from .hf import LanguageModel, TransformersLM

__all__ = ["LanguageModel", "TransformersLM"]
