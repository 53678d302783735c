#!/usr/bin/env python
"""Score every prompt configuration of FusionTuner's search once on its dev queries AND on a test sample.

For each dataset: the index (``--index-root``/NAME, built with the default embedder when missing), the tuner's
dev queries (``--dev-size`` training examples, seed 0, as ``FusionTuner`` draws them) and the test sample of
``ragicl eval --n N --seed 0``. Each configuration of ``FusionTuner(ks=(K,))`` (zero-shot, retrieved-K over
every label, candidate labels, label-aware order) is planned and scored by ``FusionClassifier`` on both,
exactly as the tuner scores dev queries, and saved as ``<out>/<dataset>/<config>.{dev,test}.npz`` (the LM's
label log-probabilities, the neighbours, the candidate masks, the gold labels, the LM tokens and seconds).
A rerun skips what is saved, so an interrupted run resumes. ``experiments/selection_rules.py`` then re-derives
every selection rule's choice from the dev files and scores it on the test files, with no LM::

    OMP_NUM_THREADS=1 python experiments/tune_scores.py --datasets sst2,cr --out runs/tune37/smollm2 --n 500
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np

logger = logging.getLogger("tune_scores")
GRID = ("candidates", "label_aware", "knn_ks", "temperatures", "weights", "calibrations")  # saved in meta.json


def config_name(cfg: dict) -> str:
    """File stem of a configuration: ``k8-all-plain``, ``k8-c4-aware``, ``k0-all-plain``."""
    cand = "all" if cfg["candidates"] is None else f"c{cfg['candidates']}"
    return f"k{cfg['k']}-{cand}-{'aware' if cfg['label_aware'] else 'plain'}"


def save_parts(path: Path, parts, y: np.ndarray, lm_tokens: int, seconds: float, cfg: dict) -> None:
    """One scored batch, written atomically (a crash leaves no half file)."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, lm_logp=parts.lm_logp, neighbor_labels=parts.neighbor_labels,
                        neighbor_scores=parts.neighbor_scores, candidates=parts.candidates, y=y,
                        lm_tokens=np.int64(lm_tokens), seconds=np.float64(seconds), config=json.dumps(cfg))
    os.replace(tmp, path)


def load_parts(path: Path):
    """``(FusionParts, y, info)`` of a file written by :func:`save_parts`."""
    from ragicl.estimators.fusion import FusionParts

    z = np.load(path)
    parts = FusionParts(z["lm_logp"], z["neighbor_labels"], z["neighbor_scores"], z["lm_logp"].shape[1],
                        z["candidates"])
    return parts, z["y"], {"lm_tokens": int(z["lm_tokens"]), "seconds": float(z["seconds"]),
                           "config": json.loads(str(z["config"]))}


def run_dataset(name: str, args: argparse.Namespace, lm) -> None:
    from ragicl import ExampleIndex, PromptTemplate, read_dataset
    from ragicl.estimators.tune import FusionTuner

    index_dir = Path(args.index_root) / name
    if (index_dir / "manifest.json").exists():
        index = ExampleIndex.load(index_dir, device="cpu")
    else:
        index = ExampleIndex.build(read_dataset(Path(args.data_dir) / name / "train.jsonl"), device="cpu")
        index.save(index_dir)
    test = read_dataset(Path(args.data_dir) / name / "test.jsonl")
    test = test.sample(args.n, seed=0) if args.n < len(test) else test
    template = PromptTemplate.default(index.dataset.input_fields)
    tuner = FusionTuner(lm, template, dev_size=args.dev_size, ks=(args.k,), seed=0,
                        max_prompt_tokens=args.max_prompt_tokens)
    score_all(index, list(test.examples), tuner, Path(args.out) / name,
              {"dataset": name, "lm": args.lm, "max_prompt_tokens": args.max_prompt_tokens})


def score_all(index, test: list, tuner, out: Path, meta: dict | None = None) -> None:
    """Every prompt configuration of ``tuner``'s search scored on its dev queries and on ``test`` (saved under
    ``out``; what is there already is kept). ``tuner.ks`` must hold one ``k``."""
    from ragicl.estimators.classifier import ICLClassifier
    from ragicl.estimators.fusion import FusionClassifier
    from ragicl.estimators.tune import lm_configs

    labels = tuple(index.labels)
    (k,) = tuner.ks
    dev = tuner.dev_queries(index)
    y_dev = np.array([labels.index(ex.label) for ex in dev])
    y_test = np.array([labels.index(ex.label) for ex in test])
    out.mkdir(parents=True, exist_ok=True)
    plain, extras = lm_configs(tuner.ks, tuner.candidates, tuner.label_aware, len(labels), tuner.max_full_labels)
    info = {"dataset": out.name, "labels": list(labels), "n_test": len(test), "dev_ids": [ex.id for ex in dev],
            "test_ids": [ex.id for ex in test], "k": k, "dev_size": tuner.dev_size,
            "plain": [config_name(c) for c in plain], "extras": [config_name(c) for c in extras],
            "grid": {name: list(getattr(tuner, name)) for name in GRID} | {"max_full_labels": tuner.max_full_labels},
            "commit": _commit(), "ragicl": str(Path(sys.modules["ragicl"].__file__).parent), **(meta or {})}
    (out / "meta.json").write_text(json.dumps(info, indent=1))
    icl = ICLClassifier(tuner.lm, tuner.template, k=k, max_prompt_tokens=tuner.max_prompt_tokens,
                        seed=tuner.seed).fit(index)
    depth = max(max(tuner.knn_ks), 32, 2 * icl.k_)
    for cfg in plain + extras:
        fc = FusionClassifier(tuner.lm, tuner.template, max_prompt_tokens=tuner.max_prompt_tokens, seed=tuner.seed,
                              candidate_mass=tuner.candidate_mass, **cfg)
        fc.fit(index, icl=icl)
        for split, queries, y in (("dev", dev, y_dev), ("test", test, y_test)):
            path = out / f"{config_name(cfg)}.{split}.npz"
            if path.exists():
                continue
            plan = fc.plan(queries, knn_k=depth)
            t0 = time.perf_counter()
            parts = fc.score(plan)
            seconds = time.perf_counter() - t0
            save_parts(path, parts, y, plan.lm_tokens, seconds, cfg)
            logger.info("%s %s %s: %d queries, %d LM tokens, %.0f s (%.2f s/query)", out.name, config_name(cfg),
                        split, len(queries), plan.lm_tokens, seconds, seconds / max(len(queries), 1))


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="sst2,cr,mr,subj,trec,cb,rte")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    p.add_argument("--index-root", default="indexes")
    p.add_argument("--out", default="runs/tune37/smollm2")
    p.add_argument("--lm", default="SmolLM2-135M-Instruct")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--dev-size", type=int, default=200)
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from ragicl.lm.hf import TransformersLM

    lm = TransformersLM(args.lm, show_progress=False)
    logger.info("ragicl from %s", Path(sys.modules["ragicl"].__file__).parent)
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        run_dataset(name, args, lm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
