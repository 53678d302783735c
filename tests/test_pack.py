"""Packer: exact token accounting against the real SmolLM2 tokenizer, greedy packing, budgets, fallbacks."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import dataset_path

from ragicl._exceptions import BudgetError, DataError, NotFittedError
from ragicl.prompt.pack import Packer
from ragicl.prompt.template import PromptTemplate
from ragicl.types import Example


def _read(path: Path, fields: tuple[str, ...], n: int) -> list[Example]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= n:
                break
            row = json.loads(line)
            rows.append(Example(str(i), {f: row[f] for f in fields}, label=row["label"]))
    return rows


@pytest.fixture(scope="module")
def sst2(sst2_train_path) -> list[Example]:
    return _read(sst2_train_path, ("text",), 400)


@pytest.fixture(scope="module")
def rte() -> list[Example]:
    return _read(dataset_path("rte"), ("premise", "hypothesis"), 300)


@pytest.fixture(scope="module")
def bos_tokenizer(smollm_path):
    """The SmolLM2 tokenizer made to prepend a BOS token, like gemma/llama tokenizers do."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm_path, add_bos_token=True)
    assert tok("hi").input_ids[0] == tok.bos_token_id
    return tok


@pytest.fixture(scope="module")
def sst2_packer(smollm_tokenizer, sst2) -> Packer:
    return Packer(smollm_tokenizer, PromptTemplate(), max_prompt_tokens=512).fit(sst2)


def assert_exact(tok, prompt) -> None:
    assert list(prompt.token_ids) == tok(prompt.text).input_ids
    assert prompt.n_tokens <= prompt.budget


def random_packs(packer: Packer, examples, n: int, seed: int, max_k: int = 24):
    rng = random.Random(seed)
    for _ in range(n):
        query = examples[rng.randrange(len(examples))]
        cands = rng.sample(range(len(examples)), rng.randint(0, max_k))
        yield query, cands, packer.pack(query, cands)


# ------------------------------------------------------------------------------------------ exactness
def test_fast_path_chosen_and_exact_across_budgets(smollm_tokenizer, sst2):
    tok = smollm_tokenizer
    for budget in (64, 128, 256, 512, 1024, 2048):
        packer = Packer(tok, PromptTemplate(), max_prompt_tokens=budget).fit(sst2)
        assert packer.fast_ and packer.budget_ == budget
        for query, _, prompt in random_packs(packer, sst2, 40, seed=budget):
            assert_exact(tok, prompt)
            assert prompt.budget == budget
            assert prompt.text.endswith(packer.template.render_query(query))


def test_exact_with_instruction_and_multi_field(smollm_tokenizer, rte):
    tok = smollm_tokenizer
    for instruction in ("", "Does the premise entail the hypothesis?"):
        tpl = PromptTemplate.for_dataset("rte", instruction=instruction)
        packer = Packer(tok, tpl, max_prompt_tokens=900).fit(rte)
        assert packer.fast_
        for _, cands, prompt in random_packs(packer, rte, 60, seed=1):
            assert_exact(tok, prompt)
            assert prompt.text.startswith(instruction)
            if not cands:
                assert "\n\n" not in prompt.text or instruction


def test_chat_mode_exact(smollm_tokenizer, sst2, rte):
    tok = smollm_tokenizer
    for data, tpl in ((sst2, PromptTemplate(chat=True, instruction="Classify the review.")),
                      (rte, PromptTemplate.for_dataset("rte", chat=True))):
        packer = Packer(tok, tpl, max_prompt_tokens=700).fit(data)
        assert packer.fast_ and packer.answers_exact_
        for _, _, prompt in random_packs(packer, data, 50, seed=2):
            assert_exact(tok, prompt)
            assert prompt.text.startswith("<|im_start|>system\n")
            assert prompt.text.endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert packer.answer_ids("not_entailment" if data is rte else "positive")[0] != tok(" ").input_ids[0]


def test_bos_tokenizer_exact_and_single_bos(bos_tokenizer, sst2):
    tok = bos_tokenizer
    for tpl in (PromptTemplate(), PromptTemplate(instruction="Sentiment?"), PromptTemplate(chat=True)):
        packer = Packer(tok, tpl, max_prompt_tokens=400).fit(sst2)
        assert packer.fast_
        for _, _, prompt in random_packs(packer, sst2, 40, seed=3):
            assert_exact(tok, prompt)
            assert prompt.token_ids[0] == tok.bos_token_id
            assert prompt.token_ids[1] != tok.bos_token_id  # the chat prefix's <bos> is not doubled
            assert prompt.n_tokens == len(tok(prompt.text).input_ids)


