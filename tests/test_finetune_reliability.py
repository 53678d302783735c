"""The fine-tuned model folder under faults (issue 35): kill -9 at every step of a save and at random moments,
readers during saves, concurrent savers, byte flips in every file (the record included), folders that are not
ragicl's, permissions, the flat layout of earlier versions and what its save left behind.

Subprocesses run tests/_finetune_worker.py (two same-size variants of a fake model, "a" and "b"), so the
battery takes seconds; test_a_real_model_round_trips saves a real (tiny, random) Llama through the layout.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import _finetune_worker as worker
import pytest

from ragicl.models import FinetuneFormatError, finetuned_model_path, resolve_lm, resolve_tokenizer
from ragicl.training import folder as ft_folder
from ragicl.training.checkpoint import read_meta

WORKER = Path(__file__).with_name("_finetune_worker.py")
COMMITTED = {"record-replaced", "checkpoint-removed", "cleaned"}  # steps after the commit: "b" is current


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _record(path: Path) -> dict:
    return json.loads((path / "ragicl_finetune.json").read_text())


def _assert_tidy(path: Path) -> None:
    """Only the record, the lock and the current and previous versions remain, nothing beside the folder."""
    record = _record(path)
    keep = {record["version"], record["previous_version"]} - {None}
    names = {p.name for p in path.iterdir()}
    assert names == {".lock", "ragicl_finetune.json"} | keep, names
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def _variant(path: Path) -> str:
    """The variant loaded from ``path``, checked against its record's."""
    loaded = worker.load(path)
    assert read_meta(path)["variant"] == loaded
    return loaded


# ---------------------------------------------------------------- kill -9 during a save
@pytest.mark.parametrize("step", ft_folder.SAVE_STEPS)
def test_kill_at_every_step_of_a_save_leaves_the_old_or_the_new_model(step, tmp_path):
    path = tmp_path / "ft"
    worker.save("a", path)
    done = _run("kill-at", step, str(path))
    assert done.returncode == -signal.SIGKILL, done.stderr  # it died at that step
    assert _variant(path) == ("b" if step in COMMITTED else "a")  # no manual recovery, no "no model"
    ft_folder.check_output(path)  # still accepted as ragicl's own folder
    worker.save("a", path)  # the next save removes what the killed one left
    assert _variant(path) == "a"
    _assert_tidy(path)


@pytest.mark.parametrize("step", ["model-written", "record-written"])
def test_kill_during_a_first_save_is_a_clear_error_then_a_clean_save(step, tmp_path):
    path = tmp_path / "ft"
    (path / "checkpoint").mkdir(parents=True)  # an interrupted run's checkpoint was there first
    (path / "checkpoint" / "state.pt").write_bytes(b"state")
    assert _run("kill-at", step, str(path)).returncode == -signal.SIGKILL
    with pytest.raises(FinetuneFormatError, match="no fine-tuned model at .*holds no ragicl_finetune.json"):
        worker.load(path)
    ft_folder.check_output(path)  # the leftovers are not mistaken for someone else's files
    worker.save("b", path)
    assert _variant(path) == "b"
    _assert_tidy(path)  # the checkpoint went with the final save, the killed save's folders too


def test_kill_at_random_moments_of_repeated_saves(tmp_path):
    """RAGICL_FT_KILLS=100 runs the issue's hundred kills (about a minute); each leaves a loadable folder and
    what it left is removed by the next save (checked after every kill)."""
    path = tmp_path / "ft"
    worker.save("a", path)
    rng = random.Random(0)
    kills, left = int(os.environ.get("RAGICL_FT_KILLS", "4")), 0
    for _ in range(kills):
        proc = _spawn("save-loop", "1000", str(path))
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert _variant(path) in {"a", "b"}
        left += sum(1 for p in path.iterdir() if p.name not in {".lock", "ragicl_finetune.json"}) - len(
            {_record(path)["version"], _record(path)["previous_version"]} - {None})
        worker.save("b", path)
        assert _variant(path) == "b"
        _assert_tidy(path)
    print(f"{kills} kills left {left} entries beyond the record's two versions; each removed by the next save")


