"""The statistics of the gap (TV distance, bootstrap and exact intervals, accuracy, macro-F1): they live in
:mod:`ragicl.stats`, the base layer, because the estimators (the tuner's paired intervals) and the analyses use
them too; this name stays for code that imports them from here."""

from ..stats import *
from ..stats import __all__  # noqa: F401
