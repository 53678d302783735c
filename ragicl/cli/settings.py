"""What a command line asks for, as typed records: the only place that reads argparse's ``Namespace``.

Each command turns its parsed arguments into these frozen records (``from_args``) and passes them on; the
systems, the predictions log, the demo and the library calls below them never see ``argparse``. The LM is a
:class:`~ragicl.lm.factory.LMSpec` (model, engine, and the engine's options).

>>> import argparse
>>> DataOptions.from_args(argparse.Namespace(input_fields="premise,hypothesis", label_field="label",
...                                          output_field=None)).input_fields
('premise', 'hypothesis')
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ..lm.factory import LMSpec
from ..models import DEFAULT_LM

__all__ = ["BestOptions", "DataOptions", "EvalOptions", "PromptOptions", "lm_spec"]


@dataclass(frozen=True)
class DataOptions:
    """How dataset files are read: ``read_dataset``'s field options."""

    input_fields: tuple[str, ...] | None = None
    label_field: str = "label"
    output_field: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DataOptions:
        fields = getattr(args, "input_fields", None)
        return cls(tuple(f.strip() for f in fields.split(",") if f.strip()) if fields else None,
                   getattr(args, "label_field", "label"), getattr(args, "output_field", None))

    def read(self, path: Any, name: str | None = None, labels: Any = None) -> Any:
        from ..data import read_dataset

        return read_dataset(path, input_fields=list(self.input_fields) if self.input_fields else None,
                            label_field=self.label_field, output_field=self.output_field, name=name,
                            labels=labels)


@dataclass(frozen=True)
class PromptOptions:
    """The prompt: template and instruction (escapes already read) and the token budget of a prompt."""

    template: str | None = None
    instruction: str | None = None
    max_prompt_tokens: int = 1024

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PromptOptions:
        from .checks import unescape

        template, instruction = getattr(args, "template", None), getattr(args, "instruction", None)
        return cls(unescape(template) if template else None, unescape(instruction) if instruction else None,
                   getattr(args, "max_prompt_tokens", 1024))

    def template_for(self, dataset: Any, preset: str | None = None) -> Any:
        """The :class:`~ragicl.prompt.template.PromptTemplate` for ``dataset``: the given one (checked
        against its fields), else ``preset``'s (a known dataset name) or the default for its fields."""
        from dataclasses import replace

        from ..prompt.template import PromptTemplate

        if self.template:
            template = PromptTemplate(example=self.template, instruction=self.instruction or "")
            template.validate(dataset.input_fields)
            return template
        base = None
        if preset is not None:
            try:
                base = PromptTemplate.for_dataset(preset)
            except ValueError:
                base = None
        base = base or PromptTemplate.default(dataset.input_fields)
        return replace(base, instruction=self.instruction) if self.instruction else base


@dataclass(frozen=True)
class BestOptions:
    """The tuned "ragicl best" and the kNN-vote rows (eval, tune and demo).

    ``tune_budget`` is LM tokens (``--tune-budget``): a number, None (no limit) or ``"auto"`` (the default,
    resolved by :meth:`lm_budget`); ``tune_max_seconds`` the optional seconds cap; ``tune_rule`` the selection
    rule (the library's default unless given).

    >>> BestOptions().lm_budget(n_ks=1, max_prompt_tokens=1024)  # eval's defaults: (1 + 3) x 150 x 1024
    614400
    """

    best: bool = True
    vote: bool = True
    dev_size: int = 150
    tune_budget: int | str | None = "auto"
    vote_dev_size: int | None = None
    tune_max_seconds: float | None = None
    tune_rule: str = "one-se"
    #: the retrievers the tuner chooses among (None: the eval's --search / --selection only)
    tune_searches: tuple[str, ...] | None = None
    tune_selections: tuple[str, ...] | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BestOptions:
        from .options import AUTO_BUDGET, default_tune

        return cls(getattr(args, "best", True), getattr(args, "vote", True), getattr(args, "dev_size", 150),
                   getattr(args, "tune_budget", AUTO_BUDGET), getattr(args, "vote_dev_size", None),
                   getattr(args, "tune_max_seconds", None), getattr(args, "tune_rule", None) or default_tune("rule"),
                   getattr(args, "tune_search", None), getattr(args, "tune_selection", None))

    def other_retrievers(self, search: str, selection: str) -> int:
        """How many ``(search, selection)`` pairs the tuner tries besides the plain systems' own."""
        pairs = {(a, b) for a in self.tune_searches or (search,) for b in self.tune_selections or (selection,)}
        return len(pairs - {(search, selection)})

    def lm_budget(self, n_ks: int, max_prompt_tokens: int | None, other_retrievers: int = 0) -> int | None:
        """The search's budget in LM tokens (None: no limit). ``"auto"``: ``(n_ks x (1 + other_retrievers) + 3)
        x dev_size x max_prompt_tokens``, room for the plain systems (zero-shot is short; retrieved-k for each
        of the ``n_ks`` k at most one full prompt per dev query), retrieved-k with each other retriever the
        tuner tries, and three more configurations at full length; shorter prompts fit more. Deterministic:
        the same on any machine."""
        from .options import AUTO_BUDGET, AUTO_EXTRA_PROMPTS

        if self.tune_budget != AUTO_BUDGET:
            return self.tune_budget  # type: ignore[return-value]
        return (n_ks * (1 + other_retrievers) + AUTO_EXTRA_PROMPTS) * self.dev_size * (max_prompt_tokens or 1024)

    def tuner_kwargs(self, n_ks: int, max_prompt_tokens: int | None, search: str = "dense",
                     selection: str = "topk") -> dict[str, Any]:
        """The :class:`~ragicl.estimators.tune.FusionTuner` keywords these options set (``search`` and
        ``selection``: the plain systems' retriever, e.g. eval's ``--search`` and ``--selection``)."""
        other = self.other_retrievers(search, selection)
        return {"dev_size": self.dev_size, "lm_budget": self.lm_budget(n_ks, max_prompt_tokens, other),
                "max_seconds": self.tune_max_seconds, "rule": self.tune_rule, "vote_dev_size": self.vote_dev_size,
                "search": search, "selection": selection, "searches": self.tune_searches,
                "selections": self.tune_selections}

    def identity(self, n_ks: int, max_prompt_tokens: int | None, search: str = "dense",
                 selection: str = "topk") -> dict[str, Any]:
        """What decides the tuned system's search beyond the dev set (a saved predictions file's
        ``tune_budget``): the LM budget, the seconds cap, the rule and the retrievers tried."""
        other = self.other_retrievers(search, selection)
        return {"lm_budget": self.lm_budget(n_ks, max_prompt_tokens, other), "max_seconds": self.tune_max_seconds,
                "rule": self.tune_rule,
                **({"searches": list(self.tune_searches)} if self.tune_searches else {}),
                **({"selections": list(self.tune_selections)} if self.tune_selections else {})}


