"""The saved estimator folder's integrity (issue 35): a byte flipped in any of its files (estimator.json,
the embedded index's manifest.json and data files, the markers) is refused with the package's format error
or changes nothing; estimator.json's schema is checked field by field, and its fitted labels against the
index. Uses tests/_estimator_worker.py's fitted classifiers and fake LM (no model runs)."""

from __future__ import annotations

import json
from pathlib import Path

import _estimator_worker as worker
import numpy as np
import pytest
from _flips import run_flips

from ragicl import _atomic
from ragicl._exceptions import EstimatorFormatError, IndexFormatError
from ragicl.index import folder as _index_io

FORMAT_ERRORS = (EstimatorFormatError, IndexFormatError)
SAMPLE = 300  # bytes per data file of the embedded index (every byte of the metadata files)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = worker.variant("a").save(tmp_path_factory.mktemp("est") / "clf")
    worker.variant("b").save(path)  # a current and a previous index folder
    return path


def _snapshot(est) -> tuple:
    index = est.index_
    return (est.get_params(deep=False) | {"lm": None}, est.classes_, est.input_fields_, est.template_,
            index.manifest, index.examples, np.array(index.embeddings),
            index._faiss_index.reconstruct_n(0, index._faiss_index.ntotal))


def _same(expected: tuple):
    def check(est) -> bool:
        return all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
                   for a, b in zip(_snapshot(est), expected))
    return check


def _data(path: Path) -> dict:
    return json.loads((path / "estimator.json").read_text())


def _files(path: Path) -> list[Path]:
    """Every file of the current estimator: estimator.json, its index's manifest, data files and markers."""
    index = path / _data(path)["index"]["path"]
    version = index / json.loads((index / "manifest.json").read_text())["version"]
    return [path / "estimator.json", index / "manifest.json", index / _atomic.MARKER,
            *(version / name for name in _index_io.FILES), version / _atomic.MARKER]


def test_the_battery_covers_every_file_a_load_reads(saved):
    index = saved / _data(saved)["index"]["path"]
    on_disk = {p for p in [saved / "estimator.json", *index.rglob("*")] if p.is_file() and p.name != ".lock"}
    assert on_disk == set(_files(saved))  # (.lock files are empty: nothing to flip)


@pytest.mark.parametrize("which", ["estimator.json", "manifest.json"])
def test_every_byte_flip_of_the_metadata_is_refused_or_harmless(which, saved):
    file = next(f for f in _files(saved) if f.name == which)
    counts = run_flips(file, lambda: worker.load(saved), _same(_snapshot(worker.load(saved))), FORMAT_ERRORS)
    n = file.stat().st_size
    assert counts["same"] + counts["refused"] == 2 * n and counts["refused"] >= n, counts
    print(f"{which}: {2 * n} flips, {counts}")


@pytest.mark.parametrize("name", [*_index_io.FILES, _atomic.MARKER])
def test_byte_flips_of_the_embedded_index_files_are_refused_or_harmless(name, saved):
    for file in (f for f in _files(saved) if f.name == name):
        counts = run_flips(file, lambda: worker.load(saved), _same(_snapshot(worker.load(saved))),
                           FORMAT_ERRORS, sample=20 if name == _atomic.MARKER else SAMPLE, seed=3)
        n = min(20 if name == _atomic.MARKER else SAMPLE, file.stat().st_size)
        assert counts["refused"] == (0 if name == _atomic.MARKER else 2 * n), counts


def _rewrite(path: Path, data: dict | None = None, **changes) -> None:
    """``estimator.json`` of ``path`` (or ``data``) with ``changes``, under a matching digest."""
    data = _data(path) if data is None else data
    (path / "estimator.json").write_text(json.dumps(_atomic.seal({**data, **changes}), indent=2))


