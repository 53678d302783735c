"""``LexicalIndex``: BM25 over an index's examples (lexical retrieval), built with ``bm25s``.

The BM25 weights are computed by `bm25s <https://github.com/xhluca/bm25s>`_ (its tokenizer and its
sparse document-term matrix); queries are scored here in batches as one scipy sparse product
``scores = W · counts(query)`` (``W``: documents x vocabulary, each entry the term's BM25 weight in that
document), which is what ``bm25s`` computes per query. Install with ``pip install 'ragicl[retrieval]'``.

An :class:`~ragicl.index.core.ExampleIndex` holds one after ``index.build_lexical()`` and saves it inside
its version folder (``v-<id>/bm25/``, in ``bm25s``'s own file layout, so ``bm25s.BM25.load`` opens it too),
with every file's size and checksum in the manifest (docs/DESIGN.md, *Index*).

The texts are the index's query texts (the input fields joined by newlines), the same the embedder sees.
Ties are broken by position (lower first), so a search is deterministic. Documents that share no term with
the query score 0 (``bm25l``/``bm25+``: the same positive floor for all); they come after every matching one,
in position order.

>>> lex = LexicalIndex.build(["a red apple", "green apple pie", "blue sky"], stopwords=None)
>>> lex.search(["apple pie"], k=2).positions.tolist()
[[1, 0]]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import IndexFormatError, check_positive_int, require
from ..types import SearchResult

logger = logging.getLogger(__name__)

__all__ = ["BM25_METHODS", "LexicalIndex"]

#: the BM25 variants of ``bm25s`` (Kamphuis et al. 2020): term-frequency/idf formulas
BM25_METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
FOLDER = "bm25"  # inside a version folder
_QUERY_CHUNK = 256  # queries scored per sparse product (bounds the dense (N, chunk) result)


def _bm25s() -> Any:
    return require("bm25s", "retrieval", "bm25s")


def _check_params(k1: Any, b: Any, method: Any, stopwords: Any, lower: Any) -> None:
    if isinstance(k1, bool) or not isinstance(k1, (int, float)) or not np.isfinite(k1) or k1 < 0:
        raise ValueError(f"k1 must be a non-negative number (BM25 term-frequency saturation, usually 1.2-2.0), "
                         f"got {k1!r}.")
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 <= b <= 1.0:
        raise ValueError(f"b must be a number in [0, 1] (BM25 length normalisation, usually 0.75), got {b!r}.")
    if method not in BM25_METHODS:
        raise ValueError(f"unknown BM25 method {method!r}; valid: {list(BM25_METHODS)}.")
    if not (stopwords is None or isinstance(stopwords, str)
            or (isinstance(stopwords, (list, tuple)) and all(isinstance(w, str) for w in stopwords))):
        raise ValueError(f"stopwords must be None, a language name of bm25s ('en', 'english', 'de'...) or a list "
                         f"of words, got {stopwords!r}.")
    if not isinstance(lower, bool):
        raise ValueError(f"lower must be True or False, got {lower!r}.")  # noqa: TRY004 (one error type for every bad parameter)


class LexicalIndex:
    """BM25 over a list of texts: :meth:`build` (or :meth:`load`), then :meth:`search` / :meth:`scores`.

    Args:
        k1, b: the BM25 parameters (term-frequency saturation, length normalisation).
        method: the BM25 variant (:data:`BM25_METHODS`; default ``"lucene"``, as ``bm25s``).
        stopwords: words dropped from documents and queries: a ``bm25s`` language (``"en"``), a list, or None.
        lower: lowercase before tokenizing.
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75, method: str = "lucene",
                 stopwords: str | Sequence[str] | None = "en", lower: bool = True) -> None:
        _check_params(k1, b, method, stopwords, lower)
        self.k1, self.b, self.method, self.lower = float(k1), float(b), method, lower
        self.stopwords = list(stopwords) if isinstance(stopwords, (list, tuple)) else stopwords
        self._model: Any = None

    def __repr__(self) -> str:
        return (f"LexicalIndex({len(self) if self._model is not None else 'unbuilt'} documents, k1={self.k1}, "
                f"b={self.b}, method={self.method!r})")

    @property
    def params(self) -> dict[str, Any]:
        """The parameters (what the manifest records; ``LexicalIndex(**params)`` rebuilds the same index)."""
        return {"k1": self.k1, "b": self.b, "method": self.method, "stopwords": self.stopwords,
                "lower": self.lower}

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, texts: Sequence[str], **params: Any) -> LexicalIndex:
        """Tokenize ``texts`` and compute their BM25 weights (``params``: those of the constructor)."""
        self = cls(**params)
        texts = list(texts)
        if not texts:
            raise ValueError("cannot build a BM25 index over 0 texts; expected at least one.")
        bm25s = _bm25s()
        tokens = bm25s.tokenize(texts, lower=self.lower, stopwords=self.stopwords, return_ids=True,
                                show_progress=False)
        model = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        model.index(tokens, show_progress=False)
        self._model = model
        return self

    def __len__(self) -> int:
        self._require_built()
        return int(self._model.scores["num_docs"])

    def _require_built(self) -> None:
        if self._model is None:
            raise ValueError("this LexicalIndex is not built: use LexicalIndex.build(texts) or .load(folder).")

    @property
    def vocabulary_size(self) -> int:
        self._require_built()
        return len(self._model.vocab_dict)

    # ------------------------------------------------------------------ search
    def _query_matrix(self, texts: Sequence[str]) -> Any:
        """``(V, Q)`` sparse counts of each query's known tokens (unknown tokens are dropped)."""
        from scipy import sparse

        tokens = _bm25s().tokenize(list(texts), lower=self.lower, stopwords=self.stopwords, return_ids=False,
                                   show_progress=False)
        vocab = self._model.vocab_dict
        n_vocab = len(self._model.scores["indptr"]) - 1
        rows, cols = [], []
        for q, toks in enumerate(tokens):
            ids = [i for i in (vocab.get(t, -1) for t in toks if t) if 0 <= i < n_vocab]
            rows.extend(ids)
            cols.extend([q] * len(ids))
        data = np.ones(len(rows), dtype=np.float32)
        return sparse.csc_matrix((data, (rows, cols)), shape=(n_vocab, len(texts)))  # duplicates summed

    def _weights(self) -> Any:
        if getattr(self, "_csc", None) is None:
            from scipy import sparse

            s = self._model.scores
            n_vocab = len(s["indptr"]) - 1
            self._csc = sparse.csc_matrix((s["data"], s["indices"], s["indptr"]),
                                          shape=(int(s["num_docs"]), n_vocab))
        return self._csc

    def scores(self, texts: Sequence[str] | str) -> np.ndarray:
        """BM25 score of every document for each query, float32 ``(Q, N)``."""
        self._require_built()
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"queries[{i}] is a {type(t).__name__}; expected the query's text (a str).")
        weights, nnoc = self._weights(), getattr(self._model, "nonoccurrence_array", None)
        out = np.empty((len(texts), weights.shape[0]), dtype=np.float32)
        for start in range(0, len(texts), _QUERY_CHUNK):
            q = self._query_matrix(texts[start:start + _QUERY_CHUNK])
            out[start:start + q.shape[1]] = (weights @ q).toarray().T
            if nnoc is not None:  # bm25l / bm25+: the score every document gets for a term it lacks
                out[start:start + q.shape[1]] += (q.T @ np.asarray(nnoc, np.float32))[:, None]
        return out

    def search(self, texts: Sequence[str] | str, k: int,
               exclude: Sequence[Sequence[int]] | None = None) -> SearchResult:
        """The ``k`` best documents per query (positions, best first; ties by position), ``(Q, min(k, N))``.

        ``exclude``: per query, positions never returned (then rows may hold fewer: ``-1`` / ``-inf``).
        """
        k = check_positive_int("k", k)
        scores = self.scores(texts)
        n_q, n = scores.shape
        width = min(k, n)
        positions = np.full((n_q, width), -1, np.int64)
        out = np.full((n_q, width), -np.inf, np.float32)
        for i in range(n_q):
            row = scores[i]
            if exclude is not None and len(exclude[i]):
                row = row.copy()
                row[np.asarray(exclude[i], np.int64)] = -np.inf
            top = top_positions(row, width)
            positions[i, :len(top)], out[i, :len(top)] = top, row[top]
        return SearchResult(positions, out)

    # ------------------------------------------------------------------ persistence
    def write(self, folder: Path) -> list[str]:
        """Write the index into ``folder`` (``bm25s``'s layout; created, must not exist) and fsync nothing:
        the caller syncs. Returns the names of the files written."""
        self._require_built()
        self._model.save(str(folder), corpus=None, show_progress=False)
        return sorted(p.name for p in folder.iterdir())

    @classmethod
    def read(cls, folder: Path, params: Mapping[str, Any], count: int, *, mmap: bool = True) -> LexicalIndex:
        """Open what :meth:`write` wrote (``params``: :attr:`params` as recorded); ``IndexFormatError`` when
        the files do not hold ``count`` documents or do not parse."""
        try:
            self = cls(**dict(params))
        except (TypeError, ValueError) as err:
            raise IndexFormatError(f"the BM25 parameters recorded for {folder} are invalid: {err}") from None
        bm25s = _bm25s()
        try:
            model = bm25s.BM25.load(str(folder), mmap=mmap, load_corpus=False, show_progress=False)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise IndexFormatError(f"could not read the BM25 index in {folder}: {err!r}") from err
        s = model.scores
        n_vocab = len(s["indptr"]) - 1
        n_terms = len(model.vocab_dict)  # bm25s adds the empty token "" past the last column
        if int(s["num_docs"]) != count or not n_vocab <= n_terms <= n_vocab + 1 or len(s["data"]) != len(s["indices"]):
            raise IndexFormatError(f"the BM25 index in {folder} is inconsistent: {s['num_docs']} documents (the "
                                   f"index holds {count}), {n_vocab} columns for {n_terms} terms.")
        if model.method != self.method or float(model.k1) != self.k1 or float(model.b) != self.b:
            raise IndexFormatError(f"the BM25 index in {folder} was built with k1={model.k1}, b={model.b}, "
                                   f"method={model.method!r}; its manifest says {self.params}.")
        self._model = model
        return self


