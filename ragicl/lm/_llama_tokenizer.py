"""The tokenizer of a :class:`ragicl.lm.llamacpp.LlamaCppLM`: ids exactly llama.cpp's own.

The packer counts tokens with ``lm.tokenizer`` (an HF-tokenizer API: ``tokenizer(text)["input_ids"]``,
``decode``, ``convert_ids_to_tokens``, ``get_vocab``, the special-token ids, ``model_max_length``, a chat
template), so a llama.cpp LM needs a tokenizer whose ids are the ids llama.cpp gives the same text.

* :func:`hf_from_gguf` extracts the ``transformers`` tokenizer stored in the GGUF file (the same extraction
  :mod:`ragicl.models` caches for the packaged default models), cached per file under
  ``$RAGICL_CACHE/tokenizers``: the full HF API, fast Rust encoders, chat templates;
* :func:`agrees` checks it against ``Llama.tokenize`` on a probe text (ASCII, whitespace runs, digits,
  accents, CJK, emoji, zero-width and no-break spaces, and every special token of the vocabulary written
  out as text), with and without the special tokens the tokenizer adds;
* :class:`LlamaTokenizer` is the fallback: a thin HF-style adapter over ``Llama.tokenize`` / ``detokenize``
  (exact by construction, no chat template), used when ``transformers`` cannot read the GGUF's tokenizer or
  the two disagree.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PROBE = ("Review: a gripping, beautifully shot film\nSentiment: positive\n\n  leading  spaces\t\ttabs\n\n\n"
         "naïve café – “quotes” 日本語のテキスト 😀 émigré Ünïcödé ÿ\u00a0no-break\u200bzero-width "
         "1234567 3.14159 $5,000 don't won't I'm " + "a" * 40 + " \n")


class Encoding(dict):
    """What ``tokenizer(text)`` returns: a dict with ``input_ids`` (and ``attention_mask``), also as
    attributes (``.input_ids``), like ``transformers``' ``BatchEncoding``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


