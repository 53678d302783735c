"""Connecting to Ray: the install hint when it is missing, a clear error when the cluster is unreachable."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from .._exceptions import RagiclError, require

logger = logging.getLogger(__name__)


class ClusterError(RagiclError, ConnectionError):
    """The Ray cluster named by ``address`` cannot be reached (or Ray is already connected elsewhere)."""


def ray_module() -> Any:
    """``ray`` with Ray Data, or ``MissingDependencyError`` with ``pip install 'ragicl[ray]'``."""
    ray = require("ray", "ray", "'ray[data]'")
    require("ray.data", "ray", "'ray[data]'")
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def connect(address: str | None = "auto", *, num_cpus: int | None = None, timeout: float = 10.0) -> Any:
    """Make sure this process is connected to Ray and return the ``ray`` module.

    ``address``: ``"auto"`` (a running cluster if there is one, else a local one), ``"local"`` (always a
    new local one), ``None`` (same as ``"auto"``), ``"host:port"`` (a cluster's GCS) or
    ``"ray://host:port"`` (Ray Client). If Ray is already initialized in this process it is reused. An
    explicit address is probed first (TCP, ``timeout`` seconds), so an unreachable one fails fast with a
    :class:`ClusterError` instead of Ray's minutes of retries.
    """
    ray = ray_module()
    explicit = address not in (None, "auto", "local")
    if explicit:
        hp = _host_port(str(address))
        if hp is None:
            raise ClusterError(f"cannot parse the Ray address {address!r}; expected 'auto', 'local', "
                               "'host:port' or 'ray://host:port'.")
        try:
            socket.create_connection(hp, timeout=timeout).close()
        except OSError as err:
            raise ClusterError(f"the Ray cluster at {address!r} is unreachable ({err}). Fix: start it "
                               f"(`ray start --head`), check host and port, or use --ray auto for a "
                               "local cluster.") from err
    if ray.is_initialized():  # already connected (e.g. by the caller): reuse that cluster
        return ray
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    if address == "local" or (address in (None, "auto") and not os.environ.get("RAY_ADDRESS")):
        kwargs["num_cpus"] = num_cpus
        address = "local" if address == "local" else "auto"
        try:
            return _init(ray, address=None if address == "local" else "auto", **kwargs)
        except ConnectionError:  # no running cluster: start a local one
            return _init(ray, address=None, **kwargs)
    return _init(ray, address=address, **kwargs)


def _init(ray: Any, **kwargs: Any) -> Any:
    if kwargs.get("address"):
        kwargs.pop("num_cpus", None)
        kwargs.pop("include_dashboard", None)
    ray.init(**{k: v for k, v in kwargs.items() if v is not None or k == "address"})
    logger.info("connected to Ray: %s", ray.cluster_resources())
    return ray


def error_text(err: RagiclError) -> str:
    """A ragicl error raised in a Ray task, as data: Ray keeps only the text of its cause chain."""
    return f"{type(err).__name__}\x00{err}"


def raise_error_text(text: str, where: str) -> None:
    """Re-raise, on the driver, an error that a Ray task returned with :func:`error_text`."""
    from .. import _exceptions

    name, _, message = text.partition("\x00")
    cls = getattr(_exceptions, name, None)
    if not (isinstance(cls, type) and issubclass(cls, RagiclError)):
        cls = _exceptions.DataError
    raise cls(message if where in message else f"{where}: {message}")


def cluster_gpus(ray: Any) -> int:
    """GPUs the connected cluster offers (0 on a CPU-only cluster)."""
    return int(ray.cluster_resources().get("GPU", 0))
