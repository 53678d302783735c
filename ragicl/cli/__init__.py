"""The ``ragicl`` command line: ``ragicl index build | finetune | eval | tune | demo``.

Layout: :mod:`.main` (the parser and ``main``), :mod:`.options` (option groups, declared once),
:mod:`.settings` (typed records: the only code that reads argparse's ``Namespace``), :mod:`.commands` (one
function per command, calling the library), :mod:`.systems` (the rows ``eval`` compares), :mod:`.predlog`
(``--predictions``), :mod:`.demo` (the main job), :mod:`.ray` (``--ray``), :mod:`.checks` (argument checks,
one-line errors). The library below never sees ``argparse``.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
