"""MDL selection: choose among candidate demonstration sets by the LM's minimum description length.

Wu et al. 2022, "Self-adaptive In-context Learning: An Information Compression Perspective for In-context
Example Selection and Ordering" (OpenICL's ``MDLRetriever``): for each query, draw ``n_samples`` candidate
prompts from its retrieved candidates (the first is the retriever's own order; the others random
permutations of the same candidates, so random subsets in random orders), let the LM score each label
after each prompt, and keep the prompt whose label distribution has the lowest entropy (the shortest code
length of the label given the prompt). Unlike the selections of :class:`~ragicl.prompt.retrieve.Retriever`
it needs the LM, so it wraps a :class:`~ragicl.prompt.step.PromptStep` and is called like one.

Every candidate prompt is packed by the step's :class:`~ragicl.prompt.pack.Packer`, so every choice is
within the exact token budget. The label distribution is each label's summed answer-token log-probability
renormalised over the labels, as :class:`~ragicl.ICLClassifier` scores. Ties of entropy go to the earlier
candidate (the retriever's order first); the random draws are seeded per query (its id and text) and
``seed``, so the choice is deterministic. Cost: ``n_samples`` scored prompts per query (identical prompts,
e.g. when fewer candidates than ``k`` exist, are scored once).

>>> mdl = MDLStep(step, lm, n_samples=5)                 # doctest: +SKIP
>>> prompts = mdl(queries)  # one PackedPrompt per query, like step(queries)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._exceptions import check_positive_int
from ..types import Example, PackedPrompt
from .step import PromptStep

__all__ = ["MDLChoice", "MDLStep", "label_entropy"]


def label_entropy(logprobs: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row's label distribution, given unnormalised label log-probabilities ``(P, L)``."""
    z = np.asarray(logprobs, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(np.exp(logp) * logp).sum(axis=1)


@dataclass(frozen=True)
class MDLChoice:
    """What :meth:`MDLStep.select` chose for one query: the ``prompt``, the ``entropy`` of its label
    distribution, the entropies of every candidate prompt (``entropies[0]``: the retriever's order) and
    the index of the chosen one."""

    prompt: PackedPrompt
    entropy: float
    entropies: tuple[float, ...]
    chosen: int


@dataclass(frozen=True)
class MDLStep:
    """MDL over a retrieve-and-pack step: ``mdl(queries)`` → one :class:`~ragicl.types.PackedPrompt` per query.

    Args:
        step: the :class:`PromptStep` whose retriever supplies the candidates (``n_candidates``, default
            ``2k``) and whose packer packs each candidate prompt (``k`` demonstrations at most).
        lm: the :class:`~ragicl.lm.protocol.LanguageModel` that scores the labels (normally the one that
            classifies; its tokenizer must be the packer's).
        n_samples: candidate prompts per query (OpenICL's ``select_time``; 1 = the retriever's order alone).
        seed: seed of the random permutations.
        labels: the label set (default: the packer's ``labels_``).
    """

    step: PromptStep
    lm: Any
    n_samples: int = 5
    seed: int = 0
    labels: Sequence[str] | None = None

    def __post_init__(self) -> None:
        check_positive_int("n_samples", self.n_samples)
        if not isinstance(self.step, PromptStep):
            raise TypeError(f"step must be a ragicl PromptStep (retriever, index, packer, k); got "
                            f"{type(self.step).__name__}.")

    def _labels(self) -> list[str]:
        labels = list(self.labels if self.labels is not None else getattr(self.step.packer, "labels_", ()))
        if len(labels) < 2:
            raise ValueError(f"MDL needs a classification label set of at least 2 labels to measure the entropy "
                             f"of; got {labels!r}. Pass labels=... or fit the packer with the labels.")
        return labels

    def _orderings(self, query: Example | Any, candidates: Sequence[int]) -> list[list[int]]:
        text = query.text() if isinstance(query, Example) else str(query)
        ident = f"{query.id if isinstance(query, Example) else ''}\x00{text}"
        digest = int.from_bytes(hashlib.sha256(ident.encode("utf-8")).digest()[:8], "little")
        rng = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, digest])
        first = list(candidates)
        return [first] + [rng.permutation(first).tolist() for _ in range(self.n_samples - 1)]

    def select(self, queries: Sequence[Example]) -> list[MDLChoice]:
        """The chosen prompt per query, with the entropies it was chosen by."""
        queries = list(queries)
        step = self.step
        if step.zero_shot:
            return [MDLChoice(p, float("nan"), (), 0) for p in step(queries)]
        labels = self._labels()
        answers = [step.packer.answer_ids(label) for label in labels]
        packed: list[list[PackedPrompt]] = []
        for query, cands in zip(queries, step.candidates(queries)):
            orders = self._orderings(query, cands)
            packed.append(step.packer.pack_batch([query] * len(orders), orders, max_examples=step.k))
        unique: dict[tuple[int, ...], int] = {}
        for prompts in packed:
            for p in prompts:
                unique.setdefault(p.token_ids, len(unique))
        scores = self.lm.score_continuations(list(unique), answers)
        entropy = label_entropy(np.asarray(scores))
        out = []
        for prompts in packed:
            h = [float(entropy[unique[p.token_ids]]) for p in prompts]
            best = int(np.argmin(h))  # first of equal entropies: the retriever's order wins ties
            out.append(MDLChoice(prompts[best], h[best], tuple(h), best))
        return out

    def __call__(self, queries: Sequence[Example]) -> list[PackedPrompt]:
        """The MDL-chosen packed prompt for each query (what a :class:`PromptStep` call returns)."""
        return [c.prompt for c in self.select(queries)]
