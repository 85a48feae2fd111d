"""The sink interface every component records metrics through, and the in-process sinks.

``MetricsSink`` checks each metric against its definition in common/metrics.py (kind, labels)
before recording. ``NullSink`` checks, then discards; ``MemorySink`` keeps values (tests);
``GaugeRefresher`` re-sets gauges for sinks that drop unrefreshed series. ``PrometheusSink``
(common/metrics_prometheus.py) and ``RaySink`` (deploy/metrics_ray.py) export them.
"""
from __future__ import annotations

import abc
import math
import threading
from typing import Callable, Mapping, Protocol, Union

from common.errors import MetricsError
from common.metrics import METRICS, MetricDef, MetricKind, lookup


LabelValue = Union[str, int]
MetricRef = Union[MetricDef, str]
LabelKey = tuple[tuple[str, str], ...]


class MetricsSink(Protocol):
    """Where components record metrics. Each call checks the metric's kind and labels."""

    def counter(self, metric: MetricRef) -> "Counter": ...

    def gauge(self, metric: MetricRef) -> "Gauge": ...

    def histogram(self, metric: MetricRef) -> "Histogram": ...

    def close(self) -> None: ...


class BaseSink(abc.ABC):
    """Resolves and checks metrics and labels; subclasses implement ``_record``."""

    def counter(self, metric: MetricRef) -> "Counter":
        return Counter(self, _resolve(metric, MetricKind.COUNTER))

    def gauge(self, metric: MetricRef) -> "Gauge":
        return Gauge(self, _resolve(metric, MetricKind.GAUGE))

    def histogram(self, metric: MetricRef) -> "Histogram":
        return Histogram(self, _resolve(metric, MetricKind.HISTOGRAM))

    def close(self) -> None:
        """Releases threads and ports; recording after close is not supported."""

    @abc.abstractmethod
    def _record(self, metric: MetricDef, value: float, labels: LabelKey) -> None:
        """Records one checked value: a counter increment, a gauge value or an observation."""


def _resolve(metric: MetricRef, kind: MetricKind) -> MetricDef:
    md = lookup(metric) if isinstance(metric, str) else metric
    if METRICS.get(md.name) != md:
        raise MetricsError(f"metric {md.name!r} is not defined in common/metrics.py")
    if md.kind is not kind:
        raise MetricsError(f"metric {md.name!r} is a {md.kind.value}, not a {kind.value}")
    return md


def _label_key(metric: MetricDef, labels: Mapping[str, LabelValue]) -> LabelKey:
    if set(labels) != set(metric.labels):
        raise MetricsError(
            f"metric {metric.name!r} takes labels {list(metric.labels)}, got {sorted(labels)}")
    return tuple((k, str(labels[k])) for k in metric.labels)


class _Handle:
    def __init__(self, sink: BaseSink, metric: MetricDef) -> None:
        self._sink = sink
        self.metric = metric


class Counter(_Handle):
    def inc(self, value: float = 1.0, **labels: LabelValue) -> None:
        """Adds ``value`` (>= 0; 0 records nothing).

        Raises:
            MetricsError: for a negative or non-finite value or wrong labels.
        """
        key = _label_key(self.metric, labels)
        if not math.isfinite(value) or value < 0:
            raise MetricsError(f"counter {self.metric.name!r}: increment ({value}) must be finite and >= 0")
        if value > 0:
            self._sink._record(self.metric, float(value), key)


class Gauge(_Handle):
    def set(self, value: float, **labels: LabelValue) -> None:
        """Sets the gauge (NaN is allowed: a diverged loss should show as NaN)."""
        self._sink._record(self.metric, float(value), _label_key(self.metric, labels))


class Histogram(_Handle):
    def observe(self, value: float, **labels: LabelValue) -> None:
        """Adds one observation (finite).

        Raises:
            MetricsError: for a non-finite value or wrong labels.
        """
        key = _label_key(self.metric, labels)
        if not math.isfinite(value):
            raise MetricsError(f"histogram {self.metric.name!r}: observation ({value}) must be finite")
        self._sink._record(self.metric, float(value), key)


class NullSink(BaseSink):
    """Checks every call like a real sink, then discards the value."""

    def _record(self, metric: MetricDef, value: float, labels: LabelKey) -> None:
        return None


class MemorySink(BaseSink):
    """Keeps counter totals, latest gauge values and histogram observations in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, LabelKey], float] = {}
        self._observations: dict[tuple[str, LabelKey], list[float]] = {}

    def _record(self, metric: MetricDef, value: float, labels: LabelKey) -> None:
        key = (metric.name, labels)
        with self._lock:
            if metric.kind is MetricKind.COUNTER:
                self._values[key] = self._values.get(key, 0.0) + value
            elif metric.kind is MetricKind.GAUGE:
                self._values[key] = value
            else:
                self._observations.setdefault(key, []).append(value)

    def value(self, metric: MetricRef, **labels: LabelValue) -> float:
        """A counter's total (0 if never incremented) or a gauge's latest value (NaN if never set)."""
        md = lookup(metric) if isinstance(metric, str) else metric
        key = (md.name, _label_key(md, labels))
        with self._lock:
            default = 0.0 if md.kind is MetricKind.COUNTER else math.nan
            return self._values.get(key, default)

    def names(self) -> set[str]:
        """Names of the metrics recorded so far (a counter only once incremented above 0)."""
        with self._lock:
            return {name for name, _ in [*self._values, *self._observations]}

    def observations(self, metric: MetricRef, **labels: LabelValue) -> list[float]:
        """Every value a histogram observed with these labels, in order."""
        md = lookup(metric) if isinstance(metric, str) else metric
        with self._lock:
            return list(self._observations.get((md.name, _label_key(md, labels)), []))


class GaugeRefresher:
    """Re-applies the latest value of every gauge series on a timer, from a daemon thread.

    Ray drops a gauge series that is not set within its report interval; a sink that wraps Ray
    remembers each set here and the thread sets it again every ``interval_s``.
    """

    def __init__(self, apply: Callable[[MetricDef, float, LabelKey], None], interval_s: float) -> None:
        if not interval_s > 0:
            raise MetricsError(f"gauge refresh interval_s ({interval_s}) must be > 0")
        self._apply = apply
        self._interval_s = interval_s
        self._latest: dict[tuple[str, LabelKey], tuple[MetricDef, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def remember(self, metric: MetricDef, value: float, labels: LabelKey) -> None:
        """Stores the latest value and starts the thread on first use."""
        with self._lock:
            self._latest[(metric.name, labels)] = (metric, value)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="gauge-refresh", daemon=True)
                self._thread.start()

    def refresh_once(self) -> int:
        """Re-applies every remembered gauge now; returns how many series it set."""
        with self._lock:
            items = [(md, v, labels) for (_, labels), (md, v) in self._latest.items()]
        for md, value, labels in items:
            self._apply(md, value, labels)
        return len(items)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.refresh_once()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops the thread and waits for it; idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()
