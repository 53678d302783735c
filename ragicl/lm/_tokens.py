"""Token ids and the texts servers show for them.

A server's ``top_logprobs`` are keyed by token *text* (``" positive"``), or by ``"token_id:<id>"`` on vLLM
with ``return_tokens_as_token_ids``. :class:`TokenTexts` finds a token id's value in such a map through the
renderings servers use: the decoded text of the token alone and its vocabulary piece with the
byte-level/SentencePiece space marks (``Ġ``, ``▁``) turned into spaces. When two ids of the vocabulary
render the same (rare for whole words), a text key cannot tell them apart; :meth:`TokenTexts.ambiguous`
says so and the scorer counts those lookups.

:func:`prompt_text` turns packed token ids back into the text a text-only server will tokenize: the
leading BOS is dropped when the server adds its own, everything else decodes verbatim (special tokens
included, no clean-up of spaces), so the server reads the ids the packer counted whenever its tokenizer is
the local one (the probe checks that).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from ._routes import token_id_key

__all__ = ["TokenTexts", "prompt_text"]

_MARKS = {"Ġ": " ", "▁": " ", "Ċ": "\n", "ĉ": "\t"}


def prompt_text(tokenizer: Any, ids: Sequence[int], *, server_adds_bos: bool) -> str:
    """The text whose tokenization by the server is ``ids`` (see the module docstring)."""
    ids = list(ids)
    bos = getattr(tokenizer, "bos_token_id", None)
    if server_adds_bos and ids and bos is not None and ids[0] == bos:
        ids = ids[1:]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


class TokenTexts:
    """The texts a server may show for each token id of ``tokenizer``, and lookups by id in ``{text: value}``."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, ...]] = {}
        self._by_text: dict[str, list[int]] | None = None
        self._lock = threading.Lock()

    def renderings(self, token_id: int) -> tuple[str, ...]:
        """Decoded text first, then the vocabulary piece with space marks replaced (distinct, non-empty)."""
        hit = self._cache.get(token_id)
        if hit is not None:
            return hit
        tok = self.tokenizer
        out: list[str] = []
        decoded = tok.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        out.append(decoded)
        piece = None
        if hasattr(tok, "convert_ids_to_tokens"):
            piece = tok.convert_ids_to_tokens(int(token_id))
        if isinstance(piece, str):
            out.append(piece)
            marked = "".join(_MARKS.get(ch, ch) for ch in piece)
            out.append(marked)
        result = tuple(dict.fromkeys(s for s in out if s))
        self._cache[token_id] = result
        return result

    def lookup(self, top: dict[str, float], token_id: int) -> float | None:
        """The value of ``token_id`` in ``top`` (keyed by text or ``token_id:<id>``), or None if absent."""
        first = next(iter(top), None)
        if first is not None and token_id_key(first) is not None:
            return next((v for k, v in top.items() if token_id_key(k) == token_id), None)
        for text in self.renderings(token_id):
            if text in top:
                return top[text]
        return None

    def ambiguous(self, token_id: int) -> bool:
        """Whether another id of the vocabulary decodes to the same text (a text key cannot tell them apart)."""
        with self._lock:
            if self._by_text is None:
                by_text: dict[str, list[int]] = {}
                size = len(self.tokenizer)
                for tid in range(size):
                    text = self.tokenizer.decode([tid], skip_special_tokens=False,
                                                 clean_up_tokenization_spaces=False)
                    by_text.setdefault(text, []).append(tid)
                self._by_text = by_text
        text = self.renderings(token_id)[0]
        return len(self._by_text.get(text, ())) > 1
