"""Whether a model name can be loaded here, said at once instead of after minutes of hub retries.

:func:`model_unavailable` answers for a folder or hub id: a local folder is fine; a hub id is fine when it is
in the local Hugging Face cache or when the hub is reachable. A name that is neither (a mistyped path such
as ``runs/ft-sst2`` on a machine without the hub, where ``transformers`` would retry ten times and raise a
raw ``OSError`` after ~50 s) gets the reason now; :func:`check_model` raises it as a
:class:`ModelNotFoundError`.

>>> model_unavailable(".") is None
True
"""

from __future__ import annotations

import os
from pathlib import Path

from ._exceptions import RagiclError

__all__ = ["ModelNotFoundError", "check_model", "hub_reachable", "model_unavailable"]


class ModelNotFoundError(RagiclError, OSError):
    """A model name is neither a local folder, a cached hub id, nor reachable on the hub."""


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect (a proxy, if configured, is assumed to)."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def model_unavailable(resolved: str, files: tuple[str, ...] = ("config.json",)) -> str | None:
    """Why the model ``resolved`` (a folder or hub id) cannot be loaded, or ``None`` when it can be tried."""
    if Path(resolved).exists():
        return None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in files:
            if isinstance(try_to_load_from_cache(resolved, name), str):
                return None
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - huggingface_hub raises its own types for an invalid repo id
        return "it is not an existing path nor a valid Hugging Face model id"
    if offline:
        return "it is not a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return "it is not a local folder nor in the Hugging Face cache, and the hub is unreachable"
    return None


def check_model(name: str, what: str = "model", files: tuple[str, ...] = ("config.json",)) -> None:
    """Raise :class:`ModelNotFoundError` now when ``name`` cannot be loaded (see :func:`model_unavailable`)."""
    why = model_unavailable(name, files)
    if why is not None:
        raise ModelNotFoundError(f"{what} {name!r} cannot be loaded: {why}. Expected a known short name (e.g. "
                                 "'SmolLM2-135M-Instruct'), a local model folder, or a reachable Hugging Face "
                                 "hub id. Fix: check the name or path.")
