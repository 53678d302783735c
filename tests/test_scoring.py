"""The one scoring module (ragicl.lm.scoring): the shared-prompt continuation scores equal naive per-pair
scoring with and without gradients, teacher-forced log-probs in padded batches equal unpadded ones,
sampling does not depend on the batch; and the generation-gap evaluator (ragicl.lm.sequence) runs on any
LanguageModel through the protocol alone (a numpy bigram model with no transformers inside)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from ragicl.lm import scoring
from ragicl.lm.hf import LanguageModel, TransformersLM
from ragicl.lm.sequence import (
    check_same_vocabulary,
    sample_continuations,
    sequence_logprobs,
    teacher_forced_tv,
    token_logprobs,
)

PAD = 0


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.3)
    return LlamaForCausalLM(config).eval()


PROMPTS = [[5, 9, 3, 44, 2, 7, 61], [12, 8], [33, 4, 4, 90, 17]]  # different lengths: real left padding
CONTS = [[20, 31, 7], [11], [40, 2]]  # mixed lengths, one single token


def _naive(model, prompt, cont) -> torch.Tensor:
    """Per-token log-probs of cont after prompt: one unpadded forward, no cache (the definition)."""
    logits = model(input_ids=torch.tensor([prompt + cont])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return torch.stack([lp[len(prompt) - 1 + j, t] for j, t in enumerate(cont)])


def _atol(values) -> float:
    """Float32 rounding scaled by the magnitudes compared (log-probs of a few tokens)."""
    return 1e-4 * max(1.0, float(np.abs(np.asarray(values)).max()))


@pytest.mark.parametrize("max_rows", [None, 1, 4])
def test_continuation_scores_equal_naive_with_and_without_gradients(tiny, max_rows):
    naive = torch.stack([torch.stack([_naive(tiny, p, c).sum() for c in CONTS]) for p in PROMPTS]).detach()
    with torch.inference_mode():
        frozen = scoring.continuation_scores(tiny, PROMPTS, CONTS, PAD, max_rows=max_rows)
        concat = scoring.concat_scores(tiny, PROMPTS, CONTS, PAD)
    graded = scoring.continuation_scores(tiny, PROMPTS, CONTS, PAD, max_rows=max_rows)
    assert graded.requires_grad and not frozen.requires_grad and frozen.shape == (3, 3)
    tol = _atol(naive)
    torch.testing.assert_close(frozen, naive, atol=tol, rtol=0)
    torch.testing.assert_close(concat, naive, atol=tol, rtol=0)
    torch.testing.assert_close(graded.detach(), frozen, atol=tol, rtol=0)


def test_continuation_gradients_equal_concatenation(tiny):
    w = tiny.model.layers[0].self_attn.v_proj.weight
    shared = scoring.continuation_scores(tiny, PROMPTS, CONTS, PAD, max_rows=2)
    rows_p = [p for p in PROMPTS for _ in CONTS]
    rows_c = [c for _ in PROMPTS for c in CONTS]
    concat = scoring.sequence_logprobs(tiny, rows_p, rows_c, PAD).view(len(PROMPTS), len(CONTS))
    g_shared = torch.autograd.grad(shared.sum(), w)[0]
    g_concat = torch.autograd.grad(concat.sum(), w)[0]
    torch.testing.assert_close(g_shared, g_concat, atol=1e-4 * float(g_concat.abs().max()), rtol=0)


def test_teacher_forced_batches_equal_unpadded(tiny):
    with torch.inference_mode():
        per_token = scoring.token_logprobs(tiny, PROMPTS, CONTS, PAD)
        sums = scoring.sequence_logprobs(tiny, PROMPTS, CONTS, PAD)
        logprobs, targets, keep = scoring.teacher_forced(tiny, PROMPTS, CONTS, PAD)
        naive = [_naive(tiny, p, c) for p, c in zip(PROMPTS, CONTS)]
        alone = [scoring.teacher_forced(tiny, [p], [c], PAD)[0][0] for p, c in zip(PROMPTS, CONTS)]
    tol = _atol(torch.cat(naive))
    for got, want, cont in zip(per_token, naive, CONTS):
        assert got.shape == (len(cont),)
        torch.testing.assert_close(got, want, atol=tol, rtol=0)
    torch.testing.assert_close(sums, torch.stack([v.sum() for v in naive]), atol=tol, rtol=0)
    assert keep.sum(-1).tolist() == [len(c) for c in CONTS]
    for i, cont in enumerate(CONTS):  # full distributions: the padded batch row's tail equals the pair alone
        assert targets[i, keep[i]].tolist() == cont
        torch.testing.assert_close(logprobs[i, keep[i]], alone[i], atol=_atol(alone[i]), rtol=0)


def test_select_cache_leaves_the_source_untouched(tiny):
    with torch.inference_mode():
        _, cache, _ = scoring.last_logprobs(tiny, PROMPTS, PAD, use_cache=True)
        before = cache.layers[0].keys.clone()
        picked = scoring.select_cache(cache, torch.tensor([2, 0, 2]))
    assert scoring.can_select(cache)
    assert picked.layers[0].keys.shape[0] == 3 and cache.layers[0].keys.shape[0] == 3
    torch.testing.assert_close(picked.layers[0].keys[1], before[0], atol=0, rtol=0)
    torch.testing.assert_close(cache.layers[0].keys, before, atol=0, rtol=0)


def test_sample_rows_do_not_depend_on_the_batch(tiny):
    with torch.inference_mode():
        both = scoring.sample_rows(tiny, PROMPTS, PAD, [11, 22, 33], 6, eos_ids=set())
        alone = [scoring.sample_rows(tiny, [p], PAD, [s], 6, eos_ids=set())[0]
                 for p, s in zip(PROMPTS, [11, 22, 33])]
        first = both[0][0][0]
        stopped = scoring.sample_rows(tiny, PROMPTS[:1], PAD, [11], 6, eos_ids={first})[0]
    assert both == alone and all(len(ids) == 6 and trunc for ids, trunc in both)
    assert stopped == ([first], False)  # ends at an end-of-sequence id, not truncated


def test_transformers_lm_serves_the_gap_protocol(tiny):
    tok = types.SimpleNamespace(pad_token_id=PAD, eos_token_id=1, model_max_length=256,
                                get_vocab=lambda: {str(i): i for i in range(96)})
    lm = TransformersLM.from_model(tiny, tok, batch_size=2, show_progress=False)
    assert isinstance(lm, LanguageModel) and lm.vocab_size == 96 and 1 in lm.eos_token_ids
    got = lm.token_logprobs(PROMPTS, CONTS)  # batches of 2 sorted by length, order restored
    naive = [_naive(tiny, p, c).detach().numpy() for p, c in zip(PROMPTS, CONTS)]
    for g, want in zip(got, naive):
        np.testing.assert_allclose(g, want, atol=_atol(want), rtol=0)
    full = lm.teacher_forced_logprobs(PROMPTS[0], CONTS[0])
    assert full.shape == (3, 96)
    np.testing.assert_allclose(full[np.arange(3), CONTS[0]], naive[0], atol=_atol(naive[0]), rtol=0)
    assert lm.sample(PROMPTS, 4, seeds=[1, 2, 3]) == lm.sample(PROMPTS, 4, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="pair them up"):
        lm.token_logprobs(PROMPTS, CONTS[:2])
    with pytest.raises(ValueError, match="context length"):
        lm.teacher_forced_logprobs([3] * 250, [4] * 10)


# ------------------------------------------------------------------ the gap evaluator through the protocol
class BigramLM:
    """A LanguageModel with no transformers inside: the next token depends on the previous one only."""

    context_length = 64
    eos_token_ids = frozenset({5})

    def __init__(self, seed: int, vocab: int = 6, name: str = "bigram") -> None:
        self.name, self.vocab_size = name, vocab
        table = np.random.default_rng(seed).normal(0, 1.5, (vocab, vocab))
        self.table = table - np.log(np.exp(table).sum(-1, keepdims=True))  # log-softmax rows (float64)
        self.tokenizer = types.SimpleNamespace(get_vocab=lambda: {f"t{i}": i for i in range(vocab)},
                                               decode=lambda ids: " ".join(f"t{i}" for i in ids))

    def teacher_forced_logprobs(self, prompt, continuation) -> np.ndarray:
        seq = list(prompt) + list(continuation)
        return self.table[[seq[len(prompt) - 1 + t] for t in range(len(continuation))]].astype(np.float32)

    def token_logprobs(self, prompts, continuations, *, show_progress=None) -> list[np.ndarray]:
        return [self.teacher_forced_logprobs(p, c)[np.arange(len(c)), c] for p, c in zip(prompts, continuations)]

    def sample(self, prompts, max_new_tokens, *, seeds, stop=()) -> list[tuple[list[int], bool]]:
        out = []
        for prompt, seed in zip(prompts, seeds):
            rng, ids, last = np.random.default_rng(seed), [], prompt[-1]
            while len(ids) < max_new_tokens:
                last = int(rng.choice(self.vocab_size, p=np.exp(self.table[last])))
                ids.append(last)
                if last in self.eos_token_ids:
                    break
            out.append((ids, len(ids) == max_new_tokens and ids[-1] not in self.eos_token_ids))
        return out


def test_gap_evaluator_runs_on_a_protocol_only_model():
    p, q = BigramLM(0), BigramLM(1, name="other")
    assert not hasattr(p, "model")  # nothing past the protocol to reach into
    prompts, conts = [[1, 2], [3]], [[4, 0, 2], [1]]
    tv = teacher_forced_tv(p, prompts, q, prompts, conts)
    for prompt, cont, got in zip(prompts, conts, tv):
        prev = [(prompt + cont)[len(prompt) - 1 + t] for t in range(len(cont))]
        want = 0.5 * np.abs(np.exp(p.table[prev]) - np.exp(q.table[prev])).sum(-1)
        np.testing.assert_allclose(got, want, atol=1e-6)  # float32 probabilities summed over 6 tokens
    assert all(np.all(v == 0.0) for v in teacher_forced_tv(p, prompts, p, prompts, conts))
    lp = sequence_logprobs(p, prompts, conts)
    want = [sum(p.table[a, b] for a, b in zip([pr[-1], *c[:-1]], c)) for pr, c in zip(prompts, conts)]
    np.testing.assert_allclose(lp, want, atol=1e-5)
    assert [v.dtype for v in token_logprobs(p, prompts, conts)] == [np.float64, np.float64]
    drawn = sample_continuations(p, prompts, 4, n=3, seed=7, batch_size=2)
    assert [len(rows) for rows in drawn] == [3, 3]
    assert drawn == sample_continuations(p, prompts, 4, n=3, seed=7, batch_size=5)  # batching-free draws
    check_same_vocabulary(p, q)
    with pytest.raises(ValueError, match="do not share a vocabulary"):
        check_same_vocabulary(p, BigramLM(0, vocab=7))
