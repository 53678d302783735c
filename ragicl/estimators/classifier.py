"""``ICLClassifier``: the scikit-learn-style facade over retrieve → pack → score.

``fit`` stores the index and prepares the stages (loads the LM, tokenizes every example once);
``predict``/``predict_proba`` run retrieval, exact packing and one scoring pass per prompt. With ``k=0``
it is a zero-shot classifier, and pointed at a fine-tuned checkpoint it is the fine-tuned reference:
both sides of the measured gap share the template, the packing and the scoring code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._estimator import EstimatorMixin, split_index_folder
from .._exceptions import DataError, NotFittedError
from ..index.core import ExampleIndex
from ..lm.hf import LanguageModel, TransformersLM
from ..models import DEFAULT_EMBEDDER, DEFAULT_LM
from ..prompt.pack import Packer
from ..prompt.retrieve import Retriever
from ..prompt.template import PromptTemplate
from ..types import Dataset, Example, PackedPrompt, Prediction

logger = logging.getLogger(__name__)

Query = str | Mapping[str, str] | Example


class ICLClassifier(EstimatorMixin):
    """Classify by in-context learning with retrieved, token-budgeted demonstrations.

    Parameters
    ----------
    lm : model name, hub id, path, or a ``LanguageModel``. Default SmolLM2-135M-Instruct (offline).
    template : ``PromptTemplate``; default built from the index's input field names.
    k : number of demonstrations to aim for (0 = zero-shot). Fewer go in when the budget is tight.
    max_prompt_tokens : cap on the whole prompt, in the LM's tokens (None = the model's context).
    selection : "topk", "balanced", "mmr" or "random" (the random-k baseline).
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
    _DERIVED = ("lm_", "packer_", "retriever_", "label_ids_")

    def __init__(self, lm: str | LanguageModel = DEFAULT_LM, template: PromptTemplate | None = None, *,
                 k: int = 16, max_prompt_tokens: int | None = 1024, selection: str = "topk",
                 n_candidates: int | None = None, batch_size: int = 8, device: str = "auto",
                 seed: int = 0, show_progress: bool | None = None, embedder: Any = DEFAULT_EMBEDDER) -> None:
        self.lm = lm
        self.template = template
        self.k = k
        self.max_prompt_tokens = max_prompt_tokens
        self.selection = selection
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
        if "lm_" not in self.__dict__:
            self.lm_ = load_lm(self.lm, device=self.device, batch_size=self.batch_size,
                               show_progress=self.show_progress)
        self.retriever_ = Retriever(k=self.k, strategy=self.selection, seed=self.seed) if self.k else None
        examples = list(self.index_.examples) if self.index_ is not None else []
        packer = Packer(self.lm_.tokenizer, self.template_, max_prompt_tokens=self.max_prompt_tokens,
                        context_length=self.lm_.context_length).fit(examples, labels=self.classes_)
        self.label_ids_ = [list(packer.answer_ids(label)) for label in self.classes_]
        self.packer_ = packer

    def _check_fitted(self) -> None:
        if not self._ensure_prepared():
            raise NotFittedError("this ICLClassifier is not fitted yet: call fit(index) first.")

    # ------------------------------------------------------------ prompts
    def _as_examples(self, queries: Sequence[Query] | Query) -> list[Example]:
        return as_examples(queries, self.input_fields_)

    def prompts(self, queries: Sequence[Query] | Query) -> list[PackedPrompt]:
        """The packed prompts the LM would see for these queries (retrieval + exact packing)."""
        self._check_fitted()
        examples = self._as_examples(queries)
        if self.retriever_ is None or self.index_ is None:
            return self.packer_.pack_batch(examples, [[] for _ in examples])
        n_candidates = self.n_candidates or 2 * self.k
        retrieved = self.retriever_.retrieve(self.index_, examples, n_candidates=n_candidates)
        return self.packer_.pack_batch(examples, [r.positions for r in retrieved], max_examples=self.k)

    # ------------------------------------------------------------ predict
    def _label_logprobs(self, prompts: Sequence[PackedPrompt]) -> np.ndarray:
        return np.asarray(self.lm_.score_continuations([p.token_ids for p in prompts], self.label_ids_,
                                                       show_progress=self.show_progress))

    def predict_detailed(self, queries: Sequence[Query] | Query) -> list[Prediction]:
        """Label, full label distribution and the prompt used, for each query."""
        prompts = self.prompts(queries)
        probs = softmax(self._label_logprobs(prompts))
        return [Prediction(self.classes_[int(row.argmax())],
                           {c: float(p) for c, p in zip(self.classes_, row)}, prompt)
                for row, prompt in zip(probs, prompts)]

    def predict_proba(self, queries: Sequence[Query] | Query) -> np.ndarray:
        """(n, L) probabilities over ``classes_``: each label's sequence probability, renormalized."""
        return softmax(self._label_logprobs(self.prompts(queries)))

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


