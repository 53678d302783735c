"""The estimator conventions shared by :class:`~ragicl.ICLClassifier` and :class:`~ragicl.ICLGenerator`.

* **scikit-learn contract, without scikit-learn.** Parameters are the constructor's keyword arguments, stored
  unchanged; :meth:`EstimatorMixin.get_params` / :meth:`~EstimatorMixin.set_params` / ``__repr__`` follow
  ``sklearn.base.BaseEstimator`` (unknown parameter: ``ValueError`` naming the valid ones; the repr shows the
  parameters that differ from their defaults), so ``sklearn.base.clone`` and ``GridSearchCV`` work, and
  ``__sklearn_tags__`` imports scikit-learn only when scikit-learn itself asks for the tags.
* **Pickling.** The fitted state that matters is the index, the template and the label set; the loaded LM,
  the packer (its tokenizer-specific encoders are closures) and the retriever are derived from them, so they
  are dropped on pickling and rebuilt on first use (``_prepare``). An LM given as an object is pickled with
  the parameters, as sklearn does; one given by name is reloaded by name.
* **Save / load** (:func:`save_estimator`, :func:`load_estimator`): a folder holding ``estimator.json``
  (format, class, parameters, template, fitted label set and fields, and where the index is) and, unless the
  index is referenced in its own folder, ``index-<token>/`` written by :meth:`ExampleIndex.save`.
  ``estimator.json`` is the commit point: written to a temp file, fsynced and ``os.replace``d, after the index
  it points to is complete; older ``index-*`` folders are removed afterwards. Saves to one folder are
  serialized by a lock file (``.lock``); a reader sees the old or the new estimator, never a mix (it retries
  when a concurrent save removed the index it was opening).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ._atomic import exclusive_lock, unique_name, write_atomic
from ._exceptions import EstimatorFormatError, IndexFormatError

logger = logging.getLogger(__name__)

__all__ = ["EstimatorFormatError", "EstimatorMixin", "load_estimator", "save_estimator"]

FORMAT = "ragicl-estimator"
VERSION = 1
MANIFEST = "estimator.json"
_INDEX_PREFIX = "index-"


class EstimatorMixin:
    """``get_params``/``set_params``/``__repr__``/pickling for estimators whose parameters are the
    keyword arguments of ``__init__``. Subclasses list their derived (rebuilt) attributes in ``_DERIVED``
    and their persisted fitted attributes in ``_FITTED``, and implement ``_prepare()``."""

    _DERIVED: tuple[str, ...] = ("lm_", "packer_", "retriever_")
    _FITTED: tuple[str, ...] = ("input_fields_", "template_")

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    @classmethod
    def _defaults(cls) -> dict[str, Any]:
        return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                if p.default is not inspect.Parameter.empty}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters; with ``deep``, also ``<param>__<sub>`` for parameters that have
        ``get_params`` themselves (as in scikit-learn)."""
        out: dict[str, Any] = {}
        for name in self._param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params: Any) -> EstimatorMixin:
        """Set constructor parameters (``k=4``, nested ``lm__batch_size=2``); returns ``self``. A fitted
        estimator must be fitted again for new parameters to take effect (as in scikit-learn)."""
        valid = self._param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator {self!r}. Valid parameters are: "
                                 f"{sorted(valid)!r}.")
            if sub:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            target = getattr(self, name)
            if not hasattr(target, "set_params"):
                raise ValueError(f"parameter {name!r} of {type(self).__name__} is a {type(target).__name__}, "
                                 f"which has no set_params; cannot set {sorted(sub_params)!r} on it.")
            target.set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        defaults = self._defaults()
        shown = []
        for name in self._param_names():
            value = getattr(self, name, None)
            default = defaults.get(name, inspect.Parameter.empty)
            try:
                same = value is default or bool(value == default)
            except Exception:  # noqa: BLE001 - arrays and odd objects: show them
                same = False
            if not same:
                shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __sklearn_tags__(self) -> Any:
        """Estimator tags for scikit-learn (imported only here, when scikit-learn asks)."""
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        classifier = getattr(self, "_estimator_type", None) == "classifier"
        return Tags(estimator_type=getattr(self, "_estimator_type", None),
                    target_tags=TargetTags(required=classifier, one_d_labels=classifier),
                    classifier_tags=ClassifierTags() if classifier else None,
                    input_tags=InputTags(one_d_array=True, two_d_array=False, string=True, dict=True),
                    non_deterministic=getattr(self, "selection", "") == "random")

    # ---------------------------------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in self._DERIVED:
            state.pop(name, None)
        if not isinstance(getattr(self, "lm", None), str):  # an LM object travels with the parameters
            state["lm_"] = self.__dict__.get("lm_")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.__dict__.get("lm_") is None:
            self.__dict__.pop("lm_", None)

    # ------------------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike, *, index_path: str | os.PathLike | None = None) -> Path:
        """Write this fitted estimator to the folder ``path``, atomically; returns ``path``.

        Stored: the parameters, the fitted template, label set and fields, and the index: referenced by
        its folder when ``index_path`` names one holding it (or ``fit`` got a saved index folder), else
        saved inside ``path``. A folder that is not a saved estimator is never overwritten."""
        return save_estimator(self, path, index_path=index_path)

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides: Any) -> Any:
        """A fitted estimator from a folder written by :meth:`save`, predicting exactly as the saved one;
        ``overrides`` replace saved parameters (``lm=`` an LM object, ``device="cpu"``).
        ``EstimatorFormatError`` for a missing or foreign folder or one of another class."""
        return load_estimator(cls, path, **overrides)

    def __getattr__(self, name: str) -> Any:
        # only called for missing attributes: a derived one of an unpickled estimator is rebuilt on first use
        if name in type(self)._DERIVED and self._ensure_prepared():
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _ensure_prepared(self) -> bool:
        """Rebuild the derived state of an unpickled/loaded estimator; False when it was never fitted."""
        state = self.__dict__
        if "packer_" in state:
            return True
        if all(name in state for name in self._FITTED) and "index_" in state:
            self._prepare()  # type: ignore[attr-defined]
            return True
        return False


