"""FusionTuner's search: budgeted in LM work (the same choice on any machine), plain systems always in, an
optional seconds cap that says what it skipped, exact accounting, and unlabeled queries for the rule.

The LM is the real default one, wrapped to run on a simulated clock (``tune._now``; tests/_clock.py) that
advances a fixed number of seconds per LM token, so "a fast machine" and "a slow machine" are exact and the same
everywhere. tests/test_cli_tune.py runs the same check through ``ragicl tune`` and ``ragicl eval``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from _clock import Clock, ClockedLM

from ragicl import PromptTemplate
from ragicl.estimators import tune
from ragicl.estimators.tune import FusionTuner

TEMPLATE = PromptTemplate(example="Question: {text}\nType: {label}")
GRID = {"ks": (2,), "candidates": (None, 2), "label_aware": (False, True), "knn_ks": (4, 8),
        "temperatures": (None,), "weights": (0.0, 0.5, 1.0), "calibrations": ("none", "batch"), "dev_size": 12}


@pytest.fixture(scope="module")
def replay():
    return {}


@pytest.fixture()
def machine(smollm_lm, replay, monkeypatch):
    """``machine(seconds_per_token)``: a fresh clocked LM (the clock starts at 0)."""
    def make(cost: float) -> ClockedLM:
        clock = Clock()
        monkeypatch.setattr(tune, "_now", clock)
        return ClockedLM(smollm_lm, clock, cost, replay)
    return make


def _searched(res):
    return [{k: v for k, v in s.items() if k != "seconds"} for s in res.searched]


@pytest.mark.slow
def test_lm_budget_gives_the_same_search_and_choice_at_any_speed_and_is_counted_exactly(trec, machine):
    index = trec[0]
    free_lm = machine(1e-3)
    free = FusionTuner(free_lm, TEMPLATE, **GRID).fit(index).result_
    # every configuration scored: the plain ones first (zero-shot, retrieved-2), then the rest cheapest first
    names = [(s["k"], s["candidates"], s["label_aware"]) for s in free.searched]
    assert names[:2] == [(0, None, False), (2, None, False)] and len(names) == 5 and not free.skipped
    extra_tokens = [s["lm_tokens"] for s in free.searched[2:]]
    assert extra_tokens == sorted(extra_tokens)
    # the accounting is exact: what the LM was fed, configuration by configuration
    assert free.lm_tokens == free_lm.tokens == sum(s["lm_tokens"] for s in free.searched)
    assert free.lm_budget is None and free.reproducible
    # a budget that holds the plain systems and exactly the cheapest other configuration
    budget = sum(s["lm_tokens"] for s in free.searched[:3])
    runs = []
    for cost in (1e-4, 50.0):  # a fast and a 500,000 times slower machine
        lm = machine(cost)
        res = FusionTuner(lm, TEMPLATE, lm_budget=budget, **GRID).fit(index).result_
        runs.append(res)
        assert res.lm_tokens == lm.tokens == budget
    fast, slow = runs
    assert slow.seconds > 1000 * fast.seconds  # the clock did differ
    assert dict(fast.params) == dict(slow.params)  # ... and the choice did not
    assert _searched(fast) == _searched(slow) == _searched(free)[:3]
    assert [dict(s) for s in fast.skipped] == [dict(s) for s in slow.skipped] and len(fast.skipped) == 2
    for s in fast.skipped:
        assert s["reason"].startswith("lm_budget: needs") and s["lm_tokens"] > 0
    assert fast.reproducible and slow.reproducible and "NOT REPRODUCIBLE" not in slow.reason
    assert f"{budget:,} LM tokens of an LM budget of {budget:,}" in fast.reason
    # one token less and the cheapest other configuration no longer fits
    short = FusionTuner(machine(1e-3), TEMPLATE, lm_budget=budget - 1, **GRID).fit(index).result_
    assert _searched(short) == _searched(free)[:2] and len(short.skipped) == 3
    js = short.to_json()
    assert js["lm_budget"] == budget - 1 and js["lm_tokens"] == sum(s["lm_tokens"] for s in short.searched)
    assert js["skipped"][0]["reason"].startswith("lm_budget") and js["reproducible"] is True


@pytest.mark.slow
def test_plain_systems_are_always_candidates(trec, machine):
    """A zero budget still scores zero-shot and retrieved-k over every label; the kNN votes k = 8 and 32,
    plain and weighted, are in the grid though knn_ks and temperatures hold none of them."""
    index = trec[0]
    grid = {**GRID, "knn_ks": (4,), "temperatures": (0.1,)}
    res = FusionTuner(machine(1.0), TEMPLATE, lm_budget=0, **grid).fit(index).result_
    assert [(s["k"], s["candidates"], s["label_aware"]) for s in res.searched] == [(0, None, False),
                                                                                 (2, None, False)]
    assert len(res.skipped) == 3
    assert set(res.baselines) == {"zero-shot", "retrieved-2", "kNN vote k=8", "kNN vote k=32",
                                  "kNN vote k=8 weighted", "kNN vote k=32 weighted"}
    assert res.dev_accuracy >= max(res.baselines.values())  # rule "best": nothing plain is better on dev


@pytest.mark.slow
def test_seconds_cap_warns_says_what_it_skipped_and_marks_the_result(trec, machine, caplog):
    index = trec[0]
    cap = 100.0
    with caplog.at_level(logging.WARNING, logger="ragicl.estimators.tune"):
        slow = FusionTuner(machine(1.0), TEMPLATE, max_seconds=cap, **GRID).fit(index).result_
    # the plain systems ran (their hundreds of tokens take longer than the cap at 1 s each), nothing else did
    assert [(s["k"], s["candidates"]) for s in slow.searched] == [(0, None), (2, None)]
    assert len(slow.skipped) == 3 and all(s["reason"].startswith("max_seconds") for s in slow.skipped)
    assert not slow.reproducible and "NOT REPRODUCIBLE" in slow.reason and slow.max_seconds == cap
    assert any("another machine may choose otherwise" in r.getMessage() for r in caplog.records)
    fast = FusionTuner(machine(1e-4), TEMPLATE, max_seconds=cap, **GRID).fit(index).result_
    assert not fast.skipped and fast.reproducible and len(fast.searched) == 5
    # time_budget is the deprecated name of the cap
    with pytest.warns(DeprecationWarning, match="time_budget"):
        old = FusionTuner(machine(1.0), TEMPLATE, time_budget=cap, **GRID).fit(index).result_
    assert old.max_seconds == cap and [dict(s) for s in old.skipped] == [dict(s) for s in slow.skipped]
    with pytest.raises(ValueError, match="not both"):
        FusionTuner(machine(1.0), TEMPLATE, time_budget=1, max_seconds=1).fit(index)
    with pytest.raises(ValueError, match="max_seconds"):
        FusionTuner(machine(1.0), TEMPLATE, max_seconds=-1).fit(index)
    with pytest.raises(ValueError, match="lm_budget"):
        FusionTuner(machine(1.0), TEMPLATE, lm_budget=2.5).fit(index)
    with pytest.raises(ValueError, match="rule"):
        FusionTuner(machine(1.0), TEMPLATE, rule="luck").fit(index)
    with pytest.warns(DeprecationWarning, match="min_dev_size"):
        res = FusionTuner(machine(1e-4), TEMPLATE, lm_budget=0, min_dev_size=5, **GRID).fit(index).result_
    assert res.n_dev == GRID["dev_size"]  # the dev set is never shrunk


@pytest.mark.slow
def test_unlabeled_queries_weigh_the_dev_queries_without_their_labels(trec, machine):
    from dataclasses import replace

    index, test = trec
    grid = {**GRID, "candidates": (None,), "label_aware": (False,)}
    plain = FusionTuner(machine(1e-4), TEMPLATE, **grid).fit(index).result_
    assert plain.shift is None
    got = FusionTuner(machine(1e-4), TEMPLATE, dev_weights="prior", **grid).fit(index, unlabeled=test)
    res = got.result_
    assert res.shift["n_unlabeled"] == len(test) and res.shift["weighting"] == "prior"
    assert "unlabeled queries" in res.reason and "weighted dev accuracy" in res.rule_reason
    # their labels are never read: the same queries labelled otherwise give the same result
    relabelled = [replace(ex, label=index.labels[0]) for ex in test.examples]
    again = FusionTuner(machine(1e-4), TEMPLATE, dev_weights="prior", **grid).fit(index, unlabeled=relabelled)
    assert dict(again.result_.params) == dict(res.params) and again.result_.shift == res.shift
    texts = [ex.inputs["text"] for ex in test.examples]  # plain strings do as well
    assert FusionTuner(machine(1e-4), TEMPLATE, dev_weights="prior", **grid).fit(
        index, unlabeled=texts).result_.shift == res.shift
    with pytest.raises(ValueError, match="unlabeled is empty"):
        FusionTuner(machine(1e-4), TEMPLATE, **grid).fit(index, unlabeled=[])
    with pytest.raises(ValueError, match="dev_weights"):
        FusionTuner(machine(1e-4), TEMPLATE, dev_weights="all").fit(index)
    assert np.isfinite(res.dev_accuracy)


@pytest.mark.slow
def test_the_tuner_chooses_the_retriever_too_and_says_which_and_by_how_much(trec, machine, tmp_path):
    """searches x selections: the tuner's own retriever makes the plain systems; BM25 is searched like the
    other configurations (within the budget), its prompts are BM25's, and the result names each retriever's
    best dev accuracy and the choice's."""
    from ragicl import FusionClassifier, ICLClassifier

    index = trec[0]
    grid = {**GRID, "label_aware": (False,)}
    tuner = FusionTuner(machine(1e-4), TEMPLATE, searches=("dense", "bm25"), **grid).fit(index)
    res = tuner.result_
    names = [(s["k"], s["candidates"], s.get("search")) for s in res.searched]
    assert names[:2] == [(0, None, None), (2, None, None)]  # the plain systems first, with the tuner's retriever
    assert set(names[2:]) == {(2, 2, None), (2, None, "bm25"), (2, 2, "bm25")} and len(names) == 5
    assert [s["lm_tokens"] for s in res.searched[2:]] == sorted(s["lm_tokens"] for s in res.searched[2:])
    # BM25 configurations are not plain systems: the baselines are the tuner's own retriever's
    assert set(res.baselines) == {"zero-shot", "retrieved-2", "kNN vote k=8", "kNN vote k=32",
                                  "kNN vote k=8 weighted", "kNN vote k=32 weighted"}
    # each retriever's best dev accuracy, recomputed from the trials (LM settings only)
    for name, search in (("dense", None), ("bm25", "bm25")):
        accs = [t.accuracy for t in res.trials if t.params.get("search") == search and t.params["k"]
                and t.params["knn_weight"] < 1.0]
        assert res.retrievers[name] == max(accs)
    assert list(res.retrievers) == ["dense", "bm25"]
    assert "best dev accuracy by retriever: dense" in res.reason and "bm25" in res.reason
    js = res.to_json()
    assert js["retrievers"] == dict(res.retrievers) and js["retriever"] in ("dense", "bm25")
    chosen = res.params.get("search", "dense")
    assert tuner.best_estimator_.search == chosen and tuner.best_estimator_.icl_.search == chosen
    # a BM25 prompt is BM25's: the same demonstrations ICLClassifier(search="bm25") retrieves
    dev = tuner.dev_queries(index)[:5]
    bm25 = FusionClassifier(machine(1e-4), TEMPLATE, k=2, search="bm25", candidates=None).fit(index)
    plain_bm25 = ICLClassifier(machine(1e-4), TEMPLATE, k=2, search="bm25").fit(index)
    dense = FusionClassifier(machine(1e-4), TEMPLATE, k=2, candidates=None).fit(index)
    got = [p.included for p in bm25.plan(dev).prompts]
    assert got == [p.included for p in plain_bm25.prompts(dev)]
    assert got != [p.included for p in dense.plan(dev).prompts]  # the hash embedder's neighbours differ
    # within a budget that holds only the plain systems, BM25 is skipped and said so
    tight = FusionTuner(machine(1e-4), TEMPLATE, searches=("dense", "bm25"), lm_budget=0, **grid).fit(index).result_
    assert [s.get("search") for s in tight.skipped].count("bm25") == 2
    assert all(s["reason"].startswith("lm_budget") for s in tight.skipped)
    with pytest.raises(ValueError, match="MDL"):
        FusionTuner(machine(1e-4), TEMPLATE, selections=("topk", "mdl")).fit(index)
    with pytest.raises(ValueError, match="unknown search"):
        FusionTuner(machine(1e-4), TEMPLATE, searches=("bm2",)).fit(index)
    with pytest.raises(ValueError, match="non-empty list"):
        FusionTuner(machine(1e-4), TEMPLATE, searches="bm25").fit(index)
