"""Training to convergence: the one validated TrainConfig, the warm-up schedule, early stopping on a dev split
with the best weights restored, resume after a killed run to the same weights, atomic fingerprinted
checkpoints, and the convergence record of train_reference and `ragicl finetune`."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError

import pytest
import torch

from ragicl.training.finetune import (
    finetune,
    label_loss,
)

pytestmark = pytest.mark.slow


def test_train_config_is_validated_in_one_place():
    from ragicl.training.config import TrainConfig, TrainConfigError

    cfg = TrainConfig()
    assert not cfg.fast and cfg.resolved_epochs == 10.0 and cfg.resolved_dev_fraction == 0.1
    fast = TrainConfig(steps=16)
    assert fast.fast and fast.resolved_dev_fraction == 0.0  # a fixed-step run holds nothing out by default
    assert TrainConfig(steps=16, dev_fraction=0.2).resolved_dev_fraction == 0.2
    with pytest.raises(FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    bad = [({"lr": 0}, "lr must be a finite number"), ({"steps": 0}, "steps must be an integer >= 1"),
           ({"steps": 4, "epochs": 2}, "not both"), ({"mode": "bias"}, "mode must be one of"),
           ({"objective": "hinge"}, "objective must be one of"), ({"warmup": 1.0}, r"warmup .* \[0, 1\)"),
           ({"dev_fraction": 1.0}, "dev_fraction"), ({"patience": 0}, "patience"),
           ({"batch_size": True}, "batch_size"), ({"checkpoint_every": -1}, "checkpoint_every"),
           ({"epochs": float("nan")}, "epochs")]
    for kwargs, message in bad:
        with pytest.raises(TrainConfigError, match=message):
            TrainConfig(**kwargs)
    assert issubclass(TrainConfigError, ValueError)
    # keyword overrides: None keeps the field, steps and epochs replace each other
    assert cfg.with_overrides(lr=None, batch_size=4) == TrainConfig(batch_size=4)
    assert TrainConfig(epochs=3).with_overrides(steps=5) == TrainConfig(steps=5)
    assert TrainConfig(steps=5).with_overrides(epochs=2) == TrainConfig(epochs=2)
    with pytest.raises(TrainConfigError, match="unknown training setting"):
        cfg.with_overrides(learning_rate=1e-3)


def test_config_and_keywords_are_the_same_run(smollm_lm, finetune_data):
    from ragicl.training.config import TrainConfig

    prompts, targets, label_ids = finetune_data
    kw = {"mode": "value", "steps": 2, "batch_size": 3, "lr": 1e-4, "seed": 3}
    by_kw = finetune(smollm_lm, prompts, targets, label_ids, show_progress=False, **kw)
    by_cfg = finetune(smollm_lm, prompts, targets, label_ids, config=TrainConfig(**kw), show_progress=False)
    assert by_kw.losses == by_cfg.losses and by_kw.steps == by_cfg.steps == 2
    assert not by_kw.converged and by_kw.stop_reason == "steps" and by_kw.examples_seen == 6
    with pytest.raises(TypeError, match="TrainConfig"):
        finetune(smollm_lm, prompts, targets, label_ids, config={"steps": 2})  # type: ignore[arg-type]


def test_schedule_is_transformers_linear_warmup(smollm_lm, finetune_data):
    """The learning rate the optimizer uses at each step is transformers' linear warm-up/decay schedule:
    lr * s/W for s < W, then lr * (T - s)/(T - W) (the old hand-written one started at lr/(W+1))."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    from transformers import get_linear_schedule_with_warmup

    prompts, targets, label_ids = finetune_data
    lrs: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, a, k: lrs.append(opt.param_groups[0]["lr"]))
    try:
        finetune(smollm_lm, prompts[:2], targets[:2], label_ids, mode="value", steps=5, batch_size=2, lr=1e-3,
                 warmup=0.4, show_progress=False)
    finally:
        handle.remove()
    w, t = 2, 5
    expected = [1e-3 * (s / w if s < w else (t - s) / (t - w)) for s in range(t)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=0)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = get_linear_schedule_with_warmup(opt, w, t)
    reference = []
    for _ in range(t):
        reference.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == reference


