"""The demo's LM memo (ragicl.cli.demo.ScoreOnce): a repeated (prompt, labels) pair is scored once, with the
same numbers, and everything else is the wrapped LM's."""

from __future__ import annotations

import numpy as np
import pytest

from ragicl.cli.demo import ScoreOnce


class CountingLM:
    """Scores a prompt as the sum of its ids plus the continuation's first id; counts what it was asked."""

    name = "counting"

    def __init__(self) -> None:
        self.asked: list[list[int]] = []

    def score_continuations(self, prompts, continuations, *, show_progress=None):
        self.asked.extend(list(p) for p in prompts)
        return np.array([[float(sum(p) + c[0]) for c in continuations] for p in prompts])


def test_repeats_are_answered_from_the_memo_with_the_same_numbers():
    lm = CountingLM()
    memo = ScoreOnce(lm)
    labels = [[7], [9, 1]]
    first = memo.score_continuations([[1, 2], [3], [1, 2]], labels)  # a repeat inside one call too
    assert lm.asked == [[1, 2], [3]] and (memo.scored, memo.repeats) == (2, 1)
    again = memo.score_continuations([[3], [4, 4], [1, 2]], labels)
    assert lm.asked == [[1, 2], [3], [4, 4]] and (memo.scored, memo.repeats) == (3, 3)
    direct = CountingLM().score_continuations([[1, 2], [3], [1, 2], [3], [4, 4], [1, 2]], labels)
    np.testing.assert_array_equal(np.vstack([first, again]), direct)
    # other labels are another question: scored again, not mixed up with the first answers
    other = memo.score_continuations([[1, 2]], [[5]])
    assert lm.asked[-1] == [1, 2] and other.tolist() == [[8.0]]
    assert memo.score_continuations([], labels).shape == (0, 2)
    assert memo.name == "counting"  # everything else is the LM's own


@pytest.mark.slow
def test_the_memo_gives_the_real_lms_numbers(smollm_lm):
    tok = smollm_lm.tokenizer
    prompts = [tok("Review: a gripping film\nSentiment:")["input_ids"], tok("Review: dull\nSentiment:")["input_ids"]]
    labels = [tok(" negative", add_special_tokens=False)["input_ids"], tok(" positive", add_special_tokens=False)["input_ids"]]
    memo = ScoreOnce(smollm_lm)
    got = memo.score_continuations(prompts + prompts[:1], labels)
    want = np.asarray(smollm_lm.score_continuations(prompts + prompts[:1], labels))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    assert (memo.scored, memo.repeats) == (2, 1)
