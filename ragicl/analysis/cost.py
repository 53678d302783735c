"""Cost beside quality: when does fine-tuning pay for itself against retrieval ICL?

Fine-tuning costs a one-off ``T_ft`` seconds, after which each query is cheap (a short zero-shot prompt);
base + retrieved ICL costs nothing up front but every query carries k demonstrations. With measured
per-query times ``c_icl > c_ft`` the two total costs are equal after

    n* = (T_ft − T_icl_setup) / (c_icl − c_ft)   queries,

where ``T_icl_setup`` (default 0) is any one-off cost of the ICL side, e.g. building the index. If ICL is
not more expensive per query, fine-tuning never pays off on compute and n* = inf. All times should come
from the same machine: ``FinetuneResult.seconds`` and ``SystemResult.seconds_per_query`` from
:func:`ragicl.compare`.

>>> round(break_even(600.0, icl_seconds_per_query=0.5, ft_seconds_per_query=0.1), 6)
1500.0
>>> break_even(600.0, 0.1, 0.2)
inf
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CostReport", "break_even"]


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds ≥ 0; received {value!r}.")
    return float(value)


def break_even(finetune_seconds: float, icl_seconds_per_query: float, ft_seconds_per_query: float, *,
               icl_setup_seconds: float = 0.0) -> float:
    """Number of queries after which fine-tuning + cheap queries costs less than ICL queries.

    ``(finetune_seconds − icl_setup_seconds) / (icl_seconds_per_query − ft_seconds_per_query)``, clipped
    at 0; ``inf`` when ICL is not more expensive per query (fine-tuning never breaks even).

    >>> round(break_even(100.0, 0.3, 0.1), 6)
    500.0
    """
    ft = _seconds("finetune_seconds", finetune_seconds)
    icl = _seconds("icl_seconds_per_query", icl_seconds_per_query)
    ftq = _seconds("ft_seconds_per_query", ft_seconds_per_query)
    setup = _seconds("icl_setup_seconds", icl_setup_seconds)
    delta = icl - ftq
    if delta <= 0:
        return math.inf
    return max(0.0, (ft - setup) / delta)


@dataclass(frozen=True)
class CostReport:
    """Measured costs of the two routes and their break-even query volume.

    >>> r = CostReport.from_seconds(120.0, icl_seconds_per_query=0.4, ft_seconds_per_query=0.1,
    ...                             icl_system="retrieved-8", ft_system="ft-full")
    >>> round(r.break_even_queries, 6), round(r.icl_slowdown, 6)
    (400.0, 4.0)
    >>> print(r)
    fine-tuning 120.0 s; retrieved-8 0.400 s/query vs ft-full 0.100 s/query (4.0x); break-even after 400 queries
    """

    finetune_seconds: float
    icl_seconds_per_query: float
    ft_seconds_per_query: float
    icl_setup_seconds: float
    break_even_queries: float
    icl_system: str = "icl"
    ft_system: str = "fine-tuned"

    @classmethod
    def from_seconds(cls, finetune_seconds: float, icl_seconds_per_query: float, ft_seconds_per_query: float,
                     *, icl_setup_seconds: float = 0.0, icl_system: str = "icl",
                     ft_system: str = "fine-tuned") -> CostReport:
        """Compute the break-even point from raw measured seconds."""
        n_star = break_even(finetune_seconds, icl_seconds_per_query, ft_seconds_per_query,
                            icl_setup_seconds=icl_setup_seconds)
        return cls(float(finetune_seconds), float(icl_seconds_per_query), float(ft_seconds_per_query),
                   float(icl_setup_seconds), n_star, icl_system, ft_system)

    @classmethod
    def from_results(cls, finetune_result: Any, icl: Any, ft: Any, *,
                     icl_setup_seconds: float = 0.0) -> CostReport:
        """From a :class:`~ragicl.training.finetune.FinetuneResult` (``.seconds``) and two
        :class:`~ragicl.evaluation.compare.SystemResult` s (``.seconds_per_query``, ``.name``) of one ``compare``."""
        return cls.from_seconds(finetune_result.seconds, icl.seconds_per_query, ft.seconds_per_query,
                                icl_setup_seconds=icl_setup_seconds, icl_system=icl.name, ft_system=ft.name)

    @property
    def icl_slowdown(self) -> float:
        """How many times slower an ICL query is than a fine-tuned one (inf if the latter took 0 s)."""
        if self.ft_seconds_per_query == 0:
            return math.inf
        return self.icl_seconds_per_query / self.ft_seconds_per_query

    def __str__(self) -> str:
        n = "never" if math.isinf(self.break_even_queries) else f"after {self.break_even_queries:,.0f} queries"
        return (f"fine-tuning {self.finetune_seconds:.1f} s; {self.icl_system} {self.icl_seconds_per_query:.3f} "
                f"s/query vs {self.ft_system} {self.ft_seconds_per_query:.3f} s/query "
                f"({self.icl_slowdown:.1f}x); break-even {n}")

    def to_json(self) -> dict:
        """A JSON-ready dict (inf is written as the string "inf")."""
        d = asdict(self)
        d["icl_slowdown"] = self.icl_slowdown
        return {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}
