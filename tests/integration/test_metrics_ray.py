"""RaySink on a real Ray node: the names Ray exports, and why gauges need the refresh thread.

A Ray actor receives pickled RaySinks (as deploy/ hands them over), records, and the test reads
the node's metrics port (the one Prometheus scrapes): counters appear as
``ray_carla_td3_..._total``, and a gauge set once survives Ray's gauge expiry only when its
sink refreshes it. Ray's metrics agent keeps a gauge value for two report intervals and a worker
exports a gauge only when it is set (Ray 2.60: with the default 10 s interval, a gauge set once
disappears after about 20 s); the interval is shortened here to keep the test short.
"""
import re
import socket
import time
import urllib.request

import pytest
import ray

from common import metrics as M
from deploy.metrics_ray import RaySink

pytestmark = pytest.mark.integration

REPORT_INTERVAL_MS = 1000  # Ray keeps a gauge observation for two report intervals


class Recorder:
    """Stands in for a component: records through the sinks it was built with."""

    def __init__(self, refreshed: RaySink, unrefreshed: RaySink) -> None:
        self.refreshed = refreshed
        self.unrefreshed = unrefreshed

    def record(self) -> bool:
        self.refreshed.counter(M.ENV_STEPS).inc(5, actor=0)
        self.refreshed.histogram(M.CARLA_TICK_SECONDS).observe(0.02, actor=0)
        self.refreshed.gauge(M.REPLAY_SIZE).set(7, shard=1)
        self.unrefreshed.gauge(M.REPLAY_SIZE).set(9, shard=2)
        return self.refreshed.refreshing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _series(text: str, name: str, **labels: str) -> list[float]:
    out = []
    for line in text.splitlines():
        match = re.match(rf"^{name}{{(.*)}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            out.append(float(match.group(2)))
    return out


@pytest.fixture
def ray_node(monkeypatch):
    # The environment reaches every Ray process (the metrics agent too); _system_config does not.
    monkeypatch.setenv("RAY_metrics_report_interval_ms", str(REPORT_INTERVAL_MS))
    port = _free_port()
    ray.init(num_cpus=1, include_dashboard=False, _metrics_export_port=port)
    yield port
    ray.shutdown()


def test_ray_exports_ray_prefixed_names_and_refreshed_gauges_survive(ray_node):
    recorder = ray.remote(Recorder).options(num_cpus=0).remote(RaySink(0.3), RaySink(3600.0))
    assert ray.get(recorder.record.remote()) is True

    deadline, text = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        text = _scrape(ray_node)
        if _series(text, "ray_carla_td3_env_steps_total", actor="0"):
            break
        time.sleep(0.2)
    assert _series(text, "ray_carla_td3_env_steps_total", actor="0") == [5.0], text[-2000:]
    assert _series(text, "ray_carla_td3_carla_tick_seconds_count", actor="0") == [1.0]
    assert "ray_carla_td3_env_steps_total_total" not in text

    # For three expiry periods every scrape still shows the refreshed gauge; the gauge whose sink
    # does not refresh it (set at the same moment) has expired.
    for _ in range(8):
        later = _scrape(ray_node)
        assert _series(later, "ray_carla_td3_replay_size", shard="1") == [7.0], later[-2000:]
        time.sleep(0.75)
    assert _series(later, "ray_carla_td3_replay_size", shard="2") == []
    assert _series(later, "ray_carla_td3_env_steps_total", actor="0") == [5.0]