def test_the_schema_is_checked_field_by_field(tmp_path):
    path = worker.variant("a").save(tmp_path / "clf")
    data = _data(path)
    fitted, entry = data["fitted"], data["index"]
    cases = {
        "params": {"k": 2, "kk": 3}, "fitted": {**fitted, "extra_": []},
        "fitted.classes_": {**fitted, "classes_": "even"}, "fitted.input_fields_": {**fitted, "input_fields_": [1]},
        "fitted.template_": {**fitted, "template_": {"example": 5}}, "index": {**entry, "kind": "copy"},
        "index.fingerprint": {**entry, "fingerprint": None}, "previous_index": "../index-0123456789ab",
        "own_indexes": ["index-0123456789ab", "notes"], "params.template": {"PromptTemplate": ["x"]},
    }
    for field, value in cases.items():
        top = field.split(".")[0]
        if field == "params.template":
            value = {**data["params"], "template": value}
        _rewrite(path, data, **{top: value})
        with pytest.raises(EstimatorFormatError, match=f"field '{field}' is .*expected"):
            worker.load(path)
    _rewrite(path, data, fitted={**fitted, "classes_": ["even", "even"]})
    with pytest.raises(EstimatorFormatError, match="distinct labels"):
        worker.load(path)
    _rewrite(path, data, fitted={**fitted, "template_": {"example": "no placeholder", "bogus": "x"}})
    with pytest.raises(EstimatorFormatError, match="field 'fitted.template_'"):
        worker.load(path)
    _rewrite(path, data, **{"class": "ICLGenerator"})
    with pytest.raises(EstimatorFormatError, match="holds a saved ICLGenerator"):
        worker.load(path)


def test_the_digest_is_required_from_version_2_and_checked_when_present(tmp_path):
    path = worker.variant("a").save(tmp_path / "clf")
    data = _data(path)
    del data["metadata_digest"]
    (path / "estimator.json").write_text(json.dumps(data))
    with pytest.raises(EstimatorFormatError, match="'metadata_digest' is missing"):
        worker.load(path)
    tampered = _atomic.seal({**data, "version": 1}) | {"params": {**data["params"], "k": 5}}
    (path / "estimator.json").write_text(json.dumps(tampered))
    with pytest.raises(EstimatorFormatError, match="corrupt: its content does not match"):
        worker.load(path)  # a version-1 file with a digest: verified too
    (path / "estimator.json").write_text(json.dumps({**data, "version": 1}))
    assert worker.check_consistent(worker.load(path)) == "a"  # version 1 (no digest) still loads


@pytest.mark.parametrize("field,value,match", [
    ("classes_", ["even", "odd", "other"], "fitted classes_ .* differ from the index's"),
    ("classes_", ["odd", "even"], "fitted classes_ .* differ from the index's"),
    ("input_fields_", ["body"], "fitted input_fields_ .* differ from the index's"),
])
def test_fitted_labels_and_fields_must_be_the_index(field, value, match, tmp_path):
    path = worker.variant("a").save(tmp_path / "clf")
    _rewrite(path, fitted={**_data(path)["fitted"], field: value})
    with pytest.raises(EstimatorFormatError, match=match):
        worker.load(path)


def test_another_index_in_place_of_the_embedded_one_is_refused(tmp_path):
    path = worker.variant("a").save(tmp_path / "clf")
    entry = _data(path)["index"]
    worker.index_of("b").save(path / entry["path"])  # same folder name, other data
    with pytest.raises(EstimatorFormatError, match="now holds other data"):
        worker.load(path)


def test_an_embedded_index_that_is_a_link_is_refused(tmp_path):
    other = worker.index_of("a").save(tmp_path / "elsewhere")  # the same data: the fingerprint would match
    path = worker.variant("a").save(tmp_path / "clf")
    name = _data(path)["index"]["path"]
    (path / name).rename(tmp_path / "moved")
    (path / name).symlink_to(other)
    with pytest.raises(EstimatorFormatError, match="is a symbolic link.*'reference'"):
        worker.load(path)


@pytest.mark.parametrize("damage", ["[1, 2]", '{"index": {"kind": "embedded", "path": ["x"]}, "previous_index": 5}'])
def test_a_save_over_a_damaged_estimator_json_replaces_it(damage, tmp_path):
    path = worker.variant("a").save(tmp_path / "clf")
    (path / "estimator.json").write_text(damage)
    with pytest.raises(EstimatorFormatError):
        worker.load(path)
    worker.variant("b").save(path)
    assert worker.check_consistent(worker.load(path)) == "b"
