"""``TrainConfig(engine="hf")``: the same fine-tuning run through Hugging Face ``transformers.Trainer``.

On the real SmolLM2 and real SST-2 examples: with the whole training set in one step (so the data order
cannot differ) it gives the losses of ragicl's own loop; each mode trains only its parameters; the output
folder holds ragicl's versioned save and nothing of ``Trainer``'s (no ``checkpoint-N``, nothing left in the
working directory); ``on_step`` stops a run. Early stopping, best weights and the convergence record run for
both engines in tests/test_train_convergence.py; benchmarks/bench_trainer_engine.py compares references
trained to convergence (docs/BENCHMARKS.md §10).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from ragicl.training.config import TrainConfig, TrainConfigError
from ragicl.training.finetune import finetune, trainable_names

pytestmark = pytest.mark.slow


def test_one_step_per_epoch_gives_ragicls_losses(smollm_lm, finetune_data):
    prompts, targets, label_ids = finetune_data
    runs = {}
    for engine in ("ragicl", "hf"):
        cfg = TrainConfig(mode="attention", steps=3, batch_size=8, lr=3e-5, warmup=0.0, engine=engine)
        runs[engine] = finetune(smollm_lm, prompts, targets, label_ids, config=cfg, show_progress=False)
    ours, hf = runs["ragicl"], runs["hf"]
    assert hf.steps == ours.steps == 3 and hf.examples_seen == ours.examples_seen == 24
    # the same arithmetic in another order of float operations: equal to float32 rounding of the loss
    assert hf.losses == pytest.approx(ours.losses, rel=1e-4, abs=1e-5)
    assert hf.losses[-1] < 0.8 * hf.losses[0]  # it did train
    for name, p in ours.lm.model.named_parameters():
        q = dict(hf.lm.model.named_parameters())[name]
        assert torch.allclose(p, q, atol=1e-4), name


@pytest.mark.parametrize("mode", ["value", "lora"])
def test_each_mode_trains_only_its_parameters(smollm_lm, finetune_data, mode):
    prompts, targets, label_ids = finetune_data
    res = finetune(smollm_lm, prompts[:4], targets[:4], label_ids, show_progress=False,
                   config=TrainConfig(mode=mode, steps=1, batch_size=4, lr=1e-3, engine="hf"))
    base = dict(smollm_lm.model.named_parameters())
    changed = {n for n, p in res.lm.model.named_parameters() if not torch.equal(p, base[n])}
    assert changed == set(trainable_names(smollm_lm.model, mode))
    assert not any(p.requires_grad for p in res.lm.model.parameters())


def test_the_folder_is_ragicls_and_trainer_leaves_nothing(smollm_lm, finetune_data, tmp_path, monkeypatch):
    prompts, targets, label_ids = finetune_data
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "ft"
    cfg = TrainConfig(mode="value", epochs=1, batch_size=3, lr=1e-4, dev_fraction=0.25, engine="hf")
    res = finetune(smollm_lm, prompts, targets, label_ids, config=cfg, out=out, show_progress=False)
    meta = json.loads((out / "ragicl_finetune.json").read_text())
    assert meta["engine"] == "hf" and meta["config"]["engine"] == "hf"
    assert meta["trainer"].startswith("transformers.Trainer ") and meta["steps"] == res.steps == 2
    assert res.path is not None and res.history and meta["dev_history"] == [dict(h) for h in res.history]
    names = {p.name for p in out.rglob("*")}
    assert not any(n.startswith("checkpoint") or n == "trainer_state.json" for n in names), names
    assert os.listdir(work) == []  # no trainer_output/ or runs/ in the working directory
    # a folder of someone else's files is refused before training, as by ragicl's own loop
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        finetune(smollm_lm, prompts, targets, label_ids, config=cfg, out=foreign, show_progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_on_step_stops_a_run_and_bad_engines_are_refused(smollm_lm, finetune_data):
    prompts, targets, label_ids = finetune_data
    seen = []

    class Stop(Exception):
        pass

    def on_step(progress):
        seen.append(progress.step)
        if progress.step == 1:
            raise Stop

    with pytest.raises(Stop):
        finetune(smollm_lm, prompts, targets, label_ids, show_progress=False, on_step=on_step,
                 config=TrainConfig(mode="value", steps=5, batch_size=2, engine="hf"))
    assert seen == [0, 1]
    with pytest.raises(TrainConfigError, match="engine must be one of"):
        TrainConfig(engine="deepspeed")
    assert "engine" not in TrainConfig().to_json()  # records made before the option are unchanged
