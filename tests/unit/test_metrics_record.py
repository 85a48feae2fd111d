"""Recording the runtime's metrics from reports and shard stats (deploy/metrics_record.py), and
the report fields the rollout worker and the learner loop fill for it."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rollout.exploration import GaussianExploration
from rollout.worker import EpisodeResult, RolloutReport, RolloutWorker
from rollout.writer import ChunkWriter
from common import metrics as M
from common import metrics_sink as S
from common.errors import MetricsError
from common.config import MetricsBackend, MetricsConfig
from common.specs import IMAGE_KEY, VECTOR_KEY, EnvSpec
from common.weights import RANDOM_POLICY_VERSION
from deploy.metrics_ray import RaySink, component_sink
from deploy.metrics_record import ShardRecorder, record_learner, record_publish, record_rollout
from learner.loop import LearnerLoop, LearnerReport
from learner.td3 import TD3Learner
from replay.shard import REJECT_REASONS
from tests.unit.learner_fixtures import SMALL_SPEC, random_batch, small_config

SPEC = EnvSpec(frames=2, image_size=36, num_waypoints=1)


class ScriptedEnv:
    """Episodes of fixed lengths; each ends as scripted: (length, terminated, reason, success)."""

    def __init__(self, spec: EnvSpec, episodes: list[tuple[int, bool, str, bool]]) -> None:
        self.spec, self.episodes, self.t, self.index = spec, episodes, 0, -1

    def _obs(self) -> dict:
        return {IMAGE_KEY: np.zeros(self.spec.image.shape, np.uint8),
                VECTOR_KEY: np.zeros(self.spec.vector.shape, np.float32)}

    def reset(self, seed=None):
        self.index, self.t = self.index + 1, 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        length, terminated, reason, success = self.episodes[min(self.index, len(self.episodes) - 1)]
        if self.t < length:
            return self._obs(), 1.0, False, False, {}
        info = {"termination_reason": reason, "success": success}
        return self._obs(), 1.0, terminated, not terminated, info

    def close(self) -> None:
        pass


class RandomPolicy:
    version = RANDOM_POLICY_VERSION
    ready = False
    action_dim = 2


class NoWeights:
    """Never a new version; records the calls (every inference between a before and an after)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def newer(self, version, poll):
        self.calls.append("before")
        return None

    def release(self):
        self.calls.append("after")


def _worker(episodes) -> RolloutWorker:
    writer = ChunkWriter(SPEC, 8, lambda chunk: None, stream_id=1)
    return RolloutWorker(ScriptedEnv(SPEC, episodes), RandomPolicy(), writer, NoWeights(),
                         GaussianExploration(0.1, np.random.default_rng(0)), actor_index=3,
                         learning_starts=10**9, weight_poll_every=4, seed=0)


def test_rollout_worker_reports_step_times_endings_timeouts_and_reconnects():
    # A simulator-timeout episode, then a successful one, then one cut by the step limit.
    worker = _worker([(3, False, "simulator_timeout", False), (4, True, "route_completed", True),
                      (100, False, "step_limit", False)])
    report = worker.run_steps(5)
    assert len(report.tick_seconds) == 5 and all(s >= 0 for s in report.tick_seconds)
    assert report.simulator_timeouts == 1 and report.reconnects == 1  # the reset after it
    assert len(report.reset_spans) == 2 and all(a <= b for a, b in report.reset_spans)
    assert [(e.truncated, e.reason) for e in report.episodes] == [(True, "simulator_timeout")]
    report = worker.run_steps(5)
    assert report.reconnects == 0 and report.simulator_timeouts == 0
    assert [(e.truncated, e.success) for e in report.episodes] == [(False, True)]
    assert worker.weights.calls == ["before", "after"] * 10


def test_an_inference_that_fails_still_ends_the_weight_sources_block():
    worker = _worker([(100, False, "step_limit", False)])

    def broken(global_env_steps):
        raise RuntimeError("inference failed")

    worker._choose = broken
    with pytest.raises(RuntimeError, match="inference failed"):
        worker.run_steps(1)
    assert worker.weights.calls == ["before", "after"]  # the weight slot is let go


