"""Cost of the metadata checks on load (issue 35): the digest and schema check of ``manifest.json`` and
``estimator.json``, per load, next to the whole load they are part of.

    python benchmarks/bench_load_checks.py [--count 1000] [--labels 77] [--repeat 300]

Builds a hash-64 index of ``--count`` examples over ``--labels`` labels (the manifest lists every label,
so its size grows with them; 77 is Banking77's), saves it and a fitted ``ICLClassifier`` (a character-level
stand-in LM: loading an estimator never runs the model, and a real one would hide everything else), then
reports the median time of: the digest alone, the digest and schema check (``check_manifest``,
``check_estimator_json``), ``ExampleIndex.load`` (checksums verified, and with ``verify=False``) and
``ICLClassifier.load``. Run it with ``PYTHONPATH`` set to an older checkout to time the loads without the
checks (the check-only rows are skipped there). Results: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import ragicl
from ragicl import ICLClassifier, PromptTemplate
from ragicl.data import from_records
from ragicl.index.core import ExampleIndex


class _CharTokenizer:
    model_max_length, bos_token_id, chat_template = 100_000, 1, None

    def __call__(self, text, add_special_tokens=True):
        def enc(t: str) -> list[int]:
            return ([1] if add_special_tokens else []) + [ord(c) + 10 for c in t]

        return {"input_ids": [enc(t) for t in text] if isinstance(text, list) else enc(text)}

    def decode(self, ids):
        return "".join(chr(i - 10) for i in ids if i >= 10)


class _CharLM:
    name, context_length = "char-lm", 4096

    def __init__(self) -> None:
        self.tokenizer = _CharTokenizer()


def _median_us(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="examples in the index")
    parser.add_argument("--labels", type=int, default=77, help="distinct labels")
    parser.add_argument("--repeat", type=int, default=300, help="timed runs per row (median reported)")
    args = parser.parse_args()
    rows = [{"text": f"example {i} about topic {i % args.labels}", "label": f"label_{i % args.labels:03d}"}
            for i in range(args.count)]
    index = ExampleIndex.build(from_records(rows), embedder="hash-64", device="cpu")
    clf = ICLClassifier(_CharLM(), PromptTemplate("Text: {text}\nLabel: {label}"), k=4, device="cpu",
                        show_progress=False).fit(index)
    with tempfile.TemporaryDirectory() as tmp:
        ipath, epath = index.save(Path(tmp) / "idx"), clf.save(Path(tmp) / "clf")
        manifest, estimator = ipath / "manifest.json", epath / "estimator.json"
        print(f"ragicl {ragicl.__file__}; cpu count {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
        print(f"index: {args.count} examples, {args.labels} labels; manifest.json {manifest.stat().st_size} B, "
              f"estimator.json {estimator.stat().st_size} B")
        timed: list[tuple[str, object]] = []
        try:
            from ragicl import _atomic
            from ragicl.estimators import folder as _estimator_folder
            from ragicl.index._manifest import check_manifest
        except ImportError:
            print("(no metadata checks in this checkout: timing the loads only)")
        else:
            m, e = json.loads(manifest.read_text()), json.loads(estimator.read_text())
            timed += [("manifest.json: digest only", lambda: _atomic.check_digest(m)),
                      ("manifest.json: digest + schema", lambda: check_manifest(manifest, m, "")),
                      ("estimator.json: digest only", lambda: _atomic.check_digest(e)),
                      ("estimator.json: digest + schema",
                       lambda: _estimator_folder.check_estimator_json(ICLClassifier, estimator, e))]
        timed += [("ExampleIndex.load (checksums verified)", lambda: ExampleIndex.load(ipath, device="cpu")),
                  ("ExampleIndex.load(verify=False)", lambda: ExampleIndex.load(ipath, device="cpu", verify=False)),
                  ("ICLClassifier.load (stand-in LM)", lambda: ICLClassifier.load(epath, lm=_CharLM()))]
        for name, fn in timed:
            fn()  # warm up (page cache, imports)
            print(f"{name:42s} median {_median_us(fn, args.repeat):10.1f} us")


if __name__ == "__main__":
    main()