def dataset_from_xy(x: Sequence[Query], y: Sequence[str], *, task: str) -> Dataset:
    """A Dataset from queries (texts, dicts of fields or Examples) and their labels/outputs (``fit(X, y)``)."""
    if isinstance(x, (str, Mapping)) or isinstance(y, str):
        raise TypeError("fit(X, y) expects a sequence of queries and a sequence of labels of the same length.")
    x, y = list(x), [str(v) for v in y]
    if len(x) != len(y) or not x:
        raise DataError(f"fit(X, y) got {len(x)} queries and {len(y)} labels; expected the same, non-zero number.")
    first = x[0]
    fields = (tuple(first.inputs) if isinstance(first, Example) else tuple(first) if isinstance(first, Mapping)
              else ("text",))
    examples = tuple(
        Example(id=f"train-{i}", inputs=dict(ex.inputs), label=lab if task == "classification" else None,
                output=None if task == "classification" else lab)
        for i, (ex, lab) in enumerate(zip(as_examples(x, fields), y)))
    if task == "classification":
        return Dataset(examples, fields, "classification", tuple(sorted(set(y))))
    return Dataset(examples, fields, "generation", (), "output")


def as_examples(queries: Sequence[Query] | Query, input_fields: Sequence[str]) -> list[Example]:
    """Normalize queries (str, dict of input fields, or Example) to Examples; ids for non-Examples are
    ``query-<i>``. A plain string needs a single-field template."""
    if isinstance(queries, (str, Mapping, Example)):
        queries = [queries]
    out: list[Example] = []
    for i, q in enumerate(queries):
        if isinstance(q, Example):
            out.append(q)
        elif isinstance(q, str):
            if len(input_fields) != 1:
                raise DataError(f"query {i} is a plain string but the template needs the fields "
                                f"{list(input_fields)}; pass a dict with those keys.")
            out.append(Example(id=f"query-{i}", inputs={input_fields[0]: q}))
        elif isinstance(q, Mapping):
            missing = [f for f in input_fields if f not in q]
            if missing:
                raise DataError(f"query {i} lacks the input field(s) {missing}; it has {list(q)}.")
            out.append(Example(id=f"query-{i}", inputs={f: str(q[f]) for f in input_fields}))
        else:
            raise TypeError(f"query {i} is a {type(q).__name__}; expected str, dict or Example.")
    return out


def softmax(logp: np.ndarray) -> np.ndarray:
    """Row-wise softmax of log-scores (numerically stable)."""
    z = logp - logp.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_source(k: int, data: ExampleIndex | Dataset) -> tuple[ExampleIndex | None, Dataset]:
    """Check ``k`` and split what ``fit`` received into (index or None, dataset) — shared by the ICL systems."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer (0 = zero-shot), got {k!r}.")
    if isinstance(data, ExampleIndex):
        return data, data.dataset
    if isinstance(data, Dataset):
        if k > 0:
            raise ValueError(f"k={k} needs examples to retrieve from: pass an ExampleIndex "
                             "(ExampleIndex.build(dataset)), or use k=0 for zero-shot.")
        return None, data
    raise TypeError(f"fit expects an ExampleIndex or a Dataset, got {type(data).__name__}.")


def load_lm(lm: str | LanguageModel, *, device: str, batch_size: int,
            show_progress: bool | None) -> LanguageModel:
    """A name becomes a loaded :class:`TransformersLM`; a model object is loaded if it can be, else kept."""
    out = lm if not isinstance(lm, str) else TransformersLM(lm, device=device, batch_size=batch_size,
                                                             show_progress=show_progress)
    if hasattr(out, "load"):
        out.load()
    return out
