"""The index folder's metadata and ownership (issue 35): byte flips in every file (manifest.json included)
are refused or harmless, the manifest's schema and paths are checked, folders of the user named like
ragicl's are never deleted, format-2 folders still load and are cleaned, a symlinked lock is refused.

Uses tests/_index_worker.py's two small hash-embedder variants "a" and "b".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import _index_worker as worker
import numpy as np
import pytest
from _flips import run_flips

from ragicl import _atomic
from ragicl._exceptions import IndexFormatError
from ragicl.index import folder as _index_io
from ragicl.index.core import ExampleIndex

SAMPLE = 400  # bytes per data file (all ~14 KB, 28,000 loads, take ~30 s; the checksums catch every one)


@pytest.fixture(scope="module")
def variants():
    return {name: worker.variant(name) for name in "ab"}


def _load(path: Path, **kwargs) -> ExampleIndex:
    return ExampleIndex.load(path, device="cpu", **kwargs)


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _snapshot(index: ExampleIndex) -> tuple:
    """Everything a load returns, as plain copies (never memory-mapped)."""
    cpu = index._faiss_index
    return (index.manifest, index.examples, index.keys, np.array(index.embeddings),
            cpu.reconstruct_n(0, cpu.ntotal), index.labels, index.input_fields)


def _same(expected: tuple):
    def check(loaded: ExampleIndex) -> bool:
        got = _snapshot(loaded)
        return all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(got, expected))
    return check


# ---------------------------------------------------------------- byte flips
def test_every_byte_flip_of_the_manifest_is_refused_or_harmless(variants, tmp_path):
    path = variants["a"].save(tmp_path / "idx")
    counts = run_flips(path / "manifest.json", lambda: _load(path), _same(_snapshot(_load(path))),
                       (IndexFormatError,))
    n = (path / "manifest.json").stat().st_size
    assert counts["refused"] + counts["same"] == 2 * n and counts["refused"] >= n  # every flip of a value
    print(f"manifest.json: {2 * n} flips, {counts}")


@pytest.mark.parametrize("name", [*_index_io.FILES, _atomic.MARKER])
def test_byte_flips_of_every_data_file_are_refused_or_harmless(name, variants, tmp_path):
    path = variants["b"].save(tmp_path / "idx")
    file = path / _manifest(path)["version"] / name
    counts = run_flips(file, lambda: _load(path), _same(_snapshot(_load(path))), (IndexFormatError,),
                       sample=SAMPLE, seed=len(name))
    n = min(SAMPLE or file.stat().st_size, file.stat().st_size)
    assert counts["refused"] == (0 if name == _atomic.MARKER else 2 * n), counts  # the checksums catch all


def test_the_manifest_schema_is_checked_field_by_field(variants, tmp_path):
    path = variants["a"].save(tmp_path / "idx")
    manifest = _manifest(path)
    cases = {"labels": "odd", "count": "40", "dimension": True, "files": {"index.faiss": 1},
             "search_params": [], "task": "regression", "own_versions": "v-0123456789ab",
             "checksums": {"index.faiss": "sha256:00"}, "embedder": 32}
    for field, value in cases.items():
        (path / "manifest.json").write_text(json.dumps(_atomic.seal({**manifest, field: value})))
        with pytest.raises(IndexFormatError, match=f"field '{field}' is .*expected"):
            _load(path)
    for field in ("count", "version", "metadata_digest", "own_versions"):
        (path / "manifest.json").write_text(json.dumps(_atomic.seal(
            {k: v for k, v in manifest.items() if k != field})) if field != "metadata_digest" else json.dumps(
            {k: v for k, v in manifest.items() if k != field}))
        with pytest.raises(IndexFormatError, match=f"no field '{field}'|'{field}' is missing"):
            _load(path)
    (path / "manifest.json").write_text(json.dumps([manifest]))
    with pytest.raises(IndexFormatError, match="holds a JSON list"):
        _load(path)


# ---------------------------------------------------------------- paths in the manifest
@pytest.mark.parametrize("field", ["version", "previous_version"])
@pytest.mark.parametrize("digest", [True, False])
def test_a_manifest_cannot_point_outside_its_folder(field, digest, variants, tmp_path):
    other = variants["b"].save(tmp_path / "other")
    path = variants["a"].save(tmp_path / "idx")
    manifest = _manifest(path)
    if not digest:  # a format-2 manifest (no digest) is held to the same rule
        manifest = {k: v for k, v in manifest.items() if k not in ("metadata_digest", "own_versions")}
        manifest["format_version"] = 2
    theirs = _manifest(other)["version"]
    for where in (f"../other/{theirs}", str(other / theirs), "v-0123456789ab/..", "."):
        changed = {**manifest, field: where}
        (path / "manifest.json").write_text(json.dumps(_atomic.seal(changed) if digest else changed))
        with pytest.raises(IndexFormatError, match=f"field '{field}' is .*a folder"):
            _load(path)
    assert worker.check_consistent(_load(other)) == "b"


def test_a_symlinked_lock_is_refused_and_its_target_left_alone(variants, tmp_path):
    path = variants["a"].save(tmp_path / "idx")
    target = tmp_path / "precious.txt"
    target.write_text("do not truncate")
    (path / ".lock").unlink()
    os.symlink(target, path / ".lock")
    with pytest.raises(OSError, match="symbolic link"):
        variants["b"].save(path)
    (path / ".lock").unlink()
    os.symlink(tmp_path / "absent", path / ".lock")  # a dangling link: O_CREAT would create its target
    with pytest.raises(OSError, match="symbolic link"):
        variants["b"].save(path)
    assert target.read_text() == "do not truncate" and not (tmp_path / "absent").exists()
    assert worker.check_consistent(_load(path)) == "a"


# ---------------------------------------------------------------- only what ragicl made is deleted
def test_user_folders_named_like_ragicls_are_never_deleted(variants, tmp_path):
    path = variants["a"].save(tmp_path / "idx")
    mine = {"v-notes/todo.txt": "keep", ".tmp-cache/c.bin": "c", "v-0123456789ab/data.csv": "x,y",
            ".tmp-0123456789ab/draft.md": "d", ".manifest.json.tmp-mine": "draft", "v-/x": "y"}
    for name, text in mine.items():
        (path / name).parent.mkdir(exist_ok=True)
        (path / name).write_text(text)
    for name in "babab":
        variants[name].save(path)
        assert worker.check_consistent(_load(path)) == name
    for name, text in mine.items():
        assert (path / name).read_text() == text, name
    ours = {p.name for p in path.iterdir() if _atomic.is_owned_dir(p)}
    assert ours == {_manifest(path)["version"], _manifest(path)["previous_version"]}


def test_a_folder_with_only_user_lookalikes_is_not_taken_for_an_index(variants, tmp_path):
    (tmp_path / "idx" / "v-notes").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not an ExampleIndex folder"):
        variants["a"].save(tmp_path / "idx")
    assert os.listdir(tmp_path / "idx") == ["v-notes"]


def _as_format2(path: Path) -> dict:
    """Rewrite a saved folder as format 2 wrote it: no digest, no own_versions, no markers."""
    manifest = _manifest(path)
    for key in ("metadata_digest", "own_versions"):
        manifest.pop(key)
    for marker in path.glob(f"v-*/{_atomic.MARKER}"):
        marker.unlink()
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}, indent=2))
    return manifest


def test_format2_folders_load_and_their_versions_are_cleaned(variants, tmp_path):
    path = variants["a"].save(tmp_path / "idx")
    variants["b"].save(path)
    old = _as_format2(path)
    stray = path / "v-0123456789ab"  # unmarked and in no manifest: not provably ragicl's, so kept
    stray.mkdir()
    (stray / "index.faiss").write_bytes(b"?")
    assert worker.check_consistent(_load(path)) == "b"
    variants["a"].save(path)  # format 3 now; the format-2 current version is kept as the previous one
    assert not (path / old["previous_version"]).exists() and (path / old["version"]).is_dir()
    assert _manifest(path)["previous_version"] == old["version"]
    variants["b"].save(path)
    assert not (path / old["version"]).exists() and stray.is_dir()
    assert _manifest(path)["format_version"] == _index_io.FORMAT_VERSION


def test_a_format2_version_left_by_a_killed_save_is_recorded_and_cleaned(variants, tmp_path, monkeypatch):
    path = variants["a"].save(tmp_path / "idx")
    variants["b"].save(path)
    old = _as_format2(path)

    def die(step: str) -> None:  # the new manifest is committed, the clean never runs
        if step == "manifest-replaced":
            raise KeyboardInterrupt

    monkeypatch.setattr(_index_io, "checkpoint", die)
    with pytest.raises(KeyboardInterrupt):
        variants["a"].save(path)
    monkeypatch.undo()
    assert (path / old["previous_version"]).is_dir()  # unmarked, and named by no version field now...
    assert old["previous_version"] in _manifest(path)["own_versions"]  # ...but recorded as ragicl's
    assert worker.check_consistent(_load(path)) == "a"  # the load's tidy-up removes it
    assert not (path / old["previous_version"]).exists()


def test_a_version_folder_that_is_a_link_is_refused(variants, tmp_path):
    other = variants["a"].save(tmp_path / "other")  # the same data elsewhere: checksums alone would pass
    path = variants["a"].save(tmp_path / "idx")
    version = _manifest(path)["version"]
    os.rename(path / version, tmp_path / "moved")
    os.symlink(other / _manifest(other)["version"], path / version)
    with pytest.raises(IndexFormatError, match="is a symbolic link"):
        _load(path)


@pytest.mark.parametrize("damage", ["[1, 2]", '{"version": ["v-0123456789ab"], "previous_version": {}}', "{"])
def test_a_save_over_a_damaged_manifest_replaces_it(damage, variants, tmp_path):
    path = variants["a"].save(tmp_path / "idx")
    old = _manifest(path)["version"]
    (path / "manifest.json").write_text(damage)
    with pytest.raises(IndexFormatError):
        _load(path)
    variants["b"].save(path)  # no TypeError/AttributeError from the damaged fields
    assert worker.check_consistent(_load(path)) == "b"
    assert not (path / old).exists()  # named by no readable manifest, but marked as ragicl's
