"""The LM stage: the :class:`LanguageModel` protocol and its backends (transformers, llama.cpp).

- ``protocol``: the :class:`LanguageModel` protocol and its input checks;
- ``scoring``: the scoring math (pure torch, with or without gradients), shared with the trainer;
- ``hf``: :class:`TransformersLM` (label scoring, next-token distributions, generation, the gap side);
  ``_hf_load``: its ``from_pretrained`` options (``device_map``, quantization, attention, extra keywords);
- ``llamacpp``: :class:`LlamaCppLM`, GGUF models run by llama.cpp in process (``_llama_tokenizer``: its
  tokenizer, ids checked against llama.cpp's);
- ``openai``: :class:`OpenAICompatibleLM`, a model behind an OpenAI-compatible server (``_probe``: what the
  server offers and whether its numbers hold; ``_routes``: request bodies and parsers per scoring route;
  ``_http``: concurrency, retries, timeouts; ``_cache``: the on-disk response cache; ``_tokens``: token ids
  and the texts servers key them by);
- ``factory``: :class:`LMSpec` (which model, which engine, which options) and ``make_lm``;
- ``prefix``: running a batch's shared prompt prefix once;
- ``sequence``: token- and sequence-level distributions for the generation gap.
"""

from .factory import LMSpec, make_lm
from .hf import LanguageModel, TransformersLM
from .llamacpp import LlamaCppLM
from .openai import OpenAICompatibleLM

__all__ = ["LMSpec", "LanguageModel", "LlamaCppLM", "OpenAICompatibleLM", "TransformersLM", "make_lm"]
