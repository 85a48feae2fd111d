"""Issue 6: a real Prometheus scrapes a short training run (real local Ray, fake CARLA) on
loopback and its HTTP API reports the rates of env steps, inserts and updates above zero;
``promtool check metrics`` accepts what the run's own endpoint serves.

Timing: Prometheus starts first, aimed at the Ray node's metrics port the run will use
(``metrics.ray_export_port``); it hands its target to the scrape loop on a 5 s discovery tick
and the node comes up in the meantime. Ray's report interval is shortened to 1 s through the
environment (it reaches the node's metrics agent; the default 10 s would need a longer run).
The run is bounded by its env-step budget; the rates are asked for after it ended, over a
window that covers it (Prometheus keeps the samples).
"""
from __future__ import annotations

import re
import subprocess
import threading
import time
import urllib.request
from dataclasses import replace

import pytest
import ray

from common import config as C
from common import metrics as M
from deploy import launch, presets
from tests.integration.prometheus_fixture import free_port, prometheus  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

ENV_STEPS = 2_500  # about 15 s of env steps for 2 actors on 2 busy cores
# Recorded in any run that updates: everything but episode successes, policy lag (needs
# policy actions in a batch), CARLA timeouts, reconnects and rate-limiter waits.
ALWAYS = [M.ENV_STEPS, M.EPISODES, M.EPISODE_RETURN, M.EPISODE_LENGTH, M.ACTOR_POLICY_VERSION,
          M.CARLA_TICK_SECONDS, M.WEIGHT_BROADCAST_SECONDS, M.REPLAY_INSERTS, M.REPLAY_SAMPLES,
          M.REPLAY_SIZE, M.REPLAY_BYTES, M.LEARNER_UPDATES, M.LEARNER_SAMPLES_CONSUMED,
          M.LEARNER_CRITIC_LOSS, M.LEARNER_POLICY_LOSS, M.LEARNER_MEAN_Q,
          M.LEARNER_ENCODER_GRAD_NORM, M.LEARNER_SAMPLE_WAIT_SECONDS, M.WEIGHT_VERSION,
          M.WEIGHT_PUBLISH_SECONDS]


# Labels Ray's exporter adds to every series: its own (camelCase, which promtool's lint flags)
# and OpenTelemetry's scope; "le" is the histogram bucket bound.
RAY_LABELS = {"Component", "JobId", "NodeAddress", "SessionName", "Version", "WorkerId"}
EXPORTER_LABELS = RAY_LABELS | {"otel_scope_name", "otel_scope_version", "otel_scope_schema_url", "le"}


def _run_config(port: int) -> C.RunConfig:
    cfg = presets.smoke()
    return replace(cfg, metrics=replace(cfg.metrics, ray_export_port=port),
                   learner=replace(cfg.learner, checkpoint_every=0),
                   train=replace(cfg.train, env_steps=ENV_STEPS, progress_every_s=5.0))


class EndpointWatch(threading.Thread):
    """Keeps the latest text of the run's metrics endpoint that shows learner updates."""

    def __init__(self, port: int) -> None:
        super().__init__(name="endpoint-watch", daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.text = ""
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    text = response.read().decode()
            except OSError:
                continue
            if "ray_carla_td3_learner_updates_total" in text:
                self.text = text


def _project_families(text: str) -> str:
    """The HELP, TYPE and sample lines of the carla_td3 families, in exposition order."""
    keep = [line for line in text.splitlines()
            if re.match(r"^(# (HELP|TYPE) )?ray_carla_td3_", line)]
    return "\n".join(keep) + "\n"


@pytest.fixture
def short_report_interval(monkeypatch):
    monkeypatch.setenv("RAY_metrics_report_interval_ms", "1000")


def test_prometheus_scrapes_a_training_run_and_sees_steps_inserts_and_updates(
        promtool, prometheus, short_report_interval, tmp_path):  # noqa: F811
    assert not ray.is_initialized(), "another test left Ray running"
    port = free_port()
    server = prometheus([f"127.0.0.1:{port}"], scrape_interval_s=1.0, wait_up=False)
    watch = EndpointWatch(port)
    watch.start()
    start = time.monotonic()
    try:
        summary = launch.train(_run_config(port), runs_root=tmp_path, name="scraped", dashboard=False)
    finally:
        watch.stop.set()
        watch.join(10)
    window = f"{int(time.monotonic() - start) + 30}s"
    assert not ray.is_initialized()
    assert summary["updates"] > 0, summary

    assert server.query_value(f'max_over_time(up{{job="carla_td3"}}[{window}])') == 1.0
    for metric in (M.ENV_STEPS, M.REPLAY_INSERTS, M.LEARNER_UPDATES):
        rate = server.query_value(f"sum(rate(ray_{metric.name}[{window}]))")
        assert rate is not None and rate > 0, (metric.name, rate, server.log_tail())
    steps = server.query_value(f"sum(max_over_time(ray_{M.ENV_STEPS.name}[{window}]))")
    assert 0 < steps <= summary["env_steps"]

    exported = {M.base_name(name) for name in re.findall(r"^(ray_carla_td3_\w+)", watch.text, re.M)}
    missing = [m.name for m in ALWAYS if m.name not in exported]
    assert not missing, missing

    _promtool_accepts_all_but_rays_own_labels(promtool, _project_families(watch.text))


def _promtool_accepts_all_but_rays_own_labels(promtool: str, text: str) -> None:
    """``promtool check metrics`` on the project's families: the only problem it may report is
    the camelCase of the labels Ray adds to every series (not ours: ours are LABELS)."""
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True,
                            timeout=30)
    problems = {line.split(" ", 1)[1] for line in (result.stdout + result.stderr).decode().splitlines()
                if line.strip()}
    assert problems <= {"label names should be written in 'snake_case' not 'camelCase'"}, problems
    labels = set(re.findall(r'[{,]([A-Za-z_][A-Za-z0-9_]*)="', text))
    assert labels - EXPORTER_LABELS <= set(M.LABELS), labels
    assert not problems or labels & RAY_LABELS, labels
