"""ICL retention (base vs fine-tuned, 0 vs k shots, own vs other task) and the auxiliary few-shot loss."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ragicl import ExampleIndex, PromptTemplate, read_dataset
from ragicl.analysis.retention import RetentionReport, TaskRetention, icl_retention
from ragicl.evaluation.stats import Interval
from ragicl.index.embed import HashEmbedder
from ragicl.training.auxloss import anneal, train_with_fewshot_aux


def _iv(e: float) -> Interval:
    return Interval(e, e - 0.1, e + 0.1, 0.95, "percentile-bootstrap")


def test_task_retention_arithmetic_and_table():
    t = TaskRetention("sst2", 50, 4, _iv(0.5), _iv(0.8), _iv(0.85), _iv(0.9), _iv(-0.25))
    assert t.base_gain == pytest.approx(0.3) and t.ft_gain == pytest.approx(0.05)
    assert t.retention_ratio == pytest.approx(0.05 / 0.3)
    flat = TaskRetention("x", 1, 1, _iv(0.5), _iv(0.5), _iv(0.5), _iv(0.6), _iv(0.1))
    assert math.isnan(flat.retention_ratio) and flat.to_json()["retention_ratio"] is None
    rep = RetentionReport("ft", t, flat)
    assert len(rep.table().splitlines()) == 4 and rep.to_json()["tasks"][1]["task"] == "x"


@pytest.mark.parametrize("schedule, expected", [("linear", [2.0, 1.5, 1.0, 0.5]),
                                                ("cosine", [2.0, 1.7071, 1.0, 0.2929]),
                                                ("constant", [2.0] * 4)])
def test_anneal_schedules(schedule, expected):
    assert [round(anneal(t, 4, 2.0, schedule), 4) for t in range(4)] == expected


def test_anneal_rejects_bad_input():
    with pytest.raises(ValueError, match="schedule"):
        anneal(0, 4, 1.0, "exp")
    with pytest.raises(ValueError, match="step"):
        anneal(4, 4, 1.0)


@pytest.fixture(scope="module")
def tasks(sst2_train_path):
    from tests.conftest import dataset_path

    sst = read_dataset(sst2_train_path, name="sst2").subset(range(44))
    trec = read_dataset(dataset_path("trec"), name="trec").subset(range(44))
    out = {}
    for name, data in (("sst2", sst), ("trec", trec)):
        out[name] = (ExampleIndex.build(data.subset(range(40)), embedder=HashEmbedder(32), device="cpu"),
                     data.subset(range(40, 44)), PromptTemplate.for_dataset(name))
    return out


@pytest.mark.slow
def test_same_model_retains_everything(smollm_lm, tasks):
    """Base and 'fine-tuned' the same model: identical accuracies, retention exactly 0, on both tasks."""
    own, other = tasks["sst2"], tasks["trec"]
    rep = icl_retention(smollm_lm, smollm_lm, own=own[:2], other=other[:2], k=1,
                        templates=(own[2], other[2]), max_prompt_tokens=160, n_boot=50,
                        names=("sst2", "trec"))
    for t in rep.tasks():
        assert t.base_zero == t.ft_zero and t.base_k == t.ft_k
        assert t.retention.estimate == 0.0 and t.retention.low == 0.0 == t.retention.high
        assert set(t.correct) == {"base 0-shot", "base k-shot", "ft 0-shot", "ft k-shot"}
    assert rep.other is not None and rep.other.task == "trec" and rep.own.n == 4
    json.dumps(rep.to_json())


@pytest.mark.slow
def test_aux_loss_trains_and_lambda_zero_equals_plain_finetune(smollm_lm, tasks, tmp_path):
    from ragicl.prompt.pack import Packer
    from ragicl.training.finetune import finetune

    index, _, tpl = tasks["sst2"]
    train = index.dataset.subset(range(8))
    res = train_with_fewshot_aux(train, index, lm=smollm_lm, template=tpl, k=1, steps=2, batch_size=2,
                                 mode="value", max_prompt_tokens=160, out=tmp_path / "aux")
    assert res.lambdas == (1.0, 0.5)
    assert all(np.isfinite(res.fewshot_losses)) and all(np.isfinite(res.zero_shot_losses))
    for total, z, f, lam in zip(res.finetune.losses, res.zero_shot_losses, res.fewshot_losses, res.lambdas):
        assert total == pytest.approx(z + lam * f, rel=1e-4)
    meta = json.loads((tmp_path / "aux" / "ragicl_finetune.json").read_text())
    assert meta["aux_fewshot"]["k"] == 1 and meta["aux_fewshot"]["lambdas"] == [1.0, 0.5]
    # λ0 = 0 is plain zero-shot fine-tuning: same batches, same losses as finetune()
    zero = train_with_fewshot_aux(train, index, lm=smollm_lm, template=tpl, k=1, lambda0=0.0, steps=2,
                                  batch_size=2, mode="value", max_prompt_tokens=160)
    packer = Packer(smollm_lm.tokenizer, tpl, max_prompt_tokens=160,
                    context_length=smollm_lm.context_length).fit([], labels=train.labels)
    prompts = [list(packer.pack(ex, []).token_ids) for ex in train.examples]
    plain = finetune(smollm_lm, prompts, train.label_array().tolist(),
                     [list(packer.answer_ids(lab)) for lab in train.labels], steps=2, batch_size=2,
                     mode="value")
    np.testing.assert_allclose(zero.finetune.losses, plain.losses, rtol=1e-4)
    assert all(math.isnan(v) for v in zero.fewshot_losses)
    # the gold objective reaches both terms: λ0 = 0 equals finetune(objective="gold"), and it differs
    # from the label cross-entropy
    gold_zero = train_with_fewshot_aux(train, index, lm=smollm_lm, template=tpl, k=1, lambda0=0.0, steps=2,
                                       batch_size=2, mode="value", max_prompt_tokens=160, objective="gold")
    gold_plain = finetune(smollm_lm, prompts, train.label_array().tolist(),
                          [list(packer.answer_ids(lab)) for lab in train.labels], steps=2, batch_size=2,
                          mode="value", objective="gold")
    np.testing.assert_allclose(gold_zero.finetune.losses, gold_plain.losses, rtol=1e-4)
    assert abs(gold_zero.finetune.losses[0] - zero.finetune.losses[0]) > 1e-3
    gold = train_with_fewshot_aux(train, index, lm=smollm_lm, template=tpl, k=1, steps=1, batch_size=2,
                                  mode="value", max_prompt_tokens=160, objective="gold", out=tmp_path / "g")
    assert gold.finetune.losses[0] == pytest.approx(gold.zero_shot_losses[0] + gold.fewshot_losses[0], rel=1e-4)
    assert json.loads((tmp_path / "g" / "ragicl_finetune.json").read_text())["objective"] == "gold"


def test_aux_rejects_bad_arguments(tasks):
    index, _, _ = tasks["sst2"]
    with pytest.raises(ValueError, match="k must"):
        train_with_fewshot_aux(index.dataset, index, lm="unused", k=0)
    with pytest.raises(ValueError, match="schedule"):
        train_with_fewshot_aux(index.dataset, index, lm="unused", schedule="exp")
    with pytest.raises(ValueError, match="objective must be one of"):
        train_with_fewshot_aux(index.dataset, index, lm="unused", objective="hinge")
