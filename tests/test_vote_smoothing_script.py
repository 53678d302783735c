"""experiments/vote_smoothing.py: recovers the kNN vote's neighbour counts from saved rows and re-smooths them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _scripts import load_script

from ragicl import ExampleIndex, KNNVoteClassifier
from ragicl.data import from_records
from ragicl.evaluation.predictions import Predictions, save_predictions


def _script():
    return load_script("vote_smoothing")


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict[int, np.ndarray], np.ndarray]:
    """Real vote rows (KNNVoteClassifier, add-0.5, hash embedder) over 5 labels and a made-up reference."""
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c", "d", "e"]
    train = from_records([{"text": f"item {i} word{i % 7}", "label": labels[i % 5]} for i in range(40)])
    test = from_records([{"text": f"query word{i % 7} {i}", "label": labels[i % 5]} for i in range(12)])
    index = ExampleIndex.build(train, embedder="hash-32")
    votes = {k: KNNVoteClassifier(k=k).fit(index).predict_proba(list(test.examples)) for k in (3, 8)}
    ref = rng.dirichlet(np.ones(5), size=len(test))
    pred = Predictions.for_test(test)
    for k, p in votes.items():
        pred = pred.with_system(f"kNN vote k={k}", p, 0.0)
    pred = pred.with_system("fine-tuned", ref, 0.0).with_system("ragicl best", votes[3], 0.0)
    path = tmp_path / "p.json"
    save_predictions(path, pred)
    return path, votes, ref


def test_recovers_the_counts_and_resmooths(saved) -> None:
    mod = _script()
    _, votes, _ = saved
    counts = mod.vote_counts(votes[8], 8)
    assert np.all(counts.sum(1) == 8)  # 8 neighbours each (40 indexed examples, none a duplicate of a query)
    np.testing.assert_allclose(mod.resmooth(counts, 0.5), votes[8], rtol=0, atol=1e-12)
    np.testing.assert_allclose(mod.resmooth(counts, 0.0), counts / 8, rtol=0, atol=1e-12)
    assert mod.parse_alpha("1/L", 77) == pytest.approx(1 / 77) and mod.parse_alpha("0.25", 5) == 0.25
    with pytest.raises(ValueError, match="not add-0.25 vote counts"):
        mod.vote_counts(votes[8], 8, smoothing=0.25)


def test_main_prints_each_vote_and_smoothing(saved, capsys) -> None:
    mod = _script()
    path, votes, ref = saved
    assert mod.main([str(path), "--alphas", "0.5", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["kNN vote k=3 alpha=0.5 (0.5)", "kNN vote k=3 alpha=0 (0)",
                                                 "kNN vote k=8 alpha=0.5 (0.5)", "kNN vote k=8 alpha=0 (0)"]
    tv8 = 0.5 * np.abs(votes[8] - ref).sum(1).mean()
    assert f"TV {tv8:.3f} [" in lines[2]
    tv8_raw = 0.5 * np.abs(mod.vote_counts(votes[8], 8) / 8 - ref).sum(1).mean()
    assert f"TV {tv8_raw:.3f} [" in lines[3]
    assert "ragicl best - this +0.000 [+0.000, +0.000]" in lines[0]  # 'ragicl best' here is the k=3 vote itself


def test_main_says_what_is_missing(tmp_path: Path, saved, capsys) -> None:
    mod = _script()
    path, _, _ = saved
    assert mod.main([str(path), "--reference", "nope"]) == 2
    assert "has no 'nope' row" in capsys.readouterr().err
