"""Fit-time work of :class:`~ragicl.prompt.pack.Packer` kept apart from packing: the fixed frame around the
blocks (special tokens, instruction, chat template) and the checks that choose the fast concatenation path
(concatenated cached ids must equal the tokenizer's ids of the rendered text) and verify answer tokenization.
A mixin: it reads and sets the packer's own attributes.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ragicl.types import Example

logger = logging.getLogger("ragicl.prompt.pack")


class FitChecks:
    """Frame and fit-time checks of :class:`~ragicl.prompt.pack.Packer` (see the module docstring)."""

    tokenizer: Any
    template: Any

    def _set_frame(self) -> None:
        """Special tokens the tokenizer adds, and the fixed text before (lead) and after (tail) the blocks."""
        tok, tpl = self.tokenizer, self.template
        probe = "Hello world"
        plain = list(tok(probe, add_special_tokens=False)["input_ids"])
        full = self._full_encode(probe)
        self._special_ok = False
        self._special_prefix: list[int] = []
        self._special_suffix: list[int] = []
        for i in range(len(full) - len(plain) + 1):
            if full[i:i + len(plain)] == plain:
                self._special_prefix, self._special_suffix = full[:i], full[i + len(plain):]
                self._special_ok = True
                break
        if self._special_suffix:
            logger.warning("the tokenizer appends %s after every text; prompts will end with them",
                           tok.convert_ids_to_tokens(self._special_suffix))
        if tpl.chat:
            prefix, suffix, in_system = tpl.chat_frame(tok)
            special_text = tok.decode(self._special_prefix) if self._special_prefix else ""
            if special_text and prefix.startswith(special_text):
                prefix = prefix[len(special_text):]  # the tokenizer adds it back: avoid a doubled <bos>
            instruction_in_content = bool(tpl.instruction) and not in_system
            self._lead_text = prefix + (tpl.instruction if instruction_in_content else "")
            self._tail_text = suffix
            self._sep_first = instruction_in_content
        else:
            self._lead_text, self._tail_text = tpl.instruction, ""
            self._sep_first = bool(tpl.instruction)
        lead = list(tok(self._lead_text, add_special_tokens=False)["input_ids"]) if self._lead_text else []
        tail = list(tok(self._tail_text, add_special_tokens=False)["input_ids"]) if self._tail_text else []
        self._head_ids = self._special_prefix + lead
        self._end_ids = tail + self._special_suffix
        self._fixed = len(self._head_ids) + len(self._end_ids)


    # ---------------------------------------------------------------------------------- fit-time checks
    def _check_fast_path(self, examples: Sequence[Example]) -> bool:
        """Do concatenated cached ids equal the tokenizer's ids of the rendered text on sample prompts?"""
        if not self._special_ok:
            logger.warning("could not locate the special tokens this tokenizer adds; re-tokenizing prompts")
            return False
        queries = self._sample_queries(examples)
        rng = random.Random(self.seed)
        n = len(examples)
        trials: list[tuple[Mapping[str, str], list[int]]] = []
        for t in range(max(self.check_samples, 2)):
            k = 0 if t == 0 else min(n, 1 if t == 1 else rng.randint(2, 8))
            trials.append((queries[t % len(queries)], rng.sample(range(n), k)))
        cues = [self.template.separator + self.template.render_query(q) for q in queries]
        reference = self._batch_encode(cues)
        for name, encode, encode_many in self._encoders:  # fastest first, the wrapper last
            self.encoder_, self._encode, self._encode_many = name, encode, encode_many
            if (encode_many(cues) == reference and [encode(c) for c in cues] == reference
                    and all(self._assemble_checked(q, chosen) for q, chosen in trials)):
                return self._check_pairs()
        logger.warning("this tokenizer merges tokens across prompt block boundaries (separator %r); packing "
                       "falls back to re-tokenizing every prompt (exact, slower)", self.template.separator)
        return False

    def _check_pairs(self) -> bool:
        """Every example's end and start against a real neighbour: ``ids(a + sep + b) == ids(a) + ids(sep + b)``.

        One extra tokenization pass over pairs of consecutive examples (cyclic), so a boundary that merges
        for a single odd example is caught here rather than left to the random sample.
        """
        n = len(self._ids)
        if n < 2:
            return True
        nxt = list(range(1, n)) + [0]
        got = self._encode_many([self._text_bare[j] + self._text_sep[k] for j, k in zip(range(n), nxt)])
        for j, k in zip(range(n), nxt):
            if got[j] != [*self._ids_bare[j], *self._ids_sep[k]]:
                logger.warning("examples %r and %r tokenize differently joined by separator %r than apart; "
                               "packing falls back to re-tokenizing every prompt (exact, slower)",
                               self._ids[j], self._ids[k], self.template.separator)
                return False
        return True

    def _sample_queries(self, examples: Sequence[Example]) -> list[Mapping[str, str]]:
        if examples:
            rng = random.Random(self.seed + 1)
            return [examples[i].inputs for i in rng.sample(range(len(examples)), min(8, len(examples)))]
        return [{name: "Sample input text." for name in self.template.input_fields}]

    def _assemble_checked(self, inputs: Mapping[str, str], chosen: list[int]) -> bool:
        cue = self.template.render_query(inputs)
        ids, text = self._assemble(chosen, cue, self._encode(self.template.separator + cue))
        return list(ids) == self._full_encode(text)

    def _check_answers(self, examples: Sequence[Example]) -> bool:
        """Do ``tokenizer(prompt.text + answer)`` ids equal ``prompt ids + answer_ids`` for every label?"""
        if not self.labels_ or self._special_suffix:
            return not self.labels_
        inputs = self._sample_queries(examples)[0]
        chosen = list(range(min(3, len(examples))))
        prompt = self._pack_one(inputs, chosen, None, budget=1 << 60)
        texts = [prompt.text + self.template.answer(lab) for lab in self.labels_]
        full = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        bad = [lab for lab, ids in zip(self.labels_, full)
               if list(ids) != list(prompt.token_ids) + self.answer_ids(lab)]
        if bad:
            logger.warning("answers %s tokenize differently after the prompt than alone; they are scored as "
                           "answer_ids() after the prompt ids", bad[:5])
        return not bad
