"""A local Ray cluster that ragicl starts accepts no connection from another machine (issue 35).

The check is on the real processes: after a task, an actor and a Ray Data job have run (so workers, actors
and agents are up), every listening TCP socket of this process and its descendants must be on a loopback
address. Before the fix the GCS, the raylet, the workers and the driver listened on ``::`` (every interface)
and the runtime-env agent on the machine's external address.
"""

from __future__ import annotations

import ipaddress
import os
from types import SimpleNamespace

import pytest
from _ray_rows import needs_ray

from ragicl.distributed import ClusterError
from ragicl.distributed._ray import _is_loopback, _start_local


def _is_local(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def _listeners() -> list[tuple[int, str, str, int]]:
    psutil = pytest.importorskip("psutil")  # installed with ray
    me = psutil.Process()
    out = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except psutil.Error:  # a worker that exited meanwhile
            continue
        out += [(proc.pid, name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


@needs_ray
def test_a_local_cluster_listens_on_loopback_only(ray_cluster):
    ray = ray_cluster

    @ray.remote
    def pid() -> int:
        return os.getpid()

    @ray.remote
    class Actor:
        def pid(self) -> int:
            return os.getpid()

    actor = Actor.remote()
    pids = {ray.get(pid.remote()), ray.get(actor.pid.remote())}
    assert ray.data.range(20).map_batches(lambda batch: batch).count() == 20
    listening = _listeners()
    names = {name for _, name, _, _ in listening}
    # the check sees the cluster: the GCS, the raylet and the worker processes that ran the task and actor
    assert {"gcs_server", "raylet"} <= names and pids <= {p for p, _, _, _ in listening}, listening
    exposed = [row for row in listening if not _is_local(row[2])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert _is_loopback(ray.util.get_node_ip_address())


def test_a_ray_that_ignores_the_loopback_request_is_shut_down():
    """If a Ray version brought the node up on an external address anyway, connect refuses to go on."""
    constants = pytest.importorskip("ray._private.ray_constants")
    seen = {}
    fake = SimpleNamespace(
        init=lambda **kw: seen.update(kw, cluster_switch=constants.ENABLE_RAY_CLUSTER),
        cluster_resources=lambda: {"CPU": 1.0},
        util=SimpleNamespace(get_node_ip_address=lambda: "192.0.2.7"),
        shutdown=lambda: seen.update(shut=True))
    before = constants.ENABLE_RAY_CLUSTER
    with pytest.raises(ClusterError, match=r"came up on 192\.0\.2\.7.*shut down.*ray start --head"):
        _start_local(fake, "127.0.0.1", num_cpus=1, log_to_driver=False)
    assert seen["_node_ip_address"] == "127.0.0.1" and seen["cluster_switch"] is False and seen["shut"]
    assert constants.ENABLE_RAY_CLUSTER == before  # restored after the start
    ok = SimpleNamespace(**{**vars(fake), "util": SimpleNamespace(get_node_ip_address=lambda: "127.0.0.1")})
    seen.clear()
    assert _start_local(ok, "127.0.0.1") is ok and "shut" not in seen
    assert _is_loopback("::1") and _is_loopback("localhost") and not _is_loopback("10.0.0.1")


JOIN = """
import sys
from ragicl.distributed import connect
ray = connect(sys.argv[1])
print("JOINED", ray.get_runtime_context().gcs_address, ray.util.get_node_ip_address())
ray.shutdown()
"""


@needs_ray
@pytest.mark.parametrize("how", ["explicit", "RAY_ADDRESS"])
def test_another_process_joins_the_loopback_cluster(ray_cluster, how):
    """A second driver reaches the loopback-only cluster at 127.0.0.1 (Ray alone would dial the machine's
    external address, where nothing listens, and wait for minutes)."""
    import subprocess
    import sys

    gcs = ray_cluster.get_runtime_context().gcs_address
    assert _is_loopback(gcs.rsplit(":", 1)[0])
    env = {**os.environ, "RAY_ADDRESS": gcs} if how == "RAY_ADDRESS" else dict(os.environ)
    if how != "RAY_ADDRESS":
        env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", JOIN, gcs if how == "explicit" else "auto"], env=env,
                          capture_output=True, text=True, timeout=150, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"JOINED {gcs} 127.0.0.1" in proc.stdout
