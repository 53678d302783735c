"""The machine a run happened on, for reports: CPU model and usable CPU count."""

from __future__ import annotations

import os
import platform


def cpu_model_name() -> str:
    """The CPU model as ``lscpu`` reports it ("Model name"), from /proc/cpuinfo; platform name otherwise."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
