"""Encoders for the packer's per-query work: tokenizing the query block (``separator + query cue``).

The examples are tokenized once at :meth:`Packer.fit`, so the query block is the only text a pack tokenizes.
:meth:`Packer.fit` tries these encoders, fastest first, and keeps the first that reproduces the tokenizer's
ids (``tokenizer(text, add_special_tokens=False).input_ids``) on its checks:

* the Rust ``backend_tokenizer`` of a fast tokenizer (``encode`` / ``encode_batch_fast``), skipping the
  ``BatchEncoding`` wrapper;
* the ``tokenizer(...)`` wrapper itself (the reference).

(A hand-written byte-level BPE piece encoder once sat in front of these: about 2× faster packing, but
packing is ~0.01% of end-to-end time, docs/BENCHMARKS.md §4, so the tokenizers backend is enough.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

EncodeOne = Callable[[str], list[int]]
EncodeMany = Callable[[list[str]], list[list[int]]]


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


def candidate_encoders(tokenizer: Any, wrapper: tuple[EncodeOne, EncodeMany], texts: Sequence[str] = (),
                       reference: Sequence[Sequence[int]] = ()) -> list[tuple[str, EncodeOne, EncodeMany]]:
    """Encoders to try, fastest first, ending with the wrapper. The backend is offered only if its batch
    encoding reproduces ``reference`` (the wrapper's ids of ``texts``, the pool's rendered examples); the
    packer's fit-time checks then test it on whole prompts."""
    out = [("wrapper", *wrapper)]
    backend = backend_encoders(tokenizer)
    if backend is not None and backend[1](list(texts)) == [list(ids) for ids in reference]:
        out.insert(0, ("backend", *backend))
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
