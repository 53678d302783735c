"""benchmarks/bench_engines.py and benchmarks/bench_cpu_int8.py: the bookkeeping behind the numbers of
docs/BENCHMARKS.md "Engines" (resumed scoring, agreement arithmetic, SmoothQuant's exactness in float)."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from _scripts import load_script


@pytest.fixture
def engines(tmp_path, monkeypatch):
    module = load_script("bench_engines")
    monkeypatch.setattr(module, "OUT", tmp_path)
    return module


def _saved(n: int) -> dict:
    return {"dataset": "toy", "classes": ["a", "b"], "label_ids": [[5], [6]], "gold": [0, 1] * (n // 2),
            "prompts": [[1, 2, 3 + i] for i in range(n)], "n_shots": [8] * n}


def _fake_engine(calls: list):
    """Stands in for an engine: records which prompts it scored; log-probs derived from the prompt."""

    class LM:
        def score_continuations(self, prompts, label_ids):
            calls.append([p[-1] for p in prompts])
            return [[-1.0, -float(p[-1])] for p in prompts]

    @contextlib.contextmanager
    def engine(name, **kwargs):
        yield LM()
    return engine


def test_score_resumes_and_keeps_rows_scored_beyond_n(engines, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(engines, "engine", _fake_engine(calls))
    saved = _saved(6)
    first = dict(saved, prompts=saved["prompts"][:2])
    engines.score("toy", "hf", first, block=1)
    assert calls == [[3], [4]]
    engines.score("toy", "hf", saved, block=4)  # resumes: only rows 2..5 are scored, in blocks of 4 and 0
    assert calls == [[3], [4], [5, 6, 7, 8]]
    with np.load(tmp_path / "toy-hf.npz") as f:
        logp = f["logp"]
    assert logp.shape == (6, 2) and not np.isnan(logp).any()
    assert logp[:, 1].tolist() == [-3.0, -4.0, -5.0, -6.0, -7.0, -8.0]
    # a smaller --n later neither rescores nor drops the rows past it
    logp[3] = np.nan  # as if row 3 had been lost: it is rescored, rows 4, 5 are kept
    np.savez(tmp_path / "toy-hf.npz", logp=logp, seconds=1.0)
    engines.score("toy", "hf", dict(saved, prompts=saved["prompts"][:4]), block=4)
    assert calls[-1] == [6]
    with np.load(tmp_path / "toy-hf.npz") as f:
        assert f["logp"].shape == (6, 2) and f["logp"][:, 1].tolist() == [-3.0, -4.0, -5.0, -6.0, -7.0, -8.0]


def test_report_compares_engines_on_the_prefix_every_engine_scored(engines, tmp_path):
    saved = _saved(4)
    (tmp_path / "toy-prompts.json").write_text(json.dumps(saved))
    p_hf = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    p_q4 = np.array([[0.8, 0.2], [0.2, 0.8], [0.3, 0.7], [np.nan, np.nan]])  # 3 of 4 scored
    np.savez(tmp_path / "toy-hf.npz", logp=np.log(p_hf) + 2.0, seconds=1.0)  # any shift per row: softmax
    np.savez(tmp_path / "toy-q4.npz", logp=np.log(p_q4), seconds=1.0)
    engines.report(["toy"], str(tmp_path / "agree.json"))
    (row,) = json.loads((tmp_path / "agree.json").read_text())["agreement"]
    tv = 0.5 * np.abs(p_hf[:3] - p_q4[:3]).sum(1)  # 0.1, 0, 0.3
    assert row["n"] == 3 and row["engines"] == "hf vs q4"
    assert float(row["mean TV"]) == pytest.approx(tv.mean(), abs=1e-4)
    assert float(row["max TV"]) == pytest.approx(tv.max(), abs=1e-4)
    assert row["argmax agreement"] == "2/3"  # row 2 flips


def test_prepare_refuses_to_extend_prompts_that_changed(engines, tmp_path, monkeypatch):
    saved = _saved(2)
    (tmp_path / "toy-prompts.json").write_text(json.dumps(saved))
    assert engines.prepare("toy", 2, hf_lm=None) == saved  # enough saved: read back, nothing packed

    class Clf:
        classes_, label_ids_ = ["a", "b"], [[5], [6]]

        def __init__(self, **kwargs):
            pass

        def fit(self, index):
            return self

        def prompts(self, examples):  # the first prompt differs from the saved one
            return [type("P", (), {"token_ids": [9, 9, i], "included": [0]})() for i in range(len(examples))]

    import ragicl

    monkeypatch.setattr(ragicl, "ICLClassifier", Clf)
    monkeypatch.setattr(engines, "load_index", lambda dataset: None)
    monkeypatch.setattr(engines, "test_queries", lambda dataset, n: ([None] * n, ["a", "b", "a"][:n]))
    with pytest.raises(SystemExit, match="differ from the 2 saved"):
        engines.prepare("toy", 3, hf_lm=None)
    assert json.loads((tmp_path / "toy-prompts.json").read_text()) == saved  # left as it was


def test_smoothquant_leaves_the_float_model_unchanged():
    """SmoothQuant only moves scale between RMSNorm / up_proj and the next Linear: in float32 the logits
    must stay the same up to rounding (so any TV of torch-int8-sq comes from int8, not from the fold)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    int8 = load_script("bench_cpu_int8")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1 and uneven input channels, so the scales are not trivial
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.2, 3.0)
            layer.post_attention_layernorm.weight.uniform_(0.2, 3.0)
    prompts = [[int(t) for t in torch.randint(0, 96, (n,))] for n in (7, 12, 20)]
    smoothed = int8.smooth(model, prompts[:2])
    changed = any(not torch.equal(a, b) for a, b in zip(model.parameters(), smoothed.parameters()))
    assert changed, "smooth() changed no weight"
    for ids in prompts:
        with torch.inference_mode():
            ref = model(torch.tensor([ids])).logits
            got = smoothed(torch.tensor([ids])).logits
        scale = float(ref.abs().max())
        assert torch.allclose(got, ref, rtol=0, atol=1e-4 * scale), float((got - ref).abs().max())
