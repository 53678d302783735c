"""The LM stage: the :class:`LanguageModel` protocol and its transformers backend.

- ``hf``: :class:`TransformersLM` (label scoring, next-token distributions, generation);
- ``prefix``: running a batch's shared prompt prefix once;
- ``sequence``: token- and sequence-level distributions for the generation gap.
"""

from .hf import LanguageModel, TransformersLM

__all__ = ["LanguageModel", "TransformersLM"]
