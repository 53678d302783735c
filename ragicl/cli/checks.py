"""Checks the ``ragicl`` command line runs on its arguments before any expensive work.

argparse ``type=`` validators (:func:`positive_int`, :func:`non_negative_int`), output-path checks
(:func:`check_output_dir`, :func:`check_output_file`) and :func:`report_error`, which turns an error from
user input into one ``ragicl: error: ...`` line on stderr (the traceback only with ``--verbose``).

>>> positive_int("3")
3
>>> non_negative_int("0")
0
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

from .._exceptions import RagiclError
from .._hub import model_unavailable

#: Exit status of a run stopped by a user error (bad argument, unusable file or path, bad data).
#: argparse uses the same status for malformed command lines.
USER_ERROR = 2


class UsageError(RagiclError, ValueError):
    """A command-line argument is unusable (an unwritable output path, a missing checkpoint...)."""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def k_value(text: str) -> int | str:
    """argparse type: demonstrations per prompt, an integer >= 0 or 'max' (as many as the budget holds)."""
    if text.strip().lower() == "max":
        return "max"
    try:
        return non_negative_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 or 'max', got {text!r}") from None


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


_ESCAPES = {"\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


def unescape(text: str) -> str:
    r"""``--template``/``--instruction`` text with ``\n``, ``\t``, ``\r`` and ``\\`` read as escapes.

    Only those four: every other character, any Unicode included, is kept as typed (other backslashes too).

    >>> unescape(r"Отзыв: {text}\nОценка: {label}")
    'Отзыв: {text}\nОценка: {label}'
    >>> unescape(r"a\\nb \d")
    'a\\nb \\d'
    """
    return re.sub(r"\\([\\ntr])", lambda m: _ESCAPES[m.group(1)], text)


def _check_creatable(path: Path, option: str) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a writable folder."""
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {str(path)!r} is under {str(parent)!r}, which is a file, not a folder. "
                         f"Fix: choose a path whose parent folders are folders.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {str(path)!r} cannot be created: {str(parent)!r} is not writable by this "
                         "user. Fix: choose a writable location or fix the folder's permissions.")


def check_output_dir(path: str | os.PathLike, option: str, *, marker: str | None = None) -> Path:
    """Fail now if ``path`` could not receive an output folder.

    ``marker`` names the file a folder of this kind holds (``manifest.json`` for an index): an existing
    non-empty folder without it is refused, since saving over it would replace someone else's files.
    """
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise UsageError(f"{option} {str(p)!r} is a file; expected a folder (new or of the same kind). "
                             "Fix: choose another path.")
        if marker is not None and not (p / marker).exists() and any(p.iterdir()):
            raise UsageError(f"{option} {str(p)!r} is a non-empty folder that is not a ragicl output (no "
                             f"{marker}); refusing to replace its files. Fix: choose a new or empty folder, "
                             "or remove it.")
        if not os.access(p, os.W_OK | os.X_OK) or not os.access(p.parent, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {str(p)!r} is not writable by this user. Fix: choose a writable "
                             "location or fix the folder's permissions.")
        return p
    _check_creatable(p, option)
    return p


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """Fail now if the file ``path`` could not be written (checked before a long run, not after it)."""
    p = Path(path)
    if p.exists():
        if p.is_dir():
            raise UsageError(f"{option} {str(p)!r} is a folder; expected a file path, e.g. "
                             f"{str(p / 'report.json')!r}.")
        if not os.access(p, os.W_OK):
            raise UsageError(f"{option} {str(p)!r} exists and is not writable. Fix: choose another path.")
        return p
    _check_creatable(p, option)
    return p