def top_positions(row: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest finite-or-not entries of ``row`` other than ``-inf``, best first, ties by
    position (lower first): the same result as a full stable sort, in O(N) plus O(k log k)."""
    valid = int(np.count_nonzero(row > -np.inf))
    k = min(k, valid)
    if k <= 0:
        return np.zeros(0, np.int64)
    if k < len(row):
        kth = np.partition(row, len(row) - k)[len(row) - k]  # the k-th largest value
        above = np.flatnonzero(row > kth)
        ties = np.flatnonzero(row == kth)[:k - len(above)]
        top = np.concatenate([above, ties])
    else:
        top = np.flatnonzero(row > -np.inf)
    return top[np.lexsort((top, -row[top]))].astype(np.int64)


def folder_files(folder: Path) -> dict[str, int]:
    """``{"bm25/<name>": size}`` for the files of a written lexical folder (what the manifest records)."""
    return {f"{FOLDER}/{p.name}": p.stat().st_size for p in sorted(folder.iterdir())}


def fsync_folder(folder: Path, fsync: Any) -> None:
    for p in sorted(folder.iterdir()):
        fsync(p)
    fsync(folder)


def library_version() -> str:
    return str(getattr(_bm25s(), "__version__", "?"))


def is_available() -> bool:
    """Whether ``bm25s`` can be imported (a saved BM25 part is skipped with a warning otherwise)."""
    import importlib.util

    return importlib.util.find_spec("bm25s") is not None

