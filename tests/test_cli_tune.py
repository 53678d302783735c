"""The tuner on the command line: ``--tune-budget`` in LM tokens (the same choice on any machine, checked with a
simulated fast clock and a slow, loaded one through ``ragicl tune`` and ``ragicl eval``), ``--tune-max-seconds``
(a cap that warns and marks the result), ``--tune-rule``, what changed for old seconds values, and the JSON
that says what was searched, skipped and why.
"""

from __future__ import annotations

import argparse
import json
import logging
import re

import pytest
from _clock import Clock, ClockedLM
from conftest import dataset_path

from ragicl.cli import build_parser, main
from ragicl.cli.options import default_tune, lm_tokens_value
from ragicl.cli.settings import BestOptions
from ragicl.estimators import tune
from ragicl.estimators.tune import FusionTuner
from ragicl.lm.factory import LMSpec

FAST, SLOW_LOADED = (1e-4, 0.0), (50.0, 5.0)  # seconds per LM token, mean stall per clock read


# ---------------------------------------------------------------- options (no LM)
def test_tune_budget_is_lm_tokens_and_old_seconds_values_say_what_changed():
    assert [lm_tokens_value(v) for v in ("614400", "600_000", "600k", "1.5M", "2G", "0", "none", "auto")] == [
        614_400, 600_000, 600_000, 1_500_000, 2_000_000_000, 0, None, "auto"]
    for seconds in ("600.0", "600s", "10 min", "1h", "0.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="no longer seconds.*--tune-max-seconds"):
            lm_tokens_value(seconds)
    with pytest.raises(argparse.ArgumentTypeError, match="write M for millions"):
        lm_tokens_value("10m")  # minutes or millions? refused
    for junk in ("-5", "lots", "1e6", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a number of LM tokens"):
            lm_tokens_value(junk)


def test_defaults_follow_the_library_and_scale_with_the_search(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["eval", "--index", "i", "--test", "t"])
    best = BestOptions.from_args(args)
    assert best.tune_budget == "auto" and best.tune_max_seconds is None
    assert best.tune_rule == default_tune("rule") == FusionTuner().rule
    # auto: (k tried + 3) x dev queries x prompt tokens; eval tries one k, `ragicl tune` three by default
    assert best.lm_budget(1, args.max_prompt_tokens) == (1 + 3) * 150 * 1024 == 614_400
    t = parser.parse_args(["tune", "--index", "i", "--dev-size", "40", "--max-prompt-tokens", "512"])
    assert BestOptions.from_args(t).lm_budget(len(t.ks.split(",")), 512) == (3 + 3) * 40 * 512
    plain = {"search": "dense", "selection": "topk", "searches": None, "selections": None}
    assert best.tuner_kwargs(1, 1024) == {"dev_size": 150, "lm_budget": 614_400, "max_seconds": None,
                                          "rule": default_tune("rule"), "vote_dev_size": None, **plain}
    given = BestOptions.from_args(parser.parse_args(["eval", "--index", "i", "--test", "t", "--tune-budget", "1.5M",
                                                     "--tune-max-seconds", "30", "--tune-rule", "one-se"]))
    assert given.tuner_kwargs(1, 1024) == {"dev_size": 150, "lm_budget": 1_500_000, "max_seconds": 30.0,
                                           "rule": "one-se", "vote_dev_size": None, **plain}
    unlimited = BestOptions.from_args(parser.parse_args(["tune", "--index", "i", "--tune-budget", "none"]))
    assert unlimited.lm_budget(3, 1024) is None
    # what a saved predictions file records of the tuned system: a change re-tunes it
    assert given.identity(1, 1024) == {"lm_budget": 1_500_000, "max_seconds": 30.0, "rule": "one-se"}
    assert best.identity(1, 1024) != given.identity(1, 1024)


def test_tune_search_and_selection_lists_grow_the_auto_budget_and_the_identity():
    parser = build_parser()
    args = parser.parse_args(["eval", "--index", "i", "--test", "t", "--search", "bm25",
                              "--tune-search", "dense,bm25, hybrid", "--tune-selection", "topk,mmr"])
    best = BestOptions.from_args(args)
    assert best.tune_searches == ("dense", "bm25", "hybrid") and best.tune_selections == ("topk", "mmr")
    assert best.other_retrievers("bm25", "topk") == 5  # 3 x 2 pairs, bm25 + topk being the plain systems'
    kwargs = best.tuner_kwargs(1, 1024, "bm25", "topk")
    assert kwargs["lm_budget"] == (1 * (1 + 5) + 3) * 150 * 1024  # one retrieved-k more per other retriever
    assert (kwargs["search"], kwargs["searches"], kwargs["selections"]) == ("bm25", ("dense", "bm25", "hybrid"),
                                                                            ("topk", "mmr"))
    assert FusionTuner(**{k: kwargs[k] for k in ("search", "searches", "selections")}).retrievers()[0] == (
        "bm25", "topk")
    plain = BestOptions.from_args(parser.parse_args(["eval", "--index", "i", "--test", "t"]))
    assert best.identity(1, 1024, "bm25", "topk")["searches"] == ["dense", "bm25", "hybrid"]
    assert "searches" not in plain.identity(1, 1024)  # a saved predictions file without them still matches


@pytest.mark.parametrize("argv, expected", [
    (["--tune-search", "dense,bm2"], ["--tune-search", "'bm2' is not one", "dense, bm25, hybrid"]),
    (["--tune-search", ","], ["--tune-search", "expected a comma-separated list"]),
    (["--tune-selection", "topk,mdl"], ["--tune-selection", "'mdl' is not one", "votek"]),
    (["--tune-budget", "600.0"], ["--tune-budget", "no longer seconds", "--tune-max-seconds"]),
    (["--tune-budget", "600s"], ["--tune-budget", "no longer seconds"]),
    (["--tune-rule", "luck"], ["--tune-rule", "invalid choice", "one-se"]),
    (["--tune-max-seconds", "0"], ["--tune-max-seconds"]),
])
def test_bad_tuning_options_exit_2_naming_the_option(argv, expected, capsys):
    for command in (["eval", "--index", "i", "--test", "t"], ["tune", "--index", "i"]):
        with pytest.raises(SystemExit) as exit_:
            main(command + argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        for text in expected:
            assert text in err, err


# ---------------------------------------------------------------- the same command on two machines
@pytest.fixture(scope="module")
def trec_cli(tmp_path_factory):
    """A 120-question TREC index (hash embedder) on disk and 10 held-out questions, as the CLI reads them."""
    from ragicl import read_dataset

    root = tmp_path_factory.mktemp("trec-cli")
    data = read_dataset(dataset_path("trec"), name="trec").sample(130, seed=1)
    for name, rows in (("train", data.examples[:120]), ("test", data.examples[120:])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({**ex.inputs, "label": ex.label}) + "\n"
                                                    for ex in rows))
    assert main(["index", "build", str(root / "train.jsonl"), "--out", str(root / "idx"),
                 "--embedder", "hash-64"]) == 0
    return root


@pytest.fixture(scope="module")
def replay():
    return {}


@pytest.fixture()
def machine(smollm_lm, replay, monkeypatch):
    """``machine((seconds_per_token, stall))``: the CLI's LM is the real one on a fresh simulated clock."""
    def make(speed: tuple[float, float]) -> ClockedLM:
        clock = Clock(stall=speed[1], seed=7)
        lm = ClockedLM(smollm_lm, clock, speed[0], replay)
        monkeypatch.setattr(tune, "_now", clock)
        monkeypatch.setattr(LMSpec, "build", lambda self, **kw: lm)
        return lm
    return make


def _tune(root, smollm_path, out, *extra):
    argv = ["tune", "--index", str(root / "idx"), "--ks", "2", "--dev-size", "12", "--max-prompt-tokens", "256",
            "--lm", smollm_path, "--json", str(out), *extra]
    assert main(argv) == 0
    return json.loads(out.read_text())


def _search(js):
    """What was searched and skipped, without the (machine-dependent) seconds."""
    return ([{k: v for k, v in s.items() if k != "seconds"} for s in js["searched"]], js["skipped"])


def _budget_for_one_extra(free):
    """The LM budget holding the plain systems (zero-shot, retrieved-2) and the cheapest other configuration."""
    assert [(s["k"], s["candidates"], s["label_aware"]) for s in free["searched"][:2]] == [(0, None, False),
                                                                                        (2, None, False)]
    assert len(free["searched"]) == 5 and not free["skipped"]  # 6 labels: every label label-aware, 4 candidates x 2
    return sum(s["lm_tokens"] for s in free["searched"][:3])


@pytest.mark.slow
def test_ragicl_tune_chooses_the_same_on_a_fast_and_a_slow_loaded_machine(trec_cli, smollm_path, machine, tmp_path,
                                                                         capsys, caplog):
    lm = machine(FAST)
    free = _tune(trec_cli, smollm_path, tmp_path / "free.json", "--tune-budget", "none")
    assert free["lm_budget"] is None and free["lm_tokens"] == lm.tokens
    budget = _budget_for_one_extra(free)
    runs = []
    for speed in (FAST, SLOW_LOADED):
        lm = machine(speed)
        js = _tune(trec_cli, smollm_path, tmp_path / f"{speed[0]}.json", "--tune-budget", str(budget))
        assert js["lm_budget"] == js["lm_tokens"] == lm.tokens == budget and js["reproducible"] is True
        assert js["max_seconds"] is None and js["rule"] == default_tune("rule")
        runs.append(js)
    fast, slow = runs
    assert slow["seconds"] > 1000 * fast["seconds"]  # the machines did differ ...
    assert fast["params"] == slow["params"]  # ... the choice did not
    assert _search(fast) == _search(slow) and _search(fast)[0] == _search(free)[0][:3]
    assert len(fast["skipped"]) == 2 and all(s["reason"].startswith("lm_budget: needs") for s in fast["skipped"])
    table = capsys.readouterr().out  # the printed table names what was skipped and why
    assert "skipped: k=2, " in table and "lm_budget: needs" in table and f"of an LM budget of {budget:,}" in table

    # the default (auto) budget: (1 k + 3) x 12 dev queries x 256 prompt tokens
    machine(SLOW_LOADED)
    auto = _tune(trec_cli, smollm_path, tmp_path / "auto.json")
    assert auto["lm_budget"] == 4 * 12 * 256 and auto["reproducible"] is True
    cost = [s["lm_tokens"] for s in free["searched"]]
    expected = 2 + sum(1 for i in range(3, 6) if sum(cost[:i]) <= auto["lm_budget"])  # cheapest first
    assert len(auto["searched"]) == expected and len(auto["skipped"]) == 5 - expected

    # a seconds cap on the slow machine: what it skipped, a warning, and the result marked
    machine(SLOW_LOADED)
    with caplog.at_level(logging.WARNING, logger="ragicl"):
        capped = _tune(trec_cli, smollm_path, tmp_path / "capped.json", "--tune-budget", "none",
                       "--tune-max-seconds", "100")
    assert capped["max_seconds"] == 100 and capped["reproducible"] is False
    assert len(capped["searched"]) == 2 and len(capped["skipped"]) == 3
    assert all(s["reason"].startswith("max_seconds: about") for s in capped["skipped"])
    assert "NOT REPRODUCIBLE" in capped["reason"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "--tune-max-seconds 100: the search now depends on this machine's speed" in messages
    assert "another machine may choose otherwise" in messages


@pytest.mark.slow
def test_ragicl_eval_chooses_the_same_on_both_machines_and_its_json_says_what_was_searched(
        trec_cli, smollm_path, machine, tmp_path, capsys, caplog, monkeypatch):
    machine(FAST)
    budget = _budget_for_one_extra(_tune(trec_cli, smollm_path, tmp_path / "free.json", "--tune-budget", "none"))

    def evaluate(out, *extra):
        assert main(["eval", "--index", str(trec_cli / "idx"), "--test", str(trec_cli / "test.jsonl"), "--n", "4",
                     "--k", "2", "--max-prompt-tokens", "256", "--lm", smollm_path, "--dev-size", "12",
                     "--json", str(out), *extra]) == 0
        return json.loads(out.read_text()), capsys.readouterr().out

    runs = []
    for speed in (FAST, SLOW_LOADED):
        machine(speed)
        runs.append(evaluate(tmp_path / f"eval-{speed[0]}.json", "--tune-budget", str(budget)))
    (fast, fast_out), (slow, slow_out) = runs
    assert slow["tune"]["seconds"] > 1000 * fast["tune"]["seconds"]
    assert fast["tune"]["params"] == slow["tune"]["params"] and _search(fast["tune"]) == _search(slow["tune"])
    best = [{s["name"]: s["accuracy"]["estimate"] for s in r["systems"]}["ragicl best"] for r in (fast, slow)]
    assert best[0] == best[1]
    tuned = fast["tune"]
    assert tuned["lm_budget"] == tuned["lm_tokens"] == budget and tuned["reproducible"] is True
    assert len(tuned["searched"]) == 3 and len(tuned["skipped"]) == 2 and tuned["rule"] == default_tune("rule")
    assert tuned["rule_reason"] and tuned["baselines"] and tuned["n_trials"] > 0 and "trials" not in tuned
    assert tuned["shift"] is None  # the default rule does not weigh by the test inputs: they are not passed
    # the printed table's note says what was searched, what was skipped and why it chose
    note, slow_note = (next(line for line in out.splitlines() if line.startswith("note: ragicl best = "))
                       for out in (fast_out, slow_out))
    assert re.sub(r" in \d+ s \(", "", note) == re.sub(r" in \d+ s \(", "", slow_note)  # all but the seconds
    assert "searched 3 LM configuration(s) (zero-shot; k=2; " in note and "2 skipped (" in note
    assert f"rule {default_tune('rule')!r}: " in note and "lm_budget: needs" in note

    # an old seconds value (60) is 60 LM tokens now: the plain systems alone, with a warning saying so
    machine(FAST)
    with caplog.at_level(logging.WARNING, logger="ragicl"):
        old, _ = evaluate(tmp_path / "old.json", "--tune-budget", "60")
    assert old["tune"]["lm_budget"] == 60 and len(old["tune"]["searched"]) == 2
    assert any("--tune-budget 60 is LM tokens (it used to be seconds)" in r.getMessage() and
               "--tune-max-seconds" in r.getMessage() for r in caplog.records)

    # where the library's default rule does use unlabeled queries, eval hands it the test inputs
    from ragicl.cli import systems

    machine(FAST)
    monkeypatch.setattr(systems, "uses_unlabeled", lambda: True)
    weighed, _ = evaluate(tmp_path / "unlabeled.json", "--tune-budget", str(budget))
    assert weighed["tune"]["shift"]["n_unlabeled"] == 4
    assert weighed["tune"]["params"] == tuned["params"]  # dev_weights "none": described, not weighted


@pytest.mark.slow
def test_ragicl_eval_and_tune_let_the_tuner_choose_the_retriever(trec_cli, smollm_path, machine, tmp_path, capsys):
    machine(FAST)
    out = tmp_path / "eval.json"
    assert main(["eval", "--index", str(trec_cli / "idx"), "--test", str(trec_cli / "test.jsonl"), "--n", "4",
                 "--k", "2", "--max-prompt-tokens", "256", "--lm", smollm_path, "--dev-size", "12",
                 "--tune-budget", "none", "--tune-search", "dense,bm25", "--json", str(out)]) == 0
    js = json.loads(out.read_text())
    tuned = js["tune"]
    assert list(tuned["retrievers"]) == ["dense", "bm25"] and tuned["retriever"] in ("dense", "bm25")
    bm25 = [s for s in tuned["searched"] if s.get("search") == "bm25"]
    assert sorted((s["k"], s["candidates"] or 0) for s in bm25) == [(2, 0), (2, 4)]  # every label; 4 of 6
    note = " ".join(js["notes"])
    assert "best dev accuracy by retriever: dense" in note
    # the plain rows keep eval's own retriever; only 'ragicl best' may use another
    assert {s["name"] for s in js["systems"]} >= {"retrieved-2", "ragicl best"}
    capsys.readouterr()
    # ragicl tune: --search makes the plain systems, the list adds the others
    js = _tune(trec_cli, smollm_path, tmp_path / "tune.json", "--tune-budget", "none", "--search", "bm25",
               "--tune-search", "bm25,dense")
    assert list(js["retrievers"]) == ["bm25", "dense"]
    assert all(s.get("search") in (None, "dense") for s in js["searched"])
    assert "best dev accuracy by retriever: bm25" in capsys.readouterr().out
