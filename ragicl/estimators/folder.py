"""The saved estimator folder of :class:`~ragicl.ICLClassifier` / :class:`~ragicl.ICLGenerator`: its format,
crash-safe :func:`save_estimator`, checked :func:`load_estimator` (private; use ``est.save`` / ``cls.load``).

Layout (version 2; docs/DESIGN.md, *Estimator conventions*)::

    <path>/estimator.json        the pointer (below); replacing it atomically is a save's one commit
    <path>/index-<id>/           an embedded index, an ExampleIndex.save folder (+ the marker .ragicl-made)
    <path>/.lock                 advisory lock serializing savers (never a link)

``estimator.json`` fields: ``format`` (``"ragicl-estimator"``), ``version`` (2; version 1 still loads),
``class``, ``params`` (the constructor's parameters as JSON: names, numbers, strings, lists of strings,
``{"PromptTemplate": {...}}``), ``fitted`` (``template_``, ``input_fields_``, and ``classes_`` for a
classifier), ``index``, ``previous_index``, ``own_indexes`` and ``metadata_digest``. ``index`` is one of

* ``null`` — no index (``k=0``);
* ``{"kind": "embedded", "path": "index-<12 hex>", "fingerprint": ...}`` — a folder *inside* this one,
  named by a plain ``index-<12 hex>`` name (anything else, ``..`` or an absolute path, is refused);
* ``{"kind": "reference", "path": "/absolute/path", "fingerprint": ...}`` — the one, explicit way to use
  an index folder elsewhere (``save(index_path=...)``, or ``fit`` given a saved index folder); ``path`` is
  absolute.

``fingerprint`` is the dataset fingerprint of the index, compared on load with the one of the index just
loaded (not re-read), so a referenced folder rebuilt on other data is an ``EstimatorFormatError``.
``previous_index`` names the embedded folder of the save before (kept, as an index keeps its previous
version, so a reader that opened the old ``estimator.json`` can still load its index); ``own_indexes``
lists the ``index-*`` folders ragicl made here. ``metadata_digest`` is a SHA-256 over the canonical JSON of
the rest (``_atomic.seal``), required from version 2 on; every field's type is checked on load, and a
classifier's ``classes_`` and ``input_fields_`` must be its index's labels and fields.

A save (under the lock) removes leftovers, writes the new ``index-<id>/`` (marker first), then replaces
``estimator.json`` (temp file, fsync, ``os.replace``), then removes the ``index-*`` folders that are
neither current nor previous. Only folders ragicl made are removed (strict name and marker, empty, or
listed in ``own_indexes``); ``.estimator.json.tmp-<12 hex>`` files of killed saves are removed by the next
save, or by a load that finds no save running. A load reads ``estimator.json`` once and opens what it
names; if anything fails while another save replaced ``estimator.json``, it starts again (up to
``LOAD_ATTEMPTS`` times), so it returns one whole saved estimator, never a mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import _atomic
from .._exceptions import EstimatorFormatError

logger = logging.getLogger(__name__)

FORMAT = "ragicl-estimator"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no digest, no markers, no previous index
MANIFEST = "estimator.json"
INDEX_PREFIX = "index-"
SAVE_STEPS = ("locked", "cleaned-before", "index-created", "index-saved", "estimator-written",
              "estimator-replaced", "cleaned")
LOAD_ATTEMPTS = 20


def checkpoint(step: str) -> None:
    """Called after each step of a save (``SAVE_STEPS``, embedded index only); a seam for crash tests."""


# ------------------------------------------------------------------------------------------ parameters
def _param_to_json(name: str, value: Any) -> Any:
    from ..prompt.template import PromptTemplate

    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, PromptTemplate):
        return {"PromptTemplate": template_to_json(value)}
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    if name == "embedder" and hasattr(value, "name"):
        return str(value.name)  # get_embedder maps the name back ("hash-64", a model name or path)
    if name == "lm":
        from ..lm.factory import spec_of

        spec = spec_of(value)
        if spec is not None:  # a server or llama.cpp LM: how to reach it again (never an API key)
            return {"LMSpec": spec.to_json()}
        lm_name = getattr(value, "model_name", None) or getattr(value, "name", None)
        if isinstance(lm_name, str):
            logger.info("saving the LM object by its name %r; pass lm=... to load() for an object", lm_name)
            return lm_name
    raise EstimatorFormatError(f"cannot save parameter {name}={value!r}: only names, numbers, strings and "
                               "PromptTemplates are stored. Fix: pass it by name (e.g. a model path).")


def template_to_json(template: Any) -> dict[str, Any]:
    """The init fields of a frozen ``PromptTemplate`` as plain JSON values."""
    out = {f.name: getattr(template, f.name) for f in dataclasses.fields(template) if f.init}
    if out.get("verbalizer") is not None:
        out["verbalizer"] = dict(out["verbalizer"])
    return out


def _template_from_json(file: Path, field: str, value: Any) -> Any:
    from ..prompt.template import PromptTemplate

    names = {f.name for f in dataclasses.fields(PromptTemplate) if f.init}
    simple = (str, bool, type(None))
    if (not isinstance(value, dict) or not set(value) <= names
            or not all(isinstance(v, simple) or (isinstance(v, dict) and all(
                isinstance(a, str) and isinstance(b, str) for a, b in v.items())) for v in value.values())):
        raise EstimatorFormatError(f"{file}: field {field!r} is {value!r}; expected a PromptTemplate as an "
                                   f"object with fields among {sorted(names)}. Fix: save the estimator again.")
    try:
        return PromptTemplate(**value)
    except (TypeError, ValueError) as err:
        raise EstimatorFormatError(f"{file}: field {field!r} is not a valid PromptTemplate ({err}). Fix: save "
                                   "the estimator again.") from err


def _param_from_json(file: Path, name: str, value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"PromptTemplate"}:
        return _template_from_json(file, f"params.{name}", value["PromptTemplate"])
    if name == "lm" and isinstance(value, dict) and set(value) == {"LMSpec"}:
        from ..lm.factory import LMSpec

        try:
            return LMSpec.from_json(value["LMSpec"])
        except (TypeError, ValueError) as err:
            raise EstimatorFormatError(f"{file}: field 'params.lm' is not a valid LM description ({err}). "
                                       "Fix: save the estimator again.") from None
    if value is None or isinstance(value, (str, int, float, bool)) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise EstimatorFormatError(f"{file}: field 'params.{name}' is {value!r}; expected a name, number, string, "
                               "list of strings or PromptTemplate. Fix: save the estimator again.")


# ------------------------------------------------------------------------------------------ the index
def _index_reference(est: Any, index: Any, index_path: str | os.PathLike | None) -> Path | None:
    """The folder holding ``index`` when it has one (given, or an index that knows its folder)."""
    candidate = index_path
    for source in (est, index):  # a folder the index was loaded from by fit(path), or one it knows itself
        if candidate is None:
            candidate = getattr(source, "index_folder_" if source is est else "path", None)
    if candidate is None:
        return None
    folder = Path(candidate).resolve()
    fingerprint = _folder_fingerprint(folder)
    if fingerprint != index.dataset.fingerprint():
        if index_path is None:
            return None  # the index changed since it was loaded/saved there: embed it instead
        raise EstimatorFormatError(f"index_path {str(folder)!r} does not hold the fitted index (its dataset "
                                   f"fingerprint is {fingerprint!r}). Fix: save the index there first "
                                   "(index.save(path)) or omit index_path to store the index inside the folder.")
    return folder


def _folder_fingerprint(folder: Path) -> str | None:
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("dataset_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _loaded_fingerprint(index: Any) -> Any:
    """The dataset fingerprint of an index as loaded (its manifest's, checked against its files)."""
    sharded = getattr(index, "sharded_manifest", None)
    if isinstance(sharded, Mapping):
        return sharded.get("dataset_fingerprint")
    return index.manifest.get("dataset_fingerprint")


# ------------------------------------------------------------------------------------------ cleaning
def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None


def _own_indexes(data: Any) -> tuple[set[str], set[str]]:
    """(index folders to keep: the current and previous embedded ones; index folders ragicl made here, which
    may be removed even without a marker). Strict names only; a file whose digest does not match protects
    its folders but vouches for none."""
    if not isinstance(data, dict):
        return set(), set()
    entry = data.get("index")
    current = entry.get("path") if isinstance(entry, dict) and entry.get("kind") == "embedded" else None
    keep = {v for v in (current, data.get("previous_index")) if _atomic.is_strict_name(v, INDEX_PREFIX)}
    if _atomic.DIGEST_FIELD in data and _atomic.check_digest(data):
        return keep, set()
    own = data.get("own_indexes")
    return keep, keep | {v for v in (own if isinstance(own, list) else []) if _atomic.is_strict_name(v, INDEX_PREFIX)}


def _is_leftover(entry: Path, keep: set[str], known: set[str]) -> bool:
    name = entry.name
    if _atomic.is_temp_file(name, MANIFEST):
        return True
    if name in keep or not _atomic.is_strict_name(name, INDEX_PREFIX):
        return False
    return (name in known and entry.is_dir() and not entry.is_symlink()) or _atomic.is_owned_dir(entry)


def _clean(path: Path, keep: set[str], known: set[str]) -> None:
    """Remove temp files and the index folders ragicl made that are not in ``keep`` (hold the lock)."""
    _atomic.remove_temp_files(path, MANIFEST)
    for entry in list(path.iterdir()):
        if _is_leftover(entry, keep, known):
            _atomic.remove_owned_dir(entry, INDEX_PREFIX, known=known)


def _tidy(path: Path, data: dict[str, Any]) -> None:
    """Remove leftovers of killed saves, if no save is running (never blocks, never raises)."""
    keep, known = _own_indexes(data)
    with contextlib.suppress(OSError):
        if not any(_is_leftover(p, keep, known) for p in path.iterdir()):
            return
        with _atomic.exclusive_lock(path / ".lock", blocking=False, create=False) as held:
            if held and _read_json(path / MANIFEST) == data:
                _clean(path, keep, known)


# ------------------------------------------------------------------------------------------ save
def save_estimator(est: Any, path: str | os.PathLike, *, index_path: str | os.PathLike | None = None) -> Path:
    """Write a fitted estimator's folder (see the module docstring); returns the folder."""
    est._check_fitted()
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EstimatorFormatError(f"{str(path)!r} is a file; save() needs a folder path (new or written by "
                                   "save()).")
    if path.is_dir() and not (path / MANIFEST).exists():
        foreign = [p.name for p in path.iterdir() if not p.name.startswith(".")
                   and not (_atomic.is_strict_name(p.name, INDEX_PREFIX) and _atomic.is_owned_dir(p))]
        if foreign:
            raise EstimatorFormatError(f"{str(path)!r} exists and is not a saved ragicl estimator (it holds "
                                       f"{sorted(foreign)[:5]}); refusing to write into it. Fix: choose a new "
                                       "or empty folder.")
    path.mkdir(parents=True, exist_ok=True)
    with _atomic.exclusive_lock(path / ".lock"):  # concurrent saves to one folder: one at a time
        return _save_locked(est, path, index_path)


def _save_locked(est: Any, path: Path, index_path: str | os.PathLike | None) -> Path:
    checkpoint("locked")
    old = _read_json(path / MANIFEST)
    keep, known = _own_indexes(old)
    _clean(path, keep, known)
    checkpoint("cleaned-before")
    old_entry = old.get("index") if isinstance(old, dict) else None
    old_path = old_entry.get("path") if isinstance(old_entry, dict) else None
    old_dir = old_path if isinstance(old_path, str) and old_path in keep else None
    index, entry, new_dir = est.index_, None, None
    if index is not None:
        ref = _index_reference(est, index, index_path)
        if ref is not None:
            entry = {"kind": "reference", "path": str(ref), "fingerprint": index.dataset.fingerprint()}
        else:
            new_dir = _atomic.make_owned_dir(path / _atomic.unique_name(INDEX_PREFIX)).name
            checkpoint("index-created")
            try:
                index.save(path / new_dir)
            except BaseException:
                _atomic.remove_owned_dir(path / new_dir, INDEX_PREFIX)
                raise
            checkpoint("index-saved")
            entry = {"kind": "embedded", "path": new_dir, "fingerprint": index.dataset.fingerprint()}
    own = sorted(v for v in known if (path / v).is_dir()) + ([new_dir] if new_dir else [])
    data = _atomic.seal({
        "format": FORMAT, "version": VERSION, "class": type(est).__name__,
        "params": {name: _param_to_json(name, getattr(est, name)) for name in est._param_names()},
        "fitted": {name: (template_to_json(getattr(est, name)) if name == "template_"
                          else list(getattr(est, name))) for name in est._FITTED},
        "index": entry, "previous_index": old_dir, "own_indexes": own})
    try:
        _atomic.write_atomic(path / MANIFEST, json.dumps(data, indent=2, ensure_ascii=False),
                             before_replace=lambda: checkpoint("estimator-written"))
    except BaseException:
        if new_dir is not None:
            _atomic.remove_owned_dir(path / new_dir, INDEX_PREFIX, known={new_dir})
        raise
    checkpoint("estimator-replaced")
    _clean(path, {v for v in (new_dir, old_dir) if v}, set(own))
    checkpoint("cleaned")
    logger.info("saved %s to %s", type(est).__name__, path)
    return path


# ------------------------------------------------------------------------------------------ load
def _fail(file: Path, field: str, value: Any, expected: str) -> EstimatorFormatError:
    return EstimatorFormatError(f"{file}: field {field!r} is {value!r}; expected {expected}. Fix: save the "
                                "estimator again (or restore the folder from a backup).")


def check_estimator_json(cls: type, file: Path, data: Any) -> dict[str, Any]:
    """``data`` (the parsed ``file``) if it is a valid saved ``cls``; else ``EstimatorFormatError`` naming
    the field. Checks format, version, digest (required from version 2 on), class, and every field's type."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EstimatorFormatError(f"{file} is not a ragicl estimator file (format "
                                   f"{data.get('format') if isinstance(data, dict) else None!r}).")
    version = data.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise EstimatorFormatError(f"{str(file.parent)!r} has estimator format version {version!r}; this ragicl "
                                   f"reads versions {list(READABLE_VERSIONS)}. Save it again with this version.")
    if (version >= 2 or _atomic.DIGEST_FIELD in data) and (why := _atomic.check_digest(data)):
        raise EstimatorFormatError(f"{file} is corrupt: {why}. Fix: save the estimator again (or restore the "
                                   "folder from a backup).")
    if data.get("class") != cls.__name__:
        raise EstimatorFormatError(f"{str(file.parent)!r} holds a saved {data.get('class')}, not a "
                                   f"{cls.__name__}. Fix: load it with {data.get('class')}.load(path).")
    params, fitted = data.get("params"), data.get("fitted")
    if not isinstance(params, dict) or not set(params) <= set(cls._param_names()):
        raise _fail(file, "params", params, f"an object with keys among {sorted(cls._param_names())}")
    if not isinstance(fitted, dict) or set(fitted) != set(cls._FITTED):
        raise _fail(file, "fitted", fitted, f"an object with the keys {sorted(cls._FITTED)}")
    for name, value in fitted.items():
        if name != "template_" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise _fail(file, f"fitted.{name}", value, "a list of strings")
    if "classes_" in fitted and (not fitted["classes_"] or len(set(fitted["classes_"])) != len(fitted["classes_"])):
        raise _fail(file, "fitted.classes_", fitted["classes_"], "a non-empty list of distinct labels")
    _check_index_entry(file, data.get("index"))
    if version >= 2:
        if not (data.get("previous_index") is None or _atomic.is_strict_name(data["previous_index"], INDEX_PREFIX)):
            raise _fail(file, "previous_index", data.get("previous_index"), "null or a folder name 'index-' + 12 hex")
        own = data.get("own_indexes")
        if not (isinstance(own, list) and all(_atomic.is_strict_name(v, INDEX_PREFIX) for v in own)):
            raise _fail(file, "own_indexes", own, "a list of folder names 'index-' + 12 hex digits")
    return data


def _check_index_entry(file: Path, entry: Any) -> None:
    if entry is None:
        return
    if not isinstance(entry, dict) or entry.get("kind") not in ("embedded", "reference"):
        raise _fail(file, "index", entry, "null or an object of kind 'embedded' or 'reference'")
    if not isinstance(entry.get("fingerprint"), str):
        raise _fail(file, "index.fingerprint", entry.get("fingerprint"), "a dataset fingerprint (a string)")
    where = entry.get("path")
    if entry["kind"] == "embedded" and not _atomic.is_strict_name(where, INDEX_PREFIX):
        raise _fail(file, "index.path", where, "the name of a folder inside this one, 'index-' + 12 hex digits "
                    "(an index elsewhere is referred to only by an entry of kind 'reference')")
    if entry["kind"] == "reference" and not (isinstance(where, str) and os.path.isabs(where)):
        raise _fail(file, "index.path", where, "an absolute path (an entry of kind 'reference')")


def _read_bytes(cls: type, path: Path) -> bytes:
    if not path.is_dir():
        raise EstimatorFormatError(f"no saved estimator at {str(path)!r}: the folder does not exist. Fix: "
                                   f"pass the folder written by {cls.__name__}.save(path).")
    try:
        return (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise EstimatorFormatError(f"{str(path)!r} is not a saved ragicl estimator (no {MANIFEST}). Fix: pass "
                                   f"the folder written by {cls.__name__}.save(path).") from None
    except OSError as err:
        raise EstimatorFormatError(f"{path / MANIFEST} is unreadable ({err}); save the estimator again.") from err


def _parse(cls: type, path: Path, raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError too
        raise EstimatorFormatError(f"{path / MANIFEST} is unreadable ({err}); save the estimator again.") from err
    return check_estimator_json(cls, path / MANIFEST, data)


def read_manifest(cls: type, path: str | os.PathLike) -> dict[str, Any]:
    """``estimator.json`` of ``path``, checked to be a valid saved estimator folder of class ``cls``."""
    path = Path(path)
    return _parse(cls, path, _read_bytes(cls, path))


def load_estimator(cls: type, path: str | os.PathLike, **overrides: Any) -> Any:
    """A fitted ``cls`` from a folder written by :func:`save_estimator`; ``overrides`` replace saved
    parameters (e.g. ``lm=`` an LM object, ``device=``)."""
    path = Path(path)
    unknown = set(overrides) - set(cls._param_names())
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for {cls.__name__}.load; valid: "
                         f"{sorted(cls._param_names())}.")
    for attempt in range(LOAD_ATTEMPTS):
        raw = _read_bytes(cls, path)
        try:
            data = _parse(cls, path, raw)
            est = _load_from(cls, path, data, overrides)
        except Exception:
            # a concurrent save replaced estimator.json (and may have removed what it named): start again
            with contextlib.suppress(OSError):
                if (path / MANIFEST).read_bytes() != raw:
                    time.sleep(0.002 * attempt)
                    continue
            raise
        _tidy(path, data)
        return est
    raise EstimatorFormatError(f"the estimator at {str(path)!r} was replaced by {LOAD_ATTEMPTS} concurrent saves "
                               "while it was being loaded. Fix: retry the load once the saves are done.")


def _load_from(cls: type, path: Path, data: dict[str, Any], overrides: dict[str, Any]) -> Any:
    from ..index.core import ExampleIndex

    file = path / MANIFEST
    params = {k: _param_from_json(file, k, v) for k, v in data["params"].items()}
    fitted = {name: _template_from_json(file, "fitted.template_", value) if name == "template_" else tuple(value)
              for name, value in data["fitted"].items()}
    entry = data.get("index")
    index = folder = None
    if entry is not None:
        folder = path / entry["path"] if entry["kind"] == "embedded" else Path(entry["path"])
        if entry["kind"] == "embedded" and folder.is_symlink():
            raise EstimatorFormatError(f"{folder} is a symbolic link; an embedded index is a plain folder inside "
                                       "the estimator's (an index elsewhere is referred to by an entry of kind "
                                       "'reference'). Fix: save the estimator again.")
        index = ExampleIndex.load(folder)
        if _loaded_fingerprint(index) != entry["fingerprint"]:
            raise EstimatorFormatError(f"the index folder {str(folder)!r} this estimator refers to now holds "
                                       "other data (dataset fingerprint changed). Fix: fit and save the "
                                       "estimator again, or restore that index.")
        for name, expected in (("classes_", index.labels), ("input_fields_", index.input_fields)):
            if name in fitted and tuple(fitted[name]) != tuple(expected):
                raise EstimatorFormatError(f"{file}: the fitted {name} {list(fitted[name])} differ from the "
                                           f"index's {list(expected)} ({folder}). Fix: fit and save the "
                                           "estimator again.")
    est = cls(**{**params, **overrides})
    for name, value in fitted.items():
        setattr(est, name, value)
    est.index_ = index
    est.index_folder_ = folder.resolve() if entry is not None and entry["kind"] == "reference" else None
    est._prepare()
    return est
