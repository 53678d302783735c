"""Encoders for the packer's per-query work: tokenizing the query block (``separator + query cue``).

The examples are tokenized once at :meth:`Packer.fit`, so the query block is the only text a pack tokenizes,
and it is most of a pack's cost. :meth:`Packer.fit` tries these encoders, fastest first, and keeps the first
that reproduces the tokenizer's ids (``tokenizer(text, add_special_tokens=False).input_ids``) on its checks:

* :class:`PieceEncoder`, for byte-level BPE tokenizers with the GPT-2 pre-tokenizer (SmolLM2, GPT-2, …). It
  splits a text with the pre-tokenizer's regex in Python and looks each piece's ids up in a table filled at
  fit from the pool's rendered examples (a piece not in the table goes to the Rust BPE model directly).
  Built only for that exact configuration (no normalizer, ``ByteLevel(add_prefix_space=False,
  use_regex=True)``, BPE without dropout), and used only on texts where Python's ``re`` and the
  tokenizer's regex engine provably split alike: printable ASCII plus tab, newline and carriage return,
  with no added token (``<|im_start|>``…) in the text. Other texts go to the next encoder. At fit it must
  reproduce the reference ids of every example text it covers, or it is not used.
* the Rust ``backend_tokenizer`` (``encode`` / ``encode_batch_fast``), skipping ``BatchEncoding``;
* the ``tokenizer(...)`` wrapper itself (the reference).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

EncodeOne = Callable[[str], list[int]]
EncodeMany = Callable[[list[str]], list[list[int]]]

# tokenizers' ByteLevel(use_regex=True) pattern is GPT-2's
#     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# On printable ASCII + \t\n\r (the only texts PieceEncoder takes) \p{L} is [A-Za-z], \p{N} is [0-9] and \s is
# [ \t\n\r], in Oniguruma and in Python alike, so this stdlib pattern splits those texts identically.
_GPT2_ASCII_SPLIT = re.compile(r"'(?:[st]|re|ve|m|ll|d)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+",
                               re.ASCII).findall
_UNCOVERED = re.compile(r"[^\t\n\r -~]").search


def _byte_level_table() -> dict[int, str]:
    """GPT-2's ``bytes_to_unicode`` restricted to ASCII, as a ``str.translate`` table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return {b: c for b, c in mapping.items() if b < 128}


class _PieceTable(dict):  # type: ignore[type-arg]
    """piece -> ids; a piece not in the table goes to the BPE model (and is not stored: the table is fixed at fit)."""

    def __init__(self, bpe: Callable[[str], list[int]]):
        super().__init__()
        self.bpe = bpe

    def __missing__(self, piece: str) -> list[int]:
        return self.bpe(piece)