def test_a_killed_state_write_leaves_a_temp_file_the_next_write_removes(tmp_path):
    from ragicl.training.checkpoint import checkpoint_path, load_state, save_state

    path = tmp_path / "ft"
    done = _run("state-kill", str(path))
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert [p.name.startswith(".state.pt.tmp-") for p in checkpoint_path(path).parent.iterdir()] == [True]
    assert load_state(path, "killed") is None  # the temp file is never read as a state
    ft_folder.check_output(path)
    save_state(path, {"step": 2, "fingerprint": "x"})
    assert [p.name for p in checkpoint_path(path).parent.iterdir()] == ["state.pt"]
    assert load_state(path, "x")["step"] == 2
    (checkpoint_path(path).parent / ".state.pt.k3j_9x2a").write_bytes(b"left by ragicl <= 0.1")
    worker.save("a", path)  # the final save removes the checkpoint, temp files included
    _assert_tidy(path)


# ---------------------------------------------------------------- concurrency
def _load_while(procs: list[subprocess.Popen], path: Path) -> tuple[int, set[str]]:
    loads, seen = 0, set()
    while any(p.poll() is None for p in procs) or loads == 0:
        seen.add(worker.load(path))  # every load is one whole variant, never a failure
        loads += 1
    return loads, seen


def test_a_reader_during_repeated_saves_sees_whole_versions(tmp_path):
    path = tmp_path / "ft"
    worker.save("a", path)
    saver = _spawn("save-loop", "60", str(path))
    assert saver.stdout.readline().strip() == "ready"
    loads, seen = _load_while([saver], path)
    _, err = saver.communicate()
    assert saver.returncode == 0, err
    assert loads > 0 and seen <= {"a", "b"}
    print(f"{loads} loads during 60 saves; versions seen: {sorted(seen)}")
    _assert_tidy(path)


def test_two_concurrent_savers_both_finish(tmp_path):
    path = tmp_path / "ft"
    savers = [_spawn("save-loop", "20", str(path)) for _ in range(2)]
    for proc in savers:
        assert proc.stdout.readline().strip() == "ready"
    while not (path / "ragicl_finetune.json").exists() and any(p.poll() is None for p in savers):
        time.sleep(0.005)
    _load_while(savers, path)
    for proc in savers:
        _, err = proc.communicate()
        assert proc.returncode == 0, err
    assert _variant(path) in {"a", "b"}
    _assert_tidy(path)


# ---------------------------------------------------------------- corruption
def test_every_byte_flip_of_the_record_is_an_error_or_the_original(tmp_path):
    path = tmp_path / "ft"
    worker.save("a", path)
    worker.save("b", path)  # a previous version exists: a flip that named it would load another model
    file = path / "ragicl_finetune.json"
    good = file.read_bytes()
    meta, model = read_meta(path), finetuned_model_path(path)
    outcomes = {"error": 0, "original": 0}
    for at in range(len(good)):
        for bit in (0x01, 0x20):
            data = bytearray(good)
            data[at] ^= bit
            file.write_bytes(bytes(data))
            try:
                same = (finetuned_model_path(path), read_meta(path), worker.load(path)) == (model, meta, "b")
            except FinetuneFormatError as err:
                assert "Fix:" in str(err)
                outcomes["error"] += 1
                continue
            assert same, f"byte {at} ^ {bit:#x} loaded something else: {bytes(data[max(0, at - 20):at + 20])!r}"
            outcomes["original"] += 1
    file.write_bytes(good)
    assert _variant(path) == "b"
    assert outcomes["error"] > 0.9 * 2 * len(good), outcomes
    print(f"{2 * len(good)} flips of the {len(good)}-byte record: {outcomes}")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                                  "tokenizer_config.json", "ragicl_finetune.json"])
def test_a_flipped_or_truncated_model_file_is_caught(tmp_path, name):
    path = tmp_path / "ft"
    worker.save("a", path)
    file = finetuned_model_path(path) / name
    good = file.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(FinetuneFormatError, match=f"{name} is corrupt: its SHA-256 differs"):
        worker.load(path)
    with pytest.raises(FinetuneFormatError, match="SHA-256 differs"):
        resolve_lm(str(path))
    assert finetuned_model_path(path, verify=False) == file.parent  # the explicit opt-out skips the hash
    file.write_bytes(good[:-1])
    with pytest.raises(FinetuneFormatError, match=f"{name} is {len(good) - 1} bytes; .* says {len(good)}"):
        worker.load(path)
    file.unlink()
    with pytest.raises(FinetuneFormatError, match=f"missing model-[0-9a-f]{{12}}/{name}"):
        worker.load(path)


