"""The saved index folder: its format, crash-safe :func:`save`, checked :func:`read`, other layouts.

Private: use ``ExampleIndex.save`` / ``ExampleIndex.load`` (and ``ragicl.index.core.build_and_save``).
What goes in and comes out is an :class:`IndexFolder` record (manifest fields, the CPU faiss index, the
vectors, the examples and their keys): this module knows the files, not ``ExampleIndex``. Folders of
another layout (``"layout"`` in their manifest, e.g. ``ragicl.distributed``'s ``"sharded"``) are opened by
the loader registered for it with :func:`register_layout`.

Layout (format 3; docs/DESIGN.md, *Index*)::

    <path>/manifest.json        the pointer: the manifest of the current version, naming it ("version")
    <path>/v-<id>/index.faiss   the files of one version (immutable once published):
    <path>/v-<id>/embeddings.npy    float32 vectors (memory-mapped on load)
    <path>/v-<id>/examples.jsonl    one example per line, with its duplicate ``key``
    <path>/v-<id>/bm25/         optional: the BM25 part (``index.lexical``, ``bm25s``'s files)
    <path>/v-<id>/.ragicl-made  the marker: ragicl made this folder (``_atomic.MARKER``)
    <path>/.lock                advisory lock serializing savers (never a link)

A save (under the lock) writes ``.tmp-<id>/`` (marker first), fsyncs it, renames it to ``v-<id>/`` and then
replaces ``manifest.json`` atomically (temp file, fsync, ``os.replace``): that one rename is the commit. A
crash at any step leaves the old manifest naming the old, complete version; a reader sees one version or the
other. The previous version is kept (a reader may still be loading it); older versions and temp leftovers
are removed by the next save, or by a load that finds no save in progress. Only what ragicl made is
removed: ``<id>`` is 12 hex digits and the folder holds the marker (or is empty, or is a version the
manifest records in ``own_versions``: those of format 2 have no marker). Other files in the folder, a
``v-notes/`` or ``.tmp-cache/`` included, are left alone.

``manifest.json`` carries ``metadata_digest``, a SHA-256 over its canonical JSON (``_atomic.seal``): load
verifies it (required from format 3 on; also when a format-2 file has one), then the type of every field
(:func:`check_manifest`); ``version``/``previous_version``/``own_versions`` must be plain ``v-<12 hex>``
names, so a manifest cannot point a load at another folder. Format 2 (no digest, no markers) and format 1
folders (the files directly in ``<path>``) still load, and are converted by the next save.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import _atomic
from .._exceptions import EmbedderMismatchError, IndexFormatError, require
from ..types import Example
from . import lexical as _lexical
from ._manifest import FILES, READABLE_VERSIONS, check_manifest  # noqa: F401 (both part of this module's API)
from .embed import Embedder, get_embedder

logger = logging.getLogger("ragicl.index.core")

FORMAT_VERSION = 3
# READABLE_VERSIONS (1, 2, 3): 1 is the flat layout of ragicl <= 0.x (files next to manifest.json), 2 has no
# digest and no markers; FILES: the files of a version (both in _manifest, with the manifest's schema)
CHECKSUM = "sha256"  # measured faster than blake2b on SHA-NI CPUs (docs/BENCHMARKS.md)
SAVE_STEPS = ("locked", "tmp-created", "index.faiss", "embeddings.npy", "examples.jsonl", "lexical", "synced",
              "version-published", "manifest-written", "manifest-replaced", "cleaned")
LOAD_ATTEMPTS = 20
fsync = _atomic.fsync


def checkpoint(step: str) -> None:
    """Called after each step of a save (``SAVE_STEPS``); a seam for crash tests, does nothing."""


def _faiss() -> Any:
    return require("faiss", "cpu", "faiss-cpu")


def canonical_name(name: str) -> str:
    """An embedder name as compared on load (``sentence-transformers/`` prefix, case, slashes ignored)."""
    return name.strip().rstrip("/").lower().removeprefix("sentence-transformers/")


def file_checksum(path: Path, algorithm: str = CHECKSUM) -> str:
    """``"<algorithm>:<hex digest>"`` of a file's bytes (sha256: about 0.5 GB/s per core or better with
    the SHA instructions of current CPUs; docs/BENCHMARKS.md). ``algorithm`` is any ``hashlib`` name."""
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, algorithm)
    return f"{algorithm}:{digest.hexdigest()}"


def _verify(file: Path, recorded: str, rebuild: str) -> None:
    algorithm = str(recorded).partition(":")[0]
    try:
        actual = file_checksum(file, algorithm)
    except ValueError:  # a hash this Python's hashlib lacks: say so rather than skip silently
        raise IndexFormatError(f"{file} has a checksum of unknown algorithm {algorithm!r} in the manifest. "
                               "Fix: load with verify=False, or re-save the index with this ragicl.") from None
    if actual != recorded:
        raise IndexFormatError(f"{file} is corrupt: its checksum differs from the manifest's ({recorded}); "
                               f"same size, different bytes. {rebuild} (Or load with verify=False to skip "
                               "the check, at your own risk.)")


@dataclass(frozen=True)
class IndexFolder:
    """What a saved index folder holds: what :func:`save` writes and :func:`read` returns.

    ``manifest``: the index's description (``embedder``, ``dimension``, ``metric``, ``factory``,
    ``dataset_fingerprint``, ``count``, the schema, ``search_params``); :func:`save` adds the format's
    fields (``format_version``, ``files``, ``checksums``, ``version``...), and :func:`read` returns them all.
    """

    manifest: Mapping[str, Any]
    faiss_index: Any  # the CPU faiss index
    vectors: np.ndarray  # (count, dimension) float32, memory-mapped unless read with mmap=False
    examples: Sequence[Example]
    keys: Sequence[str]  # Example.key() of each example
    lexical: Any = None  # the BM25 part (a ragicl.index.lexical.LexicalIndex), when there is one


def make_manifest(fields: Mapping[str, Any], files: dict[str, int]) -> dict[str, Any]:
    """What ``manifest.json`` holds for an index described by ``fields``, with these file sizes (bytes)."""
    return {"format_version": FORMAT_VERSION, **fields, "files": files,
            "faiss_version": getattr(_faiss(), "__version__", "?"),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _is_ours(name: str) -> bool:
    """Entries a save creates (a folder holding only these is an interrupted first save, not foreign)."""
    return (name in (".lock", _atomic.MARKER) or _atomic.is_strict_name(name, ".tmp-")
            or _atomic.is_strict_name(name, "v-") or _atomic.is_temp_file(name, "manifest.json"))


def _is_leftover(entry: Path, keep: set[str], known: set[str]) -> bool:
    """Whether cleaning removes ``entry``: a temp file of ``manifest.json``, or a version/temp folder ragicl
    made (strict name; marker, empty or ``known``) that is not in ``keep``."""
    name = entry.name
    if _atomic.is_temp_file(name, "manifest.json"):
        return True
    if name in keep or not (_atomic.is_strict_name(name, "v-") or _atomic.is_strict_name(name, ".tmp-")):
        return False
    return (name in known and entry.is_dir() and not entry.is_symlink()) or _atomic.is_owned_dir(entry)


def _clean(path: Path, keep: set[str], known: set[str], *, legacy_files: bool = False) -> None:
    """Remove temp leftovers and versions not in ``keep`` (call only while holding the lock); ``known``:
    version folders a manifest records as made by ragicl (format 2 ones have no marker)."""
    for entry in list(path.iterdir()) if path.is_dir() else []:
        if _is_leftover(entry, keep, known):
            if _atomic.is_temp_file(entry.name, "manifest.json"):
                _atomic.remove_temp_files(path, "manifest.json")
            else:
                _atomic.remove_owned_dir(entry, entry.name[:entry.name.index("-") + 1], known=known)
        elif legacy_files and entry.name in FILES and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)  # a format-1 folder's files, named by its manifest
    for entry in path.parent.glob(f".{path.name}.*-*"):  # format-1 saves left these beside the folder
        if _is_format1_leftover(path, entry):
            shutil.rmtree(entry, ignore_errors=True)


def _is_format1_leftover(path: Path, entry: Path) -> bool:
    """A folder a format-1 save left beside ``path``: ``.<name>.tmp-<8 chars of mkdtemp>`` or
    ``.<name>.old-<8 hex>``, holding nothing but that format's files."""
    tail = entry.name[len(path.name) + 1:]
    if not (re.fullmatch(r"\.tmp-[a-z0-9_]{8}", tail) or re.fullmatch(r"\.old-[0-9a-f]{8}", tail)):
        return False
    if entry.is_symlink() or not entry.is_dir():
        return False
    return all(p.name in (*FILES, "manifest.json") and p.is_file() for p in entry.iterdir())


