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
* **Save / load** (:func:`save_estimator`, :func:`load_estimator`, in :mod:`ragicl.estimators.folder`, which
  documents the folder and every field of ``estimator.json``): a folder holding ``estimator.json`` (format,
  class, parameters, template, fitted label set and fields, where the index is, a digest of it all) and,
  unless the index is referenced in its own folder (the explicit ``"kind": "reference"`` entry, an absolute
  path), ``index-<12 hex>/`` written by :meth:`ExampleIndex.save`. ``estimator.json`` is the commit point:
  written to a temp file, fsynced and ``os.replace``d, after the index it points to is complete; the
  previous save's index folder is kept for readers, older ones (only those ragicl made) are removed. Saves
  to one folder are serialized by a lock file (``.lock``); a reader sees the old or the new estimator, never
  a mix (it starts again when ``estimator.json`` changed while it was loading).
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

from .._exceptions import EstimatorFormatError
from .folder import load_estimator, read_manifest, save_estimator, template_to_json

logger = logging.getLogger(__name__)

__all__ = ["EstimatorFormatError", "EstimatorMixin", "ParamsMixin", "load_estimator", "read_manifest", "save_estimator",
           "template_to_json"]


class ParamsMixin:
    """The scikit-learn parameter contract for any ragicl estimator: ``get_params``/``set_params``/``__repr__``
    and scikit-learn's tags, with the parameters read from ``__init__``'s keyword arguments (stored
    unchanged), so ``sklearn.base.clone`` and ``GridSearchCV`` work on every estimator (the baselines, the
    fusion, the tuner) without scikit-learn installed."""

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

    def set_params(self, **params: Any) -> Any:
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



class EstimatorMixin(ParamsMixin):
    """:class:`ParamsMixin` plus pickling and ``save``/``load`` for the LM estimators (``ICLClassifier``,
    ``ICLGenerator``). Subclasses list their derived (rebuilt) attributes in ``_DERIVED`` and their persisted
    fitted attributes in ``_FITTED``, and implement ``_prepare()``."""

    _DERIVED: tuple[str, ...] = ("lm_", "packer_", "retriever_")
    _FITTED: tuple[str, ...] = ("input_fields_", "template_")

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
        from ..index.core import ExampleIndex

        return Path(data).resolve(), ExampleIndex.load(data)
    return None, data
