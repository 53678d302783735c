"""Exceptions raised by ragicl.

RagiclError
 ├── DataError (ValueError)            a dataset, row, field or label the caller gave is unusable
 ├── IndexFormatError (ValueError)     a saved index folder is missing, truncated or inconsistent
 ├── EmbedderMismatchError (ValueError) query vectors/embedder differ from those the index was built with
 ├── BudgetError (ValueError)          a query alone does not fit in the token budget
 ├── NotFittedError (RuntimeError)     a method that needs ``fit`` was called before it
 ├── EstimatorFormatError (ValueError) a saved estimator folder is missing, foreign or stale
 └── MissingDependencyError (ImportError) an optional package is not installed (message has the pip line)

Every message says what was received, what was expected, and how to fix it.
"""

from __future__ import annotations


class RagiclError(Exception):
    """Base class of every error ragicl raises on purpose."""


class DataError(RagiclError, ValueError):
    """The data given is unusable: empty, a missing field or label, an unknown label, unreadable."""


class IndexFormatError(RagiclError, ValueError):
    """A saved index folder is missing, truncated or inconsistent with its manifest."""


class EmbedderMismatchError(RagiclError, ValueError):
    """Queries were embedded with another embedder or dimension than the index was built with."""


class BudgetError(RagiclError, ValueError):
    """A query alone does not fit in the prompt's token budget.

    ``needed`` is the number of prompt tokens the query needs with no demonstration (the smallest budget
    that fits it) and ``budget`` the budget it was packed under, when the packer knows them.
    """

    def __init__(self, message: str, *, needed: int | None = None, budget: int | None = None) -> None:
        super().__init__(message)
        self.needed = needed
        self.budget = budget


class NotFittedError(RagiclError, RuntimeError):
    """A method that needs ``fit`` (or ``build``/``load``) was called first."""


class MissingDependencyError(RagiclError, ImportError):
    """An optional dependency is not installed."""


class EstimatorFormatError(RagiclError, ValueError):
    """A saved ICLClassifier/ICLGenerator folder is missing, foreign, of another class, or refers to an
    index folder that now holds other data."""


def require(module: str, extra: str, package: str | None = None):
    """Import an optional dependency, or raise :class:`MissingDependencyError` with the install line."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{module!r} is needed for this feature but is not installed. "
            f"Install it with: pip install 'ragicl[{extra}]'  (or: pip install {package or module})"
        ) from err


def check_positive_int(name: str, value: object) -> int:
    """Validate a user-given positive integer (never ``assert``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value
