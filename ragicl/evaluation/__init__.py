"""Measuring systems against each other and against the fine-tuned reference.

- ``compare``: :func:`compare` → :class:`Report` (accuracy, macro-F1, TV gap with intervals);
- ``stats``: estimators and intervals; ``curves``: gap vs k, budget and data size; ``report``: Markdown/JSON.
"""

from .compare import Gap, Report, SystemResult, compare

__all__ = ["Gap", "Report", "SystemResult", "compare"]
