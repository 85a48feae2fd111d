"""Metric names, their types and owners (the sink interface they are recorded through is
common/metrics_sink.py).

This module is the single source of metric names: code, the Grafana dashboard and
docs/metrics.md use these constants and a unit test holds them to it. Names follow Prometheus
conventions: the ``carla_td3_`` prefix, ``_total`` on counters and only on counters, base units
(``_seconds``, ``_bytes``) and a small fixed set of low-cardinality labels (LABELS).

Components receive a ``MetricsSink`` (common/metrics_sink.py) and record with, for example::

    sink.counter(ENV_STEPS).inc(32, actor=3)
    sink.gauge(REPLAY_SIZE).set(12_000, shard=0)
    sink.histogram(CARLA_TICK_SECONDS).observe(0.021, actor=3)

Implementations: ``NullSink`` (checks, then discards), ``MemorySink`` (keeps values, for tests),
``PrometheusSink`` in common/metrics_prometheus.py (prometheus_client, runs without Ray) and
``RaySink`` in deploy/metrics_ray.py (ray.util.metrics; Ray prefixes every exported name with
``ray_``).
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Mapping

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