def _rewrite(path: Path, **changes) -> None:
    """Change the record's fields and re-seal its digest (what a bug or a hand edit could produce)."""
    from ragicl._atomic import seal

    (path / "ragicl_finetune.json").write_text(json.dumps(seal({**_record(path), **changes})))


@pytest.mark.parametrize("changes, message", [
    ({"version": "../other/model-0123456789ab"}, "'version' must name a model-<12 hex digits> folder"),
    ({"version": "/tmp/model-0123456789ab"}, "'version' must name"),
    ({"previous_version": "../x"}, "'previous_version' must be null"),
    ({"files": {"../../etc/passwd": 3}, "checksums": {"../../etc/passwd": "sha256:" + "0" * 64}}, "file entry"),
    ({"format_version": 3}, "format_version 3; this ragicl reads 2"),
    ({"legacy_files": ["../thesis.tex"]}, "'legacy_files' must be a list of file names"),
])
def test_a_record_naming_paths_outside_the_folder_is_refused(tmp_path, changes, message):
    path = tmp_path / "ft"
    worker.save("a", path)
    _rewrite(path, **changes)
    with pytest.raises(FinetuneFormatError, match=message):
        worker.load(path)
    with pytest.raises(FinetuneFormatError, match=message):
        read_meta(path)


def test_links_in_place_of_a_version_or_its_files_are_refused(tmp_path):
    other = tmp_path / "other"
    worker.save("b", other)
    path = tmp_path / "ft"
    worker.save("a", path)
    version = finetuned_model_path(path)
    weights = version / "model.safetensors"
    weights.unlink()
    weights.symlink_to(finetuned_model_path(other) / "model.safetensors")
    with pytest.raises(FinetuneFormatError, match="model.safetensors is a symbolic link"):
        worker.load(path)
    os.rename(version, tmp_path / "moved")
    version.symlink_to(tmp_path / "moved")
    with pytest.raises(FinetuneFormatError, match=f"{version.name} is a symbolic link"):
        worker.load(path)


def test_a_removal_killed_midway_is_finished_by_the_next_save(tmp_path):
    path = tmp_path / "ft"
    worker.save("a", path)
    for prefix in ("model-", ".tmp-"):  # the marker goes last, so what a killed removal left is still marked
        left = path / f"{prefix}0123456789ab"
        left.mkdir()
        (left / ".ragicl-made").write_text("")
        (left / "model.safetensors").write_bytes(b"x" * 10)
    (path / "model-00000000000a").mkdir()  # emptied, not yet removed
    worker.save("b", path)
    _assert_tidy(path)


def test_a_damaged_record_does_not_stop_the_next_save(tmp_path):
    path = tmp_path / "ft"
    worker.save("a", path)
    (path / "ragicl_finetune.json").write_text("{not json")
    with pytest.raises(FinetuneFormatError, match="not readable JSON"):
        resolve_tokenizer(str(path))
    old = {p.name for p in path.iterdir() if p.name.startswith("model-")}
    worker.save("b", path)  # an unreadable record: every existing version is kept this time
    assert _variant(path) == "b" and old < {p.name for p in path.iterdir()}
    worker.save("a", path)
    _assert_tidy(path)


# ---------------------------------------------------------------- whose folder it is
def _users_folder(tmp_path: Path) -> Path:
    u = tmp_path / "u"
    (u / "sub").mkdir(parents=True)
    (u / "thesis.tex").write_text("thesis")
    (u / "sub" / "data.csv").write_text("x")
    os.chmod(u, 0o755)
    return u


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mode, p.read_bytes() if p.is_file() else None)
            for p in [folder, *folder.rglob("*")]}