def test_record_rollout_counts_steps_episodes_by_ending_and_carla_health():
    sink = S.MemorySink()
    ok = EpisodeResult(ret=4.5, length=120, success=True, route_completion=1.0, distance_m=80.0,
                       collisions=0, reason="route_completed")
    cut = EpisodeResult(ret=-2.0, length=7, success=False, route_completion=0.1, distance_m=3.0,
                        collisions=0, reason="simulator_timeout", truncated=True)
    report = RolloutReport(actor_index=1, env_steps=50, episodes=[ok, cut], policy_version=7,
                           simulator_timeouts=1, reconnects=2, tick_seconds=[0.02, 0.03],
                           broadcast_latencies=[0.4])
    record_rollout(sink, report)
    assert sink.value(M.ENV_STEPS, actor=1) == 50
    assert sink.value(M.EPISODES, actor=1, ending="terminated") == 1
    assert sink.value(M.EPISODES, actor=1, ending="truncated") == 1
    assert sink.value(M.EPISODE_SUCCESSES, actor=1) == 1
    assert sink.value(M.EPISODE_RETURN, actor=1) == -2.0  # the latest episode
    assert sink.observations(M.EPISODE_LENGTH, actor=1) == [120, 7]
    assert sink.value(M.ACTOR_POLICY_VERSION, actor=1) == 7
    assert sink.observations(M.CARLA_TICK_SECONDS, actor=1) == [0.02, 0.03]
    assert sink.value(M.CARLA_TIMEOUTS, actor=1) == 1
    assert sink.value(M.CARLA_RECONNECTS, actor=1) == 2
    assert sink.observations(M.WEIGHT_BROADCAST_SECONDS, actor=1) == [0.4]


def _real_learner_report() -> tuple[LearnerReport, int]:
    learner = TD3Learner(SMALL_SPEC, small_config(batch_size=8), seed=0)
    batches = iter([None, random_batch(SMALL_SPEC, 8, 1)._replace(policy_version=np.zeros(8, np.int64)),
                    random_batch(SMALL_SPEC, 8, 2)])
    loop = LearnerLoop(learner, lambda: next(batches), lambda snapshot: None, publish_every=1,
                       idle_sleep_s=0.01)
    loop.publish()
    return loop.run_updates(2), loop.version


def test_learner_loop_reports_each_batch_wait_and_each_publish():
    report, version = _real_learner_report()
    assert report.updates == 2 and version == 2
    assert len(report.batch_waits) == 2 and report.batch_waits[0] >= 0.01  # the empty poll waited
    assert len(report.publish_times) == 2
    assert math.isclose(sum(report.publish_times), report.publish_seconds)


def test_record_learner_reads_the_real_update_stats():
    report, version = _real_learner_report()
    sink = S.MemorySink()
    record_learner(sink, report)
    assert sink.value(M.LEARNER_UPDATES) == 2 and sink.value(M.LEARNER_SAMPLES_CONSUMED) == 16
    assert sink.value(M.WEIGHT_VERSION) == version
    assert math.isfinite(report.policy_lag)  # the first batch holds version-0 actions
    assert sink.value(M.POLICY_LAG) == report.policy_lag
    assert len(sink.observations(M.LEARNER_SAMPLE_WAIT_SECONDS)) == 2
    assert len(sink.observations(M.WEIGHT_PUBLISH_SECONDS)) == 2
    for metric, labels, key in [(M.LEARNER_CRITIC_LOSS, {}, "critic_loss"),
                                (M.LEARNER_POLICY_LOSS, {}, "policy_loss"),
                                (M.LEARNER_MEAN_Q, {}, "q1_mean"),
                                (M.LEARNER_ENCODER_GRAD_NORM, {"encoder": "critic"}, "critic_encoder_grad_norm"),
                                (M.LEARNER_ENCODER_GRAD_NORM, {"encoder": "policy"}, "policy_encoder_grad_norm")]:
        assert sink.value(metric, **labels) == report.stats[key], key