class PieceEncoder:
    """Pre-tokenize in Python, BPE ids per piece from a table; exact only where :meth:`fit` verified it."""

    def __init__(self, model: Any, added: Sequence[str]):
        self._split = _GPT2_ASCII_SPLIT
        self._model = model
        self._translate = _byte_level_table()
        self._table = _PieceTable(self._bpe)
        self._added = tuple(a for a in added if a)
        first = {a[0] for a in self._added}
        self._added_first = first.pop() if len(first) == 1 else "".join(sorted(first))

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> PieceEncoder | None:
        """An encoder for ``tokenizer`` when its backend is exactly the supported configuration, else None."""
        try:
            from tokenizers import models, pre_tokenizers
        except ImportError:  # pragma: no cover - transformers' fast tokenizers need it
            return None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        pre, model = backend.pre_tokenizer, backend.model
        if (backend.normalizer is not None or not isinstance(pre, pre_tokenizers.ByteLevel) or pre.add_prefix_space
                or not pre.use_regex or not isinstance(model, models.BPE) or model.dropout):
            return None
        added = [a.content for a in backend.get_added_tokens_decoder().values()]
        return cls(model, added)

    def _bpe(self, piece: str) -> list[int]:
        return [t.id for t in self._model.tokenize(piece.translate(self._translate))]

    def covers(self, text: str) -> bool:
        """Printable ASCII + tab/newline/CR, and no added token in it."""
        if _UNCOVERED(text) is not None:
            return False
        first = self._added_first
        if len(first) == 1:  # the usual case: every added token starts with "<"
            return first not in text or not any(a in text for a in self._added)
        return not (first and any(c in text for c in first) and any(a in text for a in self._added))

    def fit(self, texts: Sequence[str], reference: Sequence[Sequence[int]]) -> bool:
        """Fill the table from ``texts`` and check every covered one against its ``reference`` ids."""
        table, bpe = self._table, self._bpe
        for text, ids in zip(texts, reference):
            if not self.covers(text):
                continue
            out: list[int] = []
            for piece in self._split(text):
                got = table.get(piece)
                if got is None:
                    got = table[piece] = bpe(piece)
                out += got
            if out != list(ids):
                self._table.clear()
                return False
        return True

    def encode(self, text: str) -> list[int] | None:
        """The ids of ``text``, or None when the text is outside what this encoder covers."""
        if not self.covers(text):
            return None
        return list(chain.from_iterable(map(self._table.__getitem__, self._split(text))))

    def encoders(self, one: EncodeOne, many: EncodeMany) -> tuple[EncodeOne, EncodeMany]:
        """This encoder in front of ``one``/``many``, which take the texts it does not cover."""
        encode = self.encode

        def encode_one(text: str) -> list[int]:
            ids = encode(text)
            return one(text) if ids is None else ids

        def encode_many(texts: list[str]) -> list[list[int]]:
            out = [encode(t) for t in texts]
            rest = [i for i, ids in enumerate(out) if ids is None]
            if rest:
                for i, ids in zip(rest, many([texts[i] for i in rest])):
                    out[i] = ids
            return out  # type: ignore[return-value]

        return encode_one, encode_many


def backend_encoders(tokenizer: Any) -> tuple[EncodeOne, EncodeMany] | None:
    """The Rust tokenizer directly (no offsets, no ``BatchEncoding``), when the tokenizer has one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode"):
        return None
    batch = getattr(backend, "encode_batch_fast", None) or backend.encode_batch

    def encode_one(text: str) -> list[int]:
        return backend.encode(text, add_special_tokens=False).ids

    def encode_many(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in batch(texts, add_special_tokens=False)] if texts else []

    return encode_one, encode_many


def candidate_encoders(tokenizer: Any, wrapper: tuple[EncodeOne, EncodeMany], texts: Sequence[str],
                       reference: Sequence[Sequence[int]]) -> list[tuple[str, EncodeOne, EncodeMany]]:
    """Encoders to try, fastest first, ending with the wrapper; the piece encoder only if it reproduced
    ``reference`` (the wrapper's ids of ``texts``, the pool's rendered examples) on every covered text."""
    out = [("wrapper", *wrapper)]
    backend = backend_encoders(tokenizer)
    if backend is not None:
        out.insert(0, ("backend", *backend))
        pieces = PieceEncoder.for_tokenizer(tokenizer)
        if pieces is not None and pieces.fit(texts, reference):
            out.insert(0, ("pieces", *pieces.encoders(*backend)))
    return out


def shared_ints(*groups: list[list[int]]) -> tuple[list[tuple[int, ...]], ...]:
    """The same id lists as tuples holding one ``int`` object per id value.

    Copying a prompt's cached ids is memory-bound: tokenizers return a fresh ``int`` per id, scattered over
    the heap, and each copy increments its reference count. Shared ``int`` objects keep those writes on a
    few hot cache lines, and a tuple keeps its items inline (one fewer pointer to chase than a list).
    Measured on SST-2 (budget 512, loaded machine): a few per cent of the per-prompt packing time.
    """
    values = [i for group in groups for ids in group for i in (min(ids, default=0), max(ids, default=0))]
    if values and min(values) < 0:
        return tuple([tuple(ids) for ids in group] for group in groups)
    canon = list(range(max(values, default=0) + 1))
    return tuple([tuple([canon[i] for i in ids]) for ids in group] for group in groups)
