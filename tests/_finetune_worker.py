"""Subprocess side of tests/test_finetune_reliability.py (not a test module; importing it does nothing).

    python tests/_finetune_worker.py kill-at STEP PATH    save variant "b" to PATH, SIGKILL itself at STEP
    python tests/_finetune_worker.py save-loop N PATH     save variants "a", "b", "a"... N times to PATH
    python tests/_finetune_worker.py state-kill PATH      write a training state to PATH/checkpoint, SIGKILL
                                                          itself once its temp file is written

Two variants of a fake fine-tuned model: the same files of the same sizes (a config, "weights", a generation
config, tokenizer files, the training record), each stamped with its variant all through, so a reader that
pairs one version's files with another's is caught by :func:`read_variant`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

WEIGHT_BYTES = 1 << 18  # 256 KiB: a save takes long enough for readers to overlap it


class FakeModel:
    """Stands in for a transformers model (and its tokenizer): ``save_pretrained`` writes variant files."""

    def __init__(self, variant: str, part: str = "model") -> None:
        self.variant, self.part = variant, part

    def save_pretrained(self, path) -> None:
        path, v = Path(path), self.variant
        if self.part == "model":
            (path / "config.json").write_text(json.dumps({"variant": v, "model_type": "fake"}))
            (path / "generation_config.json").write_text(json.dumps({"variant": v}))
            (path / "model.safetensors").write_bytes(v.encode() * WEIGHT_BYTES)
        else:
            (path / "tokenizer.json").write_text(json.dumps({"variant": v, "vocab": [v] * 64}))
            (path / "tokenizer_config.json").write_text(json.dumps({"variant": v}))


def save(variant: str, path) -> None:
    from ragicl.training.checkpoint import save_model

    save_model(FakeModel(variant), FakeModel(variant, "tokenizer"), path, {"variant": variant, "steps": 3})


def read_variant(path) -> str:
    """The variant every file of the model folder ``path`` holds; ``AssertionError`` if they differ."""
    path = Path(path)
    seen = {json.loads((path / name).read_text())["variant"]
            for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                         "ragicl_finetune.json")}
    weights = (path / "model.safetensors").read_bytes()
    seen |= set(weights.decode())
    assert len(weights) == WEIGHT_BYTES and len(seen) == 1, f"files of several versions in {path}: {seen}"
    return seen.pop()


def load(path) -> str:
    """Load the fine-tuned folder ``path`` the way ``TransformersLM`` does; its variant."""
    from ragicl.models import load_resolved

    return load_resolved(str(path), read_variant)


def main(argv: list[str]) -> int:
    from ragicl.training import folder

    mode, *args = argv
    if mode in ("kill-at", "state-kill"):
        step = args[0] if mode == "kill-at" else "state-written"

        def die(at: str) -> None:
            if at == step:
                os.kill(os.getpid(), signal.SIGKILL)

        folder.save_step = die
        if mode == "kill-at":
            save("b", args[1])
        else:
            from ragicl.training.checkpoint import save_state

            save_state(args[0], {"step": 7, "fingerprint": "killed"})
        return 3  # the step never came
    if mode == "save-loop":
        print("ready", flush=True)
        for i in range(int(args[0])):
            save("ab"[i % 2], args[1])
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