def _v_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("v_proj.weight")}


@pytest.mark.parametrize("engine", ["ragicl", "hf"])
@pytest.mark.parametrize("script, stop, best", [
    ([1.0, 0.8, 0.9, 0.85, 0.7], "early_stopping", 2),  # 2 evaluations without improvement: stop at step 4
    ([1.0, 0.9, 0.8], "epochs", 3),                      # still falling when the epoch limit came
])
def test_early_stopping_restores_the_best_weights(smollm_lm, finetune_data, script, stop, best, engine):
    """Dev losses scripted: the loop stops after `patience` evaluations without improvement, restores the
    weights of the best evaluation exactly, and records whether it converged and why."""
    from ragicl.training.config import TrainConfig
    from ragicl.training.finetune import classification_loss
    from ragicl.training.trainer import train_model

    prompts, targets, label_ids = finetune_data
    seen_dev: list[list[int]] = []

    def loss_fn(model, batch, pad_id, progress):
        return classification_loss(model, [prompts[i] for i in batch], [targets[i] for i in batch], label_ids,
                                   pad_id)

    def eval_fn(model, idx, pad_id):
        seen_dev.append(list(idx))
        return script[len(seen_dev) - 1], 0.5

    cfg = TrainConfig(mode="value", epochs=len(script) / 3, batch_size=2, lr=1e-3, dev_fraction=0.25,
                      eval_every=1, patience=2, engine=engine)
    res = train_model(smollm_lm, 8, loss_fn, config=cfg, kind="classification", longest=64, eval_fn=eval_fn,
                      strata=targets, show_progress=False)
    assert res.stop_reason == stop and res.converged == (stop == "early_stopping")
    assert res.steps == (4 if stop == "early_stopping" else len(script)) == len(res.history)
    assert [h["dev_loss"] for h in res.history] == script[:res.steps]
    assert res.dev_loss == script[best - 1]
    # the dev split is stratified (one example of each label out of 8 at 25%) and never trained on
    (dev,) = {tuple(d) for d in seen_dev}
    assert len(dev) == 2 and {targets[i] for i in dev} == {0, 1}
    assert all(h["examples_seen"] == 2 * h["step"] for h in res.history)


@pytest.mark.parametrize("engine", ["ragicl", "hf"])
def test_best_weights_are_the_ones_kept(smollm_lm, finetune_data, engine):
    """With inplace training the weights after each step are observable: the returned model holds exactly
    the weights of the best dev evaluation, not the last step's."""
    import copy

    from ragicl.lm.hf import TransformersLM
    from ragicl.training.config import TrainConfig
    from ragicl.training.finetune import classification_loss
    from ragicl.training.trainer import train_model

    prompts, targets, label_ids = finetune_data
    own = TransformersLM.from_model(copy.deepcopy(smollm_lm.model), smollm_lm.tokenizer, name=smollm_lm.name)
    script = [1.0, 0.5, 0.9, 0.9]
    calls: list[int] = []
    after: dict[int, dict[str, torch.Tensor]] = {}

    def eval_fn(model, idx, pad_id):
        calls.append(1)
        after[len(calls)] = _v_weights(model)
        return script[len(calls) - 1], None

    res = train_model(own, 8, lambda m, b, pad, p: classification_loss(
        m, [prompts[i] for i in b], [targets[i] for i in b], label_ids, pad), config=TrainConfig(
        mode="value", steps=4, batch_size=2, lr=1e-3, dev_fraction=0.25, eval_every=1, patience=2, engine=engine),
        kind="classification", longest=64, eval_fn=eval_fn, strata=targets, inplace=True, show_progress=False)
    assert res.stop_reason == "early_stopping" and res.steps == 4
    final = _v_weights(res.lm.model)
    assert all(torch.equal(final[n], after[2][n]) for n in final)
    assert not all(torch.equal(final[n], after[4][n]) for n in final)  # the last step did change them


