"""Metric definitions, the sink interface, the gauge refresher, and the one-source-of-names rule
across common/metrics.py, the Grafana dashboard and docs/metrics.md."""
import json
import math
import pathlib
import pickle
import re
import threading

import pytest

from common import metrics as M
from common import metrics_sink as S
from common.config import MetricsBackend, MetricsConfig
from common.errors import MetricsError
from common.metrics_prometheus import PrometheusSink
from deploy.metrics_ray import RaySink, make_sink

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/carla-td3.json"
DOCS = ROOT / "docs/metrics.md"
DEPLOYMENT = ROOT / "docs/deployment.md"
RULES = ROOT / "deploy/prometheus/rules/carla_td3.yml"
NAME_IN_TEXT = re.compile(r"(?<![A-Za-z0-9_])(?:ray_)?carla_td3_[a-z0-9_]+")

# What the issue asks to measure, each mapped to the metric that answers it.
REQUIRED = {
    "env steps": "carla_td3_env_steps_total", "episodes": "carla_td3_episodes_total",
    "episode return": "carla_td3_episode_return", "episode length": "carla_td3_episode_length_steps",
    "success": "carla_td3_episode_successes_total", "replay inserts": "carla_td3_replay_inserts_total",
    "replay samples": "carla_td3_replay_samples_total", "replay size": "carla_td3_replay_size",
    "replay bytes": "carla_td3_replay_bytes",
    "rate-limiter blocked seconds": "carla_td3_replay_rate_limiter_blocked_seconds_total",
    "learner updates": "carla_td3_learner_updates_total",
    "samples consumed": "carla_td3_learner_samples_consumed_total",
    "critic loss": "carla_td3_learner_critic_loss", "policy loss": "carla_td3_learner_policy_loss",
    "mean Q": "carla_td3_learner_mean_q", "encoder gradient norms": "carla_td3_learner_encoder_grad_norm",
    "weight version": "carla_td3_weight_version", "publish seconds": "carla_td3_weight_publish_seconds",
    "policy lag": "carla_td3_policy_lag_versions", "CARLA tick seconds": "carla_td3_carla_tick_seconds",
    "CARLA timeouts": "carla_td3_carla_timeouts_total", "CARLA reconnects": "carla_td3_carla_reconnects_total",
}


def _labels(md):
    return {label: "0" for label in md.labels}


def _record_one(sink, md, value=1.0):
    if md.kind is M.MetricKind.COUNTER:
        sink.counter(md).inc(value, **_labels(md))
    elif md.kind is M.MetricKind.GAUGE:
        sink.gauge(md).set(value, **_labels(md))
    else:
        sink.histogram(md).observe(value, **_labels(md))


@pytest.mark.parametrize("what, name", sorted(REQUIRED.items()))
def test_every_required_quantity_has_a_metric(what, name):
    assert name in M.METRICS, what


@pytest.mark.parametrize("name", sorted(M.METRICS))
def test_defined_metrics_follow_the_conventions(name):
    md = M.METRICS[name]
    assert M.naming_problem(name) == ""
    assert name.endswith("_total") == (md.kind is M.MetricKind.COUNTER)
    assert set(md.labels) <= set(M.LABELS)
    assert md.help and md.help[0].isupper() and md.help.endswith(".")


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="carla_td3_steps", kind=M.MetricKind.COUNTER), "counters, and only counters"),
    (dict(name="carla_td3_size_total", kind=M.MetricKind.GAUGE), "counters, and only counters"),
    (dict(name="td3_steps_total", kind=M.MetricKind.COUNTER), "must match"),
    (dict(name="carla_td3_stepCount_total", kind=M.MetricKind.COUNTER), "must match"),
    (dict(name="carla_td3_tick_ms", kind=M.MetricKind.GAUGE), "non-base units ['ms']"),
    (dict(name="carla_td3_replay_mb", kind=M.MetricKind.GAUGE), "non-base units ['mb']"),
    (dict(name="carla_td3_tick_count", kind=M.MetricKind.GAUGE), "reserves for histograms"),
    (dict(name="carla_td3_size", kind=M.MetricKind.GAUGE, labels=("worker_id",)), "['worker_id']"),
    (dict(name="carla_td3_tick_seconds", kind=M.MetricKind.HISTOGRAM), "belong to histograms only"),
    (dict(name="carla_td3_size", kind=M.MetricKind.GAUGE, buckets=(1.0,)), "belong to histograms only"),
    (dict(name="carla_td3_tick_seconds", kind=M.MetricKind.HISTOGRAM, buckets=(0.0, 1.0)), "positive"),
    (dict(name="carla_td3_tick_seconds", kind=M.MetricKind.HISTOGRAM, buckets=(2.0, 1.0)), "increasing"),
])
def test_bad_definitions_are_rejected_naming_the_problem(kwargs, message):
    with pytest.raises(MetricsError, match=re.escape(message)):
        M.MetricDef(help="x.", owner=M.Owner.LEARNER, **kwargs)