@dataclass(frozen=True)
class EvalOptions:
    """What ``ragicl eval`` (and the demo) scores: the systems' shared settings and the run's files."""

    k: int | str = 16
    selection: str = "topk"
    seed: int = 0
    n: int | None = None
    finetuned: str | None = None
    predictions: str | None = None
    rescore: tuple[str, ...] = ()
    json: str | None = None
    report: str | None = None
    ray: str | None = None
    workers: int | None = None
    index: str | None = None
    search: str = "dense"
    rerank: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalOptions:
        return cls(getattr(args, "k", 16), getattr(args, "selection", "topk"), getattr(args, "seed", 0),
                   getattr(args, "n", None), getattr(args, "finetuned", None), getattr(args, "predictions", None),
                   tuple(getattr(args, "rescore", None) or ()), getattr(args, "json", None),
                   getattr(args, "report", None), getattr(args, "ray", None), getattr(args, "workers", None),
                   getattr(args, "index", None), getattr(args, "search", "dense"), getattr(args, "rerank", None))

    @property
    def retrieval(self) -> dict[str, Any]:
        """The retrieved-k system's retrieval settings, as ICLClassifier keywords."""
        return {"selection": self.selection, "search": self.search, "reranker": self.rerank}


def lm_spec(args: argparse.Namespace, *, scoring: bool = True) -> LMSpec:
    """The ``--lm*`` options (and ``--device``/``--batch-size``) as an :class:`LMSpec` (checked there).
    ``scoring=False`` for ``finetune``, whose ``--batch-size`` is examples per optimizer step."""
    def get(name: str, default: Any = None) -> Any:
        return getattr(args, name, default)

    cache = get("lm_cache", "on")
    return LMSpec(model=get("lm") or DEFAULT_LM, engine=get("lm_engine", "auto"),
                  batch_size=get("batch_size") if scoring else None,
                  tokenizer=get("lm_tokenizer"), device=get("device", "auto"), dtype=get("dtype", "auto"),
                  device_map=get("device_map"), load_in_8bit=bool(get("load_in_8bit", False)),
                  load_in_4bit=bool(get("load_in_4bit", False)), attn_implementation=get("attn_implementation"),
                  model_kwargs=get("model_kwargs"), quantization_config=get("quantization_config"),
                  n_ctx=get("n_ctx"), n_batch=get("n_batch"), n_threads=get("n_threads"),
                  n_gpu_layers=get("n_gpu_layers", 0) or 0, url=get("lm_url"),
                  concurrency=get("lm_concurrency", 8) or 8, timeout=get("lm_timeout", 120.0) or 120.0,
                  max_retries=get("lm_retries", 8) if get("lm_retries") is not None else 8,
                  route=get("lm_route", "auto") or "auto", chat=bool(get("lm_chat", False)), cache=cache or "on",
                  context_length=get("lm_context_length"))
