"""A training step runs its batch as forward passes of similar lengths (``plan_passes``): every example
once, at most ``max_rows`` rows a pass, the least padding plus per-pass cost, and the same gradient as one
padded pass over the whole batch (real SmolLM2, real SST-2 prompts of different lengths)."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from ragicl.training import trainer
from ragicl.training.finetune import finetune
from ragicl.training.trainer import plan_passes


def _cost(lengths, passes, overhead, rows=1):
    return sum(len(p) * rows * max(lengths[i] for i in p) for p in passes) + overhead * (len(passes) - 1)


def _splits(order):
    """Every way to cut ``order`` into consecutive non-empty runs."""
    n = len(order)
    for mask in itertools.product((0, 1), repeat=max(0, n - 1)):
        cuts = [0] + [i + 1 for i, m in enumerate(mask) if m] + [n]
        yield [order[a:b] for a, b in itertools.pairwise(cuts)]


def test_plan_passes_covers_the_batch_within_max_rows_at_the_least_cost():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 9)
        lengths = [rng.randint(1, 60) for _ in range(n)]
        max_rows, rows = rng.randint(1, 10), rng.randint(1, 3)
        overhead = rng.choice([0.0, 4.0, 16.0, 1e9])
        passes = plan_passes(lengths, max_rows, overhead, rows)
        assert sorted(i for p in passes for i in p) == list(range(n))
        size = max(1, max_rows // rows)
        assert all(len(p) <= size for p in passes)
        # optimal among every cut of the length order (a pass of sorted lengths is never worse than one
        # that skips an example, so consecutive runs of the sorted order are all that needs checking)
        order = sorted(range(n), key=lambda i: (lengths[i], i))
        best = min(_cost(lengths, s, overhead, rows) for s in _splits(order) if all(len(p) <= size for p in s))
        assert _cost(lengths, passes, overhead, rows) == pytest.approx(best, rel=1e-12)


def test_plan_passes_cuts_only_where_it_pays():
    assert plan_passes([30, 5, 6, 31], max_rows=16, overhead=8) == [[1, 2], [0, 3]]
    assert plan_passes([30, 5, 6, 31], max_rows=16, overhead=1e9) == [[1, 2, 0, 3]]  # one pass
    assert plan_passes([7, 7, 7], max_rows=16, overhead=0) == [[0, 1, 2]]  # equal lengths: nothing to save
    assert plan_passes([1, 2, 3, 4, 5], max_rows=2, overhead=1e9) == [[0], [1, 2], [3, 4]]  # fewest passes
    assert plan_passes([], max_rows=4, overhead=1) == []


@pytest.mark.slow
def test_passes_give_the_same_gradient_with_less_padding(smollm_lm, sst2_train_path, monkeypatch):
    tok = smollm_lm.tokenizer
    with open(sst2_train_path) as f:
        rows = [json.loads(line) for _, line in zip(range(200), f)]
    rows.sort(key=lambda r: len(r["text"]))
    picked = [rows[0], rows[-1], rows[1], rows[-2]]  # two short, two long
    prompts = [tok(f"Review: {r['text']}\nSentiment:")["input_ids"] for r in picked]
    targets = [("negative", "positive").index(r["label"]) for r in picked]
    label_ids = [tok(f" {lab}", add_special_tokens=False)["input_ids"] for lab in ("negative", "positive")]
    lengths = sorted(map(len, prompts))
    assert lengths[1] * 2 < lengths[2]  # far apart: cutting pays
    shapes: list[tuple[int, int]] = []
    grads: list[list[torch.Tensor]] = []
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    hook = smollm_lm.model.register_forward_pre_hook(
        lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    step = register_optimizer_step_pre_hook(lambda opt, a, k: grads.append(
        [p.grad.detach().clone() for g in opt.param_groups for p in g["params"] if p.grad is not None]))
    kw = {"mode": "value", "steps": 1, "batch_size": 4, "lr": 1e-3, "warmup": 0.0, "seed": 0,
          "show_progress": False}
    try:
        monkeypatch.setattr(trainer, "PASS_OVERHEAD_TOKENS", {"cpu": 1e9, "cuda": 1e9})
        whole = finetune(smollm_lm, prompts, targets, label_ids, **kw)
        whole_shapes, shapes[:] = list(shapes), []
        monkeypatch.setattr(trainer, "PASS_OVERHEAD_TOKENS", {"cpu": 0.0, "cuda": 0.0})
        cut = finetune(smollm_lm, prompts, targets, label_ids, **kw)
    finally:
        hook.remove()
        step.remove()
    assert whole_shapes == [(4, lengths[-1])]
    assert len(shapes) > 1 and sum(b * t for b, t in shapes) < 4 * lengths[-1]
    assert sum(b for b, _ in shapes) == 4  # every example once
    assert whole.losses[0] == pytest.approx(cut.losses[0], rel=1e-4)
    assert len(grads) == 2 and len(grads[0]) == len(grads[1]) > 0
    for gw, gc in zip(*grads):
        scale = float(gw.abs().max())
        assert scale > 0
        # float32 sums in another order: a few ulps of the largest terms, far below the gradient's scale
        torch.testing.assert_close(gc, gw, rtol=1e-3, atol=1e-4 * scale)
