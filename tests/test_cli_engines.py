"""The command line's LM options (engines) and its per-command option groups (issue 36 §1, issue 38 §3)."""

from __future__ import annotations

import pytest

from ragicl.cli import build_parser, main
from ragicl.cli.settings import lm_spec


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


def test_each_command_lists_only_its_options(capsys):
    tune = _help(capsys, "tune")
    for option in ("--k ", "--no-best", "--no-vote", "--test", "--n ", "--finetuned"):
        assert option not in tune, option
    assert "seed of the dev sample" in tune and "--lm-url" in tune and "--ks" in tune
    evaluate = _help(capsys, "eval")
    for option in ("--lm-url", "--lm-concurrency", "--device-map", "--load-in-4bit", "--n-gpu-layers", "--report"):
        assert option in evaluate, option
    finetune = _help(capsys, "finetune")
    assert "--lm-url" not in finetune and "--device-map" in finetune


@pytest.mark.parametrize("argv, engine", [
    (["--lm", "Qwen/Qwen2.5-7B", "--lm-url", "http://gpu:8000/v1", "--lm-concurrency", "32"], "server"),
    (["--lm", "models/q.gguf", "--n-ctx", "4096", "--n-gpu-layers", "-1"], "llama.cpp"),
    (["--lm", "SmolLM2-135M-Instruct", "--lm-engine", "llama.cpp"], "llama.cpp"),
    (["--lm", "big/model", "--device-map", "auto", "--dtype", "bfloat16"], "transformers"),
])
def test_lm_options_become_one_spec(argv, engine):
    args = build_parser().parse_args(["eval", "--index", "i", "--test", "t", *argv])
    spec = lm_spec(args)
    assert spec.resolved_engine == engine
    assert spec.build() is not None  # constructs without loading or connecting


def test_one_device_type_everywhere():
    parser = build_parser()
    for argv in (["index", "build", "d.jsonl"], ["eval", "--index", "i", "--test", "t"]):
        assert parser.parse_args([*argv, "--device", "cuda:1"]).device == "cuda:1"
        assert parser.parse_args([*argv, "--device", "mps"]).device == "mps"
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--device", "gpu"])


def test_bad_engine_combinations_are_one_line_errors(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    assert main(["finetune", "--train", str(data), "--out", str(tmp_path / "ft"), "--lm", "m.gguf"]) == 2
    assert "fine-tuning trains a transformers model" in capsys.readouterr().err
    assert main(["eval", "--index", str(tmp_path), "--test", str(data), "--lm-url", "localhost:8000"]) == 2
    assert "is not an http(s) URL" in capsys.readouterr().err
    assert main(["eval", "--index", str(tmp_path), "--test", str(data), "--lm", "missing.gguf"]) == 2
    assert "is not a GGUF file" in capsys.readouterr().err
    assert main(["eval", "--index", str(tmp_path), "--test", str(data), "--model-kwargs", "{oops"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err


def test_retrieval_options_reach_the_retrieved_system(tmp_path, capsys):
    """index build --bm25 saves the lexical index; eval --search/--selection build retrieved-k with them."""
    import json

    rows = [{"text": t, "label": lab} for t, lab in [("a gripping film", "pos"), ("dull and long", "neg"),
                                                    ("a joy to watch", "pos"), ("far too long", "neg"),
                                                    ("beautifully shot", "pos"), ("tedious mess", "neg")]]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["index", "build", str(data), "--out", str(tmp_path / "idx"), "--embedder", "hash-32", "--bm25"]) == 0
    from ragicl import ExampleIndex

    assert ExampleIndex.load(tmp_path / "idx").lexical is not None
    args = build_parser().parse_args(["eval", "--index", "i", "--test", "t", "--search", "hybrid", "--selection",
                                      "dpp", "--rerank", "some/cross-encoder"])
    from ragicl.cli.settings import EvalOptions

    assert EvalOptions.from_args(args).retrieval == {"selection": "dpp", "search": "hybrid",
                                                     "reranker": "some/cross-encoder"}


def test_eval_report_html_has_the_gold_confusion_and_the_tuner(tmp_path, capsys):
    """ragicl eval --report FILE.html: the page carries the per-label confusion (gold labels passed) and the
    tuner's choice; a bad suffix is refused before any work."""
    import json

    rows = [{"text": f"{w} film {i}", "label": lab} for i in range(12)
            for w, lab in (("great", "pos"), ("awful", "neg"))]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[20:]))
    assert main(["index", "build", str(train), "--out", str(tmp_path / "idx"), "--embedder", "hash-32"]) == 0
    assert main(["eval", "--index", str(tmp_path / "idx"), "--test", str(test), "--report", str(tmp_path / "r.pdf")]) == 2
    assert "--report" in capsys.readouterr().err
