"""The top-level namespace, packaging metadata, and the install hints of the optional integrations."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

import ragicl

ROOT = Path(__file__).resolve().parents[1]
# module, optional dependency it imports, extra that installs it
INTEGRATIONS = [("ragicl.integrations.langchain", "langchain_core", "langchain"),
                ("ragicl.integrations.lm_eval", "lm_eval", "lmeval")]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_all_names_importable_unique_sorted_and_public():
    names = ragicl.__all__
    assert len(names) == len(set(names)), "duplicate names in ragicl.__all__"
    for name in names:
        assert hasattr(ragicl, name), f"ragicl.__all__ lists {name!r} but ragicl has no such attribute"
        exec(f"from ragicl import {name}", {})  # noqa: S102 - the import users write
    dunders = [n for n in names if n.startswith("__")]
    public = [n for n in names if not n.startswith("__")]
    assert dunders == ["__version__"]
    # ruff's RUF022 order: CamelCase/UPPER names, then dunders, then snake_case, each sorted.
    caps = [n for n in public if n[0].isupper()]
    lower = [n for n in public if n[0].islower()]
    assert names == sorted(caps) + dunders + sorted(lower), "keep ragicl.__all__ in ruff's isort-style order"
    assert not [n for n in public if n.startswith("_")]


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from ragicl import *", namespace)  # noqa: S102
    assert set(namespace) - {"__builtins__"} == set(ragicl.__all__)


@pytest.mark.parametrize("module_name", ["ragicl", *[m for m, _, _ in INTEGRATIONS]])
def test_every_public_class_and_function_has_a_docstring(module_name):
    dep = {m: d for m, d, _ in INTEGRATIONS}.get(module_name)
    if dep:
        pytest.importorskip(dep)
    module = importlib.import_module(module_name)
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        # dataclasses without a docstring get an auto-generated "Name(field: type, ...)" one
        if not doc or not doc.strip() or doc.startswith(f"{obj.__name__}("):
            missing.append(name)
    assert not missing, f"public names without a docstring in {module_name}: {missing}"


def test_version_and_typed_marker():
    assert ragicl.__version__ == _pyproject()["project"]["version"]
    assert (Path(ragicl.__file__).parent / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["ragicl"]


@pytest.mark.parametrize(("module_name", "dependency", "extra"), INTEGRATIONS)
def test_missing_optional_dependency_gives_the_install_hint(monkeypatch, module_name, dependency, extra):
    assert extra in _pyproject()["project"]["optional-dependencies"], f"no [{extra}] extra in pyproject.toml"
    monkeypatch.setitem(sys.modules, dependency, None)  # what Python does for a module that is not installed
    monkeypatch.delitem(sys.modules, module_name, raising=False)
    with pytest.raises(ragicl.MissingDependencyError) as info:
        importlib.import_module(module_name)
    message = str(info.value)
    assert f"pip install 'ragicl[{extra}]'" in message and repr(dependency) in message
    assert isinstance(info.value, ImportError)


def test_api_page_mentions_every_public_name():
    page = (ROOT / "docs" / "guide" / "API.md").read_text(encoding="utf-8")
    names = list(ragicl.__all__)
    for module_name, dependency, _ in INTEGRATIONS:
        if importlib.util.find_spec(dependency) is not None:
            names += importlib.import_module(module_name).__all__
    missing = [n for n in names if f"`{n}`" not in page]
    assert not missing, f"docs/guide/API.md does not mention {missing}"
