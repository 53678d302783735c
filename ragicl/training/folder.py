"""The fine-tuned model folder (``ragicl finetune --out DIR``): crash-safe saves, whose folder it is, cleanup.

Layout (format 2; docs/DESIGN.md, *Fine-tuning*)::

    DIR/ragicl_finetune.json    the pointer: the training record, plus the current version folder's name
                                ("version"), the previous one, each file's size and SHA-256, and a digest
                                of the record itself; replaced atomically (temp file, fsync, rename)
    DIR/model-<id>/             one saved version, immutable once published: the transformers files
                                (config.json, model.safetensors, generation_config.json, the tokenizer's)
                                and a copy of the training record; ``.ragicl-made`` marks it as ragicl's
    DIR/checkpoint/state.pt     the resumable training state while a run trains (the final save removes it)
    DIR/ragicl_reference.json   train_reference's reuse stamp (settings and the version it describes)
    DIR/.lock                   advisory lock serializing writers

A save (under the lock) writes ``.tmp-<id>/`` inside ``DIR``, fsyncs it, renames it to ``model-<id>/`` and
then replaces ``ragicl_finetune.json``: that rename is the commit. A kill at any step leaves the old record
naming the old, complete version (or, after the commit, the new one); readers
(:func:`ragicl.models.load_resolved`) see one whole version. The previous version is kept until the next
save; that save also removes what killed saves left (temp folders, unpublished versions, temp files) and the
hidden ``.DIR-tmp-*``/``.DIR-old-*`` copies the flat layout's save left beside the folder, but only entries
with ragicl's exact names (and folders marked as ragicl's). Other files in ``DIR`` are never touched.
A folder of the flat layout (ragicl <= 0.1: the files beside the record) still loads; the next save moves
it to a version folder and removes the flat model files it lists in the new record.

Training refuses an output folder holding files ragicl did not make (:func:`check_output`), before any step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from .. import _atomic
from ..models import (
    FINETUNE_FORMAT,
    FINETUNE_RECORD,
    FLAT_SIBLING,
    POINTER_KEYS,
    VERSION_PREFIX,
    FinetuneFormatError,
    file_sha256,
    read_finetune_record,
    recover_flat,
)

logger = logging.getLogger(__name__)

SAVE_STEPS = ("locked", "tmp-created", "model-written", "tokenizer-written", "synced", "version-published",
              "record-written", "record-replaced", "checkpoint-removed", "cleaned")
LOCK = ".lock"
TMP_PREFIX = ".tmp-"
REFERENCE_STAMP = "ragicl_reference.json"
FLAT_STAMP_TEMP = "ragicl_reference.tmp"  # train_reference's temp file in ragicl <= 0.1
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
STATE_TEMP = re.compile(r"\.state\.pt\.(tmp-[0-9a-f]{12}|[a-z0-9_]{8})")  # ours, and tempfile.mkstemp's (<= 0.1)
#: files ``save_pretrained`` writes (model and tokenizer): what a flat-layout folder's model consists of
HF_FILE = re.compile(
    r"(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens|vocab"
    r"|preprocessor_config|chat_template|adapter_config)\.json|merges\.txt|vocab\.txt|tokenizer\.model"
    r"|spiece\.model|sentencepiece\.bpe\.model|chat_template\.jinja"
    r"|(model|pytorch_model|adapter_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)"
    r"|(model|pytorch_model)\.(safetensors|bin)\.index\.json")


def save_step(step: str) -> None:
    """Called after each step of a save (``SAVE_STEPS``) and of ``save_state`` ("state-written"); a seam
    for crash tests, does nothing."""


# ---------------------------------------------------------------- what is ours
def _is_temp_file(name: str) -> bool:
    return (_atomic.is_temp_file(name, FINETUNE_RECORD) or _atomic.is_temp_file(name, REFERENCE_STAMP)
            or name == FLAT_STAMP_TEMP)


def _is_owned(entry: Path, prefix: str) -> bool:
    """A folder named ``prefix`` + 12 hex digits holding ragicl's marker (or empty): made by a save."""
    return _atomic.is_strict_name(entry.name, prefix) and _atomic.is_owned_dir(entry)


def _is_checkpoint_dir(path: Path) -> bool:
    return (path.name == CHECKPOINT_DIR and path.is_dir() and not path.is_symlink()
            and all(e.is_file() and (e.name == STATE_FILE or STATE_TEMP.fullmatch(e.name)) for e in path.iterdir()))


