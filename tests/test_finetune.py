"""Fine-tuning the real SmolLM2 on a handful of SST-2 examples: the loss goes down, each mode trains only
its parameters, LoRA checkpoints reload as plain models (through the versioned fine-tune folder), saves are
atomic (the folder under kills and corruption: tests/test_finetune_reliability.py)."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest
import torch

from ragicl.training.finetune import (
    FinetuneResult,
    _label_logits,
    finetune,
    finetune_lm,
    label_loss,
    save_model,
    trainable_names,
)

pytestmark = pytest.mark.slow



def _changed(before, after) -> set[str]:
    ref = dict(before.named_parameters())
    return {name for name, p in after.named_parameters() if not torch.equal(p, ref[name])}


def test_training_reduces_the_loss_and_leaves_the_base_alone(smollm_lm, finetune_data):
    prompts, targets, label_ids = finetune_data
    before = label_loss(smollm_lm, prompts, targets, label_ids)
    res = finetune(smollm_lm, prompts, targets, label_ids, mode="attention", steps=3, batch_size=8,
                   lr=3e-5, warmup=0.0, show_progress=False)
    assert res.mode == "attention" and res.steps == 3 and len(res.losses) == 3 and res.path is None
    assert res.losses[0] == pytest.approx(before, abs=1e-3)  # step 1 sees the whole set before any update
    after = label_loss(res.lm, prompts, targets, label_ids)
    assert after < 0.8 * before, (before, after, res.losses)
    assert label_loss(smollm_lm, prompts, targets, label_ids) == pytest.approx(before, abs=1e-6)


@pytest.mark.parametrize("mode", ["full", "attention", "value", "lora"])
def test_each_mode_trains_only_its_parameters(smollm_lm, finetune_data, mode):
    prompts, targets, label_ids = finetune_data
    res = finetune(smollm_lm, prompts[:2], targets[:2], label_ids, mode=mode, steps=1, batch_size=2,
                   lr=1e-3 if mode == "lora" else 1e-4, show_progress=False)
    base, trained = smollm_lm.model, res.lm.model
    expected = set(trainable_names(base, mode))
    suffixes = {"full": None, "attention": ("q_proj", "k_proj", "v_proj", "o_proj"), "value": ("v_proj",),
                "lora": ("q_proj", "v_proj")}[mode]
    if suffixes is None:
        assert expected == {n for n, _ in base.named_parameters()}
    else:
        assert expected and all(n.endswith(tuple(f"{s}.weight" for s in suffixes)) for n in expected)
    assert {n for n, _ in trained.named_parameters()} == {n for n, _ in base.named_parameters()}  # merged
    assert _changed(base, trained) == expected  # everything else is bit-identical
    assert not any(p.requires_grad for p in trained.parameters())


def test_lora_checkpoint_reloads_as_a_plain_model(smollm_lm, finetune_data, tmp_path):
    """The real model through the fine-tune folder: saved as a version, loaded back by ragicl (following the
    record) and by plain transformers (on the version folder), a second run saved beside the first."""
    from transformers import AutoModelForCausalLM

    from ragicl.lm.hf import TransformersLM
    from ragicl.models import finetuned_model_path
    from ragicl.training.checkpoint import read_meta

    prompts, targets, label_ids = finetune_data
    out = tmp_path / "ft-lora"
    res = finetune(smollm_lm, prompts[:2], targets[:2], label_ids, mode="lora", steps=1, batch_size=2,
                   lr=1e-3, out=out, show_progress=False)
    assert res.path == out
    version = finetuned_model_path(out)
    assert version.parent == out and version.name.startswith("model-")
    assert not (version / "adapter_config.json").exists() and (version / "config.json").exists()
    meta = read_meta(out)
    assert meta["mode"] == "lora" and meta["steps"] == 1 and meta["final_loss"] == res.losses[-1]
    assert meta == json.loads((version / "ragicl_finetune.json").read_text())  # the version carries its record
    assert [p.name for p in tmp_path.iterdir()] == ["ft-lora"]  # no temp folders left behind
    assert {p.name for p in out.iterdir()} == {".lock", "ragicl_finetune.json", version.name}
    reloaded = AutoModelForCausalLM.from_pretrained(version).eval()
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    ids = torch.tensor([prompts[0]])
    via_ragicl = TransformersLM(str(out), device="cpu", dtype="float32").load()
    with torch.inference_mode():
        np.testing.assert_allclose(reloaded(input_ids=ids).logits.numpy(),
                                   res.lm.model(input_ids=ids).logits.numpy(), atol=1e-4)
        np.testing.assert_array_equal(via_ragicl.model(input_ids=ids).logits.numpy(),
                                      reloaded(input_ids=ids).logits.numpy())
        base_logits = smollm_lm.model(input_ids=ids).logits
    assert not torch.equal(base_logits, reloaded(input_ids=ids).logits)
    again = finetune(smollm_lm, prompts[:2], targets[:2], label_ids, mode="lora", steps=1, batch_size=2,
                     lr=2e-3, out=out, show_progress=False)
    assert finetuned_model_path(again.path) != version and version.is_dir()  # the previous version is kept
    assert read_meta(out)["lr"] == 2e-3


class _Saveable:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def save_pretrained(self, path) -> None:
        Path(path, "config.json").write_text("{}")
        if self.fail:
            raise OSError("disk full")


def test_save_is_atomic(tmp_path):
    from ragicl.training.checkpoint import read_meta

    out = tmp_path / "ckpt"
    save_model(_Saveable(), _Saveable(), out, {"run": 1})
    assert read_meta(out) == {"run": 1}
    entries = sorted(p.name for p in out.iterdir())
    with pytest.raises(OSError, match="disk full"):
        save_model(_Saveable(fail=True), _Saveable(), out, {"run": 2})
    assert read_meta(out) == {"run": 1}  # previous one intact
    assert sorted(p.name for p in out.iterdir()) == entries  # and the failed save left nothing
    save_model(_Saveable(), _Saveable(), out, {"run": 3})
    assert read_meta(out) == {"run": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_training_objective_matches_evaluation_scoring(smollm_lm, finetune_data):
    prompts, _, label_ids = finetune_data
    tok = smollm_lm.tokenizer
    multi = [tok(w, add_special_tokens=False)["input_ids"] for w in (" not entailment", " entailment")]
    with torch.inference_mode():
        for labels in (label_ids, multi):
            logits = _label_logits(smollm_lm.model, prompts[:3], labels, smollm_lm._pad_id).numpy()
            scores = smollm_lm.score_continuations(prompts[:3], labels)
            if labels is multi:  # summed log-probs exactly
                np.testing.assert_allclose(logits, scores, atol=2e-4)
            soft = torch.softmax(torch.from_numpy(logits), -1).numpy()
            np.testing.assert_allclose(soft, torch.softmax(torch.from_numpy(scores), -1).numpy(), atol=1e-4)


def test_finetune_lm_trains_on_output_tokens_only(smollm_lm, finetune_data):
    prompts, targets, label_ids = finetune_data
    outputs = [label_ids[t] + [smollm_lm.tokenizer.eos_token_id] for t in targets[:2]]
    nll = -sum(float(smollm_lm.score_continuations([p], [o])[0, 0]) for p, o in zip(prompts[:2], outputs))
    res = finetune_lm(smollm_lm, prompts[:2], outputs, mode="value", steps=2, batch_size=2, lr=1e-4,
                      warmup=0.0, show_progress=False)
    assert res.losses[0] == pytest.approx(nll / sum(len(o) for o in outputs), abs=1e-4)
    assert res.losses[1] < res.losses[0]


def test_gold_objective_trains_the_gold_label_likelihood(smollm_lm, finetune_data):
    prompts, targets, _ = finetune_data
    # a multi-token label set, so the gold NLL differs from the first-token logit
    tok = smollm_lm.tokenizer
    labels = [tok(w, add_special_tokens=False)["input_ids"] for w in (" very negative", " very positive")]
    assert all(len(ids) > 1 for ids in labels)
    gold_nll = [-float(smollm_lm.score_continuations([p], [labels[t]])[0, 0]) for p, t in zip(prompts, targets)]
    before_ce = label_loss(smollm_lm, prompts, targets, labels)
    res = finetune(smollm_lm, prompts, targets, labels, mode="value", steps=3, batch_size=8, lr=1e-4,
                   warmup=0.0, objective="gold", show_progress=False)
    assert res.losses[0] == pytest.approx(float(np.mean(gold_nll)), abs=1e-3)  # summed per example, mean
    assert res.losses[-1] < 0.8 * res.losses[0], res.losses
    after_gold = [-float(res.lm.score_continuations([p], [labels[t]])[0, 0]) for p, t in zip(prompts, targets)]
    assert np.mean(after_gold) < np.mean(gold_nll)
    # the default objective is unchanged: its first loss is the label cross-entropy, not the gold NLL
    ce = finetune(smollm_lm, prompts, targets, labels, mode="value", steps=1, batch_size=8, lr=1e-4,
                  warmup=0.0, show_progress=False)
    assert ce.losses[0] == pytest.approx(before_ce, abs=1e-3)
    assert abs(ce.losses[0] - res.losses[0]) > 0.1


def test_seeded_runs_are_reproducible(smollm_lm, finetune_data):
    prompts, targets, label_ids = finetune_data
    runs = [finetune(smollm_lm, prompts, targets, label_ids, mode="value", steps=2, batch_size=3, seed=7,
                     show_progress=False).losses for _ in range(2)]
    assert runs[0] == runs[1]


def test_clear_errors(smollm_lm, finetune_data):
    prompts, targets, label_ids = finetune_data
    with pytest.raises(ValueError, match="targets has 1 entries"):
        finetune(smollm_lm, prompts[:2], targets[:1], label_ids)
    with pytest.raises(ValueError, match=r"label indices in \[0, 2\)"):
        finetune(smollm_lm, prompts[:1], [2], label_ids)
    with pytest.raises(ValueError, match="at least 2"):
        finetune(smollm_lm, prompts[:1], [0], label_ids[:1])
    with pytest.raises(ValueError, match="mode must be one of"):
        finetune("no/such-model", prompts[:1], [0], label_ids, mode="bias")
    with pytest.raises(ValueError, match="prompts is empty"):
        finetune(smollm_lm, [], [], label_ids)
    with pytest.raises(ValueError, match="objective must be one of"):
        finetune(smollm_lm, prompts[:1], [0], label_ids, objective="hinge")
    with pytest.raises(ValueError, match="over the model's context length of 8192"):
        finetune(smollm_lm, [[1] * 8192], [0], label_ids)
    with pytest.raises(TypeError, match="TransformersLM"):
        finetune(object(), prompts[:1], [0], label_ids)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has none; its modules are named"):
        trainable_names(torch.nn.Sequential(torch.nn.Linear(2, 2)), "value")


def test_result_record_is_frozen_and_rebuildable():
    rec = FinetuneResult(path=Path("x"), seconds=1.5, losses=(0.7, 0.5), mode="full", steps=2)
    assert rec == FinetuneResult(Path("x"), 1.5, (0.7, 0.5), "full", 2)
    with pytest.raises(FrozenInstanceError):
        rec.steps = 3  # type: ignore[misc]


def test_micro_batching_gives_the_same_update(smollm_lm, finetune_data, monkeypatch):
    """Many multi-token labels are trained in micro-batches (gradient accumulation): same step as one batch.

    The step is compared where it is defined, on the (clipped) gradient the optimizer receives, captured by
    a global optimizer pre-step hook. Comparing weights after an Adam step is not robust: Adam's first step is
    about lr * sign(grad), so a gradient that is ~0 flips sign under float noise on another CPU.
    """
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    import ragicl.training.finetune as ft

    prompts, targets, _ = finetune_data
    tok = smollm_lm.tokenizer
    label_ids = [tok(text, add_special_tokens=False)["input_ids"] for text in (" not good", " very good")]
    assert all(len(ids) > 1 for ids in label_ids)
    kw = {"mode": "value", "steps": 1, "batch_size": 4, "lr": 1e-3, "warmup": 0.0, "seed": 0, "show_progress": False}
    seen: list[list[torch.Tensor]] = []

    def capture(optimizer, args, kwargs):
        seen.append([p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]
                     if p.grad is not None])

    handle = register_optimizer_step_pre_hook(capture)
    try:
        whole = finetune(smollm_lm, prompts[:4], targets[:4], label_ids, **kw)
        monkeypatch.setattr(ft, "_MAX_ROWS", 2)  # 2 labels per example -> micro-batches of one example
        micro = finetune(smollm_lm, prompts[:4], targets[:4], label_ids, **kw)
        monkeypatch.setattr(ft, "_MAX_ROWS", 256)
        finetune(smollm_lm, prompts[:2], targets[:2], label_ids, **{**kw, "batch_size": 2})
    finally:
        handle.remove()
    assert whole.losses[0] == pytest.approx(micro.losses[0], rel=1e-4)
    assert len(seen) == 3 and len(seen[0]) == len(seen[1]) == len(seen[2]) > 0
    g_whole, g_micro, g_half = seen
    for gw, gm, gh in zip(g_whole, g_micro, g_half):
        scale = float(gw.abs().max())
        assert scale > 0  # a real gradient reached every value matrix
        # float32 sums in another order: differences of a few ulps of the largest terms, far below the
        # gradient's own scale
        torch.testing.assert_close(gm, gw, rtol=1e-3, atol=1e-4 * scale)
    # the comparison can fail: half the batch is a different update, far outside the tolerance
    assert any(float((gh - gw).abs().max()) > 1e-2 * float(gw.abs().max()) for gw, gh in zip(g_whole, g_half))


def test_shared_prompt_label_loss_equals_concatenation_with_gradients(smollm_lm, finetune_data):
    """The training loss shares one prompt pass across multi-token labels: same values and gradients
    as scoring every prompt+label concatenation."""
    from ragicl.lm.scoring import continuation_scores, sequence_logprobs

    prompts, _, _ = finetune_data
    tok = smollm_lm.tokenizer
    labels = [tok(t, add_special_tokens=False)["input_ids"] for t in (" not good", " very good indeed", " ok")]
    model, pad = smollm_lm.model, smollm_lm._pad_id
    batch = [list(p) for p in prompts[:3]]
    shared = continuation_scores(model, batch, labels, pad)
    rows_p = [p for p in batch for _ in labels]
    rows_c = [list(c) for _ in batch for c in labels]
    concat = sequence_logprobs(model, rows_p, rows_c, pad).view(len(batch), len(labels))
    torch.testing.assert_close(shared, concat, atol=2e-4, rtol=1e-4)
    w = model.model.layers[0].self_attn.v_proj.weight
    g_shared = torch.autograd.grad(shared.sum(), w)[0]
    g_concat = torch.autograd.grad(concat.sum(), w)[0]
    torch.testing.assert_close(g_shared, g_concat, atol=1e-3, rtol=1e-3)
