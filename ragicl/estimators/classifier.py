"""``ICLClassifier``: the scikit-learn-style facade over retrieve → pack → score.

``fit`` stores the index and prepares the stages (loads the LM, tokenizes every example once);
``predict``/``predict_proba`` run retrieval, exact packing and one scoring pass per prompt. With ``k=0``
it is a zero-shot classifier, and pointed at a fine-tuned checkpoint it is the fine-tuned reference:
both sides of the measured gap share the template, the packing and the scoring code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._exceptions import DataError, NotFittedError
from ..index.core import ExampleIndex
from ..lm.hf import LanguageModel
from ..models import DEFAULT_EMBEDDER, DEFAULT_LM
from ..prompt.step import PromptStep, make_packer, resolve_k
from ..prompt.template import PromptTemplate
from ..types import Dataset, Example, PackedPrompt, Prediction, Query
from ._common import (
    as_examples,
    dataset_from_xy,
    ensure_lm_and_retriever,
    fit_source,
    load_lm,
    make_retriever,
    softmax,
)
from .base import EstimatorMixin, split_index_folder

logger = logging.getLogger(__name__)

__all__ = ["ICLClassifier", "Query", "as_examples", "dataset_from_xy", "fit_source", "load_lm", "softmax"]


class ICLClassifier(EstimatorMixin):
    """Classify by in-context learning with retrieved, token-budgeted demonstrations.

    Parameters
    ----------
    lm : model name, hub id, path, or a ``LanguageModel``. Default SmolLM2-135M-Instruct (offline).
    template : ``PromptTemplate``; default built from the index's input field names.
    k : number of demonstrations to aim for (0 = zero-shot). Fewer go in when the budget is tight.
    max_prompt_tokens : cap on the whole prompt, in the LM's tokens (None = the model's context).
    selection : how demonstrations are chosen among the retrieved candidates: "topk" (most similar),
        "balanced" (round-robin over labels), "mmr" (similar but diverse), "dpp" (a determinantal point
        process over the candidates, OpenICL's kernel), "votek" (a diverse, representative pool, Su et al.
        2022), "mdl" (``mdl_samples`` candidate prompts per query scored by the LM, the one with the lowest
        label entropy kept, Wu et al. 2022), or "random" (the random-k baseline).
    search : how candidates are found: "dense" (the FAISS index), "bm25" (lexical) or "hybrid" (both, by
        reciprocal-rank fusion); BM25 is built in memory at ``fit`` when the index has none saved.
    reranker : a cross-encoder (hub id, folder or ``CrossEncoder``) that re-orders the candidates, or None.
    n_candidates : candidates handed to the packer (default 2k), so examples that don't fit are
        replaced by the next most relevant ones rather than leaving the budget unused.
    embedder : used only by ``fit(X, y)`` (raw texts and labels), to index them.

    A scikit-learn estimator (``get_params``/``set_params``/``clone``/``GridSearchCV``, without needing
    scikit-learn installed); ``save(path)``/``ICLClassifier.load(path)`` persist a fitted one, and it pickles.

    Example
    -------
    >>> from ragicl import ExampleIndex, ICLClassifier, read_dataset
    >>> ICLClassifier(k=4)
    ICLClassifier(k=4)
    >>> train = read_dataset("../shared/datasets/sst2/train.jsonl").sample(200)  # doctest: +SKIP
    >>> clf = ICLClassifier(k=8).fit(ExampleIndex.build(train))                 # doctest: +SKIP
    >>> clf.predict(["a gripping, beautifully shot film"])                      # doctest: +SKIP
    ['positive']
    >>> clf.save("sst2-clf"); ICLClassifier.load("sst2-clf").predict(["dull"])  # doctest: +SKIP
    ['negative']
    """

    _estimator_type = "classifier"
    _FITTED = ("classes_", "input_fields_", "template_")
    _DERIVED = ("lm_", "packer_", "retriever_", "label_ids_", "k_")

    def __init__(self, lm: str | LanguageModel = DEFAULT_LM, template: PromptTemplate | None = None, *,
                 k: int | str = 16, max_prompt_tokens: int | None = 1024, selection: str = "topk",
                 n_candidates: int | None = None, batch_size: int | None = None, device: str = "auto",
                 seed: int = 0, show_progress: bool | None = None, embedder: Any = DEFAULT_EMBEDDER,
                 search: str = "dense", reranker: Any = None, mdl_samples: int = 5) -> None:
        self.lm = lm
        self.template = template
        self.k = k
        self.max_prompt_tokens = max_prompt_tokens
        self.selection = selection
        self.search = search
        self.reranker = reranker
        self.mdl_samples = mdl_samples
        self.n_candidates = n_candidates
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.show_progress = show_progress
        self.embedder = embedder

    # ------------------------------------------------------------------ fit
    def fit(self, data: ExampleIndex | Dataset | str | os.PathLike | Sequence[Query],
            y: Sequence[str] | None = None) -> ICLClassifier:
        """Prepare the pipeline over an index (an object or a saved index folder), or, for ``k=0``, just a
        dataset giving the label set. ``fit(X, y)`` with texts (or dicts of fields) and labels indexes
        them with ``embedder`` first (the scikit-learn convention, e.g. inside ``GridSearchCV``)."""
        folder = None
        if y is not None:
            data = dataset_from_xy(data, y, task="classification")  # type: ignore[arg-type]
            if self.k:
                data = ExampleIndex.build(data, embedder=self.embedder, show_progress=False)
        else:  # a saved index folder: save() will refer to it
            folder, data = split_index_folder(data)
        index, dataset = fit_source(self.k, data)
        if dataset.task != "classification" or not dataset.labels:
            raise DataError(f"ICLClassifier needs a classification dataset with a label set; got task "
                            f"{dataset.task!r} with labels {list(dataset.labels)}.")
        for name in self._DERIVED:
            self.__dict__.pop(name, None)
        self.index_ = index
        self.index_folder_ = folder
        self.classes_ = tuple(dataset.labels)
        self.input_fields_ = tuple(dataset.input_fields)
        self.template_ = self.template or PromptTemplate.default(dataset.input_fields)
        self._prepare()
        return self

    def _prepare(self) -> None:
        """Load the LM and build retriever and packer from the fitted state (also after unpickling)."""
        ensure_lm_and_retriever(self)
        examples = list(self.index_.examples) if self.index_ is not None else []
        packer = make_packer(self.lm_, self.template_, examples, max_prompt_tokens=self.max_prompt_tokens,
                             index=self.index_,
                             labels=self.classes_)
        self.label_ids_ = [list(packer.answer_ids(label)) for label in self.classes_]
        self.packer_ = packer
        self.k_ = resolve_k(self.k, packer, len(examples))
        self.retriever_ = make_retriever(self, self.k_)

    def _check_fitted(self) -> None:
        if not self._ensure_prepared():
            raise NotFittedError("this ICLClassifier is not fitted yet: call fit(index) first.")

    # ------------------------------------------------------------ prompts
    def _as_examples(self, queries: Sequence[Query] | Query) -> list[Example]:
        return as_examples(queries, self.input_fields_)

    def prompt_step(self) -> Any:
        """The fitted retrieve-and-pack step behind :meth:`prompts`: a :class:`~ragicl.prompt.step.PromptStep`,
        or with ``selection="mdl"`` an :class:`~ragicl.prompt.mdl.MDLStep` over one (it scores candidate
        prompts with the LM)."""
        self._check_fitted()
        step = PromptStep(self.packer_, self.retriever_, self.index_, self.k_, self.n_candidates)
        if self.selection == "mdl" and self.retriever_ is not None:
            from ..prompt.mdl import MDLStep

            return MDLStep(step, self.lm_, n_samples=self.mdl_samples, seed=self.seed, labels=self.classes_)
        return step

    def prompts(self, queries: Sequence[Query] | Query) -> list[PackedPrompt]:
        """The packed prompts the LM would see for these queries (retrieval + exact packing)."""
        return self.prompt_step()(self._as_examples(queries))

    # ------------------------------------------------------------ predict
    def label_logprobs(self, prompts: Sequence[PackedPrompt], labels: Sequence[int] | None = None, *,
                       show_progress: bool | None = None) -> np.ndarray:
        """``(n, L)`` log-probabilities of each label's answer tokens after each prompt (not normalized).

        ``prompts`` come from :meth:`prompts` (or any packing with this classifier's tokenizer); ``labels``
        restricts the columns to those positions into ``classes_`` (default all, in ``classes_`` order).
        ``softmax`` over the full row gives :meth:`predict_proba`. ``show_progress`` defaults to the
        estimator's setting.
        """
        self._check_fitted()
        label_ids = self.label_ids_ if labels is None else [self.label_ids_[int(c)] for c in labels]
        progress = self.show_progress if show_progress is None else show_progress
        return np.asarray(self.lm_.score_continuations([p.token_ids for p in prompts], label_ids,
                                                       show_progress=progress))

    def predict_detailed(self, queries: Sequence[Query] | Query) -> list[Prediction]:
        """Label, full label distribution and the prompt used, for each query."""
        prompts = self.prompts(queries)
        probs = softmax(self.label_logprobs(prompts))
        return [Prediction(self.classes_[int(row.argmax())],
                           {c: float(p) for c, p in zip(self.classes_, row)}, prompt)
                for row, prompt in zip(probs, prompts)]

    def predict_proba(self, queries: Sequence[Query] | Query) -> np.ndarray:
        """(n, L) probabilities over ``classes_``: each label's sequence probability, renormalized."""
        return softmax(self.label_logprobs(self.prompts(queries)))

    def predict(self, queries: Sequence[Query] | Query) -> list[str]:
        """The most probable label of each query."""
        return [self.classes_[i] for i in self.predict_proba(queries).argmax(1)]

    def score(self, test: Dataset | Sequence[Query], y: Sequence[str] | None = None) -> float:
        """Accuracy on a labeled dataset, or on queries ``test`` with gold labels ``y``."""
        if y is None:
            if not isinstance(test, Dataset):
                raise TypeError(f"score expects a labeled Dataset, or queries and labels (score(X, y)); got "
                                f"a {type(test).__name__} and no labels.")
            queries, gold = list(test.examples), [ex.label for ex in test.examples]
        else:
            queries, gold = list(test), list(y)
            if len(queries) != len(gold):
                raise ValueError(f"score(X, y) got {len(queries)} queries and {len(gold)} labels.")
        pred = self.predict(queries)
        return float(np.mean([p == g for p, g in zip(pred, gold)]))