def _is_ours(entry: Path) -> bool:
    """An entry of an output folder that a ragicl run made (so the folder may be trained into)."""
    name = entry.name
    if name in (LOCK, REFERENCE_STAMP, FINETUNE_RECORD) or _is_temp_file(name):
        return entry.is_file() and not entry.is_symlink()
    return _is_owned(entry, TMP_PREFIX) or _is_owned(entry, VERSION_PREFIX) or _is_checkpoint_dir(entry)


def check_output(out: str | os.PathLike) -> Path:
    """Refuse (``FileExistsError``) an output folder that holds files ragicl did not make; returns the path.

    Accepted: a missing or empty folder, a previous fine-tune output (it has ``ragicl_finetune.json``; any
    layout, other files in it are left alone), or one holding only what an interrupted run left (its
    ``checkpoint/``, temp folders). Call it before training, so a refused folder costs no training time.
    """
    out = Path(out)
    recover_flat(out)
    if not out.exists() and not out.is_symlink():
        return out
    if not out.is_dir():
        raise FileExistsError(f"the fine-tune output {out} exists and is not a folder; refusing to replace it "
                              "with a model. Fix: choose another output folder (--out).")
    if (out / FINETUNE_RECORD).is_file():
        return out  # a previous fine-tune output: the new version goes beside what it holds
    foreign = sorted(e.name + ("/" if e.is_dir() else "") for e in out.iterdir() if not _is_ours(e))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(
            f"the fine-tune output {out} already holds files ragicl did not make ({shown}) and no "
            f"{FINETUNE_RECORD}; refusing to train into it, so nothing of yours is overwritten or mixed with "
            "the model. Fix: choose a new or empty folder (--out), or a folder an earlier fine-tune wrote.")
    return out


# ---------------------------------------------------------------- cleanup
def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def _remove_owned(path: Path) -> None:
    """Remove a folder of ours with its marker last: a kill midway leaves it marked (or empty), so a later
    save still knows it is ragicl's and finishes the job (``shutil.rmtree`` may take the marker first)."""
    marker = path / _atomic.MARKER
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            if Path(root, name) != marker:
                with contextlib.suppress(OSError):
                    os.unlink(Path(root, name))
        for name in dirs:  # already emptied (bottom-up); a link is removed, never followed
            sub = Path(root, name)
            with contextlib.suppress(OSError):
                sub.unlink() if sub.is_symlink() else _rmtree(sub)
    with contextlib.suppress(OSError):
        marker.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


def _flat_copy_is_ours(path: Path) -> bool:
    """A hidden copy beside the folder (from the flat layout's save) holding only what that save wrote."""
    return all((e.is_file() and not e.is_symlink() and (HF_FILE.fullmatch(e.name) or e.name in (
        FINETUNE_RECORD, REFERENCE_STAMP, FLAT_STAMP_TEMP))) or _is_checkpoint_dir(e) for e in path.iterdir())


def _clean_flat_siblings(out: Path) -> None:
    pattern = re.compile(FLAT_SIBLING.format(name=re.escape(out.name)))
    for entry in list(out.parent.iterdir()) if out.is_dir() else []:
        if not pattern.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        if _flat_copy_is_ours(entry):
            _rmtree(entry)
            logger.info("removed %s, left beside %s by a killed save", entry.name, out)
        else:
            logger.warning("left %s in place: it holds files that are not a saved model (look inside)", entry)


def _clean(out: Path, keep: set[str] | None) -> None:
    """Remove what killed saves left in and beside ``out``; versions not in ``keep`` (``None``: keep all)."""
    for entry in list(out.iterdir()):
        name = entry.name
        stale = keep is not None and name not in keep and _is_owned(entry, VERSION_PREFIX)
        if stale or _is_owned(entry, TMP_PREFIX):
            _remove_owned(entry)
        elif _is_temp_file(name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
    _clean_flat_siblings(out)


def clean_state_temps(folder: Path) -> None:
    """Remove temp files a killed ``save_state`` left in ``checkpoint/`` (call while holding the lock)."""
    for entry in list(folder.iterdir()) if folder.is_dir() else []:
        if STATE_TEMP.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)


