"""ragicl.distributed on a local Ray cluster: batch predict and fusion against the single-process result, the
IVF assembly, the compare-system wrapper, and the wiring through ExampleIndex.load and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _ray_rows import ROWS, assert_same_topk, make_rows

from ragicl import (
    EmbedderMismatchError,
    ExampleIndex,
    read_dataset,
)
from ragicl.distributed import (
    build_distributed,
    load_index,
    predict_distributed,
)


def test_distributed_predict_equals_local_predict(ray_cluster, ray_built, smollm_path):
    from ragicl import ICLClassifier, PromptTemplate

    test = read_dataset(make_rows(11, seed=5))
    kw = {"k": 4, "max_prompt_tokens": 160,
          "template": PromptTemplate(example="Text: {text}\nLabel: {label}")}
    got = predict_distributed(ray_built.path, test, lm=smollm_path, workers=2, batch_size=3, **kw)
    want = ICLClassifier(smollm_path, **kw).fit(load_index(ray_built.path)).predict_proba(list(test.examples))
    assert got.classes == ("neg", "neu", "pos") and got.probs.shape == (11, 3)
    # a prompt scores the same alone or batched to ~1e-4 in log-probability (DESIGN, LM); probabilities
    # move by at most about that much, so 2e-3 is a 10x margin yet far below the gaps between labels
    np.testing.assert_allclose(got.probs, want, atol=2e-3, rtol=0)
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 4e-3
    assert np.array_equal(np.asarray(got.labels)[clear], np.asarray(got.classes)[want.argmax(1)][clear])


def test_distributed_fusion_equals_local_fusion(ray_cluster, ray_built, smollm_path):
    """"ragicl best" on Ray: actors return the unmixed parts, the driver mixes them over the whole test set,
    so batch calibration (the prior is the mean over every query) matches one process."""
    from ragicl import FusionClassifier, PromptTemplate
    from ragicl.estimators.fusion import combine

    test = read_dataset(make_rows(11, seed=5))
    kw = {"k": 2, "max_prompt_tokens": 160, "knn_k": 16, "knn_weight": 0.4, "candidates": 2,
          "calibration": "batch", "template": PromptTemplate(example="Text: {text}\nLabel: {label}")}
    local = FusionClassifier(smollm_path, **kw).fit(load_index(ray_built.path))
    want = local.predict_proba(list(test.examples))
    got = predict_distributed(ray_built.path, test, lm=smollm_path, workers=2, batch_size=3, estimator="fusion", **kw)
    assert got.classes == ("neg", "neu", "pos") and got.probs.shape == (11, 3)
    np.testing.assert_allclose(got.probs, want, atol=2e-3, rtol=0)  # the LM's batch noise, as above
    # the check can fail: calibrating each actor batch of 3 on its own gives other distributions
    parts = local.parts(list(test.examples))
    chunked = np.concatenate([combine(type(parts)(parts.lm_logp[i:i + 3], parts.neighbor_labels[i:i + 3],
                                                  parts.neighbor_scores[i:i + 3], 3, parts.candidates[i:i + 3]),
                                      knn_k=16, knn_temperature=local.knn_temperature, knn_weight=0.4,
                                      calibration="batch") for i in range(0, 11, 3)])
    assert np.abs(chunked - want).max() > 10 * 2e-3
    with pytest.raises(ValueError, match="estimator must be one of"):
        predict_distributed(ray_built.path, test, lm=smollm_path, estimator="vote")


def test_a_vote_only_fusion_actor_does_not_run_the_lm(ray_built, smollm_path, monkeypatch):
    """At knn_weight 1 the mix ignores the LM, so the Ray actor skips it as FusionClassifier.predict_proba
    does (it used to score every prompt for nothing: a whole retrieved-k's time on SUBJ's 500 queries)."""
    from ragicl import FusionClassifier, PromptTemplate
    from ragicl.distributed.predict import _Predictor
    from ragicl.estimators.fusion import FusionParts

    test = list(read_dataset(make_rows(5, seed=5)).examples)
    kw = {"k": 2, "max_prompt_tokens": 160, "knn_k": 16, "knn_weight": 1.0, "knn_temperature": 0.05,
          "template": PromptTemplate(example="Text: {text}\nLabel: {label}")}
    actor = _Predictor(str(ray_built.path), smollm_path, kw, "cpu", estimator="fusion")
    calls = []
    monkeypatch.setattr(FusionClassifier, "_lm_logp", lambda self, *a, **k: calls.append(1) or 1 / 0)
    out = actor({"row": np.arange(5), "example": [json.dumps(ex.to_json()) for ex in test]})
    assert not calls and not any(out["error"])
    local = FusionClassifier(smollm_path, **kw).fit(load_index(ray_built.path))
    parts = FusionParts(out["lm_logp"], out["neighbor_labels"], out["neighbor_scores"], len(local.classes_),
                        out["candidates"].astype(bool))
    np.testing.assert_allclose(local.mix(parts), local.predict_proba(test), atol=1e-12)
    actor.clf.knn_weight = 0.5  # a real mix does score the LM (and the stub says so)
    with pytest.raises(ZeroDivisionError):
        actor({"row": np.arange(5), "example": [json.dumps(ex.to_json()) for ex in test]})
    assert calls


@pytest.mark.slow
def test_distributed_build_with_the_real_minilm(ray_cluster, ray_inputs, minilm, tmp_path):
    index = build_distributed(ray_inputs, tmp_path / "idx", embedder="all-MiniLM-L6-v2", shard_size=150,
                              workers=1)  # one actor loads the model once for both shards
    ref = ExampleIndex.build(read_dataset(ROWS), embedder=minilm)
    assert [e.id for e in index.examples] == [e.id for e in ref.examples]
    # batches differ (150-row shards vs 300 rows): vectors agree to float32 noise, not bit for bit
    np.testing.assert_allclose(index.embeddings, ref.embeddings, atol=1e-5, rtol=0)
    queries = [r["text"] for r in make_rows(30, seed=4)]
    assert_same_topk(index.search(queries, k=8), ref.search(queries, k=8), scale=4.0)


@pytest.mark.parametrize("factory", ["IVF4,Flat", "IVF4,PQ8x4"])
def test_ivf_assembly_searches_like_the_single_process_ivf(ray_built, ray_inputs, flat_reference, tmp_path, factory):
    """Trained once on the same sample, shards added in Ray tasks, lists merged: the single-process IVF."""
    out = tmp_path / "idx"
    shutil.copytree(ray_built.path, out)  # the embedded shards are reused: only the IVF stage runs
    index = build_distributed(ray_inputs, out, embedder="hash-32", factory=factory, shard_size=45, workers=2)
    ref = ExampleIndex.build(read_dataset(ROWS), embedder="hash-32", factory=factory)
    m = index.sharded_manifest
    assert m["factory"] == factory and m["ivf"]["ntotal"] == 300 and len(m["build"]["shards_reused"]) == 7
    assert not list((out / "shards").glob("*.ivf.faiss"))  # merged, then removed
    queries = [r["text"] for r in make_rows(30, seed=7)]
    for nprobe in (1, 2):
        assert_same_topk(index.search(queries, k=10, nprobe=nprobe), ref.search(queries, k=10, nprobe=nprobe))
    if factory == "IVF4,Flat":  # every list probed: the exact result
        assert_same_topk(index.search(queries, k=10, nprobe=4), flat_reference.search(queries, k=10))


def test_distributed_classifier_is_a_compare_system(ray_built, monkeypatch):
    """What ``ragicl eval --ray`` plugs into ``compare``: classes from the manifest, probabilities from
    ``predict_distributed`` with its arguments passed through (the Ray run itself is tested above)."""
    from ragicl.distributed import BatchPrediction, DistributedClassifier, predict

    calls = []

    def fake(index, queries, **kw):
        calls.append((index, list(queries), kw))
        return BatchPrediction(("neg", "neu", "pos"), ("pos",), np.array([[0.1, 0.2, 0.7]]))

    monkeypatch.setattr(predict, "predict_distributed", fake)
    clf = DistributedClassifier(ray_built.path, lm="some-lm", k=3, address="auto").fit()
    assert clf.classes_ == ("neg", "neu", "pos") and clf.predict(["red cat"]) == ["pos"]
    assert calls == [(ray_built.path, ["red cat"], {"lm": "some-lm", "k": 3, "address": "auto"})]


# ------------------------------------------------------------------ wiring: ExampleIndex.load and the CLI
def test_example_index_load_opens_a_sharded_folder(ray_built):
    """The sharded layout is registered with the index folder module: ExampleIndex.load dispatches to it."""
    from ragicl.distributed import ShardedIndex

    index = ExampleIndex.load(ray_built.path)
    assert isinstance(index, ShardedIndex) and index.n_shards == 7 and index.examples == ray_built.examples
    queries = [r["text"] for r in make_rows(20, seed=3)]
    got, want = index.search(queries, k=12), ray_built.search(queries, k=12)
    np.testing.assert_array_equal(got.positions, want.positions)  # the same shards and merge: identical
    with pytest.raises(EmbedderMismatchError, match="hash-32"):
        ExampleIndex.load(ray_built.path, embedder="hash-16")


def test_cli_index_build_with_ray_reads_several_files_and_globs(ray_built, ray_inputs, tmp_path, capsys):
    from ragicl.cli import main

    out = tmp_path / "cli"
    glob = str(ray_inputs[0].parent / "part-*.*")  # a quoted glob, as `data/*.parquet` unexpanded
    argv = ["index", "build", glob, "--out", str(out), "--ray", "local", "--workers", "2", "--shard-size", "45",
            "--embedder", "hash-32"]
    assert main(argv) == 0
    assert "300 examples in 7 shards" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["shards"] == ray_built.sharded_manifest["shards"]
    assert ExampleIndex.load(out).examples == ray_built.examples
    files = [str(p) for p in ray_inputs]  # the shell-expanded form, several arguments: the same plan, so it resumes
    assert main(["index", "build", *files, "--out", str(out), "--ray", "local", "--shard-size", "45",
                 "--embedder", "hash-32"]) == 0
    build = json.loads((out / "manifest.json").read_text())["build"]
    assert build["runs"] == 2 and len(build["shards_reused"]) == 7 and not build["shards_built"]


def test_cli_ray_options_are_checked_before_any_work(ray_built, ray_inputs, tmp_path, capsys):
    from ragicl.cli import main

    def fails(argv, *expected):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "ragicl: error:" in err and "Traceback" not in err, err
        for text in expected:
            assert text in err, err

    files = [str(p) for p in ray_inputs]
    fails(["index", "build", *files, "--out", str(tmp_path / "a"), "--embedder", "hash-32"],
          "received 3 data files", "--ray auto")
    fails(["index", "build", files[0], "--out", str(tmp_path / "a"), "--workers", "2", "--embedder", "hash-32"],
          "--workers 2", "without --ray")
    fails(["index", "build", files[2], "--out", str(tmp_path / "a"), "--shard-size", "9", "--embedder",
           "hash-32"], "--shard-size 9")
    assert not (tmp_path / "a").exists()
    sharded = tmp_path / "sharded"
    shutil.copytree(ray_built.path, sharded)
    before = (sharded / "manifest.json").read_bytes()
    fails(["index", "build", files[0], "--out", str(sharded), "--embedder", "hash-32"], "holds a sharded index")
    assert (sharded / "manifest.json").read_bytes() == before
    flat = tmp_path / "flat"
    ExampleIndex.build(read_dataset(make_rows(10)), embedder="hash-32").save(flat)
    fails(["index", "build", *files, "--out", str(flat), "--ray", "local", "--embedder", "hash-32"],
          "holds a single-process index")
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in make_rows(4, seed=5)))
    fails(["eval", "--index", str(flat), "--test", str(test), "--workers", "2", "--lm", "none"], "--workers 2")


def test_cli_eval_with_ray_fans_the_lm_systems_out(ray_built, tmp_path, capsys, monkeypatch, smollm_path):
    """``eval --ray``: every LM-scored row is a DistributedClassifier with the CLI's settings; kNN votes run
    locally on the sharded index (the Ray scoring itself: test_distributed_predict_equals_local_predict)."""
    from ragicl import PromptTemplate
    from ragicl.cli import main
    from ragicl.distributed import BatchPrediction, predict

    calls = []

    def fake(index, queries, **kw):
        calls.append((str(index), len(queries), kw))
        probs = np.tile([0.2, 0.3, 0.5], (len(queries), 1))
        return BatchPrediction(("neg", "neu", "pos"), ("pos",) * len(queries), probs)

    monkeypatch.setattr(predict, "predict_distributed", fake)
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in make_rows(9, seed=5)))
    report = tmp_path / "r.json"
    code = main(["eval", "--index", str(ray_built.path), "--test", str(test), "--ray", "local", "--workers", "3",
                 "--k", "2", "--lm", smollm_path, "--batch-size", "4", "--max-prompt-tokens", "200", "--json",
                 str(report), "--dev-size", "6", "--tune-budget", "0", "--predictions", str(tmp_path / "p.json")])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    names = [s["name"] for s in data["systems"]]
    assert names == ["zero-shot", "random-2", "retrieved-2", "kNN vote k=8", "kNN vote k=32", "ragicl best"]
    assert [c[:2] for c in calls] == [(str(ray_built.path), 9)] * 4
    # the last call is "ragicl best": its k is the tuner's choice (checked against the note below)
    for (_, _, kw), (k, selection) in zip(calls, [(0, None), (2, "random"), (2, "topk"), (calls[3][2]["k"], "topk")]):
        lm = kw["lm"]  # the CLI's LMSpec (the model and its loading options), or a bare name
        assert getattr(lm, "model", lm) == smollm_path and kw["address"] == "local" and kw["workers"] == 3
        assert kw["lm_batch_size"] == 4 and kw["max_prompt_tokens"] == 200 and kw["k"] == k
        assert kw.get("selection") == selection and isinstance(kw["template"], PromptTemplate)
    # "ragicl best": tuned here on 6 dev queries, then fanned out as a fusion with the chosen setting
    best = calls[3][2]
    assert best["estimator"] == "fusion" and "batch_size" not in best and "device" not in best
    chosen = next(n for n in data["notes"] if n.startswith("ragicl best = "))
    assert chosen.startswith(f"ragicl best = k={best['k']},") and best["k"] in (0, 2)
    assert f"vote k={best['knn_k']}" in chosen and f"weight {best['knn_weight']:.2f}" in chosen
    assert "estimator" not in calls[0][2]
    # the same run again with its saved predictions: nothing is scored on Ray and "ragicl best" is not re-tuned
    import ragicl.cli.systems as cli_systems

    def no_tuning(*a, **k):
        raise AssertionError("tuned again")

    monkeypatch.setattr(cli_systems, "tune_best", no_tuning)
    assert main(["eval", "--index", str(ray_built.path), "--test", str(test), "--ray", "local", "--workers", "3",
                 "--k", "2", "--lm", smollm_path, "--batch-size", "4", "--max-prompt-tokens", "200", "--json",
                 str(report), "--dev-size", "6", "--tune-budget", "0", "--predictions", str(tmp_path / "p.json")]) == 0
    again = json.loads(report.read_text())
    assert len(calls) == 4 and [s["name"] for s in again["systems"]] == names
    assert [n.startswith("--ray local:") for n in again["notes"]].count(True) == 1  # the reused run's note, once
