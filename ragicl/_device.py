"""Where models and searches run: the one device resolver (embedder, LM, exact GPU search, re-ranker).

``"auto"`` is CUDA when torch sees a GPU, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` and ``"mps"`` are
checked to exist on this machine and torch build, with one error type (:class:`DeviceError`) that says what
is missing and the fix.

>>> resolve_device("cpu")
'cpu'
"""

from __future__ import annotations

from ._exceptions import RagiclError

__all__ = ["DeviceError", "resolve_device"]


class DeviceError(RagiclError, ValueError):
    """A device name torch does not know, or a device this machine or torch build does not have."""


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; any other name is checked to exist.

    >>> resolve_device("cpu")
    'cpu'
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
        index = torch.device(device).index
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"unknown device {device!r} ({err}); expected 'auto', 'cpu', 'cuda', 'cuda:N' or "
                          "'mps'. Fix: pass one of those.") from None
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f"device {device!r} asked for, but {build} (torch {torch.__version__}). "
                              "Fix: use device='cpu' (or 'auto'), or install a CUDA build of torch on a GPU "
                              "machine.")
        if index is not None and index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA "
                              f"device(s) are visible (cuda:0 to cuda:{torch.cuda.device_count() - 1}). "
                              "Fix: pick an existing index.")
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"device {device!r} asked for, but Apple's MPS backend is not available here "
                              f"(torch {torch.__version__}; it needs macOS on Apple silicon). Fix: use "
                              "device='cpu' or 'auto'.")
    elif kind != "cpu":
        raise DeviceError(f"device {device!r} is not supported; expected 'auto', 'cpu', 'cuda', 'cuda:N' or "
                          "'mps'.")
    return device