@pytest.mark.parametrize("engine", ["ragicl", "hf"])
def test_converged_run_scores_its_real_dev_split(smollm_lm, finetune_data, tmp_path, engine):
    """Default-style training (epochs, real dev scoring): the recorded dev loss/accuracy are those of the
    saved model on the held-out examples, and the meta records the convergence fields."""
    from ragicl.training.checkpoint import split_dev
    from ragicl.training.config import TrainConfig

    prompts, targets, label_ids = finetune_data
    cfg = TrainConfig(mode="value", epochs=2, batch_size=3, lr=1e-4, dev_fraction=0.25, seed=1, engine=engine)
    res = finetune(smollm_lm, prompts, targets, label_ids, config=cfg, out=tmp_path / "ft", show_progress=False)
    _, dev = split_dev(8, 0.25, 1000, 1, targets)
    # 6 training examples, 2 steps per epoch; the default cadence (a quarter epoch, at least 1 step) evaluates
    # after every step
    assert res.steps == 4 and [h["step"] for h in res.history] == [1, 2, 3, 4]
    dev_loss = label_loss(res.lm, [prompts[i] for i in dev], [targets[i] for i in dev], label_ids)
    assert res.dev_loss == pytest.approx(dev_loss, rel=1e-4)
    meta = json.loads((tmp_path / "ft" / "ragicl_finetune.json").read_text())
    for key in ("steps", "examples_seen", "final_loss", "dev_loss", "dev_accuracy", "converged",
                "dev_loss_still_falling", "convergence_rule", "dev_history"):
        assert key in meta, key
    assert meta["examples_seen"] == 12 and meta["dev_examples"] == 2 and meta["fast"] is False
    assert meta["converged"] is res.converged and 0 <= meta["dev_accuracy"] <= 1
    assert not (tmp_path / "ft" / "checkpoint").exists()  # the final save replaces the folder


class _Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_weights(smollm_lm, finetune_data, tmp_path):
    """A run killed after step 3 resumes from its step-2 checkpoint and ends exactly where an uninterrupted
    run ends: same losses, dev history and weights (CPU training here is deterministic)."""
    from ragicl.training.checkpoint import checkpoint_path
    from ragicl.training.config import TrainConfig

    prompts, targets, label_ids = finetune_data
    cfg = TrainConfig(mode="value", epochs=3, batch_size=3, lr=1e-4, dev_fraction=0.25, eval_every=2,
                      checkpoint_every=2, patience=5)
    whole = finetune(smollm_lm, prompts, targets, label_ids, config=cfg, out=tmp_path / "whole",
                     show_progress=False)

    def kill(progress):
        if progress.step == 2:  # after the third step; the last checkpoint is at step 2
            raise _Killed

    with pytest.raises(_Killed):
        finetune(smollm_lm, prompts, targets, label_ids, config=cfg, out=tmp_path / "ft", show_progress=False,
                 on_step=kill)
    saved = torch.load(checkpoint_path(tmp_path / "ft"), weights_only=False)
    assert saved["step"] == 2 and len(saved["losses"]) == 2
    resumed = finetune(smollm_lm, prompts, targets, label_ids, config=cfg, out=tmp_path / "ft",
                       show_progress=False)
    assert resumed.steps == whole.steps == 6 and resumed.losses == whole.losses
    assert resumed.history == whole.history and resumed.examples_seen == whole.examples_seen == 18
    a, b = _v_weights(whole.lm.model), _v_weights(resumed.lm.model)
    assert all(torch.equal(a[n], b[n]) for n in a)
    # without resume, or with other settings, the checkpoint is not used
    with pytest.raises(_Killed):
        finetune(smollm_lm, prompts, targets, label_ids, config=cfg, out=tmp_path / "ft2", show_progress=False,
                 on_step=kill)
    seen: list[int] = []
    finetune(smollm_lm, prompts, targets, label_ids, config=cfg.with_overrides(lr=2e-4), out=tmp_path / "ft2",
             show_progress=False, on_step=lambda p: seen.append(p.step))
    assert seen[0] == 0  # started over: the step-2 checkpoint had another learning rate


