"""Records the run's metrics from what the components already return (the deploy/ side).

The components stay free of metrics plumbing: a rollout worker returns a RolloutReport per
``run_steps`` call, the learner loop a LearnerReport per ``run_updates`` call and a replay
shard keeps running totals in ``stats()``. The Ray wrappers in deploy/ray_actors.py hand those
to the functions here, in the process that owns each metric (docs/metrics.md), so an env step
costs only a ``perf_counter`` pair and a list append.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Mapping

from rollout.worker import RolloutReport
from common import metrics as M
from common.metrics_sink import MetricsSink
from learner.loop import LearnerReport
from replay.shard import REJECT_REASONS

SHARD_RECORD_EVERY_S = 1.0

# LearnerReport.stats key -> (gauge, labels).
_LEARNER_GAUGES: tuple[tuple[str, M.MetricDef, dict[str, str]], ...] = (
    ("critic_loss", M.LEARNER_CRITIC_LOSS, {}),
    ("policy_loss", M.LEARNER_POLICY_LOSS, {}),
    ("q1_mean", M.LEARNER_MEAN_Q, {}),
    ("critic_encoder_grad_norm", M.LEARNER_ENCODER_GRAD_NORM, {"encoder": "critic"}),
    ("policy_encoder_grad_norm", M.LEARNER_ENCODER_GRAD_NORM, {"encoder": "policy"}),
)

# ReplayShard.stats() running total -> (counter, labels).
_SHARD_COUNTERS: tuple[tuple[str, M.MetricDef, dict[str, str]], ...] = (
    ("inserts", M.REPLAY_INSERTS, {}),
    ("samples", M.REPLAY_SAMPLES, {}),
    ("cache_frames_sent", M.REPLAY_CACHE_FRAMES, {}),
    ("insert_blocked_seconds", M.REPLAY_BLOCKED_SECONDS, {"op": "insert"}),
    ("sample_blocked_seconds", M.REPLAY_BLOCKED_SECONDS, {"op": "sample"}),
    *((f"rejected_{reason}", M.REPLAY_REJECTED, {"reason": reason}) for reason in REJECT_REASONS),
)


def record_rollout(sink: MetricsSink, report: RolloutReport) -> None:
    """Records one ``run_steps`` call of a rollout worker (its broadcast latencies included)."""
    actor = report.actor_index
    sink.counter(M.ENV_STEPS).inc(report.env_steps, actor=actor)
    for ep in report.episodes:
        ending = "truncated" if ep.truncated else "terminated"
        sink.counter(M.EPISODES).inc(1, actor=actor, ending=ending)
        sink.counter(M.EPISODE_SUCCESSES).inc(int(ep.success), actor=actor)
        sink.histogram(M.EPISODE_LENGTH).observe(ep.length, actor=actor)
    if report.episodes:
        sink.gauge(M.EPISODE_RETURN).set(report.episodes[-1].ret, actor=actor)
    sink.gauge(M.ACTOR_POLICY_VERSION).set(report.policy_version, actor=actor)
    tick = sink.histogram(M.CARLA_TICK_SECONDS)
    for seconds in report.tick_seconds:
        tick.observe(seconds, actor=actor)
    sink.counter(M.CARLA_TIMEOUTS).inc(report.simulator_timeouts, actor=actor)
    sink.counter(M.CARLA_RECONNECTS).inc(report.reconnects, actor=actor)
    broadcast = sink.histogram(M.WEIGHT_BROADCAST_SECONDS)
    for seconds in report.broadcast_latencies:
        broadcast.observe(seconds, actor=actor)


def record_publish(sink: MetricsSink, version: int, seconds: float) -> None:
    """Records one policy publish outside ``run_updates`` (the learner's first, at start)."""
    sink.histogram(M.WEIGHT_PUBLISH_SECONDS).observe(seconds)
    sink.gauge(M.WEIGHT_VERSION).set(version)


def record_learner(sink: MetricsSink, report: LearnerReport) -> None:
    """Records one ``run_updates`` call of the learner."""
    sink.counter(M.LEARNER_UPDATES).inc(report.updates)
    sink.counter(M.LEARNER_SAMPLES_CONSUMED).inc(report.samples)
    if report.rejected_batches:
        sink.counter(M.LEARNER_REJECTED_BATCHES).inc(report.rejected_batches)
    wait = sink.histogram(M.LEARNER_SAMPLE_WAIT_SECONDS)
    for seconds in report.batch_waits:
        wait.observe(seconds)
    publish = sink.histogram(M.WEIGHT_PUBLISH_SECONDS)
    for seconds in report.publish_times:
        publish.observe(seconds)
    if report.policy_version >= 0:
        sink.gauge(M.WEIGHT_VERSION).set(report.policy_version)
    if math.isfinite(report.policy_lag):
        sink.gauge(M.POLICY_LAG).set(report.policy_lag)
    if report.updates:
        for key, metric, labels in _LEARNER_GAUGES:
            if key in report.stats:
                sink.gauge(metric).set(report.stats[key], **labels)


class ShardRecorder:
    """Turns a replay shard's running totals into counter increments and gauges.

    ``maybe_record`` is called after each insert and sample and records at most once per
    ``every_s``; totals present at construction (restored from a checkpoint) are not counted
    again, so a restarted shard's counters continue from zero as Prometheus expects.
    """

    def __init__(self, sink: MetricsSink, shard_index: int, stats: Callable[[], Mapping[str, float]],
                 every_s: float = SHARD_RECORD_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._shard = shard_index
        self._stats = stats
        self._every_s = every_s
        self._clock = clock
        first = stats()
        self._last = {key: float(first[key]) for key, _, _ in _SHARD_COUNTERS}
        self._next = 0.0
        self.record()

    def maybe_record(self) -> None:
        """Records if ``every_s`` has passed since the last record."""
        if self._clock() >= self._next:
            self.record()

    def record(self) -> None:
        """Records the totals' growth since the last record, the size and the bytes, now."""
        stats = self._stats()
        for key, metric, labels in _SHARD_COUNTERS:
            total = float(stats[key])
            self._sink.counter(metric).inc(max(0.0, total - self._last[key]), shard=self._shard, **labels)
            self._last[key] = total
        self._sink.gauge(M.REPLAY_SIZE).set(stats["size"], shard=self._shard)
        self._sink.gauge(M.REPLAY_BYTES).set(stats["bytes"], shard=self._shard)
        self._next = self._clock() + self._every_s