def test_record_learner_without_updates_sets_no_loss_and_no_nan_lag():
    sink = S.MemorySink()
    record_learner(sink, LearnerReport(policy_version=-1))
    assert sink.names() == set()
    record_publish(sink, 0, 0.01)
    assert sink.value(M.WEIGHT_VERSION) == 0 and sink.observations(M.WEIGHT_PUBLISH_SECONDS) == [0.01]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_shard_recorder_counts_growth_once_a_period_not_the_restored_totals():
    totals = {"inserts": 500, "samples": 64, "cache_frames_sent": 40,
              "insert_blocked_seconds": 1.5, "sample_blocked_seconds": 0.0, "size": 480,
              "bytes": 9000, "rejected_wire": 3, "rejected_spec": 0, "rejected_stream": 0}
    sink, clock = S.MemorySink(), Clock()
    recorder = ShardRecorder(sink, 2, lambda: dict(totals), every_s=1.0, clock=clock)
    assert sink.value(M.REPLAY_INSERTS, shard=2) == 0  # restored from a checkpoint: not counted
    assert sink.value(M.REPLAY_SIZE, shard=2) == 480 and sink.value(M.REPLAY_BYTES, shard=2) == 9000
    totals.update(inserts=532, samples=128, cache_frames_sent=70, sample_blocked_seconds=0.25,
                  size=512, rejected_spec=2)
    recorder.maybe_record()  # within the period: nothing
    assert sink.value(M.REPLAY_INSERTS, shard=2) == 0
    clock.now += 1.0
    recorder.maybe_record()
    assert sink.value(M.REPLAY_INSERTS, shard=2) == 32
    assert sink.value(M.REPLAY_SAMPLES, shard=2) == 64
    assert sink.value(M.REPLAY_CACHE_FRAMES, shard=2) == 30
    assert sink.value(M.REPLAY_BLOCKED_SECONDS, shard=2, op="sample") == 0.25
    assert sink.value(M.REPLAY_BLOCKED_SECONDS, shard=2, op="insert") == 0
    assert sink.value(M.REPLAY_SIZE, shard=2) == 512
    assert sink.value(M.REPLAY_REJECTED, shard=2, reason="spec") == 2
    assert sink.value(M.REPLAY_REJECTED, shard=2, reason="wire") == 0  # restored, not counted
    recorder.record()  # forced (before a checkpoint), no growth: counters unchanged
    assert sink.value(M.REPLAY_INSERTS, shard=2) == 32


def test_every_defined_metric_is_recorded_by_the_runtime_recorders():
    sink = S.MemorySink()
    episode = EpisodeResult(1.0, 10, True, 1.0, 5.0, 0, "route_completed")
    record_rollout(sink, RolloutReport(0, 10, [episode], 1, simulator_timeouts=1, reconnects=1,
                                       tick_seconds=[0.01], broadcast_latencies=[0.1]))
    report = _real_learner_report()[0]
    report.rejected_batches = 1
    record_learner(sink, report)
    totals = {"inserts": 0, "samples": 0, "cache_frames_sent": 0, "insert_blocked_seconds": 0.0,
              "sample_blocked_seconds": 0.0, "size": 0, "bytes": 1,
              **{f"rejected_{reason}": 0 for reason in REJECT_REASONS}}
    clock = Clock()
    recorder = ShardRecorder(sink, 0, lambda: dict(totals), clock=clock)
    totals.update(inserts=10, samples=10, cache_frames_sent=10, insert_blocked_seconds=1.0,
                  sample_blocked_seconds=1.0, rejected_wire=1)
    clock.now += 5
    recorder.maybe_record()
    assert sink.names() == set(M.METRICS)


@pytest.mark.parametrize("backend, expected", [(MetricsBackend.AUTO, RaySink),
                                               (MetricsBackend.RAY, RaySink),
                                               (MetricsBackend.NONE, S.NullSink)])
def test_component_sink_is_one_every_actor_process_can_use(backend, expected):
    sink = component_sink(MetricsConfig(backend=backend, gauge_refresh_s=2.0))
    assert type(sink) is expected


def test_component_sink_rejects_the_single_process_endpoint():
    with pytest.raises(MetricsError, match=r"metrics.backend \(prometheus\)"):
        component_sink(MetricsConfig(backend=MetricsBackend.PROMETHEUS))
