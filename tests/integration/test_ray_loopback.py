"""A local run's Ray listens on loopback only (issue 30, finding 8): Ray started the way
`carla-td3 train` starts it, every socket of its processes listed with psutil."""
from __future__ import annotations

import socket
import time
from dataclasses import replace

import psutil
import pytest
import ray

from deploy import launch, presets

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sockets(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket and bound UDP socket."""
    found = []
    for proc in processes:
        try:
            name, conns = proc.name(), proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [(name, c.laddr.ip, c.laddr.port) for c in conns
                  if c.laddr and (c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM)]
    return found


def test_a_local_runs_ray_listens_on_loopback_only():
    if ray.is_initialized():
        pytest.skip("a Ray of another test is running in this process")
    port = _free_port()
    cfg = presets.smoke()
    cfg = replace(cfg, metrics=replace(cfg.metrics, ray_export_port=port))
    assert launch._init_ray(cfg, None, dashboard=True)
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        ray.get(ray.remote(lambda: 1).remote())  # a worker process, with its own servers
        me = psutil.Process()
        deadline = time.monotonic() + 60
        while True:  # the dashboard agent (the metrics export) comes up after ray.init
            sockets = _sockets([me, *me.children(recursive=True)])
            if port in {p for _, _, p in sockets} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert port in {p for _, _, p in sockets}, f"no metrics export on {port}: {sockets}"
        assert len(sockets) >= 5, sockets
        exposed = [s for s in sockets if not launch.is_loopback(s[1])]
        assert not exposed, f"listening beyond loopback: {exposed}"
    finally:
        ray.shutdown()