def _current(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _own_names(manifest: Mapping[str, Any] | None) -> tuple[set[str], set[str]]:
    """(versions to keep: the manifest's version and previous version; versions it records as made by
    ragicl, which may be removed even without a marker). Strict names only; a manifest whose digest does
    not match still protects its versions from removal but vouches for none."""
    if not isinstance(manifest, Mapping):
        return set(), set()
    keep = {v for v in (manifest.get("version"), manifest.get("previous_version")) if _atomic.is_strict_name(v, "v-")}
    if _atomic.DIGEST_FIELD in manifest and _atomic.check_digest(manifest):
        return keep, set()
    own = manifest.get("own_versions")
    return keep, keep | {v for v in (own if isinstance(own, list) else []) if _atomic.is_strict_name(v, "v-")}


def save(record: IndexFolder, path: Path) -> dict[str, Any]:
    """Write ``record`` to the folder ``path`` crash-safely and return the manifest written."""
    faiss = _faiss()
    if path.exists() and (not path.is_dir() or (not (path / "manifest.json").exists()
                                                and any(not _is_ours(p.name) for p in path.iterdir()))):
        raise FileExistsError(f"{path} exists and is not an ExampleIndex folder (no manifest.json); "
                              "refusing to replace it. Fix: choose another path or remove it.")
    path.mkdir(parents=True, exist_ok=True)
    with _atomic.exclusive_lock(path / ".lock"):
        checkpoint("locked")
        old = _current(path)
        old = old if isinstance(old, dict) else {}
        keep, known = _own_names(old)
        old_version = old.get("version") if isinstance(old.get("version"), str) and old["version"] in keep else None
        _clean(path, keep, known)
        tmp = _atomic.make_owned_dir(path / _atomic.unique_name(".tmp-"))
        version = tmp.name.replace(".tmp-", "v-", 1)
        published = False
        try:
            checkpoint("tmp-created")
            faiss.write_index(record.faiss_index, str(tmp / "index.faiss"))
            checkpoint("index.faiss")
            with open(tmp / "embeddings.npy", "wb") as fh:
                np.save(fh, np.ascontiguousarray(record.vectors, dtype=np.float32))
            checkpoint("embeddings.npy")
            with open(tmp / "examples.jsonl", "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps({**ex.to_json(), "key": key}, ensure_ascii=False) + "\n"
                              for ex, key in zip(record.examples, record.keys))
            checkpoint("examples.jsonl")
            lexical = _write_lexical(record.lexical, tmp)
            checkpoint("lexical")
            for name in FILES:
                fsync(tmp / name)
            fsync(tmp)
            checkpoint("synced")
            own = sorted(v for v in known if (path / v).is_dir()) + [version]
            manifest = _atomic.seal({
                **make_manifest(record.manifest, {name: (tmp / name).stat().st_size for name in FILES}),
                "checksums": {name: file_checksum(tmp / name) for name in FILES},
                "version": version, "previous_version": old_version, "own_versions": own,
                **({"lexical": lexical} if lexical else {})})
            os.rename(tmp, path / version)
            fsync(path)
            checkpoint("version-published")
            _atomic.write_atomic(path / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False),
                                 before_replace=lambda: checkpoint("manifest-written"))
            published = True
            checkpoint("manifest-replaced")
        finally:
            if not published:
                for leftover in (tmp, path / version):
                    shutil.rmtree(leftover, ignore_errors=True)
        _clean(path, {version} | ({old_version} if old_version else set()), set(own),
               legacy_files=bool(old) and old.get("format_version") == 1)
        checkpoint("cleaned")
    return manifest


