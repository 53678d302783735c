"""Only for what pyproject.toml cannot say: ship ``_ragicl_lmeval.pth`` at the top of site-packages.

lm-eval has no plugin discovery for few-shot samplers, so ``sampler: ragicl`` in a plain task YAML can only
work if something registers it before lm-eval looks it up; the .pth line installs the tiny import hook in
``_ragicl_lmeval.py`` (see its docstring). Everything else is configured in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

try:  # editable installs (pip install -e): add the .pth to the editable wheel too
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # pragma: no cover - setuptools < 64 has no PEP 660 editable wheels
    editable_wheel = None

PTH = "_ragicl_lmeval.pth"


class build_py_with_pth(build_py):
    def run(self) -> None:
        super().run()
        shutil.copyfile(Path(__file__).parent / PTH, Path(self.build_lib) / PTH)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]

    def get_output_mapping(self) -> dict[str, str]:  # editable installs (PEP 660) link these files
        return {**super().get_output_mapping(), str(Path(self.build_lib) / PTH): str(Path(__file__).parent / PTH)}


def _with_pth(strategy):
    class WithPth:
        def __enter__(self):
            strategy.__enter__()
            return self

        def __exit__(self, *exc):
            return strategy.__exit__(*exc)

        def __call__(self, wheel, files, mapping):
            strategy(wheel, files, mapping)
            wheel.writestr(PTH, (Path(__file__).parent / PTH).read_bytes())

    return WithPth()


cmdclass = {"build_py": build_py_with_pth}
if editable_wheel is not None and hasattr(editable_wheel, "_select_strategy"):
    class editable_wheel_with_pth(editable_wheel):
        def _select_strategy(self, *args, **kwargs):
            return _with_pth(super()._select_strategy(*args, **kwargs))

    cmdclass["editable_wheel"] = editable_wheel_with_pth

setup(cmdclass=cmdclass)
