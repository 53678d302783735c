"""Batches sized by tokens (issue 15 §3): the grouping rule, the budget chosen per device, and that the real
SmolLM2 scores the same whatever the batching while running as few passes as the budget allows."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from ragicl.lm.batching import (
    CPU_BATCH_TOKENS,
    auto_batch_tokens,
    check_batch_tokens,
    per_token_bytes,
    token_batches,
)
from ragicl.lm.hf import TransformersLM


def _check_partition(batches, lengths, budget, max_rows=None):
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every prompt exactly once
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * width <= budget
        assert max_rows is None or len(b) <= max_rows


@pytest.mark.parametrize("seed", range(5))
def test_token_batches_respect_the_budget_and_fill_it(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 400, size=300).tolist()
    budget = 1000
    batches = token_batches(lengths, budget)
    _check_partition(batches, lengths, budget)
    for prev, _ in itertools.pairwise(batches):  # greedy: the next prompt did not fit the previous batch
        width = max(lengths[i] for i in prev)
        assert (len(prev) + 1) * width > budget
    _check_partition(token_batches(lengths, budget, max_rows=3), lengths, budget, max_rows=3)


def test_token_batches_edge_cases():
    assert token_batches([], 100) == []
    assert token_batches([500, 10], 100) == [[0], [1]]  # longer than the budget: alone
    assert token_batches([3, 3, 3, 3, 3], None, 2) == [[0, 1], [2, 3], [4]]  # by count, ties in order
    assert token_batches([10] * 25, 100) == [list(range(10)), list(range(10, 20)), list(range(20, 25))]


@pytest.mark.parametrize("bad", [0, -5, True, 2.5, "big"])
def test_bad_batch_tokens_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="batch_tokens must be 'auto', None"):
        check_batch_tokens(bad)
    with pytest.raises(ValueError, match="batch_tokens"):
        _ = TransformersLM("SmolLM2-135M-Instruct", batch_tokens=bad).token_budget


def test_budget_per_device_and_footprint():
    cpu_model = torch.nn.Linear(2, 2)
    assert auto_batch_tokens(cpu_model) == CPU_BATCH_TOKENS
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      intermediate_size=1536)  # SmolLM2-135M's shape
    bf16, fp32 = per_token_bytes(cfg, 2), per_token_bytes(cfg, 4)
    kv = 2 * 30 * 3 * 64
    assert bf16 > kv * 2 and fp32 - bf16 == kv * 2 + (4 * 576 + 3 * 1536) * 2  # dtype scales the tensors


@pytest.mark.slow
def test_scores_do_not_depend_on_batching_and_passes_follow_the_budget(smollm_lm, sst2_train_path):
    """Zero-shot and few-shot prompts of mixed lengths, single- and multi-token labels: one prompt per batch,
    batches by count, and token budgets from tiny to everything-at-once give the same scores (float32
    rounding of the padded matrix products only), and the number of prompt passes is what the budget says."""
    tok = smollm_lm.tokenizer
    with open(sst2_train_path) as f:
        rows = [json.loads(next(f)) for _ in range(12)]
    prompts = []
    for i in range(12):
        demos = "".join(f"Review: {r['text']}\nSentiment: {r['label']}\n\n" for r in rows[:i % 4])
        prompts.append(tok(f"{demos}Review: {rows[i]['text']}\nSentiment:")["input_ids"])
    single = [tok(w, add_special_tokens=False)["input_ids"] for w in (" positive", " negative")]
    multi = [tok(w, add_special_tokens=False)["input_ids"] for w in (" not entailment", " positive", " so so")]
    model, lengths = smollm_lm.model, [len(p) for p in prompts]

    def run(conts, **kw):
        lm = TransformersLM.from_model(model, tok, show_progress=False, share_prefix=False, **kw)
        calls = []
        handle = model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(
            kwargs["input_ids"].shape), with_kwargs=True)
        try:
            return lm.score_continuations(prompts, conts), calls
        finally:
            handle.remove()

    for conts in (single, multi):
        ref, calls = run(conts, batch_size=1, batch_tokens=None)
        assert len([c for c in calls if c[1] > 3]) == len(prompts)  # one prompt pass per prompt
        # float32 rounding of a sum of |scores| over ~300-token matmuls; a wrong row is off by > 0.1
        tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
        for kw in ({"batch_size": 5, "batch_tokens": None}, {"batch_tokens": 1},
                   {"batch_tokens": 2 * max(lengths)}, {"batch_tokens": 10**7}, {}):
            got, calls = run(conts, **kw)
            np.testing.assert_allclose(got, ref, rtol=0, atol=tol, err_msg=str(kw))
            extra = max(len(c) for c in conts) - 1
            budget = kw.get("batch_tokens", CPU_BATCH_TOKENS)
            expected = token_batches([n + extra for n in lengths], budget, kw.get("batch_size"))
            prompt_passes = [c for c in calls if c[1] > extra]  # continuation passes feed `extra` tokens
            assert [c[0] for c in prompt_passes] == [len(b) for b in expected], kw
    _, calls = run(single, batch_tokens=10**7)
    assert len(calls) == 1  # every prompt in one pass
