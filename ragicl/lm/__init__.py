"""The LM stage: the :class:`LanguageModel` protocol and its backends (transformers, llama.cpp).

- ``protocol``: the :class:`LanguageModel` protocol and its input checks;
- ``scoring``: the scoring math (pure torch, with or without gradients), shared with the trainer;
- ``hf``: :class:`TransformersLM` (label scoring, next-token distributions, generation, the gap side);
  ``_hf_load``: its ``from_pretrained`` options (``device_map``, quantization, attention, extra keywords);
- ``llamacpp``: :class:`LlamaCppLM`, GGUF models run by llama.cpp in process (``_llama_tokenizer``: its
  tokenizer, ids checked against llama.cpp's);
- ``prefix``: running a batch's shared prompt prefix once;
- ``sequence``: token- and sequence-level distributions for the generation gap.
"""

from .hf import LanguageModel, TransformersLM
from .llamacpp import LlamaCppLM

__all__ = ["LanguageModel", "LlamaCppLM", "TransformersLM"]