def split_index_folder(data: Any) -> tuple[Path | None, Any]:
    """``fit`` given a saved index folder: (the folder, the loaded index); anything else: (None, data)."""
    if isinstance(data, (str, os.PathLike)):
        from .index.core import ExampleIndex

        return Path(data).resolve(), ExampleIndex.load(data)
    return None, data


# ------------------------------------------------------------------------------------------ save/load
def _param_to_json(name: str, value: Any) -> Any:
    from .prompt.template import PromptTemplate

    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, PromptTemplate):
        return {"PromptTemplate": template_to_json(value)}
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    if name == "embedder" and hasattr(value, "name"):
        return str(value.name)  # get_embedder maps the name back ("hash-64", a model name or path)
    if name == "lm":
        lm_name = getattr(value, "model_name", None) or getattr(value, "name", None)
        if isinstance(lm_name, str):
            logger.info("saving the LM object by its name %r; pass lm=... to load() for an object", lm_name)
            return lm_name
    raise EstimatorFormatError(f"cannot save parameter {name}={value!r}: only names, numbers, strings and "
                               "PromptTemplates are stored. Fix: pass it by name (e.g. a model path).")


def _param_from_json(value: Any) -> Any:
    from .prompt.template import PromptTemplate

    if isinstance(value, dict) and set(value) == {"PromptTemplate"}:
        return PromptTemplate(**value["PromptTemplate"])
    return value


def template_to_json(template: Any) -> dict[str, Any]:
    """The init fields of a frozen ``PromptTemplate`` as plain JSON values."""
    out = {f.name: getattr(template, f.name) for f in dataclasses.fields(template) if f.init}
    if out.get("verbalizer") is not None:
        out["verbalizer"] = dict(out["verbalizer"])
    return out


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


def save_estimator(est: Any, path: str | os.PathLike, *, index_path: str | os.PathLike | None = None) -> Path:
    """Write a fitted estimator's folder (see the module docstring); returns the folder."""
    est._check_fitted()
    path = Path(path)
    manifest_path = path / MANIFEST
    if path.exists() and not path.is_dir():
        raise EstimatorFormatError(f"{str(path)!r} is a file; save() needs a folder path (new or written by "
                                   "save()).")
    if path.is_dir() and not manifest_path.exists():
        foreign = [p.name for p in path.iterdir()
                   if not (p.name.startswith(_INDEX_PREFIX) or p.name.startswith("."))]
        if foreign:
            raise EstimatorFormatError(f"{str(path)!r} exists and is not a saved ragicl estimator (it holds "
                                       f"{sorted(foreign)[:5]}); refusing to write into it. Fix: choose a new "
                                       "or empty folder.")
    path.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path / ".lock"):  # concurrent saves to one folder: one at a time
        return _save_locked(est, path, index_path)


