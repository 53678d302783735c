"""``RetrievalTask``: an lm-eval task whose demonstrations ragicl retrieves, under a token budget.

Public names are re-exported by :mod:`ragicl.integrations.lm_eval` (a task YAML says
``class: !function ragicl.integrations.lm_eval.RetrievalTask``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lm_eval.api.samplers import ContextSampler
from lm_eval.api.task import ConfigurableTask

from .._exceptions import BudgetError, DataError
from ._lm_eval_sampler import _DEFAULT_CONFIG, RagiclSampler

logger = logging.getLogger("ragicl.integrations.lm_eval")

#: the keys of a task's ``metadata: ragicl:`` mapping and what they do
SETTINGS: dict[str, str] = {
    "index": "the pool: a saved ExampleIndex folder (ragicl index build) or a .jsonl/.csv file; default: the "
             "task's few-shot docs (fewshot_split), indexed on first use",
    "embedder": "the embedder for indexing the few-shot docs or a data file (default all-MiniLM-L6-v2)",
    "selection": "how demonstrations are chosen, a ragicl.Retriever selection: topk (default), balanced, mmr, "
                 "random, ...",
    "query": "the document field(s) embedded as the query (default: the index's input fields)",
    "label_field": "the document field that holds the label (default label)",
    "output_field": "the document field that holds a generation target (default none)",
    "max_prompt_tokens": "the most tokens a context may have (the model's tokenizer, special tokens "
                         "included): the least relevant demonstrations are dropped until it fits",
    "tokenizer": "the tokenizer counting max_prompt_tokens (default: the model's, from --model_args "
                 "tokenizer= or pretrained=)",
}
_TASK_KEYS = ("max_prompt_tokens", "tokenizer")


def _settings(metadata: Any) -> dict[str, Any]:
    """The ``ragicl`` mapping of a task's metadata, checked."""
    raw = metadata.get("ragicl", {}) if isinstance(metadata, Mapping) else {}
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise TypeError(f"metadata: ragicl: must be a mapping of settings ({sorted(SETTINGS)}), got {raw!r}.")
    unknown = sorted(set(raw) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown settings {unknown} in the task's `metadata: ragicl:`; valid: "
                         f"{sorted(SETTINGS)}.")
    budget = raw.get("max_prompt_tokens")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0):
        raise ValueError(f"metadata: ragicl: max_prompt_tokens must be a positive integer or null, got {budget!r}.")
    return dict(raw)


