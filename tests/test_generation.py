"""Generation gap against the real SmolLM2 and a few GSM8K items: teacher-forced TV is exact (0 for a
model against itself, equal to a hand computation from raw logits), the Monte-Carlo sequence TV of a
model against itself is 0, bad input fails clearly, prompts respect the budget and generation stops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ragicl import DataError, ExampleIndex, read_dataset
from ragicl.estimators.generation import (
    GenerationReport,
    ICLGenerator,
    check_same_vocabulary,
    exact_match,
    extract_answer,
    generation_gap,
    sample_continuations,
    sequence_logprobs,
    teacher_forced_tv,
)
from ragicl.evaluation.stats import sequence_tv_mc
from ragicl.lm.hf import TransformersLM
from ragicl.types import Dataset
from tests.conftest import dataset_path

# ------------------------------------------------------------------------------------ exact match (fast)


@pytest.mark.parametrize(("text", "expected"), [
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 18", "18"),
    ("#### 1,234", "1234"),
    ("#### 18.0", "18"),
    ("#### -3", "-3"),
    ("costs $2.50 each", "2.5"),
    ("first 3, then 7 apples", "7"),
    ("#### 5 apples and 6", "6"),  # last number after ####
    ("no digits here", None),
    ("####", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_exact_match():
    assert exact_match("so she has 18.\n#### 18", "#### 18")
    assert exact_match("the answer is 1,000", "#### 1000")
    assert not exact_match("#### 17", "#### 18")
    assert not exact_match("", "#### 18")  # no answer found is never a match
    assert exact_match("#### eighteen", "#### 18", extractor=lambda t: "18" if "eighteen" in t or "18" in t else None)


# ------------------------------------------------------------------------------------- with the real LM
@pytest.fixture(scope="module")
def gsm8k() -> tuple[Dataset, Dataset]:
    train = read_dataset(dataset_path("gsm8k", "train"), name="gsm8k")
    test = read_dataset(dataset_path("gsm8k", "test"), name="gsm8k")
    short = sorted(range(50), key=lambda i: len(test[i].output) + len(test[i].inputs["question"]))[:2]
    return train.subset(range(40)), test.subset(sorted(short))


@pytest.fixture(scope="module")
def index(gsm8k) -> ExampleIndex:
    return ExampleIndex.build(gsm8k[0], embedder="hash-64", show_progress=False)


@pytest.fixture(scope="module")
def icl(smollm_lm, index) -> ICLGenerator:
    return ICLGenerator(smollm_lm, k=1, max_prompt_tokens=256, max_new_tokens=8).fit(index)


@pytest.fixture(scope="module")
def zero_shot(smollm_lm, gsm8k) -> ICLGenerator:
    return ICLGenerator(smollm_lm, k=0, max_prompt_tokens=256, max_new_tokens=8).fit(gsm8k[0])


def test_default_template_stop_and_targets(icl, gsm8k):
    assert icl.template_.example == "Question: {question}\nAnswer: {output}"
    assert icl.stop_ == ("\n\nQuestion:",)
    tok = icl.lm_.tokenizer
    ids = icl.target_ids("x #### 4")
    assert tok.decode(ids) == " x #### 4\n\nQuestion:"
    # the continuation tokenizes as it does inside a prompt (after "Answer:")
    whole = tok("Answer: x #### 4\n\nQuestion:", add_special_tokens=False)["input_ids"]
    assert whole[-len(ids):] == ids


def test_prompts_respect_budget_and_generation_stops(smollm_lm, index, gsm8k):
    gen = ICLGenerator(smollm_lm, k=4, max_prompt_tokens=300, max_new_tokens=16).fit(index)
    prompts = gen.prompts(list(gsm8k[1]))
    assert all(p.n_tokens <= p.budget <= 300 for p in prompts)
    assert any(p.included for p in prompts)
    assert all(list(p.token_ids) == smollm_lm.tokenizer(p.text)["input_ids"] for p in prompts)
    out = gen.generate(gsm8k[1][0])
    assert len(out) == 1 and "\n\nQuestion:" not in out[0]
    # a stop string that occurs early: cut there
    short = ICLGenerator(smollm_lm, k=0, max_prompt_tokens=300, max_new_tokens=16, stop=["\n"]).fit(gsm8k[0])
    assert "\n" not in short.generate(gsm8k[1][0])[0]


def test_prompts_hold_at_most_k_demonstrations(smollm_lm, index, gsm8k):
    # 2k candidates are retrieved so a too-long one can be replaced, but at most k are packed
    gen = ICLGenerator(smollm_lm, k=1, max_prompt_tokens=1024, max_new_tokens=8).fit(index)
    prompts = gen.prompts(list(gsm8k[1]))
    assert all(len(p.included) == 1 for p in prompts)
    assert all(len(p.excluded) >= 1 for p in prompts)


def test_prompts_equal_the_shared_step_and_the_hand_built_pipeline(smollm_lm, index, gsm8k):
    """ICLGenerator's prompts are its PromptStep's and equal Retriever + Packer (budget keeping
    max_new_tokens free) written out by hand, as before the step existed."""
    from ragicl.estimators._common import as_examples
    from ragicl.prompt.pack import Packer
    from ragicl.prompt.retrieve import Retriever

    queries = list(gsm8k[1]) + [{"question": "Tom has 3 apples and buys 4 more. How many now?"}]
    for k, selection in ((3, "topk"), (2, "random"), (0, "topk")):
        gen = ICLGenerator(smollm_lm, k=k, max_prompt_tokens=400, max_new_tokens=32,
                           selection=selection).fit(index)
        examples = as_examples(queries, gen.input_fields_)
        packer = Packer(smollm_lm.tokenizer, gen.template_, max_prompt_tokens=400,
                        context_length=smollm_lm.context_length, answer_tokens=32).fit(list(index.examples))
        if k:
            found = Retriever(k=k, selection=selection).retrieve(index, examples, n_candidates=2 * k)
            by_hand = packer.pack_batch(examples, [r.positions for r in found], max_examples=k)
        else:
            by_hand = packer.pack_batch(examples, [[] for _ in examples])
        got = gen.prompts(queries)
        assert got == gen.prompt_step()(examples) == by_hand
        assert (k == 0) == all(not p.included for p in got)


def test_sampling_stops_at_stop_string_and_is_seeded(smollm_lm, zero_shot, gsm8k):
    prompt = zero_shot.prompts(gsm8k[1][0])[0].token_ids
    tok = smollm_lm.tokenizer
    samples = sample_continuations(smollm_lm, [prompt], 20, n=3, stop=[" "], seed=1)[0]
    for ids, truncated in samples:
        if not truncated and ids[-1] != tok.eos_token_id:
            assert " " in tok.decode(ids) and " " not in tok.decode(ids[:-1])  # stopped at the first one
    assert samples == sample_continuations(smollm_lm, [prompt], 20, n=3, stop=[" "], seed=1, batch_size=2)[0]
    # left-padded batches (prompts of different lengths) draw what each prompt draws alone
    two = [list(p.token_ids) for p in zero_shot.prompts(list(gsm8k[1]))]
    assert len(two[0]) != len(two[1])
    together = sample_continuations(smollm_lm, two, 6, seed=3)
    assert together == sample_continuations(smollm_lm, two, 6, seed=3, batch_size=1)
    capped = sample_continuations(smollm_lm, [prompt], 3, seed=2)[0][0]
    assert len(capped[0]) <= 3 and (capped[1] == (len(capped[0]) == 3 and capped[0][-1] != tok.eos_token_id))


def test_teacher_forced_tv_zero_for_itself_positive_otherwise(smollm_lm, icl, zero_shot, gsm8k):
    queries = list(gsm8k[1])
    p = [list(x.token_ids) for x in icl.prompts(queries)]
    q = [list(x.token_ids) for x in zero_shot.prompts(queries)]
    ys = [icl.target_ids(ex.output)[:10] for ex in queries]
    same = teacher_forced_tv(smollm_lm, p, smollm_lm, p, ys)
    assert all(v.shape == (10,) and np.all(v == 0.0) for v in same)
    diff = teacher_forced_tv(smollm_lm, p, smollm_lm, q, ys)
    assert all(np.all((v >= 0) & (v <= 1)) and v.mean() > 0.01 for v in diff)


def test_teacher_forced_tv_equals_hand_computation(smollm_lm, icl, zero_shot, gsm8k):
    ex = gsm8k[1][0]
    p, q = list(icl.prompts(ex)[0].token_ids), list(zero_shot.prompts(ex)[0].token_ids)
    y = icl.target_ids(ex.output)[:6]
    got = teacher_forced_tv(smollm_lm, [p], smollm_lm, [q], [y])[0]
    with torch.inference_mode():  # raw logits at every position, softmax in float64
        lp = smollm_lm.model(input_ids=torch.tensor([p + y])).logits[0].double().log_softmax(-1)
        lq = smollm_lm.model(input_ids=torch.tensor([q + y])).logits[0].double().log_softmax(-1)
    want = [0.5 * float((lp[len(p) - 1 + t].exp() - lq[len(q) - 1 + t].exp()).abs().sum()) for t in range(len(y))]
    np.testing.assert_allclose(got, want, atol=2e-5)
    # and the summed log-prob of y agrees with the raw logits
    manual = sum(float(lp[len(p) - 1 + t, tok]) for t, tok in enumerate(y))
    assert sequence_logprobs(smollm_lm, [p], [y])[0] == pytest.approx(manual, abs=1e-3)


def test_mc_tv_of_model_against_itself_is_zero(smollm_lm, zero_shot, gsm8k):
    prompt = list(zero_shot.prompts(gsm8k[1][0])[0].token_ids)
    ys = [ids for ids, _ in sample_continuations(smollm_lm, [prompt], 8, n=3, stop=zero_shot.stop_, seed=0)[0]]
    logp = sequence_logprobs(smollm_lm, [prompt] * 3, ys)
    logq = sequence_logprobs(smollm_lm, [prompt] * 3, ys)
    np.testing.assert_array_equal(logp - logq, 0.0)
    assert sequence_tv_mc(logp, logq).estimate == 0.0


def test_generation_gap_self_is_zero_and_report(zero_shot, gsm8k, tmp_path):
    one = gsm8k[1].subset([0])  # one query: the interval comes from its 2 samples (sequence_tv_mc)
    report = generation_gap(one, zero_shot, zero_shot, n_samples=2, names=("a", "b"), n_boot=200)
    assert isinstance(report, GenerationReport) and report.n == 1
    assert report.token_tv.estimate == 0.0 and report.sequence_tv.estimate == 0.0
    assert report.sequence_tv.low == 0.0 and report.sequence_tv.high > 0  # the interval still has width
    assert list(report.sequence_tv_by_length) == [1, 2, 4, 8]
    assert all(iv.estimate == 0.0 for iv in report.sequence_tv_by_length.values())
    assert set(report.exact_match) == {"a", "b"} and report.truncated_share in (0.0, 0.5, 1.0)
    assert report.token_tv_counts[0] == 1 and len(report.token_tv_curve) == len(zero_shot.target_ids(one[0].output))
    assert "sequence TV" in report.table() and report.outputs[0]["gold"] == one[0].output
    data = report.to_json(tmp_path / "r.json")
    assert (tmp_path / "r.json").exists() and data["token_tv"]["estimate"] == 0.0


# ------------------------------------------------------------------------------------------- bad input
def test_vocabulary_mismatch_is_a_clear_error(smollm_lm, smollm_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm_path)
    tok.add_tokens(["<ragicl_extra_token>"])
    other = TransformersLM.from_model(smollm_lm.model, tok, name="smollm-plus-one-token")
    with pytest.raises(ValueError, match="do not share a vocabulary.*smollm-plus-one-token"):
        check_same_vocabulary(smollm_lm, other)
    with pytest.raises(ValueError, match="vocabulary"):
        teacher_forced_tv(smollm_lm, [[1, 2]], other, [[1, 2]], [[3]])


def test_empty_test_set_and_other_misuse(icl, zero_shot, gsm8k):
    empty = Dataset((), ("question",), "generation", output_field="answer", name="empty")
    with pytest.raises(DataError, match="test set is empty"):
        generation_gap(empty, icl, zero_shot)
    with pytest.raises(ValueError, match="sample_from"):
        generation_gap(gsm8k[1], icl, zero_shot, sample_from="both")
    other_stop = ICLGenerator(icl.lm_, k=0, max_prompt_tokens=256, max_new_tokens=8, stop=["\n"]).fit(gsm8k[0])
    with pytest.raises(ValueError, match="stop differently"):
        generation_gap(gsm8k[1], icl, other_stop)
    with pytest.raises(ValueError, match="needs examples to retrieve"):
        ICLGenerator(icl.lm_, k=2).fit(gsm8k[0])
    sst = Dataset((), ("text",), "classification", labels=("a", "b"))
    with pytest.raises(DataError, match="generation dataset"):
        ICLGenerator(icl.lm_, k=0).fit(sst)
