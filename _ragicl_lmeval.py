"""Makes ``sampler: ragicl`` work in a plain lm-eval task YAML, with no ``import ragicl`` anywhere.

lm-eval (0.4.x) looks samplers up in ``lm_eval.api.samplers.SAMPLER_REGISTRY``, a plain dict that only
Python code fills: it has no entry-point group for samplers. ragicl's wheel therefore installs
``_ragicl_lmeval.pth`` beside this module; Python runs its one line at start-up, which calls
:func:`install`. That adds a finder to ``sys.meta_path`` that does nothing until ``lm_eval.api.samplers``
is imported; right after that module runs, it registers a lightweight ``ragicl`` entry whose instantiation
imports :mod:`ragicl.integrations.lm_eval` and returns its ``RagiclSampler``. Start-up cost: this file
(no ragicl, no lm-eval import); programs that never import lm-eval never load ragicl through it.
Set ``RAGICL_NO_LMEVAL_HOOK=1`` to turn it off.
"""

from __future__ import annotations

import os
import sys
from importlib.abc import MetaPathFinder
from typing import Any

TARGET = "lm_eval.api.samplers"
NAME = "ragicl"


def register(samplers: Any) -> None:
    """Add the lazy ``ragicl`` sampler to an imported ``lm_eval.api.samplers`` (kept if already there)."""
    if NAME in samplers.SAMPLER_REGISTRY:
        return

    class RagiclSamplerLazy(samplers.ContextSampler):  # type: ignore[misc, name-defined]
        """Placeholder for ``ragicl.integrations.lm_eval.RagiclSampler``: importing ragicl is deferred to
        the first use; importing that module replaces this entry with the real class."""

        _ragicl_lazy = True

        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            from ragicl.integrations.lm_eval import RagiclSampler

            return RagiclSampler(*args, **kwargs)

    samplers.SAMPLER_REGISTRY[NAME] = RagiclSamplerLazy


class _Finder(MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)  # once: let the normal finders locate the real module
        from importlib.util import find_spec

        spec = find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            try:
                register(module)
            except Exception as err:  # noqa: BLE001 - never break lm-eval because of this hook
                import logging

                logging.getLogger("ragicl").warning("could not register lm-eval's `ragicl` sampler: %s", err)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register now if lm-eval's samplers are already imported, else when they are."""
    if os.environ.get("RAGICL_NO_LMEVAL_HOOK"):
        return
    if TARGET in sys.modules:
        register(sys.modules[TARGET])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