class LlamaTokenizer:
    """An HF-style tokenizer over llama.cpp's own. ``llama`` is a ``llama_cpp.Llama`` (``vocab_only`` is
    enough) or a function returning a live one (:class:`~ragicl.lm.llamacpp.LlamaCppLM` passes its own, so
    the tokenizer keeps working after the LM was closed and reloaded). ``add_special_tokens=True`` adds what
    the GGUF says to add (its ``add_bos_token`` flag); special tokens written in the text are parsed as
    special tokens, as ``transformers`` does."""

    chat_template = None
    padding_side = "left"

    def __init__(self, llama: Any, name: str, model_max_length: int) -> None:
        from llama_cpp import llama_cpp as C

        self._source = (lambda: llama) if hasattr(llama, "tokenize") else llama
        llama = self._source()
        self.name_or_path = name
        self.model_max_length = int(model_max_length)
        vocab = C.llama_model_get_vocab(llama.model)
        self._n = int(llama.n_vocab())
        self._pieces = [C.llama_vocab_get_text(vocab, i).decode("utf-8", errors="replace") for i in range(self._n)]
        self._control = frozenset(i for i in range(self._n) if C.llama_vocab_is_control(vocab, i))

        def tok(value: int) -> int | None:
            return int(value) if 0 <= int(value) < self._n else None

        self.bos_token_id = tok(C.llama_vocab_bos(vocab)) if C.llama_vocab_get_add_bos(vocab) else None
        self.eos_token_id = tok(C.llama_vocab_eos(vocab))
        self.pad_token_id = tok(C.llama_vocab_pad(vocab))
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id
        for role in ("bos", "eos", "pad"):
            value = getattr(self, f"{role}_token_id")
            setattr(self, f"{role}_token", None if value is None else self._pieces[value])

    # ------------------------------------------------------------------ the HF-tokenizer API ragicl uses
    def encode(self, text: str, add_special_tokens: bool = True, **_: Any) -> list[int]:
        """Token ids of ``text`` (llama.cpp's ``tokenize``)."""
        if not isinstance(text, str):
            raise TypeError(f"expected text, got {type(text).__name__}.")
        if not text and not add_special_tokens:
            return []
        return list(self._source().tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True))

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True, **_: Any) -> Encoding:
        if isinstance(text, str):
            ids: Any = self.encode(text, add_special_tokens)
            return Encoding(input_ids=ids, attention_mask=[1] * len(ids))
        ids = [self.encode(t, add_special_tokens) for t in text]
        return Encoding(input_ids=ids, attention_mask=[[1] * len(i) for i in ids])

    def decode(self, ids: Sequence[int] | Any, skip_special_tokens: bool = False, **_: Any) -> str:
        """Text of ``ids`` (llama.cpp's ``detokenize``; control tokens dropped with ``skip_special_tokens``)."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._control]
        return self._source().detokenize(ids, special=True).decode("utf-8", errors="replace")

    def batch_decode(self, seqs: Sequence[Sequence[int]], skip_special_tokens: bool = False, **_: Any) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in seqs]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self._pieces[ids]
        return [self._pieces[int(i)] for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        vocab = self.get_vocab()
        if isinstance(tokens, str):
            return vocab[tokens]
        return [vocab[t] for t in tokens]

    def get_vocab(self) -> dict[str, int]:
        """Token piece → id (the first id of a piece that occurs twice)."""
        out: dict[str, int] = {}
        for i, piece in enumerate(self._pieces):
            out.setdefault(piece, i)
        return out

    @property
    def all_special_ids(self) -> list[int]:
        return sorted(self._control)

    @property
    def vocab_size(self) -> int:
        return self._n

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"LlamaTokenizer({self.name_or_path!r}, vocab={self._n})"


def special_texts(llama: Any) -> list[str]:
    """The text of every control token of ``llama``'s vocabulary (at most 64 of them)."""
    from llama_cpp import llama_cpp as C

    vocab = C.llama_model_get_vocab(llama.model)
    out = []
    for i in range(int(llama.n_vocab())):
        if C.llama_vocab_is_control(vocab, i):
            text = C.llama_vocab_get_text(vocab, i).decode("utf-8", errors="replace")
            if text:
                out.append(text)
            if len(out) >= 64:
                break
    return out


def agrees(tokenizer: Any, llama: Any) -> str | None:
    """None when ``tokenizer`` gives llama.cpp's ids on the probe text (with and without the special tokens
    it adds, plain and with the vocabulary's special tokens spelled out); else what differs."""
    texts = [PROBE, " ".join(special_texts(llama)) + " " + PROBE, " positive", "x"]
    for text in texts:
        for add in (True, False):
            got = list(tokenizer(text, add_special_tokens=add)["input_ids"])
            want = list(llama.tokenize(text.encode("utf-8"), add_bos=add, special=True))
            if got != want:
                first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                return (f"on {text[:40]!r}... (add_special_tokens={add}) the tokenizer gives {got[first:first + 5]} "
                        f"at position {first} where llama.cpp gives {want[first:first + 5]}")
    return None


def file_key(path: str | os.PathLike) -> str:
    """A cache name for the GGUF file ``path``: its stem and a digest of its absolute path, size and mtime."""
    p = Path(path).resolve()
    st = p.stat()
    digest = hashlib.sha256(f"{p}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"gguf-{p.stem[:60]}-{digest}"


def hf_from_gguf(path: str | os.PathLike, cache_name: str | None = None) -> Any:
    """The ``transformers`` tokenizer stored in the GGUF file ``path``, extracted once into
    ``$RAGICL_CACHE/tokenizers/<cache_name>`` (default :func:`file_key`) and loaded from there.
    Raises whatever ``transformers`` raises for a tokenizer it cannot read."""
    from transformers import AutoTokenizer

    from ragicl.models import _tokenizer_only

    p = Path(path)
    folder = _tokenizer_only(cache_name or file_key(p), p.parent, p.name)
    return AutoTokenizer.from_pretrained(str(folder))