def check_input_path(path: str | os.PathLike, option: str, what: str) -> Path:
    """``path`` must exist (a clear error now rather than a library's lookup on a model hub later)."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{option} {str(p)!r} does not exist (resolved {p.resolve()}); expected {what}. "
                         "Fix: check the path.")
    return p


def check_finetuned(path: str | os.PathLike, option: str = "--finetuned") -> Path:
    """A fine-tuned checkpoint is a folder (``ragicl finetune --out``, or a model folder with ``config.json``).

    A file is refused before anything is loaded: a lone ``.bin``/``.pt`` is a pickle, and unpickling runs
    whatever code it holds.
    """
    what = "a fine-tuned checkpoint folder made by `ragicl finetune --out` (or a model folder with config.json)"
    p = check_input_path(path, option, what)
    if not p.is_dir():
        raise UsageError(f"{option} {str(p)!r} is a file; expected {what}. ragicl does not load a weights file "
                         "given alone (a .bin/.pt file is a pickle, and unpickling runs the code it holds). Fix: "
                         "pass the folder `ragicl finetune --out` wrote, or save the model with "
                         "save_pretrained() into a folder.")
    if not (p / "ragicl_finetune.json").is_file() and not (p / "config.json").is_file():
        raise UsageError(f"{option} {str(p)!r} holds neither ragicl_finetune.json nor config.json; expected "
                         f"{what}. Fix: check the path.")
    return p


def report_error(err: BaseException, verbose: bool, cause: BaseException | None = None) -> int:
    """Print ``ragicl: error: <message>`` (and the traceback when ``verbose``, of ``cause`` when given: the
    original exception a message was made from); return the exit status."""
    if verbose:
        shown = cause if cause is not None else err
        traceback.print_exception(type(shown), shown, shown.__traceback__, file=sys.stderr)
    message = str(err) or type(err).__name__
    if isinstance(err, OSError) and not isinstance(err, RagiclError) and err.filename is not None:
        message = f"{err.strerror or message}: {err.filename!r}"
    print(f"ragicl: error: {message}", file=sys.stderr)
    if not verbose:
        print("(run with -v for the full traceback)", file=sys.stderr)
    return USER_ERROR


def check_lm(spec: Any, option: str = "--lm") -> None:
    """The LM the options describe must be usable before any data work: a server URL well formed (the server
    itself is probed when the LM first loads), a GGUF file present, a transformers model known, local,
    cached or downloadable."""
    from ..lm.factory import LMSpec
    from ..models import _GEMMA_ALIASES, _SMOLLM_ALIASES, DEFAULT_LM

    spec = spec if isinstance(spec, LMSpec) else LMSpec(str(spec))
    engine, name = spec.resolved_engine, spec.model
    if engine == "server":
        if not str(spec.url).startswith(("http://", "https://")):
            raise UsageError(f"--lm-url {spec.url!r} is not an http(s) URL; expected the server's API root, e.g. "
                             "http://localhost:8000/v1.")
        return
    if name.lower() in _SMOLLM_ALIASES | _GEMMA_ALIASES:
        return
    if engine == "llama.cpp":
        if not Path(name).is_file():
            raise UsageError(f"{option} {name!r} is not a GGUF file (llama.cpp runs .gguf files, or the default "
                             f"models by name, e.g. {DEFAULT_LM!r}). Fix: check the path.")
        return
    why = model_unavailable(name)
    if why is not None:
        raise UsageError(f"{option} {name!r} cannot be loaded: {why}. Expected a known short name (e.g. "
                         f"{DEFAULT_LM!r}), a local model folder, a GGUF file, a reachable hub id, or a served "
                         "model with --lm-url. Fix: check the name.")


def check_factory(factory: str, n: int, dimension: int) -> None:
    """A faiss factory string that does not parse, or has more IVF lists than vectors, fails now."""
    import faiss

    lists = [int(m) for m in re.findall(r"IVF(\d+)", factory)]
    if lists and max(lists) > n:
        raise UsageError(f"--factory {factory!r} asks for {max(lists)} IVF lists but the dataset has only {n} "
                         f"examples (faiss needs at least one vector per list, ideally 39 or more). Fix: use "
                         f"--factory IVF{max(1, n // 39)},Flat, or Flat for a small dataset.")
    try:
        faiss.index_factory(dimension, factory)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1].rsplit(": ", 1)[-1][:200]
        raise UsageError(f"--factory {factory!r} is not a valid faiss index_factory string for "
                         f"{dimension}-dimensional vectors ({detail}). Expected e.g. 'Flat', 'IVF256,Flat', "
                         "'HNSW32', 'IVF256,PQ16'.") from None


def check_test_labels(test, index, test_path: str, index_path: str) -> None:
    """The test set's labels must all be the index's (the systems predict only those)."""
    if test.task != "classification" or index.dataset.task != "classification":
        return
    extra = sorted(set(test.labels) - set(index.labels))
    if extra:
        raise UsageError(f"--test {test_path!r} has label(s) {extra} that the index {index_path!r} does not "
                         f"have (its labels: {list(index.labels)}); the systems can only predict the index's "
                         "labels. Fix: evaluate on a test set of the same task, or rebuild the index on "
                         "training data with the same labels.")


def device_value(text: str) -> str:
    """argparse type: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (whether it exists here is checked
    where the model loads, with the fix)."""
    value = text.strip().lower()
    if value in {"auto", "cpu", "cuda", "mps"} or re.fullmatch(r"cuda:\d+", value):
        return value
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