@pytest.mark.parametrize("call, message", [
    (lambda s: s.counter("carla_td3_nope_total"), "unknown metric 'carla_td3_nope_total'"),
    (lambda s: s.gauge(M.ENV_STEPS), "is a counter, not a gauge"),
    (lambda s: s.counter(M.ENV_STEPS).inc(1), "takes labels ['actor'], got []"),
    (lambda s: s.counter(M.ENV_STEPS).inc(1, actor=0, shard=1), "got ['actor', 'shard']"),
    (lambda s: s.counter(M.ENV_STEPS).inc(-1, actor=0), "increment (-1) must be finite and >= 0"),
    (lambda s: s.counter(M.ENV_STEPS).inc(math.inf, actor=0), "increment (inf)"),
    (lambda s: s.histogram(M.CARLA_TICK_SECONDS).observe(math.nan, actor=0), "observation (nan)"),
    (lambda s: s.gauge(M.MetricDef("carla_td3_other", M.MetricKind.GAUGE, "X.", M.Owner.LEARNER)),
     "not defined in common/metrics.py"),
])
@pytest.mark.parametrize("sink_type", [S.NullSink, S.MemorySink, PrometheusSink])
def test_sinks_reject_misuse_naming_the_bad_value(sink_type, call, message):
    with pytest.raises(MetricsError, match=re.escape(message)):
        call(sink_type())


def test_memory_sink_sums_counters_keeps_latest_gauge_and_every_observation():
    sink = S.MemorySink()
    sink.counter(M.ENV_STEPS).inc(3, actor=1)
    sink.counter("carla_td3_env_steps_total").inc(4, actor=1)
    sink.counter(M.ENV_STEPS).inc(0, actor=1)
    sink.gauge(M.REPLAY_SIZE).set(10, shard=0)
    sink.gauge(M.REPLAY_SIZE).set(7, shard=0)
    sink.gauge(M.LEARNER_CRITIC_LOSS).set(math.nan)
    sink.histogram(M.CARLA_TICK_SECONDS).observe(0.02, actor=1)
    sink.histogram(M.CARLA_TICK_SECONDS).observe(0.03, actor=1)
    assert sink.value(M.ENV_STEPS, actor=1) == 7
    assert sink.value(M.ENV_STEPS, actor=2) == 0
    assert sink.value(M.REPLAY_SIZE, shard=0) == 7
    assert math.isnan(sink.value(M.REPLAY_SIZE, shard=1))
    assert math.isnan(sink.value(M.LEARNER_CRITIC_LOSS))
    assert sink.observations(M.CARLA_TICK_SECONDS, actor=1) == [0.02, 0.03]


def test_base_name_strips_the_ray_prefix_and_histogram_series_only():
    assert M.base_name("ray_carla_td3_carla_tick_seconds_bucket") == "carla_td3_carla_tick_seconds"
    assert M.base_name("carla_td3_weight_publish_seconds_count") == "carla_td3_weight_publish_seconds"
    assert M.base_name("ray_carla_td3_env_steps_total") == "carla_td3_env_steps_total"
    assert M.base_name("carla_td3_replay_size_sum") == "carla_td3_replay_size_sum"