def _write_lexical(lexical: Any, tmp: Path) -> dict[str, Any] | None:
    """Write the BM25 part into ``tmp/bm25/`` (synced) and return its manifest entry; None without one."""
    if lexical is None:
        return None
    folder = tmp / _lexical.FOLDER
    lexical.write(folder)
    _lexical.fsync_folder(folder, fsync)
    files = _lexical.folder_files(folder)
    return {"kind": "bm25", "library": "bm25s", "library_version": _lexical.library_version(),
            "params": lexical.params, "files": files,
            "checksums": {name: file_checksum(tmp / name) for name in files}}


def _read_lexical(path: Path, base: Path, entry: Mapping[str, Any], count: int, *, mmap: bool, verify: bool,
                  rebuild: str) -> Any:
    """The BM25 part a manifest records, its files checked like the others; None (with a warning) when
    ``bm25s`` is not installed."""
    folder = base / _lexical.FOLDER
    if folder.is_symlink() or not folder.is_dir():
        raise IndexFormatError(f"{path} is missing {base.name}/{_lexical.FOLDER}/ (its manifest records a BM25 "
                               f"part), or it is not a plain folder. {rebuild}")
    for name, size in entry["files"].items():
        file = base / name
        if file.is_symlink() or not file.is_file():
            raise IndexFormatError(f"{path} is missing {base.name}/{name} (listed in its manifest). {rebuild}")
        if (actual := file.stat().st_size) != size:
            raise IndexFormatError(f"{file} is {actual} bytes; the manifest says {size} (truncated or modified "
                                   f"after saving). {rebuild}")
        if verify:
            _verify(file, entry["checksums"][name], rebuild)
    if not _lexical.is_available():
        logger.warning("%s has a BM25 part but bm25s is not installed: loaded without it (pip install "
                       "'ragicl[retrieval]' to use search='bm25' or 'hybrid')", path)
        return None
    try:
        return _lexical.LexicalIndex.read(folder, entry["params"], count, mmap=mmap)
    except IndexFormatError as err:
        raise IndexFormatError(f"{err} {rebuild}") from err


