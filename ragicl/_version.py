"""The package version (one place: ``ragicl.__version__``, the CLI's ``--version``, reports)."""

__version__ = "0.1.0"