def test_answer_continuations_tokenize_after_prompt(smollm_tokenizer, sst2, sst2_packer, rte):
    tok = smollm_tokenizer
    packer_rte = Packer(tok, PromptTemplate.for_dataset("rte"), max_prompt_tokens=600).fit(rte)
    for packer, data in ((sst2_packer, sst2), (packer_rte, rte)):
        assert packer.answers_exact_
        for _, _, prompt in random_packs(packer, data, 10, seed=4):
            for label in packer.labels_:
                joined = tok(prompt.text + packer.template.answer(label)).input_ids
                assert joined == list(prompt.token_ids) + packer.answer_ids(label)
    assert packer_rte.labels_ == ("entailment", "not_entailment")
    assert packer_rte.answer_ids("not_entailment") == tok(" not entailment").input_ids


# ---------------------------------------------------------------------------------------- greedy rules
def _lengths_examples() -> list[Example]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    out = [Example(f"s{i}", {"text": " ".join(words[: 2 + i % 5])}, label="positive") for i in range(8)]
    out.append(Example("LONG", {"text": " ".join(words * 40)}, label="negative"))
    return out


def test_skip_not_stop_and_order(smollm_tokenizer):
    data = _lengths_examples()
    packer = Packer(smollm_tokenizer, PromptTemplate(), max_prompt_tokens=120).fit(data)
    cands = [0, 8, 1, 2, 3]  # the long example is second most relevant
    prompt = packer.pack({"text": "beta gamma"}, cands)
    assert "LONG" in prompt.excluded and "LONG" not in prompt.included
    assert prompt.included == ("s3", "s2", "s1", "s0")  # later, shorter ones still go in
    assert prompt.excluded == ("LONG",)
    # most relevant sits right before the query; prompt order is least relevant first
    positions = [prompt.text.index(data[i].inputs["text"] + "\nSentiment") for i in (3, 2, 1, 0)]
    assert positions == sorted(positions)
    assert prompt.text.endswith(data[0].inputs["text"] + "\nSentiment: positive\n\nReview: beta gamma\n"
                                "Sentiment:")
    assert_exact(smollm_tokenizer, prompt)


def test_over_long_example_never_packed(smollm_tokenizer, sst2):
    data = sst2[:100] + _lengths_examples()[-1:]
    packer = Packer(smollm_tokenizer, PromptTemplate(), max_prompt_tokens=300).fit(data)
    rng = random.Random(5)
    for _ in range(100):
        cands = [len(data) - 1] + rng.sample(range(len(data) - 1), 8)
        prompt = packer.pack(data[rng.randrange(100)], cands)
        assert "LONG" not in prompt.included and "LONG" in prompt.excluded
        assert set(prompt.included) | set(prompt.excluded) == {data[i].id for i in cands}
        assert len(prompt.included) >= 1


def test_included_excluded_fill_budget(sst2_packer, sst2, smollm_tokenizer):
    for _, cands, prompt in random_packs(sst2_packer, sst2, 30, seed=6, max_k=40):
        expected_order = [sst2[i].id for i in cands]
        assert list(prompt.included) == [i for i in reversed(expected_order) if i in prompt.included]
        assert list(prompt.excluded) == [i for i in expected_order if i not in prompt.included]
        # greedy: every excluded example is too long for the room left in the final prompt
        if prompt.excluded:
            smallest = min(sst2_packer._len_sep[int(i)] for i in prompt.excluded)
            assert prompt.n_tokens + smallest > prompt.budget


def test_no_candidates_is_the_bare_query(sst2_packer, smollm_tokenizer):
    prompt = sst2_packer.pack({"text": "a fine film"}, [])
    assert prompt.text == "Review: a fine film\nSentiment:"
    assert prompt.included == () and prompt.excluded == ()
    assert_exact(smollm_tokenizer, prompt)
    assert sst2_packer.pack("a fine film", []).text == prompt.text  # a str query for a one-field template


