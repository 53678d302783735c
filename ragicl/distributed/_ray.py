"""Connecting to Ray: the install hint when it is missing, a clear error when the cluster is unreachable."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
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


LOOPBACK = "127.0.0.1"


def connect(address: str | None = "auto", *, num_cpus: int | None = None, timeout: float = 10.0,
            node_ip_address: str = LOOPBACK) -> Any:
    """Make sure this process is connected to Ray and return the ``ray`` module.

    ``address``: ``"auto"`` (a running cluster if there is one, else a local one), ``"local"`` (always a
    new local one), ``None`` (same as ``"auto"``), ``"host:port"`` (a cluster's GCS) or
    ``"ray://host:port"`` (Ray Client). If Ray is already initialized in this process it is reused. An
    explicit address is probed first (TCP, ``timeout`` seconds), so an unreachable one fails fast with a
    :class:`ClusterError` instead of Ray's minutes of retries.

    A local cluster that ragicl starts listens on ``node_ip_address`` only: by default the loopback
    address, so its GCS, raylet, workers and agents accept no connection from another machine (Ray on
    Linux otherwise gives a local node the machine's external IP and its gRPC servers listen on every
    interface). Pass another address only to make this node reachable, on a network you trust; a cluster
    for several machines is started with ``ray start`` (docs/guide/SCALE.md) and joined with ``address``.
    Joining a loopback cluster (``"auto"`` finding one, ``RAY_ADDRESS`` or ``"127.0.0.1:PORT"``) keeps its
    address loopback, where Ray alone would dial the machine's external address.
    """
    ray = ray_module()
    explicit = address not in (None, "auto", "local")
    hp: tuple[str, int] | None = None
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
    if address == "local":
        return _start_local(ray, node_ip_address, num_cpus=num_cpus, **kwargs)
    if address in (None, "auto"):
        found = _running_cluster()  # RAY_ADDRESS, else a cluster running on this machine
        found_hp = _host_port(found) if found else None
        loopback = found_hp is not None and _is_loopback(found_hp[0])
        if os.environ.get("RAY_ADDRESS"):
            with _localhost_stays_local(loopback):
                return _init(ray, address="auto", **kwargs)
        try:
            with _localhost_stays_local(loopback):
                return _init(ray, address="auto", num_cpus=num_cpus, **kwargs)
        except ConnectionError:  # no running cluster: start a local one
            return _start_local(ray, node_ip_address, num_cpus=num_cpus, **kwargs)
    with _localhost_stays_local(hp is not None and _is_loopback(hp[0])):
        return _init(ray, address=address, **kwargs)


def _init(ray: Any, **kwargs: Any) -> Any:
    if kwargs.get("address"):
        kwargs.pop("num_cpus", None)
        kwargs.pop("include_dashboard", None)
    ray.init(**{k: v for k, v in kwargs.items() if v is not None or k == "address"})
    logger.info("connected to Ray: %s", ray.cluster_resources())
    return ray


def _start_local(ray: Any, node_ip_address: str, **kwargs: Any) -> Any:
    """``ray.init`` of a new local cluster whose servers listen on ``node_ip_address`` (loopback by default).

    Ray (checked on 2.60) turns a loopback ``_node_ip_address`` into the machine's external IP on Linux
    unless its ``ENABLE_RAY_CLUSTER`` switch (the ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` environment variable,
    read when ray is imported) is off, and only a loopback node IP keeps its gRPC servers off the other
    interfaces. The switch is turned off for the duration of the start (it only decides how a localhost
    node IP is resolved), then the node's address is checked: a Ray that ignores it is an error, not an
    exposed cluster.
    """
    loopback = _is_loopback(node_ip_address)
    with _localhost_stays_local(loopback):
        _init(ray, address=None, _node_ip_address=node_ip_address, **kwargs)
    got = ray.util.get_node_ip_address()
    if loopback and not _is_loopback(got):
        ray.shutdown()
        raise ClusterError(f"the local Ray cluster came up on {got}, not on the loopback address this Ray "
                           f"version was asked for ({node_ip_address}): its servers would accept connections "
                           "from other machines, so it was shut down. Fix: start a one-machine cluster "
                           "yourself (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head "
                           "--include-dashboard=false`, see docs/guide/SCALE.md) and pass its address (--ray "
                           "127.0.0.1:6379).")
    logger.info("local Ray cluster on %s (its servers listen there only)", got)
    return ray


@contextlib.contextmanager
def _localhost_stays_local(on: bool) -> Iterator[None]:
    """While ``on``: Ray resolves ``127.0.0.1``/``localhost`` as itself, not as the machine's external IP.

    Ray's driver replaces a loopback node IP or cluster address with the external IP when its
    ``ENABLE_RAY_CLUSTER`` constant is on (Linux). That constant decides nothing else in the driver, so
    it is turned off around ``ray.init`` and restored after.
    """
    if not on:
        yield
        return
    from ray._private import ray_constants  # private: _start_local checks the outcome

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _running_cluster() -> str | None:
    """The address ``ray.init(address="auto")`` would join (``RAY_ADDRESS``, the last cluster started on this
    machine, or any GCS process found here), or ``None`` when Ray finds none or cannot say.

    Needed to keep a loopback cluster (one ragicl started in another process) loopback: Ray would dial it
    on the external address, where nothing listens, and wait minutes.
    """
    try:
        from ray._private import services  # private: on any failure, fall back to Ray's own lookup
    except ImportError:
        return None
    try:
        found = services.get_ray_address_from_environment("auto", None)
    except Exception:  # noqa: BLE001 - ConnectionError when none runs; anything else: let ray.init decide
        return None
    return found if isinstance(found, str) and _host_port(found) is not None else None


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


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
