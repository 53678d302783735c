"""The schema of an index folder's ``manifest.json``, checked on every load (private to ``index.folder``).

:func:`check_manifest` verifies, in order: the format version (1, 2 or 3), the metadata digest (required
from format 3 on, verified whenever present), then the type of every field the loader uses, so a damaged or
hand-edited manifest is an ``IndexFormatError`` naming the file and the field, never a ``KeyError`` or a
silently different index. Version names must be plain ``v-<12 hex>`` names inside the folder.

>>> from ragicl import _atomic
>>> m = {"format_version": 3, "embedder": "hash-8", "dimension": 8, "metric": "inner_product",
...      "factory": "Flat", "dataset_fingerprint": "ab", "count": 1, "task": "classification",
...      "labels": ["x"], "input_fields": ["text"], "output_field": None, "name": "", "search_params": {},
...      "files": {"index.faiss": 1, "embeddings.npy": 1, "examples.jsonl": 1},
...      "checksums": {"index.faiss": "sha256:00", "embeddings.npy": "sha256:00", "examples.jsonl": "sha256:00"},
...      "version": "v-0123456789ab", "previous_version": None, "own_versions": ["v-0123456789ab"]}
>>> check_manifest("manifest.json", _atomic.seal(m), "Fix: rebuild it.")["count"]
1
>>> check_manifest("manifest.json", _atomic.seal({**m, "version": "../x/v-0123456789ab"}), "Fix: rebuild it.")
Traceback (most recent call last):
...
ragicl._exceptions.IndexFormatError: manifest.json: field 'version' is '../x/v-0123456789ab'; expected a version folder name 'v-' + 12 hex digits (a folder inside this one). Fix: rebuild it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from .. import _atomic
from .._exceptions import IndexFormatError

READABLE_VERSIONS = (1, 2, 3)
FILES = ("index.faiss", "embeddings.npy", "examples.jsonl")
TASKS = ("classification", "generation")


def _int(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _params(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, (int, float, str))
                                       and not isinstance(x, bool) for k, x in v.items())


def _version(v: Any) -> bool:
    return _atomic.is_strict_name(v, "v-")


def _files(v: Any) -> bool:
    return isinstance(v, dict) and all(_int(0)(v.get(name)) for name in FILES)


_LEXICAL_FILE = re.compile(r"bm25/[A-Za-z0-9_][A-Za-z0-9_.+-]*")  # a plain file inside the version's bm25/


def _lexical(v: Any) -> bool:
    """The optional BM25 part: its kind, parameters, and the size and checksum of each of its files."""
    if v is None:
        return True
    if not isinstance(v, dict) or v.get("kind") != "bm25" or not isinstance(v.get("params"), dict):
        return False
    files, sums = v.get("files"), v.get("checksums")
    return (isinstance(files, dict) and bool(files) and isinstance(sums, dict) and set(sums) == set(files)
            and all(isinstance(n, str) and _LEXICAL_FILE.fullmatch(n) and _int(0)(s) for n, s in files.items())
            and all(isinstance(c, str) and ":" in c for c in sums.values()))


def _checksums(required: bool) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if not isinstance(v, dict):
            return False
        names = FILES if required else tuple(v)
        return all(isinstance(v.get(n), str) and ":" in v[n] for n in names)
    return check


# field -> (check, what is expected, first format that requires it; None = optional in every format)
_SCHEMA: dict[str, tuple[Callable[[Any], bool], str, int | None]] = {
    "embedder": (_nonempty_str, "an embedder name (a non-empty string)", 1),
    "dimension": (_int(1), "a positive integer", 1),
    "metric": (_str, "a string", None),
    "factory": (_nonempty_str, "a faiss factory string", 1),
    "dataset_fingerprint": (_str, "a string", None),
    "count": (_int(0), "a non-negative integer", 1),
    "task": (lambda v: v is None or v in TASKS, f"one of {list(TASKS)}", None),
    "labels": (lambda v: v is None or _str_list(v), "a list of strings", None),
    "input_fields": (lambda v: v is None or _str_list(v), "a list of strings", None),
    "output_field": (_opt_str, "a string or null", None),
    "name": (_opt_str, "a string or null", None),
    "search_params": (lambda v: v is None or _params(v), "an object of numbers/strings by parameter name", None),
    "files": (_files, f"an object giving the byte size of each of {list(FILES)}", 1),
    "faiss_version": (_str, "a string", None),
    "created": (_str, "a string", None),
    "version": (_version, "a version folder name 'v-' + 12 hex digits (a folder inside this one)", 2),
    "previous_version": (lambda v: v is None or _version(v),
                         "null or a version folder name 'v-' + 12 hex digits (a folder inside this one)", None),
    "own_versions": (lambda v: isinstance(v, list) and all(_version(x) for x in v),
                     "a list of version folder names 'v-' + 12 hex digits", 3),
    "lexical": (_lexical, ("null or the BM25 part: {'kind': 'bm25', 'params': {...}, 'files': {'bm25/<name>': "
                           "size}, 'checksums': {'bm25/<name>': '<algorithm>:<hex>'}}"), None),
}


def check_manifest(file: str | os.PathLike, manifest: Any, rebuild: str) -> Mapping[str, Any]:
    """``manifest`` (the parsed ``file``) if it is a valid index manifest; else ``IndexFormatError``."""
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{file} holds a JSON {type(manifest).__name__}, not an index manifest "
                               f"(an object). {rebuild}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise IndexFormatError(f"{file} has index format version {version!r}; this ragicl reads versions "
                               f"{list(READABLE_VERSIONS)}. {rebuild}")
    if (version >= 3 or _atomic.DIGEST_FIELD in manifest) and (why := _atomic.check_digest(manifest)):
        raise IndexFormatError(f"{file} is corrupt: {why}. {rebuild}")
    checks = {**_SCHEMA, "checksums": (_checksums(version >= 3),
                                        f"an object giving '<algorithm>:<hex>' for each of {list(FILES)}", 3)}
    for field, (ok, expected, required_from) in checks.items():
        if field not in manifest:
            if required_from is not None and version >= required_from:
                raise IndexFormatError(f"{file} has no field {field!r} (expected {expected}). {rebuild}")
            continue
        if not ok(manifest[field]):
            raise IndexFormatError(f"{file}: field {field!r} is {manifest[field]!r}; expected {expected}. "
                                   f"{rebuild}")
    if "layout" in manifest:
        raise IndexFormatError(f"{file} names layout {manifest['layout']!r}; this loader reads the default "
                               f"layout only. {rebuild}")
    return manifest