def test_candidate_forms(sst2_packer, sst2):
    a = sst2_packer.pack(sst2[0], [5, 6, 7])
    b = sst2_packer.pack(sst2[0], np.array([5, -1, 6, 6, 7, -1], dtype=np.int64))  # padding and repeats
    assert a == b
    with pytest.raises(IndexError, match="400 fitted examples"):
        sst2_packer.pack(sst2[0], [1, 10_000])


def test_pack_batch_matches_pack(sst2_packer, sst2):
    rng = random.Random(7)
    queries = [sst2[rng.randrange(400)] for _ in range(20)]
    cands = [rng.sample(range(400), 12) for _ in range(20)]
    assert sst2_packer.pack_batch(queries, cands) == [sst2_packer.pack(q, c) for q, c in zip(queries, cands)]
    with pytest.raises(ValueError, match="2 queries but 1 candidate"):
        sst2_packer.pack_batch(queries[:2], cands[:1])


# ------------------------------------------------------------------------------------ budget and errors
def test_query_too_long_raises(smollm_tokenizer, sst2):
    packer = Packer(smollm_tokenizer, PromptTemplate(), max_prompt_tokens=64).fit(sst2)
    with pytest.raises(BudgetError, match=r"needs \d+ prompt tokens.*budget is 64.*max_prompt_tokens") as err:
        packer.pack({"text": "word " * 200}, [0, 1])
    assert err.value.budget == 64 and err.value.needed > 200  # the smallest budget that would fit it
    roomy = Packer(smollm_tokenizer, PromptTemplate(), max_prompt_tokens=err.value.needed).fit(sst2)
    assert roomy.pack({"text": "word " * 200}, []).n_tokens == err.value.needed


def test_budget_from_context_and_answer_tokens(smollm_tokenizer, rte):
    tok = smollm_tokenizer
    packer = Packer(tok, PromptTemplate.for_dataset("rte"), context_length=300).fit(rte)
    assert packer.answer_tokens_ == len(tok(" not entailment").input_ids)
    assert packer.budget_ == 300 - packer.answer_tokens_
    packer = Packer(tok, PromptTemplate.for_dataset("rte"), max_prompt_tokens=200, context_length=300,
                    answer_tokens=5).fit(rte)
    assert packer.budget_ == 200
    with pytest.raises(ValueError, match="no token budget"):
        Packer(tok, PromptTemplate.for_dataset("rte")).fit(rte[:3])  # SmolLM2 reports no real model_max_length
    gen = [Example("0", {"question": "2+2?"}, output="4")]
    with pytest.raises(ValueError, match="answer_tokens=max_new_tokens"):
        Packer(tok, PromptTemplate.for_dataset("gsm8k"), context_length=256).fit(gen)
    assert Packer(tok, PromptTemplate.for_dataset("gsm8k"), context_length=256,
                  answer_tokens=56).fit(gen).budget_ == 200
    with pytest.raises(ValueError, match="max_prompt_tokens must be a positive integer"):
        Packer(tok, PromptTemplate.for_dataset("rte"), max_prompt_tokens=0).fit(rte[:3])


def test_not_fitted_and_template_errors(smollm_tokenizer, rte):
    packer = Packer(smollm_tokenizer, PromptTemplate(), max_prompt_tokens=100)
    with pytest.raises(NotFittedError, match="fit"):
        packer.pack({"text": "x"}, [])
    with pytest.raises(DataError, match=r"\{text\}.*'premise'"):
        packer.fit(rte)  # the default template uses {text}; rte has premise/hypothesis


# ---------------------------------------------------------------------------------------- fallback path
def test_forced_retokenize_is_exact(smollm_tokenizer, sst2, sst2_packer):
    tok = smollm_tokenizer
    packer = Packer(tok, PromptTemplate(), max_prompt_tokens=512, mode="retokenize").fit(sst2)
    assert not packer.fast_
    for query, cands, prompt in random_packs(packer, sst2, 25, seed=8):
        assert_exact(tok, prompt)
        assert prompt == sst2_packer.pack(query, cands)  # same result as the fast path where both are exact


