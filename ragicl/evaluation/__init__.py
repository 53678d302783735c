"""Measuring systems against each other and against the fine-tuned reference.

- ``compare``: :func:`compare` → :class:`Report` (accuracy, macro-F1, TV gap with intervals);
- ``predictions``: every system's per-query label distributions saved (``ragicl eval --predictions``), so
  an evaluation resumes, a reference joins later, and any metric is computed post hoc;
- ``stats``: estimators and intervals; ``curves``: gap vs k, budget and data size; ``report``: Markdown/JSON.
"""

from .compare import Gap, Report, SystemResult, compare
from .predictions import Predictions, load_predictions, save_predictions

__all__ = ["Gap", "Predictions", "Report", "SystemResult", "compare", "load_predictions", "save_predictions"]