def _recover_format1(path: Path) -> None:
    """Finish a format-1 save killed between its two renames: put ``.<name>.old-*`` back at ``path``."""
    if (path / "manifest.json").exists() or not path.parent.is_dir():
        return
    for old in sorted(path.parent.glob(f".{path.name}.old-*")):
        if (old / "manifest.json").is_file():
            with contextlib.suppress(OSError):
                os.replace(old, path)  # fails (harmlessly) if path exists and is not empty
                logger.warning("restored %s from the interrupted save's %s", path, old.name)
            return


def _manifest_bytes(path: Path, rebuild: str) -> bytes:
    try:
        return (path / "manifest.json").read_bytes()
    except FileNotFoundError:
        pass
    except OSError as err:
        raise IndexFormatError(f"cannot read {path / 'manifest.json'}: {err}. {rebuild}") from err
    _recover_format1(path)
    if (path / "manifest.json").is_file():
        return (path / "manifest.json").read_bytes()
    what = "has no manifest.json" if path.is_dir() else "does not exist"
    raise IndexFormatError(f"no index at {path}: the folder {what}; expected a folder written by "
                           f"ExampleIndex.save. {rebuild}")


def read(path: Path, *, mmap: bool = True, verify: bool = True) -> IndexFolder:
    """Read the folder ``path``; ``IndexFormatError`` for anything missing, truncated, corrupt or inconsistent.

    A save that replaces the version being read (a concurrent writer) makes the read start again on the
    new version (up to ``LOAD_ATTEMPTS`` times), so the result is always one complete version.
    """
    rebuild = f"Fix: rebuild it, e.g. `ragicl index build DATA --out {path}`."
    for attempt in range(LOAD_ATTEMPTS):
        raw = _manifest_bytes(path, rebuild)
        try:
            folder = _read_version(path, raw, mmap=mmap, verify=verify, rebuild=rebuild)
        except (IndexFormatError, OSError):
            with contextlib.suppress(OSError):
                if (path / "manifest.json").read_bytes() != raw:  # replaced while we read: start again
                    time.sleep(0.002 * attempt)
                    continue
            raise
        _tidy(path, folder.manifest)
        return folder
    raise IndexFormatError(f"the index at {path} was replaced by {LOAD_ATTEMPTS} concurrent saves while it "
                           "was being loaded. Fix: retry the load once the saves are done.")


def _tidy(path: Path, manifest: dict[str, Any]) -> None:
    """Remove leftovers of killed saves, if no save is running (never blocks, never raises)."""
    keep, known = _own_names(manifest)
    with contextlib.suppress(OSError):
        if not keep or not any(_is_leftover(p, keep, known) for p in path.iterdir()):
            return
        with _atomic.exclusive_lock(path / ".lock", blocking=False, create=False) as held:
            if held and _current(path) == manifest:
                _clean(path, keep, known)