def test_gauge_refresher_reapplies_latest_values_until_stopped():
    applied, tick = [], threading.Event()

    def apply(md, value, labels):
        applied.append((md.name, value, labels))
        tick.set()

    refresher = S.GaugeRefresher(apply, interval_s=0.02)
    refresher.remember(M.REPLAY_SIZE, 5.0, (("shard", "0"),))
    refresher.remember(M.REPLAY_SIZE, 6.0, (("shard", "0"),))
    assert refresher.running
    assert tick.wait(2.0)
    refresher.stop()
    assert not refresher.running
    assert ("carla_td3_replay_size", 6.0, (("shard", "0"),)) in applied
    assert all(v == 6.0 for _, v, _ in applied)
    count = len(applied)
    refresher.remember(M.WEIGHT_VERSION, 3.0, ())
    assert not refresher.running and len(applied) == count
    assert refresher.refresh_once() == 2


def test_gauge_refresher_rejects_a_non_positive_interval():
    with pytest.raises(MetricsError, match=r"interval_s \(0\) must be > 0"):
        S.GaugeRefresher(lambda *a: None, 0)


def test_ray_sink_pickles_to_a_fresh_process_state():
    sink = pickle.loads(pickle.dumps(RaySink(gauge_refresh_s=2.5)))
    assert sink.gauge_refresh_s == 2.5 and not sink.refreshing
    with pytest.raises(MetricsError, match=r"gauge_refresh_s \(0\) must be > 0"):
        RaySink(0)


def test_make_sink_picks_the_backend():
    assert isinstance(make_sink(MetricsConfig(backend=MetricsBackend.NONE), ray_mode=True), S.NullSink)
    assert isinstance(make_sink(MetricsConfig(), ray_mode=True), RaySink)
    sink = make_sink(MetricsConfig(port=0), ray_mode=False)
    try:
        assert isinstance(sink, PrometheusSink) and sink.port > 0
    finally:
        sink.close()
    with pytest.raises(MetricsError, match=r"metrics.backend \(ray\) needs the Ray mode"):
        make_sink(MetricsConfig(backend=MetricsBackend.RAY), ray_mode=False)


def _names_in(text):
    return {M.base_name(n) for n in NAME_IN_TEXT.findall(text)}


def _dashboard_exprs():
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


@pytest.mark.parametrize("path", [DASHBOARD, DOCS, DEPLOYMENT, RULES], ids=lambda p: p.name)
def test_every_metric_name_in_dashboards_docs_and_rules_is_defined(path):
    names = _names_in(path.read_text())
    assert names, f"{path} names no metric"
    unknown = sorted(names - set(M.METRICS))
    assert not unknown, f"{path.relative_to(ROOT)} uses undefined metrics {unknown}"


def test_docs_table_lists_every_metric_with_its_type_labels_and_owner():
    text = DOCS.read_text()
    for md in M.METRICS.values():
        labels = ", ".join(f"`{label}`" for label in md.labels) or "–"
        row = f"| `{md.name}` | {md.kind.value} | {labels} | {md.owner.value} | {md.help} |"
        assert row in text, f"docs/metrics.md lacks or misstates: {row}"


def test_dashboard_covers_throughput_replay_learner_and_lag():
    exprs = " ".join(_dashboard_exprs())
    used = _names_in(exprs)
    for md in M.METRICS.values():
        assert md.name in used, f"dashboard shows no panel for {md.name}"
    # Each selector matches both exporters: ray_carla_td3_... (Ray) and carla_td3_... (no Ray).
    for expr in _dashboard_exprs():
        assert len(re.findall(r"carla_td3_", expr)) == len(re.findall(r'__name__=~"\(ray_\)\?carla_td3_', expr)), expr


def test_prometheus_sink_exposes_every_metric_under_its_defined_name():
    sink = PrometheusSink()
    for md in M.METRICS.values():
        _record_one(sink, md, 2.0)
    text = sink.exposition().decode()
    for md in M.METRICS.values():
        series = md.name + ("_count" if md.kind is M.MetricKind.HISTOGRAM else "")
        assert re.search(rf"^{series}{{?[^\n]*}}? 2\.0$|^{series}{{?[^\n]*}}? 1\.0$", text, re.M), series
