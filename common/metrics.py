"""Metric names, their types and owners, and the sink interface every component records through.

This module is the single source of metric names: code, the Grafana dashboard and
docs/metrics.md use these constants and a unit test holds them to it. Names follow Prometheus
conventions: the ``carla_td3_`` prefix, ``_total`` on counters and only on counters, base units
(``_seconds``, ``_bytes``) and a small fixed set of low-cardinality labels (LABELS).

Components receive a ``MetricsSink`` and record with, for example::

    sink.counter(ENV_STEPS).inc(32, actor=3)
    sink.gauge(REPLAY_SIZE).set(12_000, shard=0)
    sink.histogram(CARLA_TICK_SECONDS).observe(0.021, actor=3)

Implementations: ``NullSink`` (checks, then discards), ``MemorySink`` (keeps values, for tests),
``PrometheusSink`` in common/metrics_prometheus.py (prometheus_client, runs without Ray) and
``RaySink`` in deploy/metrics_ray.py (ray.util.metrics; Ray prefixes every exported name with
``ray_``).
"""
from __future__ import annotations

import abc
import enum
import math
import re
import threading
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Union

from common.errors import MetricsError

PREFIX = "carla_td3_"

LABELS: Mapping[str, str] = {
    "actor": "rollout worker index, 0..num_workers-1",
    "shard": "replay shard index, 0..num_shards-1",
    "ending": "how an episode ended: terminated or truncated",
    "encoder": "which CNN encoder: policy or critic",
    "op": "the blocked rate-limiter operation: insert or sample",
    "reason": "why a shard refused an insert: wire, spec or stream",
}

