"""Generation: retrieval-ICL generation and its distance to a fine-tuned reference, as total variation.

Two distances between a system P (base model + retrieved demonstrations) and a reference Q (the
fine-tuned model, zero-shot prompt with the same query formatting), both exact in what they estimate:

* **Teacher-forced per-position TV.** Along a reference continuation ``y`` (the gold output followed by
  the terminator, tokenized once with the shared tokenizer), the full-vocabulary next-token distributions
  of both systems at every position t, and ``TV_t = ½‖p(·|x, y<t) − q(·|x', y<t)‖₁`` computed exactly
  from float32 logits. Reported per query as the mean over positions, over queries as a mean with a
  percentile-bootstrap interval, and as a curve (mean TV at position t over queries with ``len(y) > t``).
* **Sequence-level Monte-Carlo TV.** Sample ``y ~ P`` (temperature 1, no top-k/top-p: a plain
  categorical draw from the softmax, seeded), score ``ln P(y)`` and ``ln Q(y)`` with one forward pass
  each, average ``1 − min(1, Q(y)/P(y))``. The random variable is the *stopped* token sequence: tokens
  up to and including the first one that is an end-of-sequence id, or completes a stop string in the
  decoded continuation, or is the ``max_new_tokens``-th. That rule depends only on the token prefix
  (a stopping time), so ``P(y) = Π_t p(y_t | x, y<t)`` exactly and the same rule applied to Q gives
  ``Q(y)``; the estimand is ``E_x TV(P_L(·|x), Q_L(·|x))`` over those stopped sequences — TV between
  complete outputs when no sample hits the length cap (the report gives the share that did), else
  between outputs truncated at L tokens. Per query the mean of ``n_samples`` terms is unbiased for that
  query's TV; queries are i.i.d. test draws, so the interval is over the per-query means: Hoeffding ∩
  empirical Bernstein (Maurer & Pontil 2009), each at α/2. The same samples cut at L' < L tokens are draws of
  the sequence stopped at L' (the rule is a stopping time), so the report also gives TV against the
  length cap L' from per-token log-probs at no extra cost; at L' = 1 it estimates the first-token TV,
  which the teacher-forced curve gives exactly at position 0.

Both systems must share one vocabulary (checked: identical ``get_vocab()`` and output width), one
template and one stop rule; the reference is an :class:`ICLGenerator` with ``k=0`` on the fine-tuned
checkpoint. Exact match (GSM8K convention: the number after ``####``) is reported beside the distances.

>>> extract_answer("3 + 4 = 7 apples\\n#### 1,234")
'1234'
>>> exact_match("so 18 in total. #### 18", "#### 18.0")
True
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._atomic import write_json_atomic
from .._exceptions import DataError, NotFittedError, check_positive_int
from ..index.core import ExampleIndex
from ..lm.hf import LanguageModel
from ..models import DEFAULT_LM
from ..prompt.step import PromptStep, make_packer, resolve_k
from ..prompt.template import PromptTemplate
from ..stats import (
    Interval,
    bootstrap_ci,
    clopper_pearson,
    empirical_bernstein_interval,
    hoeffding_interval,
    sequence_tv_mc,
)
from ..types import Dataset, PackedPrompt, Query
from ._common import as_examples, ensure_lm_and_retriever, fit_source, make_retriever
from .base import EstimatorMixin, split_index_folder

logger = logging.getLogger(__name__)

__all__ = ["GenerationReport", "ICLGenerator", "check_same_vocabulary", "continuation_logprobs",
           "exact_match", "extract_answer", "generation_gap", "mean_interval", "sample_continuations", "sequence_logprobs",
           "teacher_forced_tv", "token_logprobs"]

from ..lm.sequence import (  # re-exported: part of this module's API (__all__)
    check_same_vocabulary,
    continuation_logprobs,
    exact_match,
    extract_answer,
    sample_continuations,
    sequence_logprobs,
    teacher_forced_tv,
    token_logprobs,
)


# ----------------------------------------------------------------------------------------- the facade
class ICLGenerator(EstimatorMixin):
    """Generate by in-context learning with retrieved, token-budgeted demonstrations.

    Mirrors :class:`~ragicl.estimators.classifier.ICLClassifier`: ``fit(index)`` (or ``fit(dataset)`` with ``k=0``),
    ``prompts(queries)``, ``generate(queries)``. The prompt budget keeps room for ``max_new_tokens``.
    ``stop`` defaults to the start of the next demonstration (separator + the template's first cue text,
    ``"\\n\\nQuestion:"`` for GSM8K); generation also ends at the end-of-sequence token. The continuation a
    demonstration shows, and the target a fine-tuned reference should learn, is :meth:`target_ids`:
    ``template.answer(output)`` followed by the first stop string (or EOS when there is none).
    A fine-tuned reference is this class with ``lm=<checkpoint>, k=0`` and the same template.
    Same estimator conventions as the classifier: ``get_params``/``set_params``/``clone``, ``save(path)`` /
    ``ICLGenerator.load(path)``, picklable when fitted.

    >>> from ragicl import ExampleIndex, read_dataset                                  # doctest: +SKIP
    >>> train = read_dataset("../shared/datasets/gsm8k/train.jsonl").sample(500)      # doctest: +SKIP
    >>> gen = ICLGenerator(k=4, max_new_tokens=128).fit(ExampleIndex.build(train))     # doctest: +SKIP
    >>> gen.generate(["Tom has 3 apples and buys 4 more. How many apples does he have?"])  # doctest: +SKIP
    ['Tom has 3 + 4 = <<3+4=7>>7 apples.\\n#### 7']
    """

    _DERIVED = ("lm_", "packer_", "retriever_", "stop_", "k_")

    def __init__(self, lm: str | LanguageModel = DEFAULT_LM, template: PromptTemplate | None = None, *,
                 k: int | str = 4, max_prompt_tokens: int | None = 1024, max_new_tokens: int = 256,
                 selection: str = "topk", stop: Sequence[str] | None = None, n_candidates: int | None = None,
                 batch_size: int | None = None, device: str = "auto", seed: int = 0,
                 show_progress: bool | None = None) -> None:
        self.lm = lm
        self.template = template
        self.k = k
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.selection = selection
        self.stop = stop
        self.n_candidates = n_candidates
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.show_progress = show_progress

    def fit(self, data: ExampleIndex | Dataset | str | os.PathLike) -> ICLGenerator:
        """Prepare the pipeline over an index (an object or a saved index folder), or, for ``k=0``, a
        dataset giving the input fields."""
        folder, data = split_index_folder(data)  # a saved index folder: save() will refer to it
        index, dataset = fit_source(self.k, data)
        check_positive_int("max_new_tokens", self.max_new_tokens)
        if dataset.task != "generation":
            raise DataError(f"ICLGenerator needs a generation dataset (outputs, not labels); got task "
                            f"{dataset.task!r}. Read it with read_dataset(..., output_field='answer').")
        if self.selection == "balanced":
            raise ValueError("selection='balanced' balances labels and a generation dataset has none; "
                             "use 'topk', 'mmr' or 'random'.")
        for name in self._DERIVED:
            self.__dict__.pop(name, None)
        self.index_ = index
        self.index_folder_ = folder
        self.input_fields_ = tuple(dataset.input_fields)
        self.template_ = self.template or PromptTemplate.default(dataset, task="generation",
                                                                 output_field=dataset.output_field)
        if self.template_.target != "output":
            raise ValueError(f"the template {self.template_.example!r} ends with {{label}}; generation "
                             "needs a format ending with {output}.")
        self._prepare()
        return self

    def _prepare(self) -> None:
        """Load the LM and build stop rule, retriever and packer from the fitted state (also after unpickling)."""
        ensure_lm_and_retriever(self)
        self.stop_ = tuple(s for s in (self.stop if self.stop is not None else _default_stop(self.template_)) if s)
        examples = list(self.index_.examples) if self.index_ is not None else []
        self.packer_ = make_packer(self.lm_, self.template_, examples, max_prompt_tokens=self.max_prompt_tokens,
                                   index=self.index_,
                                   answer_tokens=self.max_new_tokens)
        self.k_ = resolve_k(self.k, self.packer_, len(examples))
        self.retriever_ = make_retriever(self, self.k_)

    def _check_fitted(self) -> None:
        if not self._ensure_prepared():
            raise NotFittedError("this ICLGenerator is not fitted yet: call fit(index) first.")

    def prompt_step(self) -> PromptStep:
        """The fitted retrieve-and-pack step (:class:`~ragicl.prompt.step.PromptStep`) behind :meth:`prompts`."""
        self._check_fitted()
        return PromptStep(self.packer_, self.retriever_, self.index_, self.k_, self.n_candidates)

    def prompts(self, queries: Sequence[Query] | Query) -> list[PackedPrompt]:
        """The packed prompts the LM would see for these queries (retrieval + exact packing)."""
        return self.prompt_step()(as_examples(queries, self.input_fields_))

    def generate(self, queries: Sequence[Query] | Query, *, do_sample: bool = False,
                 seed: int | None = None) -> list[str]:
        """Greedy (or sampled) outputs, cut at the first stop string; new text only."""
        prompts = self.prompts(queries)
        return self.lm_.generate([p.token_ids for p in prompts], self.max_new_tokens, stop=list(self.stop_),
                                 do_sample=do_sample, seed=seed)

    def target_ids(self, output: str) -> list[int]:
        """Continuation ids for ``output``: ``template.answer(output)`` + the first stop string (EOS when
        there is none), tokenized once without special tokens. Identical for every system that shares
        the tokenizer: these are the teacher-forcing positions and the fine-tuning target."""
        self._check_fitted()
        if self.stop_:
            return list(self.lm_.tokenizer(self.template_.answer(output) + self.stop_[0],
                                           add_special_tokens=False)["input_ids"])
        ids = list(self.lm_.tokenizer(self.template_.answer(output), add_special_tokens=False)["input_ids"])
        return ids + [int(self.lm_.tokenizer.eos_token_id)]

    def score(self, test: Dataset, extractor: Callable[[str], str | None] = extract_answer) -> float:
        """Exact match of greedy outputs on a generation dataset."""
        preds = self.generate(list(test.examples))
        return float(np.mean([exact_match(p, ex.output or "", extractor) for p, ex in zip(preds, test)]))


def _default_stop(template: PromptTemplate) -> tuple[str, ...]:
    """Separator + the cue text before the first field (``"\\n\\nQuestion:"``); EOS only in chat mode."""
    if template.chat:
        return ()
    marker = "\x00"
    head = template.render_query({f: marker for f in template.input_fields}).split(marker, 1)[0].strip()
    return (template.separator + head,) if head else ((template.separator,) if template.separator else ())


# --------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class GenerationReport:
    """What :func:`generation_gap` measured; ``table()`` for people, ``to_json()`` for programs."""

    dataset: str
    n: int
    system: str
    reference: str
    exact_match: Mapping[str, Interval]
    token_tv: Interval
    token_tv_curve: tuple[float, ...]
    token_tv_counts: tuple[int, ...]
    sequence_tv: Interval
    sequence_tv_by_length: Mapping[int, Interval]
    sample_from: str
    n_samples: int
    truncated_share: float
    mean_sample_tokens: float
    seconds: Mapping[str, float]
    notes: tuple[str, ...] = ()
    token_tv_per_query: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    sequence_tv_per_query: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    outputs: tuple[Mapping[str, str], ...] = field(default=(), repr=False, compare=False)

    def curve_bins(self, edges: Sequence[int] = (0, 8, 32, 64, 128)) -> list[tuple[str, float]]:
        """Mean TV over position ranges (weighted by how many queries reach each position)."""
        curve, counts = np.asarray(self.token_tv_curve), np.asarray(self.token_tv_counts)
        bounds = [e for e in edges if e < len(curve)] + [len(curve)]
        return [(f"{lo}-{hi - 1}", float((curve[lo:hi] * counts[lo:hi]).sum() / counts[lo:hi].sum()))
                for lo, hi in itertools.pairwise(bounds) if counts[lo:hi].sum()]

    def table(self) -> str:
        """A plain-text summary."""
        em = "  ".join(f"{name}: {iv} ({iv.method})" for name, iv in self.exact_match.items())
        bins = ", ".join(f"{label}: {v:.3f}" for label, v in self.curve_bins())
        lines = [
            f"{self.dataset}: {self.n} test queries; system {self.system!r} vs reference {self.reference!r}",
            f"exact match [95% CI]           {em}",
            (f"per-token TV, teacher-forced   {self.token_tv}  (mean over positions of the gold continuation, "
            f"then over queries; {self.token_tv.method})"),
            f"  by position                  {bins}",
            (f"sequence TV, Monte Carlo       {self.sequence_tv}  ({self.n_samples} sample(s)/query from "
            f"{self.sample_from!r}; {self.sequence_tv.method}; {self.truncated_share:.0%} hit the length cap; "
            f"mean {self.mean_sample_tokens:.1f} tokens)"),
            "  by length cap L'             " + ", ".join(
                f"{k}: {v.estimate:.3f}" for k, v in self.sequence_tv_by_length.items()),
            "seconds                        " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()),
        ]
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_json(self, path: str | os.PathLike | None = None) -> dict:
        """The report as a dict; also written atomically to ``path`` when given."""
        data = {"dataset": self.dataset, "n": self.n, "system": self.system, "reference": self.reference,
                "exact_match": {k: v.to_json() for k, v in self.exact_match.items()},
                "token_tv": self.token_tv.to_json(), "token_tv_curve": list(self.token_tv_curve),
                "token_tv_counts": list(self.token_tv_counts), "sequence_tv": self.sequence_tv.to_json(),
                "sequence_tv_by_length": {str(k): v.to_json() for k, v in self.sequence_tv_by_length.items()},
                "sample_from": self.sample_from, "n_samples": self.n_samples,
                "truncated_share": self.truncated_share, "mean_sample_tokens": self.mean_sample_tokens,
                "seconds": dict(self.seconds), "notes": list(self.notes),
                "token_tv_per_query": self.token_tv_per_query.tolist(),
                "sequence_tv_per_query": self.sequence_tv_per_query.tolist(), "outputs": list(self.outputs)}
        if path is not None:
            write_json_atomic(path, data)
        return data


def mean_interval(values: np.ndarray, alpha: float = 0.05) -> Interval:
    """Interval for the mean of i.i.d. values in [0, 1]: the intersection of the Hoeffding and the
    empirical-Bernstein intervals, each at level 1 − α/2 (union bound: coverage ≥ 1 − α). Hoeffding is
    the tighter at small n, empirical Bernstein once n is large and the variance small."""
    h = hoeffding_interval(values, 0.0, 1.0, alpha=alpha / 2)
    eb = empirical_bernstein_interval(values, alpha=alpha / 2, range=1.0, clip=(0.0, 1.0))
    return Interval(float(np.mean(values)), max(h.low, eb.low), min(h.high, eb.high), 1 - alpha,
                    "hoeffding ∩ empirical-bernstein over queries")


def _check_pair(system: ICLGenerator, reference: ICLGenerator) -> None:
    for name, g in (("system", system), ("reference", reference)):
        if not isinstance(g, ICLGenerator):
            raise TypeError(f"{name} must be a fitted ICLGenerator, got {type(g).__name__}.")
        g._check_fitted()
    check_same_vocabulary(system.lm_, reference.lm_)
    if system.template_ != reference.template_:
        raise ValueError(f"the two systems format queries differently ({system.template_.example!r} vs "
                         f"{reference.template_.example!r}); TV compares like with like: pass the same "
                         "template to both ICLGenerators.")
    if (system.stop_, system.max_new_tokens) != (reference.stop_, reference.max_new_tokens):
        raise ValueError(f"the two systems stop differently (stop {system.stop_} / max_new_tokens "
                         f"{system.max_new_tokens} vs {reference.stop_} / {reference.max_new_tokens}); the "
                         "sequence TV needs one stop rule: give both the same stop and max_new_tokens.")


def generation_gap(test: Dataset, system: ICLGenerator, reference: ICLGenerator, *, n_samples: int = 1,
                   sample_from: str = "reference", extractor: Callable[[str], str | None] = extract_answer,
                   names: tuple[str, str] = ("icl", "fine-tuned"), n_boot: int = 2000, alpha: float = 0.05,
                   seed: int = 0, show_progress: bool | None = None) -> GenerationReport:
    """Exact match of both systems and their teacher-forced and sequence-level TV (module docstring).

    ``system`` and ``reference`` are fitted :class:`ICLGenerator` s sharing template, stop rule and
    vocabulary (typically base + k demonstrations vs. the fine-tuned checkpoint with ``k=0``).
    ``sample_from`` ("reference" or "system") is the side the Monte-Carlo sequences are drawn from (TV is
    symmetric; the estimate is unbiased either way); ``n_samples`` draws per query.
    """
    if len(test) == 0:
        raise DataError("the test set is empty; pass a generation dataset with at least one example.")
    missing = [ex.id for ex in test if not ex.output]
    if missing:
        raise DataError(f"test examples {missing[:5]} have no output; the teacher-forced TV and exact match "
                        "need gold outputs (read_dataset(..., output_field='answer')).")
    if sample_from not in ("reference", "system"):
        raise ValueError(f"sample_from must be 'reference' or 'system', got {sample_from!r}.")
    check_positive_int("n_samples", n_samples)
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"names must be two different display names, got {names!r}.")
    _check_pair(system, reference)
    seconds: dict[str, float] = {}
    queries = list(test.examples)

    t0 = time.perf_counter()
    p_prompts = [list(p.token_ids) for p in system.prompts(queries)]
    q_prompts = [list(p.token_ids) for p in reference.prompts(queries)]
    seconds["prompts"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    texts = {name: g.lm_.generate(prompts, g.max_new_tokens, stop=list(g.stop_))
             for name, g, prompts in ((names[0], system, p_prompts), (names[1], reference, q_prompts))}
    em = {name: [exact_match(t, ex.output or "", extractor) for t, ex in zip(out, queries)]
          for name, out in texts.items()}
    em_iv = {name: clopper_pearson(int(sum(v)), len(v), alpha) for name, v in em.items()}
    seconds["generate"] = time.perf_counter() - t0
    logger.info("greedy outputs of both systems in %.1f s; exact match %s", seconds["generate"],
                {k: round(v.estimate, 3) for k, v in em_iv.items()})

    t0 = time.perf_counter()
    targets = [system.target_ids(ex.output or "") for ex in queries]
    per_pos = teacher_forced_tv(system.lm_, p_prompts, reference.lm_, q_prompts, targets,
                                show_progress=show_progress)
    per_query = np.array([v.mean() for v in per_pos])
    width = max(len(v) for v in per_pos)
    sums, counts = np.zeros(width), np.zeros(width, dtype=np.int64)
    for v in per_pos:
        sums[:len(v)] += v
        counts[:len(v)] += 1
    token_iv = bootstrap_ci(per_query, n_boot=n_boot, alpha=alpha, seed=seed)
    seconds["teacher_forced_tv"] = time.perf_counter() - t0
    logger.info("teacher-forced TV in %.1f s: %s", seconds["teacher_forced_tv"], token_iv)

    t0 = time.perf_counter()
    src, src_prompts, other, other_prompts = ((reference, q_prompts, system, p_prompts)
                                              if sample_from == "reference" else
                                              (system, p_prompts, reference, q_prompts))
    drawn = sample_continuations(src.lm_, src_prompts, src.max_new_tokens, n=n_samples, stop=src.stop_,
                                 seed=seed, batch_size=getattr(src.lm_, "batch_size", None) or 8, show_progress=show_progress)
    samples = [(i, ids, trunc) for i, per in enumerate(drawn) for ids, trunc in per]
    owners = [s[0] for s in samples]
    ys = [s[1] for s in samples]
    lp_tok = token_logprobs(src.lm_, [src_prompts[i] for i in owners], ys, show_progress=show_progress)
    lq_tok = token_logprobs(other.lm_, [other_prompts[i] for i in owners], ys, show_progress=show_progress)
    by_length: dict[int, Interval] = {}
    caps = sorted({c for c in (1, 2, 4, 8, 16, 32, 64) if c < src.max_new_tokens} | {src.max_new_tokens})
    for cap in caps:  # a sample cut at cap tokens is a draw of the sequence stopped at cap (same rule)
        logp = np.array([v[:cap].sum() for v in lp_tok])
        logq = np.array([v[:cap].sum() for v in lq_tok])
        terms = -np.expm1(np.minimum(logq - logp, 0.0))
        per_q = np.bincount(owners, weights=terms, minlength=len(queries)) / n_samples
        if len(queries) >= 2:
            by_length[cap] = mean_interval(per_q, alpha)
        else:  # one query: its samples are i.i.d. draws of that query's TV
            by_length[cap] = sequence_tv_mc(logp, logq, alpha=alpha)
    seq_iv, seq_per_query = by_length[src.max_new_tokens], per_q
    seconds["sequence_tv"] = time.perf_counter() - t0

    notes = (f"teacher-forced continuation = template answer + {system.stop_[0] if system.stop_ else 'EOS'!r}",
             ("sequence TV is over stopped token sequences (EOS / stop string / max_new_tokens="
             f"{system.max_new_tokens}), sampled at temperature 1 with no top-k/top-p"))
    outputs = tuple({"id": ex.id, "gold": ex.output or "", names[0]: texts[names[0]][i],
                     names[1]: texts[names[1]][i]} for i, ex in enumerate(queries))
    report = GenerationReport(
        dataset=test.name or "test", n=len(queries), system=names[0], reference=names[1], exact_match=em_iv,
        token_tv=token_iv, token_tv_curve=tuple((sums / np.maximum(counts, 1)).tolist()),
        token_tv_counts=tuple(counts.tolist()), sequence_tv=seq_iv,
        sequence_tv_by_length=by_length, sample_from=sample_from,
        n_samples=n_samples, truncated_share=float(np.mean([s[2] for s in samples])),
        mean_sample_tokens=float(np.mean([len(y) for y in ys])), seconds=seconds, notes=notes,
        token_tv_per_query=per_query, sequence_tv_per_query=seq_per_query, outputs=outputs)
    logger.info("generation gap on %d queries: token TV %s, sequence TV %s", len(queries), token_iv, seq_iv)
    return report
