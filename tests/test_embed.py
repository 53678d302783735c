"""Embedders: the hash fake (fast) and the real MiniLM model."""

from __future__ import annotations

import numpy as np
import pytest

from ragicl.index.embed import Embedder, HashEmbedder, SentenceTransformerEmbedder, get_embedder

TEXTS = ["the movie was wonderful and moving", "a wonderful, moving movie",
         "the quarterly tax report is due on friday"]


def test_hash_embedder_shape_norm_determinism():
    emb = HashEmbedder(dimension=48)
    x = emb.encode(TEXTS + [""])
    assert x.shape == (4, 48) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(x, HashEmbedder(dimension=48).encode(TEXTS + [""]))
    assert x[0] @ x[1] > x[0] @ x[2]
    assert emb.name == "hash-48" and emb.dimension == 48 and isinstance(emb, Embedder)
    assert emb.encode([]).shape == (0, 48)
    assert emb.encode("one text").shape == (1, 48)
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        emb.encode(["a", 3])


def test_get_embedder():
    assert isinstance(get_embedder("hash-32"), HashEmbedder) and get_embedder("hash").dimension == 64
    emb = HashEmbedder(8)
    assert get_embedder(emb) is emb
    st = get_embedder("all-MiniLM-L6-v2")
    assert isinstance(st, SentenceTransformerEmbedder) and st._model is None  # lazy: nothing loaded
    with pytest.raises(TypeError, match="lacking"):
        get_embedder(object())


def test_constructor_only_stores_params():
    emb = SentenceTransformerEmbedder("some/model-that-does-not-exist", device="cpu", batch_size=8)
    assert emb.name == "some/model-that-does-not-exist" and emb._model is None


@pytest.mark.slow
def test_minilm_real(minilm):
    x = minilm.encode(TEXTS)
    assert minilm.name == "all-MiniLM-L6-v2" and minilm.dimension == 384
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    assert x[0] @ x[1] > 0.7
    assert x[0] @ x[2] < 0.2
    # input order is kept although texts are length-sorted inside encode
    single = np.stack([minilm.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(x, single, atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)


def test_a_loaded_sentence_transformer_is_accepted_with_its_name():
    st = pytest.importorskip("sentence_transformers")
    from ragicl.models import DEFAULT_EMBEDDER, resolve_embedder

    model = st.SentenceTransformer(resolve_embedder(DEFAULT_EMBEDDER), device="cpu")
    emb = SentenceTransformerEmbedder(model)
    assert emb.name == DEFAULT_EMBEDDER and emb.is_loaded and emb.dimension == 384
    assert get_embedder(model).name == DEFAULT_EMBEDDER
    assert SentenceTransformerEmbedder(model, name="mine").name == "mine"
    x = emb.encode(TEXTS)
    np.testing.assert_array_equal(x, SentenceTransformerEmbedder(DEFAULT_EMBEDDER, device="cpu").encode(TEXTS))


def test_unavailable_devices_are_clear_errors():
    import torch

    from ragicl.index.embed import DeviceError, resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="unknown device 'tpu-ish'"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match=r"device 'cuda:0' asked for.*Fix: use device='cpu'"):
            SentenceTransformerEmbedder(device="cuda:0").load()
    else:
        with pytest.raises(DeviceError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        assert resolve_device("mps") == "mps"
    else:
        with pytest.raises(DeviceError, match="MPS backend is not available"):
            resolve_device("mps")


def test_unknown_embedder_fails_fast_and_clearly(monkeypatch):
    from ragicl import MissingDependencyError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingDependencyError, match=r"embedder 'no-such-embedder' cannot be loaded.*Fix:"):
        SentenceTransformerEmbedder("no-such-embedder", device="cpu").load()