def test_checkpoint_state_is_atomic_and_fingerprinted(tmp_path):
    from ragicl.training.checkpoint import checkpoint_path, load_state, save_state

    save_state(tmp_path, {"step": 3, "fingerprint": "abc"})
    assert load_state(tmp_path, "abc")["step"] == 3
    assert load_state(tmp_path, "other") is None
    assert load_state(tmp_path / "missing", "abc") is None
    assert [p.name for p in checkpoint_path(tmp_path).parent.iterdir()] == ["state.pt"]  # no temp files
    checkpoint_path(tmp_path).write_bytes(b"truncated")
    assert load_state(tmp_path, "abc") is None  # unreadable: start over, with a warning


def test_split_dev_is_seeded_stratified_and_capped():
    from ragicl.training.checkpoint import split_dev

    strata = [0] * 60 + [1] * 30 + [2] * 10
    train, dev = split_dev(100, 0.2, 1000, 0, strata)
    assert sorted(train + dev) == list(range(100)) and len(dev) == 20
    assert [sum(strata[i] == c for i in dev) for c in range(3)] == [12, 6, 2]
    assert split_dev(100, 0.2, 1000, 0, strata) == (train, dev)
    assert split_dev(100, 0.2, 1000, 1, strata)[1] != dev
    assert len(split_dev(100, 0.5, 7, 0)[1]) == 7
    assert split_dev(5, 0.0, 10, 0) == ([0, 1, 2, 3, 4], [])


def test_fast_run_is_labelled_not_converged(smollm_lm, finetune_data, tmp_path):
    prompts, targets, label_ids = finetune_data
    res = finetune(smollm_lm, prompts[:2], targets[:2], label_ids, mode="value", steps=1, batch_size=2,
                   out=tmp_path / "fast", show_progress=False)
    meta = json.loads((tmp_path / "fast" / "ragicl_finetune.json").read_text())
    assert meta["fast"] is True and meta["converged"] is False and meta["stop_reason"] == "steps"
    assert meta["dev_examples"] == 0 and meta["dev_loss_still_falling"] is None and not res.converged


def test_train_reference_trains_to_convergence_by_default(smollm_lm, sst2_train_path, tmp_path):
    from ragicl.data import read_dataset
    from ragicl.training.reference import train_reference

    train = read_dataset(sst2_train_path, name="sst2").sample(10, seed=0)
    res = train_reference(train, lm=smollm_lm, out=tmp_path / "ref", mode="value", max_prompt_tokens=96,
                          show_progress=False)
    assert res.stop_reason in ("early_stopping", "epochs") and res.history  # not a fixed-step run
    assert res.steps <= 10 and res.dev_loss is not None
    meta = json.loads((tmp_path / "ref" / "ragicl_finetune.json").read_text())
    assert meta["dev_examples"] == 1 and meta["converged"] == res.converged
    again = train_reference(train, lm=smollm_lm, out=tmp_path / "ref", mode="value", max_prompt_tokens=96)
    assert again == res and again.history == res.history  # reused, convergence record included


def test_cli_finetune_defaults_to_convergence():
    from ragicl.cli import build_parser

    args = build_parser().parse_args(["finetune", "--train", "t.jsonl", "--out", "o"])
    assert args.steps is None and args.epochs is None and args.dev_fraction is None and args.resume
    args = build_parser().parse_args(["finetune", "--train", "t.jsonl", "--out", "o", "--steps", "16",
                                      "--patience", "2", "--checkpoint-every", "50", "--no-resume"])
    assert (args.steps, args.patience, args.checkpoint_every, args.resume) == (16, 2, 50, False)
    from ragicl.cli.commands import train_config

    assert train_config(args).engine == "ragicl"
    hf = build_parser().parse_args(["finetune", "--train", "t.jsonl", "--out", "o", "--engine", "hf"])
    assert train_config(hf).engine == "hf" and train_config(hf).to_json()["engine"] == "hf"
