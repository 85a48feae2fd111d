"""RaySink: metrics through ``ray.util.metrics``, and ``make_sink``, the one sink factory.

Each Ray process that records (rollout worker, replay shard, learner) holds its own RaySink; the
node's Ray metrics agent exports the series on the node's metrics port
(``ray start --metrics-export-port``), the Ray dashboard shows them, and Prometheus discovers the
ports from ``/tmp/ray/prom_metrics_service_discovery.json`` on the head node.

Exported names gain Ray's ``ray_`` prefix: ``carla_td3_env_steps_total`` is queried as
``ray_carla_td3_env_steps_total`` (Ray 2.60, OpenTelemetry exporter; verified by
tests/unit/test_metrics_ray.py). Ray appends ``_total`` to counters itself, so counters are
created under their name without it. Ray also adds labels of its own (``WorkerId``,
``NodeAddress``, ``SessionName``, ...): aggregate with ``sum by (actor)`` and the like.

A RaySink is picklable: deploy/ can build one in the driver and pass it to
``ray.remote(Cls).remote(..., metrics=sink)``; the Ray metric objects and the gauge refresh
thread are created lazily in the process that records.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from common.config import MetricsBackend, MetricsConfig
from common.errors import MetricsError
from common.metrics import MetricDef, MetricKind
from common.metrics_sink import BaseSink, GaugeRefresher, LabelKey, MetricsSink, NullSink
from common.metrics_prometheus import PrometheusSink

logger = logging.getLogger(__name__)


class RaySink(BaseSink):
    """Records through ray.util.metrics; re-sets every gauge every ``gauge_refresh_s`` seconds.

    Ray drops a gauge series that is not set within its report interval (an observation is kept
    for two intervals), so the latest value of each series is re-applied from a daemon thread.
    """

    def __init__(self, gauge_refresh_s: float = 5.0) -> None:
        if not gauge_refresh_s > 0:
            raise MetricsError(f"gauge_refresh_s ({gauge_refresh_s}) must be > 0")
        self.gauge_refresh_s = gauge_refresh_s
        self._init_process_state()

    def _init_process_state(self) -> None:
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._refresher = GaugeRefresher(self._apply, self.gauge_refresh_s)

    def __getstate__(self) -> dict[str, Any]:
        return {"gauge_refresh_s": self.gauge_refresh_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.gauge_refresh_s = state["gauge_refresh_s"]
        self._init_process_state()

    def _metric(self, md: MetricDef) -> Any:
        from ray.util import metrics as ray_metrics

        with self._lock:
            metric = self._metrics.get(md.name)
            if metric is None:
                if md.kind is MetricKind.COUNTER:
                    metric = ray_metrics.Counter(md.name.removesuffix("_total"), md.help, md.labels)
                elif md.kind is MetricKind.GAUGE:
                    metric = ray_metrics.Gauge(md.name, md.help, md.labels)
                else:
                    metric = ray_metrics.Histogram(md.name, md.help, list(md.buckets), md.labels)
                self._metrics[md.name] = metric
            return metric

    def _apply(self, md: MetricDef, value: float, labels: LabelKey) -> None:
        metric = self._metric(md)
        tags = dict(labels) or None
        if md.kind is MetricKind.COUNTER:
            metric.inc(value, tags=tags)
        elif md.kind is MetricKind.GAUGE:
            metric.set(value, tags=tags)
        else:
            metric.observe(value, tags=tags)

    def _record(self, metric: MetricDef, value: float, labels: LabelKey) -> None:
        self._apply(metric, value, labels)
        if metric.kind is MetricKind.GAUGE:
            self._refresher.remember(metric, value, labels)

    def refresh_gauges(self) -> int:
        """Re-sets every gauge series now (the thread does this on its own); returns the count."""
        return self._refresher.refresh_once()

    @property
    def refreshing(self) -> bool:
        """Whether the gauge refresh thread runs in this process."""
        return self._refresher.running

    def close(self) -> None:
        """Stops the gauge refresh thread."""
        self._refresher.stop()


def make_sink(cfg: MetricsConfig, ray_mode: bool) -> MetricsSink:
    """Builds the sink ``cfg`` asks for; a PrometheusSink starts serving here.

    Args:
        cfg: the metrics section of the run config.
        ray_mode: whether the run uses Ray (AUTO picks RAY then, PROMETHEUS otherwise).

    Raises:
        MetricsError: RAY without Ray, or a port that cannot be bound.
    """
    backend = cfg.backend
    if backend is MetricsBackend.AUTO:
        backend = MetricsBackend.RAY if ray_mode else MetricsBackend.PROMETHEUS
    if backend is MetricsBackend.NONE:
        return NullSink()
    if backend is MetricsBackend.RAY:
        if not ray_mode:
            raise MetricsError(f"metrics.backend ({cfg.backend.value}) needs the Ray mode")
        return RaySink(cfg.gauge_refresh_s)
    sink = PrometheusSink()
    sink.serve(cfg.port, cfg.address)
    return sink


def component_sink(cfg: MetricsConfig) -> MetricsSink:
    """The sink the driver hands to every Ray actor it builds (rollout, replay, learner).

    Each actor records in its own process, so only a sink that works across processes fits:
    a RaySink (AUTO, RAY) or a NullSink (NONE).

    Raises:
        MetricsError: for PROMETHEUS, whose endpoint serves one process only.
    """
    if cfg.backend is MetricsBackend.PROMETHEUS:
        raise MetricsError(
            f"metrics.backend ({cfg.backend.value}) serves one process; the Ray mode records in "
            "every actor: use auto, ray or none")
    if cfg.backend is MetricsBackend.NONE:
        return NullSink()
    return RaySink(cfg.gauge_refresh_s)