def _read_version(path: Path, raw: bytes, *, mmap: bool, verify: bool, rebuild: str) -> IndexFolder:
    faiss = _faiss()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError included
        raise IndexFormatError(f"{path / 'manifest.json'} is unreadable ({err!r}). {rebuild}") from err
    check_manifest(path / "manifest.json", manifest, rebuild)
    count, dim = manifest["count"], manifest["dimension"]
    files = {name: manifest["files"][name] for name in FILES}
    checksums = manifest.get("checksums") or {}
    base = path / manifest["version"] if manifest["format_version"] >= 2 else path
    if base != path and base.is_symlink():
        raise IndexFormatError(f"{base} is a symbolic link; a version folder is a plain folder inside the index "
                               f"folder. {rebuild}")
    for name, size in files.items():
        if not (base / name).is_file():
            raise IndexFormatError(f"{path} is missing {base.name + '/' if base != path else ''}{name} "
                                   f"(listed in its manifest). {rebuild}")
        if (actual := (base / name).stat().st_size) != size:
            raise IndexFormatError(f"{base / name} is {actual} bytes; the manifest says {size} (truncated "
                                   f"or modified after saving). {rebuild}")
        if verify and name in checksums:
            _verify(base / name, checksums[name], rebuild)
    try:
        cpu = faiss.read_index(str(base / "index.faiss"))
        vectors = np.load(base / "embeddings.npy", mmap_mode="r" if mmap else None)
        with open(base / "examples.jsonl", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        examples = [Example.from_json(row) for row in rows]
        keys = [row.get("key") or ex.key() for row, ex in zip(rows, examples)]
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, OSError) as err:
        raise IndexFormatError(f"could not read the index files in {base}: {err!r}. {rebuild}") from err
    counts = {"index.faiss": cpu.ntotal, "embeddings.npy": vectors.shape[0], "examples.jsonl": len(examples)}
    if any(c != count for c in counts.values()) or vectors.shape[1:] != (dim,) or cpu.d != dim:
        raise IndexFormatError(f"{path} is inconsistent: the manifest says {count} examples of dimension "
                               f"{dim}, the files hold {counts} (vectors {vectors.shape}, faiss d={cpu.d}). "
                               f"{rebuild}")
    lexical = None
    if manifest.get("lexical") is not None:
        lexical = _read_lexical(path, base, manifest["lexical"], count, mmap=mmap, verify=verify, rebuild=rebuild)
    return IndexFolder(manifest, cpu, vectors, examples, keys, lexical)


def check_embedder(path: Path, manifest: dict[str, Any], embedder: str | Embedder, *, device: str,
                   batch_size: int) -> Embedder:
    """``embedder`` resolved, or ``EmbedderMismatchError`` if it is not the one the index was built with."""
    resolved = get_embedder(embedder, device=device, batch_size=batch_size)
    dim = int(manifest["dimension"])
    if canonical_name(resolved.name) != canonical_name(manifest["embedder"]) or resolved.dimension != dim:
        raise EmbedderMismatchError(
            f"the index at {path} was built with {manifest['embedder']!r} ({dim} dims); received "
            f"embedder {resolved.name!r} ({resolved.dimension} dims). Fix: load it without an "
            f"embedder (uses {manifest['embedder']!r}), or rebuild the index with the new one.")
    return resolved


_LAYOUTS: dict[str, Callable[..., Any]] = {}


def register_layout(layout: str, loader: Callable[..., Any]) -> None:
    """Open folders whose manifest says ``"layout": layout`` with ``loader(path, embedder=..., ...)``.

    ``ragicl.distributed`` registers ``"sharded"`` when imported (``import ragicl`` does), so
    ``ExampleIndex.load`` opens its folders without this package importing it.
    """
    _LAYOUTS[layout] = loader


def layout_loader(path: Path) -> Callable[..., Any] | None:
    """The registered loader for ``path`` if its manifest names another layout; ``None`` for this format."""
    manifest = _current(path)
    layout = manifest.get("layout") if isinstance(manifest, dict) else None
    if layout is None:
        return None
    if layout not in _LAYOUTS:
        raise IndexFormatError(f"{path} holds an index of layout {layout!r}; this process can open "
                               f"{sorted(_LAYOUTS) + ['the default']} layouts. Fix: import the package that "
                               "wrote it (for 'sharded': import ragicl.distributed) before loading.")
    return _LAYOUTS[layout]