class _Fixed:
    """Stands in for the task's sampler while a context is rendered with chosen demonstrations."""

    def __init__(self, docs: Sequence[dict[str, Any]]) -> None:
        self.docs = list(docs)

    def sample(self, n: int, eval_doc: Any = None, df: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        return self.docs


class RetrievalTask(ConfigurableTask):
    """An lm-eval ``ConfigurableTask`` whose demonstrations are retrieved for each evaluated document.

    In a task YAML: ``class: !function ragicl.integrations.lm_eval.RetrievalTask``, ``fewshot_split:`` the
    training split (the pool; or ``metadata: ragicl: index:``) and optional settings under
    ``metadata: ragicl:`` (:data:`SETTINGS`). Everything else is an ordinary lm-eval task. For each
    document the task's :class:`~ragicl.integrations.lm_eval.RagiclSampler` returns the ``num_fewshot``
    most similar pool documents (never the document itself or an exact duplicate), most relevant last;
    with ``max_prompt_tokens`` the context keeps the most relevant ones that fit, counted with the
    model's tokenizer on the very text lm-eval sends (instruction, chat frame and special tokens
    included); a document that does not fit even with none is a :class:`~ragicl.BudgetError`.
    """

    def __init__(self, data_dir: str | None = None, cache_dir: str | None = None,
                 download_mode: Any = None, config: dict | None = None) -> None:
        config = {k: v for k, v in (config or {}).items() if k != "class"}  # lm-eval keeps `class:` in it
        self.ragicl_settings = settings = _settings(config.get("metadata"))
        super().__init__(data_dir=data_dir, cache_dir=cache_dir, download_mode=download_mode, config=config)
        self.sampler = self._retrieval_sampler({k: v for k, v in settings.items() if k in _DEFAULT_CONFIG})
        self.max_prompt_tokens: int | None = settings.get("max_prompt_tokens")
        metadata = self.config.metadata if isinstance(self.config.metadata, Mapping) else {}
        self._tokenizer_name = settings.get("tokenizer") or metadata.get("tokenizer") or metadata.get("pretrained")
        self._add_bos = metadata.get("add_bos_token")
        self._tokenizer: Any = None
        if self.max_prompt_tokens is not None and not isinstance(self._tokenizer_name, str):
            raise ValueError(
                f"task {self.config.task!r}: metadata: ragicl: max_prompt_tokens needs the model's tokenizer, and "
                "none is known. lm-eval hands --model_args (pretrained=...) to the tasks when it builds the "
                "TaskManager itself; with your own TaskManager pass TaskManager(metadata={'pretrained': ...}), "
                "or set metadata: ragicl: tokenizer: <name or folder>.")

    def _retrieval_sampler(self, settings: dict[str, Any]) -> RagiclSampler:
        current = getattr(self, "sampler", None)
        if isinstance(current, RagiclSampler):
            return current.configure(**settings) if settings else current
        if current is not None and type(current) is not ContextSampler:
            raise TypeError(f"task {self.config.task!r}: RetrievalTask retrieves demonstrations with ragicl's "
                            f"RagiclSampler, but fewshot_config.sampler is {type(current).__name__}. Fix: "
                            "remove `sampler:` from fewshot_config.")
        split, test = self.fewshot_cfg.split, self.config.test_split
        if settings.get("index") is None:
            if split is None:
                raise ValueError(f"task {self.config.task!r}: RetrievalTask has no pool of demonstrations. Fix: "
                                 "set `fewshot_split:` to the training split (e.g. train), or give an index "
                                 "(metadata: ragicl: index: <folder or .jsonl file>).")
            if split == test:
                logger.warning("task %r: the pool is the test split %r itself (each document is excluded from "
                               "its own context); set fewshot_split to the training split", self.config.task, test)
        docs = list(current.df) if current is not None else []
        return RagiclSampler(docs, rnd=None).configure(**settings)

    # ------------------------------------------------------------------------------------- contexts
    def fewshot_context(self, doc: dict, num_fewshot: int, **kwargs: Any) -> str | list[str]:
        """The context of ``doc`` with its retrieved demonstrations (the most relevant that fit)."""
        if self.max_prompt_tokens is None:
            shots = list(self.sampler.sample(num_fewshot, eval_doc=doc)) if num_fewshot else []
            return self._render(doc, shots, kwargs)
        budget = self.max_prompt_tokens
        contexts = {0: self._render(doc, [], kwargs)}
        alone = self.count_tokens(contexts[0])
        if alone > budget:
            raise BudgetError(f"task {self.config.task!r}: the evaluated document alone needs {alone} context "
                              f"tokens but max_prompt_tokens is {budget}. Raise metadata: ragicl: "
                              "max_prompt_tokens, or shorten the document.", needed=alone, budget=budget)
        shots = list(self.sampler.sample(num_fewshot, eval_doc=doc)) if num_fewshot else []
        fits, too_many = 0, len(shots) + 1  # more demonstrations, more tokens: binary search for the most
        while too_many - fits > 1:
            mid = (fits + too_many) // 2
            contexts[mid] = self._render(doc, shots[len(shots) - mid:], kwargs)
            if self.count_tokens(contexts[mid]) <= budget:
                fits = mid
            else:
                too_many = mid
        if fits < len(shots):
            logger.debug("task %r: %d of %d demonstrations fit in %d tokens", self.config.task, fits,
                         len(shots), budget)
        return contexts[fits]

    def _render(self, doc: dict, shots: list[dict[str, Any]], kwargs: dict[str, Any]) -> str | list[str]:
        sampler = self.sampler
        self.sampler = _Fixed(shots)  # lm-eval's own rendering, with these demonstrations
        try:
            return super().fewshot_context(doc=doc, num_fewshot=len(shots), **kwargs)
        finally:
            self.sampler = sampler

    def count_tokens(self, context: str | list[str]) -> int:
        """Tokens of ``context`` as lm-eval's ``hf`` model encodes it (the longest, for a list of contexts):
        its tokenizer with special tokens unless the text starts with BOS (or ``add_bos_token`` says), and
        for scored continuations without the trailing whitespace that lm-eval moves to the continuation."""
        if self._tokenizer is None:
            from ..models import load_tokenizer

            self._tokenizer = load_tokenizer(self._tokenizer_name)
        tok = self._tokenizer
        texts = [context] if isinstance(context, str) else list(context)
        if self.OUTPUT_TYPE != "generate_until":
            texts = [t.rstrip() for t in texts]
        counts = []
        for text in texts:
            special = self._add_bos if isinstance(self._add_bos, bool) else True
            if tok.bos_token and text.startswith(tok.bos_token):  # as lm-eval: no second BOS
                special = False
            counts.append(len(tok(text, add_special_tokens=special)["input_ids"]))
        return max(counts)


def jsonl_splits(data_dir: str | None = None, **_: Any) -> Any:
    """``custom_dataset`` of a task over a folder of ``<split>.jsonl`` files (a ``datasets.DatasetDict``).

    lm-eval calls it with the task's metadata (and ``--metadata``) as keywords; ``data_dir`` names the
    folder, e.g. ``--metadata '{"data_dir": "../shared/datasets/sst2"}'``; other keywords are ignored.
    """
    import datasets

    if not data_dir:
        raise DataError("this task reads its data from a folder of <split>.jsonl files named by `data_dir`, and "
                        "none was given. Fix: lm_eval ... --metadata '{\"data_dir\": \"path/to/folder\"}' (or "
                        "TaskManager(metadata={'data_dir': ...})).")
    folder = Path(data_dir)
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        raise DataError(f"data_dir {str(folder)!r} (resolved {folder.resolve()}) holds no <split>.jsonl file. "
                        "Fix: point data_dir at a folder with e.g. train.jsonl and test.jsonl.")
    splits = {}
    for file in files:
        with open(file, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        splits[file.stem] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)