def _save_locked(est: Any, path: Path, index_path: str | os.PathLike | None) -> Path:
    manifest_path = path / MANIFEST
    index = est.index_
    index_entry: dict[str, Any] | None = None
    new_dir: str | None = None
    if index is not None:
        ref = _index_reference(est, index, index_path)
        if ref is not None:
            index_entry = {"kind": "reference", "path": str(ref), "fingerprint": index.dataset.fingerprint()}
        else:
            new_dir = unique_name(_INDEX_PREFIX)
            index.save(path / new_dir)
            index_entry = {"kind": "embedded", "path": new_dir, "fingerprint": index.dataset.fingerprint()}
    data = {"format": FORMAT, "version": VERSION, "class": type(est).__name__,
            "params": {name: _param_to_json(name, getattr(est, name)) for name in est._param_names()},
            "fitted": {name: (template_to_json(getattr(est, name)) if name == "template_"
                              else list(getattr(est, name))) for name in est._FITTED},
            "index": index_entry}
    try:
        write_atomic(manifest_path, json.dumps(data, indent=2, ensure_ascii=False))
    except BaseException:
        if new_dir is not None:
            shutil.rmtree(path / new_dir, ignore_errors=True)
        raise
    for old in path.iterdir():  # index folders of earlier saves: no longer referenced
        if old.name.startswith(_INDEX_PREFIX) and old.name != new_dir and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    logger.info("saved %s to %s", type(est).__name__, path)
    return path


def read_manifest(cls: type, path: str | os.PathLike) -> dict[str, Any]:
    """``estimator.json`` of ``path``, checked to be a ragicl estimator folder of class ``cls``."""
    path = Path(path)
    if not path.is_dir():
        raise EstimatorFormatError(f"no saved estimator at {str(path)!r}: the folder does not exist. Fix: "
                                   f"pass the folder written by {cls.__name__}.save(path).")
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EstimatorFormatError(f"{str(path)!r} is not a saved ragicl estimator (no {MANIFEST}). Fix: pass "
                                   f"the folder written by {cls.__name__}.save(path).") from None
    except (OSError, ValueError) as err:
        raise EstimatorFormatError(f"{path / MANIFEST} is unreadable ({err}); save the estimator again.") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EstimatorFormatError(f"{path / MANIFEST} is not a ragicl estimator file (format "
                                   f"{data.get('format') if isinstance(data, dict) else None!r}).")
    if data.get("version") != VERSION:
        raise EstimatorFormatError(f"{str(path)!r} has estimator format version {data.get('version')!r}; this "
                                   f"ragicl reads version {VERSION}. Save it again with this version.")
    if data.get("class") != cls.__name__:
        raise EstimatorFormatError(f"{str(path)!r} holds a saved {data.get('class')}, not a {cls.__name__}. "
                                   f"Fix: load it with {data.get('class')}.load(path).")
    return data


def load_estimator(cls: type, path: str | os.PathLike, **overrides: Any) -> Any:
    """A fitted ``cls`` from a folder written by :func:`save_estimator`; ``overrides`` replace saved
    parameters (e.g. ``lm=`` an LM object, ``device=``)."""

    path = Path(path)
    for attempt in range(3):
        data = read_manifest(cls, path)
        try:
            return _load_from(cls, path, data, overrides)
        except IndexFormatError:
            # a concurrent save may have swapped the pointer and removed the index we were opening
            if attempt == 2 or read_manifest(cls, path) == data:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _load_from(cls: type, path: Path, data: dict[str, Any], overrides: dict[str, Any]) -> Any:
    from .index.core import ExampleIndex
    from .prompt.template import PromptTemplate

    params = {k: _param_from_json(v) for k, v in data["params"].items()}
    unknown = set(overrides) - set(cls._param_names())
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for {cls.__name__}.load; valid: "
                         f"{sorted(cls._param_names())}.")
    est = cls(**{**params, **overrides})
    for name, value in data["fitted"].items():
        setattr(est, name, PromptTemplate(**value) if name == "template_" else tuple(value))
    entry = data.get("index")
    if entry is None:
        est.index_ = est.index_folder_ = None
    else:
        folder = path / entry["path"] if entry["kind"] == "embedded" else Path(entry["path"])
        index = ExampleIndex.load(folder)
        if _folder_fingerprint(folder) != entry["fingerprint"]:
            raise EstimatorFormatError(f"the index folder {str(folder)!r} this estimator refers to now holds "
                                       "other data (dataset fingerprint changed). Fix: fit and save the "
                                       "estimator again, or restore that index.")
        est.index_ = index
        est.index_folder_ = folder.resolve() if entry["kind"] == "reference" else None
    est._prepare()
    return est
