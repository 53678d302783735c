"""How :class:`ragicl.lm.hf.TransformersLM` calls ``from_pretrained``: the options people load 7-70B models
with (``device_map`` sharding over GPUs, bitsandbytes 4/8-bit, the attention implementation, any other
``from_pretrained`` keyword), checked before anything is read. A model placed by ``device_map`` is never
moved with ``.to``; its inputs go to the device of its input embeddings (:func:`ragicl.lm.scoring.model_device`)
and accelerate's hooks carry the activations between its devices and the outputs back.

>>> from_pretrained_kwargs(dtype="float32", device_map=None, quantization=None, attn_implementation="eager",
...                        model_kwargs={"revision": "main"})
{'revision': 'main', 'dtype': 'float32', 'attn_implementation': 'eager'}
>>> tokenizer_kwargs({"revision": "main", "trust_remote_code": True, "low_cpu_mem_usage": True})
{'revision': 'main', 'trust_remote_code': True}
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

from ragicl._exceptions import MissingDependencyError

#: ``from_pretrained`` keywords TransformersLM sets from its own parameters (not through ``model_kwargs``)
MANAGED = {"dtype": "dtype", "torch_dtype": "dtype", "device_map": "device_map",
           "quantization_config": "quantization_config", "load_in_8bit": "load_in_8bit",
           "load_in_4bit": "load_in_4bit", "attn_implementation": "attn_implementation"}
#: ``model_kwargs`` keys that select the files, so the tokenizer gets them too
TOKENIZER_KEYS = ("revision", "trust_remote_code", "token", "cache_dir", "local_files_only", "subfolder",
                  "force_download", "proxies")
#: ``device_map`` strings that let accelerate place the layers (over every visible GPU, then CPU)
PLACEMENTS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_model_kwargs(model_kwargs: Any) -> dict[str, Any]:
    """``model_kwargs`` as a dict; ``TypeError`` for a non-mapping, ``ValueError`` for a key TransformersLM owns."""
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, Mapping):
        raise TypeError(f"model_kwargs must be a dict of extra from_pretrained keywords (e.g. "
                         f"{{'trust_remote_code': True, 'revision': 'main'}}), got {type(model_kwargs).__name__}.")
    clash = sorted(k for k in model_kwargs if k in MANAGED)
    if clash:
        raise ValueError(f"model_kwargs sets {clash}; pass them as TransformersLM's own parameters "
                         f"({sorted({MANAGED[k] for k in clash})}) instead.")
    return dict(model_kwargs)


def tokenizer_kwargs(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model_kwargs`` that also apply to ``AutoTokenizer.from_pretrained`` (which files to read)."""
    return {k: v for k, v in model_kwargs.items() if k in TOKENIZER_KEYS}


def placement_device(device_map: Any) -> str:
    """The device type a ``device_map`` puts the model on, for the default dtype: ``"cuda"`` when it names
    or lets accelerate choose a GPU that exists, else what it names (``"cpu"``, ``"mps"``)."""
    import torch

    if isinstance(device_map, Mapping):
        values = [str(v) for v in device_map.values()]
        gpu = any(v.isdigit() or v.startswith("cuda") for v in values)
        return "cuda" if gpu else (values[0] if values else "cpu")
    if isinstance(device_map, int) or (isinstance(device_map, str) and device_map.isdigit()):
        return "cuda"
    name = str(getattr(device_map, "type", device_map))
    if name in PLACEMENTS:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def check_device_map(device_map: Any) -> None:
    """``ValueError`` unless ``device_map`` is None, a placement strategy, a device, or a dict."""
    if device_map is None or isinstance(device_map, (Mapping, int)) or type(device_map).__name__ == "device":
        return
    if isinstance(device_map, str):
        import torch

        if device_map in PLACEMENTS or device_map.isdigit():
            return
        try:
            torch.device(device_map)
            return
        except RuntimeError:
            pass
    raise ValueError(f"device_map must be one of {list(PLACEMENTS)}, a device ('cpu', 'cuda:0'), a GPU index or "
                     f"a dict of module name -> device, got {device_map!r}.")


def quantization(quantization_config: Any, load_in_8bit: bool, load_in_4bit: bool, dtype: Any) -> Any:
    """The ``quantization_config`` to load with (None: none). A dict is a ``BitsAndBytesConfig``'s keywords
    (or, with ``quant_method``, any transformers quantization config); the shortcuts make a bitsandbytes
    config (4-bit: NF4, double quantization, computing in ``dtype``). A bitsandbytes config needs the
    ``bitsandbytes`` package and a CUDA GPU: :class:`MissingDependencyError` says which is missing."""
    chosen = [n for n, v in (("quantization_config", quantization_config is not None),
                             ("load_in_8bit", load_in_8bit), ("load_in_4bit", load_in_4bit)) if v]
    if len(chosen) > 1:
        raise ValueError(f"pass one of quantization_config, load_in_8bit and load_in_4bit, got {chosen}.")
    if not chosen:
        return None
    from transformers import BitsAndBytesConfig

    if load_in_8bit:
        config: Any = BitsAndBytesConfig(load_in_8bit=True)
    elif load_in_4bit:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=dtype)
    elif isinstance(quantization_config, Mapping):
        if "quant_method" in quantization_config:
            from transformers import AutoQuantizationConfig

            config = AutoQuantizationConfig.from_dict(dict(quantization_config))
        else:
            config = BitsAndBytesConfig(**quantization_config)
    else:
        config = quantization_config
    method = getattr(config, "quant_method", "")
    if str(getattr(method, "value", method)).lower() == "bitsandbytes":
        check_bitsandbytes()
    return config


def check_bitsandbytes() -> None:
    """:class:`MissingDependencyError` unless ``bitsandbytes`` is installed and a CUDA GPU is visible."""
    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependencyError(
            "'bitsandbytes' is needed for 4-bit/8-bit loading (load_in_4bit, load_in_8bit or a "
            "BitsAndBytesConfig) but is not installed. Install it with: pip install bitsandbytes  "
            "(on a machine with a CUDA GPU), or load without quantization (e.g. dtype='bfloat16').")
    if not torch.cuda.is_available():
        raise MissingDependencyError(
            "4-bit/8-bit loading with bitsandbytes needs a CUDA GPU, and torch sees none "
            "(torch.cuda.is_available() is False). Load without quantization here (e.g. dtype='float32' on a "
            "CPU), or run on a machine with a CUDA GPU and a CUDA build of torch.")


def from_pretrained_kwargs(*, dtype: Any, device_map: Any, quantization: Any, attn_implementation: str | None,
                           model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of ``AutoModelForCausalLM.from_pretrained`` (only those that are set)."""
    out = dict(model_kwargs)
    out["dtype"] = dtype
    for key, value in (("device_map", device_map), ("quantization_config", quantization),
                       ("attn_implementation", attn_implementation)):
        if value is not None:
            out[key] = value
    return out


def resolve_dtype(dtype: Any, device: str) -> Any:
    """The torch dtype of ``dtype`` (a name or a ``torch.dtype``) on ``device``: ``"auto"`` is bfloat16 on
    CUDA (float16 where bfloat16 is unsupported) and float32 elsewhere; ``ValueError`` for an unknown name."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
             "half": torch.float16, "fp16": torch.float16}
    key = str(dtype).removeprefix("torch.")
    if key not in names:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(names)} (or a torch.dtype), got {dtype!r}.")
    return names[key]