_NAME_RE = re.compile(r"^carla_td3_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
# Non-base or abbreviated units that Prometheus conventions rule out.
_BAD_UNIT_TOKENS = frozenset(
    {"ms", "msec", "millis", "milliseconds", "us", "ns", "sec", "secs", "minutes", "hours",
     "kb", "mb", "gb", "kib", "mib", "gib", "kilobytes", "megabytes", "percent"}
)
_SUFFIXES = ("_bucket", "_sum", "_count")

_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STEPS_BUCKETS = (10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)


class MetricKind(str, enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Owner(str, enum.Enum):
    """The process that records a metric (one writer per series)."""

    ROLLOUT = "rollout worker"
    REPLAY = "replay shard"
    LEARNER = "learner"


def naming_problem(name: str) -> str:
    """Returns why ``name`` breaks the naming conventions, or "" when it follows them."""
    if not _NAME_RE.match(name):
        return f"metric name {name!r} must match {_NAME_RE.pattern}"
    bad = sorted(set(name.split("_")) & _BAD_UNIT_TOKENS)
    if bad:
        return f"metric name {name!r} uses non-base units {bad}; use _seconds or _bytes"
    if name.endswith(_SUFFIXES):
        return f"metric name {name!r} ends with a suffix Prometheus reserves for histograms"
    return ""


@dataclass(frozen=True)
class MetricDef:
    """One metric: its exported name, type, help text, owner, labels and histogram buckets.

    Attributes:
        name: the exported name (without Ray's ``ray_`` prefix).
        kind: counter, gauge or histogram.
        help: one line for HELP and for docs/metrics.md.
        owner: the process that records it.
        labels: label names, each one of LABELS.
        buckets: histogram upper bounds, strictly increasing and positive (Ray requires > 0).
    """

    name: str
    kind: MetricKind
    help: str
    owner: Owner
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        problem = naming_problem(self.name)
        if problem:
            raise MetricsError(problem)
        if (self.kind is MetricKind.COUNTER) != self.name.endswith("_total"):
            raise MetricsError(f"metric {self.name!r}: counters, and only counters, end in _total")
        unknown = sorted(set(self.labels) - set(LABELS))
        if unknown:
            raise MetricsError(f"metric {self.name!r}: labels {unknown} are not in {sorted(LABELS)}")
        if (self.kind is MetricKind.HISTOGRAM) != bool(self.buckets):
            raise MetricsError(f"metric {self.name!r}: buckets ({self.buckets}) belong to histograms only")
        if any(b <= 0 for b in self.buckets) or list(self.buckets) != sorted(set(self.buckets)):
            raise MetricsError(f"metric {self.name!r}: buckets {self.buckets} must be positive and increasing")


_C, _G, _H = MetricKind.COUNTER, MetricKind.GAUGE, MetricKind.HISTOGRAM
_R, _P, _L = Owner.ROLLOUT, Owner.REPLAY, Owner.LEARNER

# Rollout workers: the env loop and the CARLA connection.
ENV_STEPS = MetricDef("carla_td3_env_steps_total", _C, "Env steps taken.", _R, ("actor",))
EPISODES = MetricDef("carla_td3_episodes_total", _C, "Episodes finished.", _R, ("actor", "ending"))
EPISODE_SUCCESSES = MetricDef(
    "carla_td3_episode_successes_total", _C, "Episodes that completed their route.", _R, ("actor",))
EPISODE_RETURN = MetricDef(
    "carla_td3_episode_return", _G, "Return of the actor's latest finished episode.", _R, ("actor",))
EPISODE_LENGTH = MetricDef(
    "carla_td3_episode_length_steps", _H, "Env steps per finished episode.", _R, ("actor",),
    _STEPS_BUCKETS)
ACTOR_POLICY_VERSION = MetricDef(
    "carla_td3_actor_policy_version", _G, "Policy version the actor acts with.", _R, ("actor",))
CARLA_TICK_SECONDS = MetricDef(
    "carla_td3_carla_tick_seconds", _H,
    "Wall time of one env step: control, CARLA world tick and its camera frame.", _R, ("actor",),
    _SECONDS_BUCKETS)
CARLA_TIMEOUTS = MetricDef(
    "carla_td3_carla_timeouts_total", _C, "CARLA ticks or sensor reads that timed out.", _R, ("actor",))
CARLA_RECONNECTS = MetricDef(
    "carla_td3_carla_reconnects_total", _C, "Reconnections to a CARLA server.", _R, ("actor",))
WEIGHT_BROADCAST_SECONDS = MetricDef(
    "carla_td3_weight_broadcast_seconds", _H,
    "Time from a policy version's publish to its load by the actor.", _R, ("actor",),
    _SECONDS_BUCKETS)

# Replay shards.
REPLAY_INSERTS = MetricDef(
    "carla_td3_replay_inserts_total", _C, "Transitions inserted.", _P, ("shard",))
REPLAY_SAMPLES = MetricDef(
    "carla_td3_replay_samples_total", _C, "Transitions sampled.", _P, ("shard",))
REPLAY_SIZE = MetricDef("carla_td3_replay_size", _G, "Transitions held.", _P, ("shard",))
REPLAY_BYTES = MetricDef("carla_td3_replay_bytes", _G, "Bytes of preallocated storage.", _P, ("shard",))
REPLAY_CACHE_FRAMES = MetricDef(
    "carla_td3_replay_cache_frames_sent_total", _C,
    "Camera frames sent to the learner's frame cache.", _P, ("shard",))
REPLAY_REJECTED = MetricDef(
    "carla_td3_replay_rejected_total", _C,
    "Inserts refused as bad data, by reason: wire (malformed), spec (out of the spec), stream.",
    _P, ("shard", "reason"))
REPLAY_BLOCKED_SECONDS = MetricDef(
    "carla_td3_replay_rate_limiter_blocked_seconds_total", _C,
    "Seconds inserts or samples waited on the rate limiter.", _P, ("shard", "op"))

# The learner.
LEARNER_UPDATES = MetricDef("carla_td3_learner_updates_total", _C, "TD3 updates (critic steps).", _L)
LEARNER_SAMPLES_CONSUMED = MetricDef(
    "carla_td3_learner_samples_consumed_total", _C, "Transitions consumed by updates.", _L)
LEARNER_REJECTED_BATCHES = MetricDef(
    "carla_td3_learner_rejected_batches_total", _C,
    "Sampled batches dropped before an update for a non-finite value.", _L)
LEARNER_CRITIC_LOSS = MetricDef("carla_td3_learner_critic_loss", _G, "Latest critic loss.", _L)
LEARNER_POLICY_LOSS = MetricDef("carla_td3_learner_policy_loss", _G, "Latest policy loss.", _L)
LEARNER_MEAN_Q = MetricDef("carla_td3_learner_mean_q", _G, "Mean Q1 of the latest batch.", _L)
LEARNER_ENCODER_GRAD_NORM = MetricDef(
    "carla_td3_learner_encoder_grad_norm", _G, "Gradient norm of an encoder, before clipping.", _L,
    ("encoder",))
LEARNER_SAMPLE_WAIT_SECONDS = MetricDef(
    "carla_td3_learner_sample_wait_seconds", _H, "Time the learner waited for a batch.", _L, (),
    _SECONDS_BUCKETS)
WEIGHT_VERSION = MetricDef("carla_td3_weight_version", _G, "Latest published policy version.", _L)
WEIGHT_PUBLISH_SECONDS = MetricDef(
    "carla_td3_weight_publish_seconds", _H, "Time to publish one policy version.", _L, (),
    _SECONDS_BUCKETS)
POLICY_LAG = MetricDef(
    "carla_td3_policy_lag_versions", _G,
    "Mean learner version minus the version that chose each action of the latest batch.", _L)

METRICS: Mapping[str, MetricDef] = {
    m.name: m for m in globals().copy().values() if isinstance(m, MetricDef)
}


def lookup(name: str) -> MetricDef:
    """Returns the metric called ``name``.

    Raises:
        MetricsError: naming the unknown metric.
    """
    try:
        return METRICS[name]
    except KeyError:
        raise MetricsError(f"unknown metric {name!r}; known: {sorted(METRICS)}") from None


def base_name(exported: str) -> str:
    """Maps an exported series name to its MetricDef name.

    Strips Ray's ``ray_`` prefix and the ``_bucket``/``_sum``/``_count`` series of histograms,
    e.g. ``ray_carla_td3_carla_tick_seconds_bucket`` -> ``carla_td3_carla_tick_seconds``.
    """
    name = exported.removeprefix("ray_")
    for suffix in _SUFFIXES:
        stem = name.removesuffix(suffix)
        if stem != name and stem in METRICS and METRICS[stem].kind is MetricKind.HISTOGRAM:
            return stem
    return name


# --------------------------------------------------------------------------------------------
# The sink interface.

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