def test_natural_fallback_when_blocks_merge(smollm_tokenizer, sst2, caplog):
    tok = smollm_tokenizer
    tpl = PromptTemplate("{text} {label}", separator="")  # "...positive" + "a stirring" merge: "positivea"
    with caplog.at_level(logging.WARNING, logger="ragicl.prompt.pack"):
        packer = Packer(tok, tpl, max_prompt_tokens=300).fit(sst2[:200])
    assert not packer.fast_
    assert "re-tokenizing" in caplog.text
    for _, cands, prompt in random_packs(packer, sst2[:200], 30, seed=9):
        assert_exact(tok, prompt)
        assert set(prompt.included) | set(prompt.excluded) == {str(i) for i in cands}
    with pytest.raises(BudgetError):
        packer.pack({"text": "word " * 400}, [1, 2])


class CharTokenizer:
    """A tiny fake: one id per character, BOS prepended, a real model_max_length."""

    model_max_length = 200
    bos_token_id = 1
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        def enc(t: str) -> list[int]:
            return ([self.bos_token_id] if add_special_tokens else []) + [ord(c) + 10 for c in t]

        return {"input_ids": [enc(t) for t in text] if isinstance(text, list) else enc(text)}

    def decode(self, ids):
        return "".join(chr(i - 10) for i in ids if i >= 10)


def test_fake_tokenizer_with_bos_and_model_max_length():
    data = [Example(str(i), {"text": "x" * (5 + 7 * i)}, label=lab) for i, lab in enumerate(["yes", "no"] * 5)]
    tok = CharTokenizer()
    packer = Packer(tok, PromptTemplate("Q: {text}\nA: {label}")).fit(data)
    assert packer.fast_ and packer.answer_tokens_ == len(" yes")
    assert packer.budget_ == 200 - 4
    for _, _, prompt in random_packs(packer, data, 30, seed=10, max_k=10):
        assert list(prompt.token_ids) == tok(prompt.text)["input_ids"]
        assert prompt.token_ids[0] == 1 and prompt.n_tokens <= 196


def test_max_examples_caps_demonstrations_and_records_the_rest(sst2, smollm_tokenizer):
    """More candidates than the cap: the most relevant ones that fit go in, the rest are excluded."""
    from ragicl.prompt.pack import Packer
    from ragicl.prompt.template import PromptTemplate

    examples = sst2[:30]
    packer = Packer(smollm_tokenizer, PromptTemplate(example="Review: {text}\nSentiment: {label}"),
                    max_prompt_tokens=4096, context_length=8192).fit(examples, labels=["negative", "positive"])
    prompt = packer.pack(examples[0], list(range(1, 21)), max_examples=5)
    assert prompt.included == tuple(examples[p].id for p in (5, 4, 3, 2, 1))
    assert prompt.excluded == tuple(examples[p].id for p in range(6, 21))
    assert list(prompt.token_ids) == smollm_tokenizer(prompt.text).input_ids


# ------------------------------------------------------------------------------------ the shared step
def test_prompt_step_pack_each_skips_only_queries_over_budget(smollm_tokenizer, sst2):
    """PromptStep.pack_each (the zero-shot training prompts of the reference and the auxiliary loss) gives
    exactly Packer.pack's prompt per query, and None, not an error, for a query that alone overflows."""
    from types import SimpleNamespace

    from ragicl.prompt.step import PromptStep, make_packer

    lm = SimpleNamespace(tokenizer=smollm_tokenizer, context_length=None)
    packer = make_packer(lm, PromptTemplate(), max_prompt_tokens=40, labels=["negative", "positive"])
    lengths = [len(smollm_tokenizer(ex.inputs["text"]).input_ids) for ex in sst2[:60]]
    long_ones = [i for i, n in enumerate(lengths) if n > 40]
    assert long_ones and len(long_ones) < 60  # the sample holds both kinds
    got = PromptStep(packer).pack_each(sst2[:60])
    with pytest.raises(BudgetError):
        PromptStep(packer)(sst2[:60])
    for i, (ex, prompt) in enumerate(zip(sst2[:60], got)):
        try:
            expected = packer.pack(ex, [])
        except BudgetError:
            expected = None
        assert prompt == expected
        if i in long_ones:  # its text alone is over the budget
            assert prompt is None
    fits = [ex for ex, p in zip(sst2[:60], got) if p is not None]
    assert PromptStep(packer).pack_each(fits) == PromptStep(packer)(fits) == [p for p in got if p is not None]
