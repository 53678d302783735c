"""Retrieval few-shot for lm-evaluation-harness: demonstrations chosen by ragicl for each evaluated document.

lm-eval builds each few-shot context by calling ``task.sampler.sample(n, eval_doc=doc)``. Two pieces plug
into its own extension points, both reachable from a plain task YAML through ``!function`` (lm-eval imports
the named module; no start-up hook, no registration needed):

* :class:`RetrievalTask` (``class: !function ragicl.integrations.lm_eval.RetrievalTask``): the task class.
  Demonstrations come from the task's training data (``fewshot_split: train``) or a ragicl index
  (``metadata: ragicl: index:``), never from the test split; each evaluated document is handed to the
  sampler (lm-eval alone passes it only when the few-shot split *is* the test split), and the context is
  cut to ``max_prompt_tokens`` tokens of the model's tokenizer by dropping the least relevant
  demonstrations, as ragicl's packer does. Its settings are the task's ``metadata: ragicl:`` mapping
  (:data:`SETTINGS`). :data:`TASKS_DIR` holds a complete task (``ragicl_sst2``) to copy or run with
  ``--include_path``.
* :class:`RagiclSampler` (``fewshot_config: sampler: !function ragicl.integrations.lm_eval.RagiclSampler``, or
  a configured subclass from :func:`make_sampler`): the ``ContextSampler``. Used alone (without
  :class:`RetrievalTask`) it only sees the evaluated document when ``fewshot_split`` equals ``test_split``.

Install with ``pip install 'ragicl[lmeval]'``. See docs/guide/integrations/lm_eval.md.
"""

from __future__ import annotations

from pathlib import Path

from .._exceptions import require

require("lm_eval", "lmeval", "lm-eval")

from ._lm_eval_sampler import RagiclSampler, make_sampler, register_sampler
from ._lm_eval_task import SETTINGS, RetrievalTask, jsonl_splits

__all__ = ["SETTINGS", "TASKS_DIR", "RagiclSampler", "RetrievalTask", "jsonl_splits", "make_sampler",
           "register_sampler"]

#: the folder of ragicl's lm-eval task files (``--include_path`` it, or copy a file from it)
TASKS_DIR = Path(__file__).resolve().parent / "lmeval_tasks"

register_sampler("ragicl", RagiclSampler)  # `sampler: ragicl` in a process that imported this module
