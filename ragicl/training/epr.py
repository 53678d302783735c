"""A learned demonstration retriever, EPR-style (Rubin et al. 2022, "Learning To Retrieve Prompts for
In-Context Learning").

1. :func:`score_demonstrations`: for each labeled training query, its ``n_candidates`` nearest indexed
   examples (by the index's embedder; never the query itself) are each packed alone with the query into a
   one-shot prompt (the :class:`~ragicl.prompt.pack.Packer`'s exact budget), and the LM scores the gold label
   after it. A candidate's score is ``log P(gold | candidate, query)`` renormalised over the label set, and
   its gain is that minus the zero-shot ``log P(gold | query)``: how much it raises the LM's probability
   of the right answer.
2. :func:`train_epr`: the best-scored candidate of each query is its positive, the worst-scored its hard
   negative, and a sentence-transformers bi-encoder (default all-MiniLM-L6-v2) is fine-tuned on
   ``(query, positive, negative)`` triples with the contrastive ``MultipleNegativesRankingLoss`` (the
   other positives of a batch are negatives too, as EPR's in-batch negatives). EPR trains two encoders;
   here one encoder embeds queries and demonstrations alike, so it is an ordinary embedder.
3. Use the saved model as the embedder: ``ExampleIndex.build(train, embedder=str(out))``.

Scoring costs ``n_candidates + 1`` LM prompts per training query (one-shot prompts are short); training
is seconds per hundred triples on a CPU for MiniLM.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _atomic
from .._exceptions import DataError, check_positive_int, require
from ..models import DEFAULT_EMBEDDER
from ..types import Example

logger = logging.getLogger(__name__)

__all__ = ["DemonstrationScores", "EPRResult", "score_demonstrations", "train_epr", "triples"]

RECORD = "ragicl_epr.json"  # written into the saved model folder: what it was trained on


@dataclass(frozen=True)
class DemonstrationScores:
    """What :func:`score_demonstrations` measured.

    ``candidates[i, j]`` is a position in the index (``-1``: none, or it did not fit the budget alone with the
    query), ``scores[i, j]`` the gold label's log-probability after it (``-inf`` where ``candidates`` is
    ``-1``), ``zero_shot[i]`` the gold's log-probability without any demonstration.
    """

    query_ids: tuple[str, ...]
    candidates: np.ndarray
    scores: np.ndarray
    zero_shot: np.ndarray

    @property
    def gains(self) -> np.ndarray:
        """``scores - zero_shot``: how much each candidate raises the log-probability of the gold label."""
        return self.scores - self.zero_shot[:, None]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def score_demonstrations(lm: Any, packer: Any, index: Any, queries: Sequence[Example], *,
                         n_candidates: int = 16, retriever: Any = None) -> DemonstrationScores:
    """Score each query's candidate demonstrations by the LM's probability of its gold label (see above).

    Args:
        lm: a :class:`~ragicl.lm.protocol.LanguageModel` (its tokenizer is the packer's).
        packer: a :class:`~ragicl.prompt.pack.Packer` fitted on ``index.examples`` with the label set.
        index: the :class:`~ragicl.index.core.ExampleIndex` the demonstrations come from.
        queries: labeled training examples (usually from the indexed set: each never scores itself).
        n_candidates: candidates per query (EPR's L).
        retriever: what proposes the candidates (default ``Retriever(k=n_candidates)``, dense top-k).
    """
    from ..prompt.retrieve import Retriever

    n_candidates = check_positive_int("n_candidates", n_candidates)
    queries = list(queries)
    labels = list(getattr(packer, "labels_", ()))
    for q in queries:
        if not isinstance(q, Example) or q.label is None or q.label not in labels:
            raise DataError(f"score_demonstrations needs labeled Examples whose label is one of the packer's "
                            f"labels {labels}; got {q!r}.")
    retriever = retriever or Retriever(k=n_candidates)
    found = retriever.retrieve(index, queries, n_candidates=n_candidates)
    answers = [packer.answer_ids(label) for label in labels]
    cands = np.full((len(queries), n_candidates), -1, np.int64)
    prompts: list[tuple[int, ...]] = []
    where: list[tuple[int, int]] = []  # (query, column; -1 = zero-shot) of each prompt
    for i, (q, r) in enumerate(zip(queries, found)):
        zero = packer.pack(q, [])
        prompts.append(zero.token_ids)
        where.append((i, -1))
        for j, p in enumerate(r.positions[:n_candidates]):
            one = packer.pack(q, [p], max_examples=1)
            if one.included:  # a candidate too long to fit with the query is left unscored
                cands[i, j] = p
                prompts.append(one.token_ids)
                where.append((i, j))
    logp = _log_softmax(lm.score_continuations(prompts, answers))
    scores = np.full(cands.shape, -np.inf)
    zero_shot = np.zeros(len(queries))
    gold = [labels.index(q.label) for q in queries]
    for (i, j), row in zip(where, logp):
        if j < 0:
            zero_shot[i] = row[gold[i]]
        else:
            scores[i, j] = row[gold[i]]
    logger.info("scored %d one-shot prompts for %d queries", len(prompts) - len(queries), len(queries))
    return DemonstrationScores(tuple(q.id for q in queries), cands, scores, zero_shot)


def triples(scores: DemonstrationScores, index: Any, queries: Sequence[Example]) -> list[tuple[str, str, str]]:
    """``(query text, best candidate's text, worst candidate's text)`` per query with two or more scored
    candidates of different scores (queries whose candidates all score alike teach nothing)."""
    by_id = {q.id: q for q in queries}
    out = []
    for i, qid in enumerate(scores.query_ids):
        ok = scores.candidates[i] >= 0
        if ok.sum() < 2:
            continue
        s = np.where(ok, scores.scores[i], np.nan)
        best, worst = int(np.nanargmax(s)), int(np.nanargmin(s))
        if s[best] <= s[worst]:
            continue
        text = index.query_text
        out.append((text(by_id[qid]), text(index.examples[scores.candidates[i, best]]),
                    text(index.examples[scores.candidates[i, worst]])))
    return out


def _mnrl() -> Any:
    """sentence-transformers' MultipleNegativesRankingLoss (its module moved in 6.x)."""
    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.losses import MultipleNegativesRankingLoss
    return MultipleNegativesRankingLoss


@dataclass(frozen=True)
class EPRResult:
    """What :func:`train_epr` saved: the model folder ``path`` (an embedder name), the number of training
    ``triples``, and the mean loss of each epoch."""

    path: str
    triples: int
    epoch_losses: tuple[float, ...]


def train_epr(scores: DemonstrationScores, index: Any, queries: Sequence[Example], out: str | os.PathLike, *,
              base: Any = DEFAULT_EMBEDDER, epochs: int = 1, batch_size: int = 16, lr: float = 2e-5,
              seed: int = 0, device: str = "cpu") -> EPRResult:
    """Fine-tune a sentence-transformers bi-encoder on the scored demonstrations and save it to ``out``.

    ``base``: the model to start from (a name/path :func:`ragicl.index.embed.get_embedder` resolves, or a
    loaded ``SentenceTransformer``, which is trained in place). ``out`` must not exist yet (or be an empty
    folder): the model is written to a temporary folder beside it and renamed into place, so a crash never
    leaves a half-written model at ``out``. ``DataError`` when no query has candidates of different scores.
    """
    st = require("sentence_transformers", "cpu", "sentence-transformers")
    import torch

    from ..models import resolve_embedder

    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        check_positive_int(name, value)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive number (e.g. 2e-5), got {lr!r}.")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; train_epr writes a new model folder. Fix: "
                              "choose another path or remove it.")
    data = triples(scores, index, queries)
    if not data:
        raise DataError("no query has two candidates of different scores, so there is nothing to learn from; "
                        "score more queries or more candidates (n_candidates).")
    torch.manual_seed(seed)
    model = base if hasattr(base, "tokenize") else st.SentenceTransformer(resolve_embedder(str(base)), device=device)
    loss_fn = _mnrl()(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(lr))
    encode = getattr(model, "preprocess", None) or model.tokenize  # tokenize before sentence-transformers 6
    rng = np.random.default_rng(seed)
    model.train()
    epoch_losses = []
    for _ in range(epochs):
        order = rng.permutation(len(data))
        total = 0.0
        for start in range(0, len(data), batch_size):
            batch = [data[i] for i in order[start:start + batch_size]]
            features = []
            for column in zip(*batch):
                tok = encode(list(column))
                features.append({k: v.to(model.device) if hasattr(v, "to") else v for k, v in tok.items()})
            loss = loss_fn(features, None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        epoch_losses.append(total / len(data))
        logger.info("EPR epoch %d: mean loss %.4f over %d triples", len(epoch_losses), epoch_losses[-1], len(data))
    model.eval()
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save(str(tmp))
        record = {"method": "epr", "triples": len(data), "epoch_losses": epoch_losses, "queries": len(queries),
                  "candidates": int(scores.candidates.shape[1]), "epochs": epochs, "lr": lr, "seed": seed}
        (tmp / RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                _atomic.fsync(p)
        _atomic.fsync(tmp)
        if out.is_dir():
            out.rmdir()  # empty (checked above); os.rename onto it would also work on Linux only
        os.rename(tmp, out)
        _atomic.fsync(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return EPRResult(str(out), len(data), tuple(epoch_losses))
