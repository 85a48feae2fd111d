"""PrometheusSink: the metrics sink for runs without Ray, over ``prometheus_client``.

It keeps its own ``CollectorRegistry`` (so several sinks can live in one test process) and
serves it with ``prometheus_client.start_http_server`` on the port given to ``serve``. The text
it serves passes ``promtool check metrics``. Gauges keep their value in the registry, so unlike
the Ray sink no refresh thread is needed.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry

from common.errors import MetricsError
from common.metrics import MetricDef, MetricKind
from common.metrics_sink import BaseSink, LabelKey

logger = logging.getLogger(__name__)


class PrometheusSink(BaseSink):
    """Records into a private prometheus_client registry, optionally served over HTTP."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _metric(self, md: MetricDef) -> Any:
        with self._lock:
            metric = self._metrics.get(md.name)
            if metric is None:
                metric = self._create(md)
                self._metrics[md.name] = metric
            return metric

    def _create(self, md: MetricDef) -> Any:
        common = {"labelnames": md.labels, "registry": self.registry}
        if md.kind is MetricKind.COUNTER:
            # prometheus_client appends _total itself; passing the stem exports md.name.
            return prometheus_client.Counter(md.name.removesuffix("_total"), md.help, **common)
        if md.kind is MetricKind.GAUGE:
            return prometheus_client.Gauge(md.name, md.help, **common)
        return prometheus_client.Histogram(md.name, md.help, buckets=md.buckets, **common)

    def _record(self, metric: MetricDef, value: float, labels: LabelKey) -> None:
        series = self._metric(metric)
        if labels:
            series = series.labels(**dict(labels))
        if metric.kind is MetricKind.COUNTER:
            series.inc(value)
        elif metric.kind is MetricKind.GAUGE:
            series.set(value)
        else:
            series.observe(value)

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Serves ``/metrics`` on ``address:port`` from a daemon thread.

        Args:
            port: TCP port; 0 picks a free one.
            address: bind address; keep the loopback default unless a scraper runs elsewhere.

        Returns:
            The bound port.

        Raises:
            MetricsError: if already serving, or the port cannot be bound.
        """
        if self._server is not None:
            raise MetricsError(f"PrometheusSink already serves on port {self.port}")
        if not 0 <= port <= 65535:
            raise MetricsError(f"metrics port ({port}) must be in 0..65535")
        try:
            self._server, self._thread = prometheus_client.start_http_server(
                port, addr=address, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"cannot serve metrics on {address}:{port}: {exc}") from exc
        logger.info("metrics_endpoint address=%s port=%d", address, self.port)
        return self.port

    @property
    def port(self) -> int:
        """The bound port, or -1 when not serving."""
        return -1 if self._server is None else int(self._server.server_port)

    def exposition(self) -> bytes:
        """The text format a scrape returns (Prometheus exposition format 0.0.4)."""
        return prometheus_client.generate_latest(self.registry)

    def close(self) -> None:
        """Stops the HTTP server, if any; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            if self._thread is not None:
                self._thread.join(5.0)
