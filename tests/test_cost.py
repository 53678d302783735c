"""Break-even arithmetic of fine-tuning vs ICL, and a CostReport built from real measured results."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import numpy as np
import pytest

from ragicl.analysis.cost import CostReport, break_even


def test_break_even_formula():
    assert break_even(600.0, 0.5, 0.1) == pytest.approx(1500.0)
    # total costs are equal at n*: ft + n*·c_ft == n*·c_icl
    n = break_even(123.0, 0.37, 0.05)
    assert 123.0 + n * 0.05 == pytest.approx(n * 0.37)


def test_break_even_never_when_icl_is_cheaper_or_equal():
    assert break_even(10.0, 0.1, 0.2) == math.inf
    assert break_even(10.0, 0.1, 0.1) == math.inf


def test_setup_cost_of_icl_and_clipping():
    assert break_even(100.0, 0.3, 0.1, icl_setup_seconds=40.0) == pytest.approx(300.0)
    assert break_even(10.0, 0.3, 0.1, icl_setup_seconds=40.0) == 0.0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "3", True])
def test_bad_inputs_raise(bad):
    with pytest.raises(ValueError, match="seconds"):
        break_even(bad, 0.1, 0.05)


def test_report_from_seconds_json_and_str():
    r = CostReport.from_seconds(120.0, 0.4, 0.1, icl_system="retrieved-8", ft_system="ft-full")
    assert r.break_even_queries == pytest.approx(400.0)
    assert r.icl_slowdown == pytest.approx(4.0)
    assert "400 queries" in str(r)
    with pytest.raises(FrozenInstanceError):
        r.finetune_seconds = 1.0  # type: ignore[misc]
    never = CostReport.from_seconds(5.0, 0.1, 0.2)
    assert never.to_json()["break_even_queries"] == "inf"
    assert "never" in str(never)


@pytest.mark.slow
def test_from_real_compare_and_finetune(smollm_lm, sst2_train_path):
    """Real timings: a 1-step fine-tune of SmolLM2 and compare() of a 2-shot and a 0-shot system."""
    from ragicl import ExampleIndex, ICLClassifier, PromptTemplate, compare, read_dataset
    from ragicl.index.embed import HashEmbedder
    from ragicl.training.finetune import finetune

    data = read_dataset(sst2_train_path).subset(range(36))
    train, test = data.subset(range(32)), data.subset(range(32, 36))
    tpl = PromptTemplate.for_dataset("sst2")
    index = ExampleIndex.build(train, embedder=HashEmbedder(32), device="cpu")
    icl = ICLClassifier(smollm_lm, tpl, k=2, max_prompt_tokens=256).fit(index)
    zero = ICLClassifier(smollm_lm, tpl, k=0, max_prompt_tokens=256).fit(index)
    report = compare(test, {"retrieved-2": icl, "zero": zero}, reference="zero", n_boot=50)
    prompts = [list(p.token_ids) for p in zero.prompts(list(train.examples[:4]))]
    ft = finetune(smollm_lm, prompts, [0, 1, 0, 1], zero.label_ids_, steps=1, batch_size=2, mode="value")
    cost = CostReport.from_results(ft, report.system("retrieved-2"), report.system("zero"))
    assert cost.finetune_seconds == ft.seconds > 0
    assert cost.icl_seconds_per_query == report.system("retrieved-2").seconds_per_query > 0
    expected = break_even(ft.seconds, cost.icl_seconds_per_query, cost.ft_seconds_per_query)
    assert cost.break_even_queries == expected
    assert np.isfinite(cost.icl_slowdown)