def remove_checkpoint(out: Path) -> None:
    """Remove ``out/checkpoint`` (the state file and its temp files; the folder if nothing else is in it)."""
    folder = out / CHECKPOINT_DIR
    if folder.is_symlink() or not folder.is_dir():
        return
    clean_state_temps(folder)
    (folder / STATE_FILE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _current(out: Path) -> tuple[dict[str, Any] | None, set[str] | None]:
    """The folder's record and the versions a save must keep (``None``: all, the record being unreadable)."""
    try:
        record = read_finetune_record(out)
    except FinetuneFormatError as err:
        logger.warning("%s; saving a new version and keeping every existing one this time", err)
        return None, None
    if record is None or "version" not in record:
        return record, set()
    return record, {v for v in (record["version"], record.get("previous_version")) if v}


def _flat_files(out: Path, old: dict[str, Any] | None) -> list[str]:
    """The flat-layout model files the next record lists for removal (a save killed before it removed them)."""
    if old is None:
        return []
    if "version" not in old:  # the flat layout: its model files are beside the record
        return sorted(e.name for e in out.iterdir() if HF_FILE.fullmatch(e.name) and e.is_file()
                      and not e.is_symlink())
    return [n for n in old.get("legacy_files", []) if (out / n).is_file()]


# ---------------------------------------------------------------- the save
def save(model: Any, tokenizer: Any, out: str | os.PathLike, meta: dict[str, Any] | None = None, *,
         refuse_foreign: bool = True) -> Path:
    """Save ``model`` and ``tokenizer`` (``save_pretrained``) with the training record ``meta`` as a new
    version of the folder ``out``, crash-safely; returns ``out``.

    With ``refuse_foreign`` a folder holding files ragicl did not make is refused (:func:`check_output`);
    training checks that before its first step and saves with ``refuse_foreign=False``.
    """
    out = Path(out)
    meta = dict(meta or {})
    if reserved := sorted(set(meta) & set(POINTER_KEYS)):
        raise ValueError(f"the training record may not use the keys {reserved}: the folder's pointer uses them.")
    if refuse_foreign:
        check_output(out)
    else:
        recover_flat(out)
    out.mkdir(parents=True, exist_ok=True)
    with _atomic.exclusive_lock(out / LOCK):
        save_step("locked")
        old, keep = _current(out)
        flat = _flat_files(out, old)
        old_version = old.get("version") if old else None
        _clean(out, keep)
        tmp = _atomic.make_owned_dir(out / _atomic.unique_name(TMP_PREFIX))
        version = VERSION_PREFIX + tmp.name.removeprefix(TMP_PREFIX)
        published = False
        try:
            save_step("tmp-created")
            model.save_pretrained(tmp)
            save_step("model-written")
            tokenizer.save_pretrained(tmp)
            save_step("tokenizer-written")
            (tmp / FINETUNE_RECORD).write_text(json.dumps(meta, indent=2), encoding="utf-8")
            files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != _atomic.MARKER)
            for path in [*files, *sorted(p for p in tmp.rglob("*") if p.is_dir()), tmp]:
                _atomic.fsync(path)
            save_step("synced")
            names = {p.relative_to(tmp).as_posix(): p for p in files}
            record = {**meta, "format_version": FINETUNE_FORMAT, "version": version,
                      "previous_version": old_version, "files": {n: p.stat().st_size for n, p in names.items()},
                      "checksums": {n: file_sha256(p) for n, p in names.items()}}
            if flat:
                record["legacy_files"] = flat
            record = _atomic.seal(record)
            os.rename(tmp, out / version)
            _atomic.fsync(out)
            save_step("version-published")
            _atomic.write_atomic(out / FINETUNE_RECORD, json.dumps(record, indent=2),
                                 before_replace=lambda: save_step("record-written"))
            published = True
            save_step("record-replaced")
        finally:
            if not published:
                for leftover in (tmp, out / version):
                    _remove_owned(leftover)
        remove_checkpoint(out)
        save_step("checkpoint-removed")
        _clean(out, None if keep is None else {version} | ({old_version} if old_version else set()))
        for name in flat:  # the flat layout's model files, now in no version (listed in the record)
            (out / name).unlink(missing_ok=True)
        save_step("cleaned")
    logger.info("saved fine-tuned model to %s (version %s)", out, version)
    return out


def current_version(out: str | os.PathLike) -> str | None:
    """The version folder ``out``'s record names (``None`` for the flat layout); ``FinetuneFormatError``
    when it has no record or a damaged one."""
    record = read_finetune_record(out)
    if record is None:
        raise FinetuneFormatError(f"no fine-tuned model at {out}: it holds no {FINETUNE_RECORD}.")
    return record.get("version")
