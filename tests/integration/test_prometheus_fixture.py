"""Proves the Prometheus harness end to end: a real Prometheus scrapes the PrometheusSink endpoint
on loopback while counters grow, and its HTTP API reports rates above zero. Also runs
`promtool check metrics` on what that endpoint serves."""
import os
import socket
import subprocess
import threading
import urllib.request

import pytest

from common import metrics as M
from common.metrics_prometheus import PrometheusSink
from tests.integration.prometheus_fixture import prometheus  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
def live_sink():
    """A PrometheusSink on a free loopback port whose throughput counters grow every 50 ms."""
    sink = PrometheusSink()
    sink.serve(0)
    stop = threading.Event()

    def record(version):
        sink.counter(M.ENV_STEPS).inc(4, actor=0)
        sink.counter(M.REPLAY_INSERTS).inc(4, shard=0)
        sink.counter(M.LEARNER_UPDATES).inc(1)
        sink.gauge(M.WEIGHT_VERSION).set(version)
        sink.histogram(M.CARLA_TICK_SECONDS).observe(0.02, actor=0)

    def run():
        version = 1
        while not stop.wait(0.05):
            version += 1
            record(version)

    record(1)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield sink
    stop.set()
    thread.join(5)
    sink.close()


def test_prometheus_scrapes_the_sink_reports_positive_rates_and_stops_by_pid(prometheus, live_sink):  # noqa: F811
    server = prometheus([f"127.0.0.1:{live_sink.port}"], scrape_interval_s=1.0)
    for metric in (M.ENV_STEPS, M.REPLAY_INSERTS, M.LEARNER_UPDATES):
        rate = server.wait_for_value(f"sum(rate({metric.name}[5s]))", lambda v: v > 0, timeout_s=20)
        assert rate > 0, metric.name
    assert server.query_value("max(carla_td3_weight_version)") > 0
    assert server.query_value('up{job="carla_td3"}') == 1.0

    pid, port = server.pid, server.port
    server.stop()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket() as s:
        # Connections the server closed may sit in TIME_WAIT; a new listener may still bind.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_promtool_accepts_the_live_endpoint(promtool, live_sink):
    with urllib.request.urlopen(f"http://127.0.0.1:{live_sink.port}/metrics", timeout=5) as response:
        text = response.read()
    assert b"carla_td3_env_steps_total" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
