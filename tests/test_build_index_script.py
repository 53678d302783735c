"""scripts/build_index.py: several dataset files indexed in one go, each into indexes/<dataset name>."""

from __future__ import annotations

import json

from _scripts import load_script

from ragicl import ExampleIndex


def _write(path, n, labels=("neg", "pos")):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": f"example {i} of {path.parent.name}", "label": labels[i % 2]}) + "\n"
                            for i in range(n)))
    return path


def test_builds_each_file_into_its_own_folder_and_skips_built(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a, b = _write(tmp_path / "data" / "alpha" / "train.jsonl", 12), _write(tmp_path / "data" / "beta" / "train.jsonl", 7)
    script = load_script("build_index")
    assert script.main([str(a), str(b), "--embedder", "hash-32", "-q"]) == 0
    assert len(ExampleIndex.load(tmp_path / "indexes" / "alpha")) == 12
    assert len(ExampleIndex.load(tmp_path / "indexes" / "beta")) == 7
    capsys.readouterr()
    assert script.main([str(a), str(b), "--embedder", "hash-32", "-q", "--skip-built"]) == 0
    assert capsys.readouterr().out.count("skipped") == 2


def test_one_bad_file_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    good = _write(tmp_path / "data" / "good" / "train.jsonl", 9)
    bad = tmp_path / "data" / "bad" / "train.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"text": "no label here"}\n')
    assert load_script("build_index").main([str(bad), str(good), "--embedder", "hash-32", "-q"]) == 2
    assert len(ExampleIndex.load(tmp_path / "indexes" / "good")) == 9
    assert not (tmp_path / "indexes" / "bad").exists()
    assert "error" in capsys.readouterr().err.lower()


def test_out_with_several_files_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a, b = _write(tmp_path / "d" / "a" / "train.jsonl", 5), _write(tmp_path / "d" / "b" / "train.jsonl", 5)
    assert load_script("build_index").main([str(a), str(b), "--out", "x", "--embedder", "hash-32"]) == 2
    assert "--out names one folder but 2 files" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "indexes").exists()
