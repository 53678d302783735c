"""One description of "which LM, run by what", shared by the CLI, the estimators and saved estimators.

:class:`LMSpec` names a model and the engine that runs it: ``transformers`` in process
(:class:`~ragicl.lm.hf.TransformersLM`, with the loading options of 7-70B models), ``llama.cpp`` in process
(:class:`~ragicl.lm.llamacpp.LlamaCppLM`, any GGUF file), or an OpenAI-compatible ``server``
(:class:`~ragicl.lm.openai.OpenAICompatibleLM`: vLLM, SGLang, TGI, llama.cpp's servers, Ollama, OpenAI).
``engine="auto"`` picks the server when ``url`` is set, llama.cpp for a path ending in ``.gguf``, else
transformers. :meth:`LMSpec.build` makes the LM (nothing is loaded or sent until it is used);
:func:`make_lm` accepts a spec, a model name or an LM object, as the estimators' ``lm=`` does.

>>> spec = LMSpec("Qwen/Qwen2.5-7B", url="http://gpu:8000/v1", concurrency=16)
>>> spec.resolved_engine
'server'
>>> LMSpec.from_json(spec.to_json()) == spec
True
>>> LMSpec("models/qwen2.5-7b-q4_k_m.gguf").resolved_engine
'llama.cpp'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from ..models import DEFAULT_LM
from .protocol import LanguageModel

__all__ = ["ENGINES", "LMSpec", "make_lm"]

ENGINES = ("auto", "transformers", "llama.cpp", "server")


@dataclass(frozen=True)
class LMSpec:
    """Which LM, run by which engine, with which options (see the module docstring).

    Common: ``model`` (a packaged short name, hub id, folder, GGUF path, or the served model's id),
    ``engine``, ``batch_size``, ``tokenizer`` (llama.cpp and servers: the tokenizer the packer counts with).
    transformers: ``device``, ``dtype``, ``device_map`` (``"auto"``: sharded over the GPUs),
    ``load_in_8bit``/``load_in_4bit`` (bitsandbytes), ``attn_implementation``, ``model_kwargs`` (more
    ``from_pretrained`` keyword arguments, as JSON text). llama.cpp: ``n_ctx``, ``n_threads``,
    ``n_gpu_layers``. Server: ``url``, ``concurrency`` (requests in flight), ``timeout`` (seconds per
    request), ``max_retries``, ``route`` (``"auto"`` probes), ``chat``, ``cache`` (``"on"``, ``"off"`` or a
    file), ``context_length``; the API key comes from ``$RAGICL_API_KEY`` or ``$OPENAI_API_KEY``, never from
    a spec (specs are saved with estimators).
    """

    model: str = DEFAULT_LM
    engine: str = "auto"
    batch_size: int | None = None
    tokenizer: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    attn_implementation: str | None = None
    model_kwargs: str | None = None
    quantization_config: str | None = None
    n_ctx: int | None = None
    n_batch: int | None = None
    n_threads: int | None = None
    n_gpu_layers: int = 0
    url: str | None = None
    concurrency: int = 8
    timeout: float = 120.0
    max_retries: int = 8
    route: str = "auto"
    chat: bool = False
    cache: str = "on"
    context_length: int | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {self.engine!r}.")
        if self.engine == "server" and not self.url:
            raise ValueError("engine='server' needs url= (e.g. --lm-url http://localhost:8000/v1).")
        if self.url is not None and self.engine not in ("auto", "server"):
            raise ValueError(f"url= is for a server, but engine={self.engine!r} runs the model in process; "
                             "drop one of them.")
        for name in ("model_kwargs", "quantization_config"):
            text = getattr(self, name)
            if text is None:
                continue
            try:
                value = json.loads(text)
            except ValueError as err:
                raise ValueError(f"{name} must be a JSON object, e.g. '{{\"trust_remote_code\": true}}'; "
                                 f"got {text!r} ({err}).") from None
            if not isinstance(value, dict):
                raise ValueError(f"{name} must be a JSON object, got {text!r}.")  # noqa: TRY004 (user input)
        if self.quantization_config is not None and (self.load_in_4bit or self.load_in_8bit):
            raise ValueError("quantization_config and load_in_4bit/load_in_8bit both set: give one of them.")

    @property
    def resolved_engine(self) -> str:
        """The engine ``"auto"`` stands for with these settings."""
        if self.engine != "auto":
            return self.engine
        if self.url:
            return "server"
        if str(self.model).lower().endswith(".gguf"):
            return "llama.cpp"
        return "transformers"

    def build(self, *, show_progress: bool | None = None) -> LanguageModel:
        """The LM this spec describes (constructed, not loaded)."""
        engine = self.resolved_engine
        if engine == "server":
            from .openai import OpenAICompatibleLM

            cache: Any = {"on": True, "off": False}.get(self.cache, self.cache)
            return OpenAICompatibleLM(self.url, self.model or None, tokenizer=self.tokenizer,  # type: ignore[arg-type]
                                      route=self.route, chat=self.chat, max_concurrency=self.concurrency,
                                      timeout=self.timeout, max_retries=self.max_retries, cache=cache,
                                      context_length=self.context_length, show_progress=show_progress)
        if engine == "llama.cpp":
            from .llamacpp import LlamaCppLM

            return LlamaCppLM(self.model, n_ctx=self.n_ctx or self.context_length, n_threads=self.n_threads,
                              n_gpu_layers=self.n_gpu_layers, tokenizer=self.tokenizer or "auto",
                              show_progress=show_progress, **({"n_batch": self.n_batch} if self.n_batch else {}))
        from .hf import TransformersLM

        return TransformersLM(self.model, device=self.device, dtype=self.dtype, batch_size=self.batch_size,
                              show_progress=show_progress, device_map=self.device_map,
                              load_in_8bit=self.load_in_8bit, load_in_4bit=self.load_in_4bit,
                              attn_implementation=self.attn_implementation,
                              quantization_config=(json.loads(self.quantization_config) if self.quantization_config
                                                   else None),
                              model_kwargs=json.loads(self.model_kwargs) if self.model_kwargs else None)

    def to_json(self) -> dict[str, Any]:
        """The settings that differ from the defaults, as plain JSON (what a saved estimator stores)."""
        defaults = LMSpec()
        return {f.name: v for f, v in ((f, getattr(self, f.name)) for f in fields(self))
                if v != getattr(defaults, f.name)} | {"model": self.model}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LMSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown LM settings {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**data)

    def describe(self) -> str:
        """``model (engine[, url])`` for reports."""
        where = f", {self.url}" if self.url else ""
        return f"{self.model} ({self.resolved_engine}{where})"


def make_lm(lm: str | LMSpec | LanguageModel, *, device: str = "auto", batch_size: int | None = None,
            show_progress: bool | None = None) -> LanguageModel:
    """An LM from what an estimator's ``lm=`` may hold: an LM object (returned as is), an :class:`LMSpec`,
    or a model name (a GGUF path runs on llama.cpp, anything else on transformers)."""
    if isinstance(lm, LMSpec):
        return lm.build(show_progress=show_progress)
    if isinstance(lm, str):
        spec = LMSpec(lm, device=device, batch_size=batch_size)
        return spec.build(show_progress=show_progress)
    return lm



def spec_of(lm: Any) -> LMSpec | None:
    """The :class:`LMSpec` that rebuilds ``lm`` when it is a server or llama.cpp LM (what a saved estimator
    stores; never an API key), else None (a transformers LM is saved by its name)."""
    if isinstance(lm, LMSpec):
        return lm
    kind = type(lm).__name__
    if kind == "OpenAICompatibleLM":
        cache = {True: "on", False: "off", None: "off"}.get(lm.cache, str(lm.cache))
        tokenizer = lm.tokenizer_spec if isinstance(lm.tokenizer_spec, str) else None
        return LMSpec(lm.model or "", engine="server", url=lm.base_url, tokenizer=tokenizer, route=lm.route,
                      chat=lm.chat, concurrency=lm.max_concurrency, timeout=float(lm.timeout),
                      max_retries=lm.max_retries, cache=cache, context_length=lm.context_length_override)
    if kind == "LlamaCppLM":
        tokenizer = lm.tokenizer_spec if isinstance(lm.tokenizer_spec, str) and lm.tokenizer_spec != "auto" else None
        return LMSpec(lm.model_name, engine="llama.cpp", tokenizer=tokenizer, n_ctx=lm.n_ctx,
                      n_threads=lm.n_threads, n_gpu_layers=lm.n_gpu_layers,
                      n_batch=lm.n_batch if lm.n_batch != 512 else None)
    return None
