"""Loads a script of ``experiments/`` or ``benchmarks/`` as a module, so tests call its functions and ``main``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("experiments", "benchmarks", "scripts")


def load_script(name: str) -> ModuleType:
    """``experiments/<name>.py`` (or ``benchmarks/``, ``scripts/``) as a fresh module (its
    ``if __name__ == "__main__"`` block does not run)."""
    path = next((ROOT / d / f"{name}.py" for d in FOLDERS if (ROOT / d / f"{name}.py").exists()), None)
    if path is None:
        raise FileNotFoundError(f"no script {name}.py under {', '.join(FOLDERS)}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