def test_training_into_a_folder_of_other_files_is_refused_before_any_step(tmp_path):
    from ragicl.training.config import TrainConfig
    from ragicl.training.trainer import train_model

    u = _users_folder(tmp_path)
    before = _snapshot(u)

    def loss_fn(*args):
        raise AssertionError("a training step ran")

    with pytest.raises(FileExistsError, match=r"already holds files ragicl did not make \(sub/, thesis.tex\).*"
                                              r"refusing to train into it.*Fix: choose a new or empty folder"):
        train_model(object(), 4, loss_fn, config=TrainConfig(steps=1), kind="classification", longest=4, out=u)
    with pytest.raises(FileExistsError, match="already holds files ragicl did not make"):
        worker.save("a", u)  # save_model refuses it too
    assert _snapshot(u) == before  # nothing written, nothing removed, the mode kept


def test_train_reference_and_the_cli_refuse_it_before_loading_a_model(tmp_path, capsys):
    from ragicl.cli import main
    from ragicl.data import from_records
    from ragicl.training.reference import train_reference

    u = _users_folder(tmp_path)
    before = _snapshot(u)
    train = from_records([{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(20)])
    with pytest.raises(FileExistsError, match="already holds files ragicl did not make"):
        train_reference(train, lm="no-such/model-anywhere", out=u, steps=1)
    data = tmp_path / "a20.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n" for i in range(20)))
    assert main(["finetune", "--train", str(data), "--out", str(u), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "already holds files ragicl did not make (sub/, thesis.tex)" in err and "Traceback" not in err
    assert _snapshot(u) == before


def test_folders_of_ragicl_runs_are_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    ft_folder.check_output(tmp_path / "empty")
    ft_folder.check_output(tmp_path / "new")
    interrupted = tmp_path / "interrupted"  # what a run killed before its final save leaves
    (interrupted / "checkpoint").mkdir(parents=True)
    (interrupted / "checkpoint" / "state.pt").write_bytes(b"s")
    (interrupted / "checkpoint" / ".state.pt.tmp-0123456789ab").write_bytes(b"s")
    (interrupted / ".lock").touch()
    ft_folder.check_output(interrupted)
    previous = tmp_path / "previous"
    worker.save("a", previous)
    (previous / "NOTES.md").write_text("mine")
    ft_folder.check_output(previous)  # a previous output with the user's notes in it
    worker.save("b", previous)
    assert (previous / "NOTES.md").read_text() == "mine"
    with pytest.raises(FileExistsError, match="is not a folder"):
        ft_folder.check_output(previous / "NOTES.md")
    lookalike = tmp_path / "lookalike"  # ragicl's names, but not made by ragicl
    (lookalike / "model-0123456789ab").mkdir(parents=True)
    (lookalike / "model-0123456789ab" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"\(model-0123456789ab/\)"):
        ft_folder.check_output(lookalike)


def test_folders_named_like_ragicls_are_kept_by_saves(tmp_path):
    path = tmp_path / "ft"
    worker.save("a", path)
    for name in ("model-0123456789ab", ".tmp-0123456789ab", "model-notes", "checkpoint-old"):
        (path / name).mkdir()
        (path / name / "mine.txt").write_text(name)
    (path / ".ragicl_finetune.json.tmp-mine").write_text("mine")
    worker.save("b", path)
    worker.save("a", path)
    for name in ("model-0123456789ab", ".tmp-0123456789ab", "model-notes", "checkpoint-old"):
        assert (path / name / "mine.txt").read_text() == name
    assert (path / ".ragicl_finetune.json.tmp-mine").read_text() == "mine"
    assert _variant(path) == "a"


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_saved_with_a_plain_mkdirs_permissions(tmp_path, umask):
    from ragicl.training.checkpoint import save_state

    previous = os.umask(umask)
    try:
        save_state(tmp_path / "run", {"step": 1})
        worker.save("a", tmp_path / "deep" / "ft")
    finally:
        os.umask(previous)
    entries = [p for root in (tmp_path / "run", tmp_path / "deep") for p in [root, *root.rglob("*")]]
    assert len(entries) >= 12
    for entry in entries:  # folders as mkdir makes them, files as open() makes them
        assert entry.stat().st_mode & 0o777 == (0o777 if entry.is_dir() else 0o666) & ~umask, entry


# ---------------------------------------------------------------- the flat layout of ragicl <= 0.1
def _flat(path: Path, variant: str) -> Path:
    """A folder as the flat layout's save wrote it: the model files beside the record."""
    path.mkdir(parents=True)
    worker.FakeModel(variant).save_pretrained(path)
    worker.FakeModel(variant, "tokenizer").save_pretrained(path)
    (path / "ragicl_finetune.json").write_text(json.dumps({"variant": variant, "steps": 3}))
    return path


def test_flat_folders_still_load_and_convert_on_save(tmp_path):
    path = _flat(tmp_path / "ft", "a")
    (path / "NOTES.md").write_text("mine")
    assert _variant(path) == "a" and finetuned_model_path(path) == path and resolve_lm(str(path)) == str(path)
    worker.save("b", path)
    assert _variant(path) == "b"
    record = _record(path)
    assert record["previous_version"] is None and sorted(record["legacy_files"]) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert {p.name for p in path.iterdir()} == {".lock", "NOTES.md", "ragicl_finetune.json", record["version"]}
    worker.save("a", path)
    assert "legacy_files" not in _record(path) and (path / "NOTES.md").read_text() == "mine"


def test_a_flat_save_killed_between_its_renames_is_restored_and_its_copies_cleaned(tmp_path):
    """What 100 random kills of the flat layout's save left: the folder missing, the model in a hidden
    ``.ft-old-*`` copy, and full copies in ``.ft-tmp-*``/``.ft-old-*`` folders nothing removed."""
    _flat(tmp_path / ".ft-old-1a2b_c3d", "a")  # the first rename happened, not the second
    (tmp_path / ".ft-old-1a2b_c3d" / "checkpoint").mkdir()
    (tmp_path / ".ft-old-1a2b_c3d" / "checkpoint" / "state.pt").write_bytes(b"s")
    for i in range(3):
        _flat(tmp_path / f".ft-tmp-abcdef{i}x", "b")
    (tmp_path / ".ft-tmp-zzzzzzzz").mkdir()  # killed before save_pretrained wrote anything
    path = tmp_path / "ft"
    assert _variant(path) == "a"  # restored by the first reader
    assert (path / "checkpoint" / "state.pt").exists()
    _flat(tmp_path / ".ft-old-99999999", "b")  # a stale copy holding a user's file: left alone
    (tmp_path / ".ft-old-99999999" / "thesis.tex").write_text("mine")
    keep = {p.name for p in tmp_path.iterdir() if p.name in (".ft-old-99999999", "ft")}
    worker.save("b", path)
    assert {p.name for p in tmp_path.iterdir()} == keep
    assert (tmp_path / ".ft-old-99999999" / "thesis.tex").read_text() == "mine"
    assert _variant(path) == "b" and not (path / "checkpoint").exists()


# ---------------------------------------------------------------- a real model through the layout
def _tiny_llama(seed: int):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    words = ["<pad>", "<s>", "</s>", "<unk>", *[f"w{i}" for i in range(60)]]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    return LlamaForCausalLM(config).eval(), tok


def test_a_real_model_round_trips(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from ragicl.evaluation.compare import reference_training
    from ragicl.lm.hf import TransformersLM
    from ragicl.training.checkpoint import save_model

    out = tmp_path / "ft"
    ids = torch.tensor([[1, 5, 9, 17, 33]])
    logits = {}
    for seed in (0, 1):
        model, tok = _tiny_llama(seed)
        save_model(model, tok, out, {"base": "tiny", "steps": 2, "batch_size": 4, "converged": False,
                                     "fast": True, "seed": seed})
        with torch.inference_mode():
            logits[seed] = model(input_ids=ids).logits
    assert not torch.equal(logits[0], logits[1])
    lm = TransformersLM(str(out), device="cpu", dtype="float32").load()  # follows the pointer
    with torch.inference_mode():
        torch.testing.assert_close(lm.model(input_ids=ids).logits, logits[1], rtol=0, atol=0)
    assert lm.tokenizer("w3 w7")["input_ids"] == [7, 11]
    plain = AutoModelForCausalLM.from_pretrained(finetuned_model_path(out))  # plain transformers, documented
    with torch.inference_mode():
        torch.testing.assert_close(plain(input_ids=ids).logits, logits[1], rtol=0, atol=0)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in finetuned_model_path(out).iterdir()}
    record = reference_training("fine-tuned", type("System", (), {"lm": str(out)})())
    assert record["path"] == str(out) and "not converged: fast reference, 2 steps x 4" in record["note"]
    assert read_meta(out)["seed"] == 1
    _assert_tidy(out)
