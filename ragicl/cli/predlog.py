"""``ragicl eval --predictions FILE``: every system's per-query distributions saved as each finishes, reused by a
rerun of the same evaluation (resume an interrupted run; add a fine-tuned reference later without re-scoring)."""

from __future__ import annotations

import logging
from typing import Any

from ..lm.factory import LMSpec
from .settings import BestOptions, EvalOptions, PromptOptions

logger = logging.getLogger("ragicl.cli")

_REUSED = "reused from "
#: LM settings that change how fast, not what is computed: not part of a run's identity
_SPEED_ONLY = {"device", "batch_size", "concurrency", "timeout", "max_retries", "cache", "n_threads"}


def lm_identity(lm: LMSpec) -> Any:
    """The LM as recorded in a predictions file: its name for a plain transformers run (as before engines
    existed), else the spec's settings that change the numbers."""
    settings = {k: v for k, v in lm.to_json().items() if k not in _SPEED_ONLY}
    return lm.model if settings == {"model": lm.model} else settings


class PredictionsLog:
    """``eval --predictions FILE``: reuse the systems FILE holds for this very run; save each new one at once.

    The file identifies the run by the test sample (its fingerprint), the index, the LM and the prompt
    settings; the fine-tuned system also by its checkpoint (path and training record). A file of another
    run is an error (nothing is overwritten); systems missing from it are scored and added one by one, so an
    interrupted evaluation resumes and a reference trained later joins without re-scoring the rest.
    """

    def __init__(self, path: str, *, lm: LMSpec, opts: EvalOptions, best: BestOptions, prompt: PromptOptions,
                 index: Any, test: Any) -> None:
        self.path = path
        self.lm, self.opts, self.best, self.prompt = lm, opts, best, prompt
        self.index = index
        self.test = test
        self.record: Any = None
        self.sources: dict[str, str] = {}

    def settings(self) -> dict[str, Any]:
        m, o, b, p = self.index.manifest, self.opts, self.best, self.prompt
        return {"index": m.get("dataset_fingerprint"), "embedder": m.get("embedder"), "factory": m.get("factory"),
                "lm": lm_identity(self.lm), "k": str(o.k), "selection": o.selection, "template": p.template,
                **({"search": o.search} if o.search != "dense" else {}),
                **({"rerank": o.rerank} if o.rerank else {}),
                "instruction": p.instruction, "max_prompt_tokens": p.max_prompt_tokens, "seed": o.seed,
                "dev_size": b.dev_size if b.best else None,
                "tune_budget": b.identity(1, p.max_prompt_tokens, o.search, o.selection) if b.best else None,
                **({"vote_dev_size": b.vote_dev_size} if b.vote_dev_size else {})}

    def start(self, notes: list[str]) -> dict[str, Any]:
        """The saved systems this run reuses (name → a ``predict_proba`` stand-in); extends ``notes``."""
        from pathlib import Path

        from ..evaluation.predictions import Predictions, load_predictions, reusable_systems

        if self.opts.finetuned:
            self.sources["fine-tuned"] = _checkpoint_source(self.opts.finetuned)
        self.record = Predictions.for_test(self.test, self.settings())
        if not Path(self.path).exists():
            return {}
        saved = load_predictions(self.path)
        reuse = reusable_systems(saved, self.record, self.sources, self.path)
        redo = [name for name in self.opts.rescore if name in reuse]
        for name in redo:
            del reuse[name]
        if redo:
            logger.info("--rescore: scoring %s again (saved in %s)", ", ".join(redo), self.path)
        for name, system in reuse.items():
            self.record = self.record.with_system(name, system.probs, system.recorded_seconds,
                                                  self.sources.get(name, ""))
        stale = [name for name in saved.probs if name not in reuse]  # scored again: their old notes go
        notes.extend(n for n in saved.notes if n not in notes and not any(n.startswith(f"{r} ") for r in stale))
        if reuse:
            logger.info("--predictions %s: reusing %s", self.path, ", ".join(reuse))
            notes.append(f"{_REUSED}{self.path}: {', '.join(reuse)} (scored in an earlier run)")
        return reuse

    def add(self, result: Any, notes: list[str]) -> None:
        """Save ``result`` (a :class:`~ragicl.evaluation.compare.SystemResult`) now, atomically."""
        from ..evaluation.predictions import save_predictions

        self.record = self.record.with_system(result.name, result.probs, result.seconds,
                                              self.sources.get(result.name, "")).with_notes(
            [n for n in notes if not n.startswith(_REUSED)])
        save_predictions(self.path, self.record)


def _checkpoint_source(folder: str) -> str:
    """The fine-tuned checkpoint's resolved path and a hash of its training record (a retrained folder differs;
    the record of a versioned folder names its model version, so every save differs). A damaged record is a
    clear ``FinetuneFormatError`` (checked by ``read_finetune_record``), not a silently different source."""
    import hashlib
    from pathlib import Path

    from ..models import FINETUNE_RECORD, read_finetune_record

    p = Path(folder).resolve()
    if read_finetune_record(p) is None:
        return f"{p}#no-record"
    return f"{p}#{hashlib.sha256((p / FINETUNE_RECORD).read_bytes()).hexdigest()[:16]}"
