"""The cost of the fine-tuned folder's checks: save a real model through ``save_model`` and time its loads.

    python benchmarks/bench_finetune_load.py [--lm SmolLM2-135M-Instruct] [--repeat 3]

Rows (best of ``--repeat``): the record's digest and schema check (``read_finetune_record``); resolving with
sizes only (``finetuned_model_path(verify=False)``) and with every file's SHA-256 (the default, what
``TransformersLM("DIR").load()`` does); a whole ``TransformersLM`` load through the pointer, and of the version
folder given directly (which skips the checks). Also the save itself (``save_model``, hashing included).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", default="SmolLM2-135M-Instruct")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragicl.lm.hf import TransformersLM
    from ragicl.models import finetuned_model_path, read_finetune_record, resolve_lm
    from ragicl.training.checkpoint import save_model

    source = resolve_lm(args.lm)
    model = AutoModelForCausalLM.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ft"
        save = best(lambda: save_model(model, tokenizer, out, {"base": args.lm}), 1)
        version = finetuned_model_path(out)
        size = sum(p.stat().st_size for p in version.iterdir())
        rows = {
            "save_model (write, fsync, SHA-256 of every file)": save,
            "record: digest + schema": best(lambda: read_finetune_record(out), args.repeat * 100),
            "finetuned_model_path(verify=False): record + sizes": best(
                lambda: finetuned_model_path(out, verify=False), args.repeat * 100),
            "finetuned_model_path(): + SHA-256 of every file": best(lambda: finetuned_model_path(out), args.repeat),
            "TransformersLM(DIR).load(), checks included": best(
                lambda: TransformersLM(str(out), device="cpu", dtype="float32").load(), args.repeat),
            "TransformersLM(DIR/model-<id>).load(), no checks": best(
                lambda: TransformersLM(str(version), device="cpu", dtype="float32").load(), args.repeat),
        }
    print(f"{args.lm}: version folder of {size / 1e6:.0f} MB; best of {args.repeat} "
          f"(x100 for the record rows); load average {os.getloadavg()[0]:.1f}")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds * 1e3:.2f} ms |" if seconds < 0.1 else f"| {name} | {seconds:.2f} s |")


if __name__ == "__main__":
    main()
