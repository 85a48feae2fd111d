"""The plain components a run is built from (the composition root's builders), each usable
in-process (tests, benchmarks) or inside a Ray actor (deploy/ray_actors.py wraps them and adds
only what needs Ray). Settings come from deploy/build.py; deploy/driver.py places them.

- ``make_worker``: a rollout worker (env on its server, CPU policy, exploration, chunk writer).
- ``RestoringShard``: a replay shard that restores the run's last checkpoint when (re)started.
- ``LearnerService``: the learner with everything around it in a run: the precision a run keeps,
  its CPU scheduling, restoring its checkpoint, the frame cache, the replay client and the loop.
  Where the published weights go is the caller's: a ``publish`` callable.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from common import config as C
from deploy.build import actor_env_config
from rollout.carla_env import CarlaEnv
from rollout.carla_session import owner_tag
from rollout.exploration import GaussianExploration, actor_noise_scale
from rollout.policy import CpuPolicy
from rollout.worker import LazyEnv, RolloutWorker, WeightSource
from rollout.writer import ChunkSink, ChunkWriter
from common.metrics_sink import MetricsSink, NullSink
from common.types import CachedBatch
from common.weights import PolicySnapshot
from deploy import precision_record
from deploy.metrics_record import ShardRecorder, record_learner, record_publish
from deploy.rundir import RunDir
from learner.device import resolve_device
from learner.frame_cache import use_frame_cache
from learner.loop import LearnerLoop, LearnerReport
from learner.td3 import TD3Learner
from replay.client import ReplayClient
from replay.shard import InsertAck, PackedBatch, RateLimited, ReplayShard
from replay.transport import Transport

log = logging.getLogger(__name__)


def shard_checkpoint(checkpoint: Path, index: int) -> Path:
    return checkpoint / "replay" / f"shard-{index}"


def learner_checkpoint(checkpoint: Path) -> Path:
    return checkpoint / "learner.pt"


def schedule_as_batch() -> int:
    """Moves every thread of this process into Linux's SCHED_BATCH class (threads it starts
    later inherit it from their creator); returns how many moved, 0 where the platform has no
    such class. See common.config.CpuScheduling."""
    if not hasattr(os, "SCHED_BATCH") or not os.path.isdir("/proc/self/task"):
        return 0
    moved = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setscheduler(int(tid), os.SCHED_BATCH, os.sched_param(0))
            moved += 1
        except OSError:  # the thread ended meanwhile
            pass
    return moved


class RestoringShard(ReplayShard):
    """A replay shard that, when (re)started, restores the run's latest checkpoint if any.

    Ray restarts a dead shard by calling this constructor again: it comes back with the
    contents of the last checkpoint while the learner samples from the live shards.
    It records the replay metrics (docs/metrics.md) from ``stats()`` after inserts and samples.
    """

    def __init__(self, spec, cfg: C.ReplayConfig, shard_index: int, seed: int, run_dir: str,
                 metrics: MetricsSink | None = None) -> None:
        super().__init__(spec, cfg, shard_index=shard_index, seed=seed)
        latest = RunDir(run_dir).restore_latest(self._restore_checkpoint)
        if latest is not None:
            log.info("event=shard_restored shard=%d checkpoint=%s size=%d", shard_index, latest, self.size())
        self._recorder = ShardRecorder(metrics or NullSink(), shard_index, self.stats)

    def _restore_checkpoint(self, checkpoint: Path) -> None:
        """Restores this shard's part of ``checkpoint`` (a checkpoint without it: nothing)."""
        if shard_checkpoint(checkpoint, self.shard_index).exists():
            self.restore(shard_checkpoint(checkpoint, self.shard_index))

    def insert(self, data: bytes) -> InsertAck:
        try:
            return super().insert(data)
        finally:
            self._recorder.maybe_record()

    def sample_packed(self, batch_size: int) -> PackedBatch | RateLimited:
        try:
            return super().sample_packed(batch_size)
        finally:
            self._recorder.maybe_record()

    def sample_cached(self, batch_size: int, cache_id: int) -> CachedBatch | RateLimited:
        try:
            return super().sample_cached(batch_size, cache_id)
        finally:
            self._recorder.maybe_record()

    def save(self, directory: str | Path) -> str:
        self._recorder.record()
        return super().save(directory)

    def pid(self) -> int:
        return os.getpid()


class LearnerService:
    """TD3 on the GPU (or CPU) sampling from the shards, and publishing through ``publish``.

    Args:
        cfg: the run's config.
        shards: the replay shards' handles, and ``transport`` to call them.
        publish: takes each policy snapshot the loop publishes (its first at construction).
        seed: seeds the networks and the sampling.
        run_dir: the run directory (precision record, checkpoints to restore).
        metrics: where the learner's metrics go.
    """

    def __init__(self, cfg: C.RunConfig, shards: Sequence[Any], transport: Transport,
                 publish: Callable[[PolicySnapshot], None], seed: int, run_dir: str,
                 metrics: MetricsSink | None = None) -> None:
        self.metrics = metrics or NullSink()
        run = cfg.learner.execution
        torch.set_num_threads(run.cpu_threads or os.cpu_count() or 1)
        # A run keeps the precision its first learner chose (deploy/precision_record.py).
        device_type = resolve_device(run.device).type
        learner_cfg = precision_record.pinned(cfg.learner, run_dir, device_type)
        self.learner = TD3Learner(cfg.spec, learner_cfg, seed)
        if run.precision is C.Precision.AUTO:
            precision_record.write_record(run_dir, device_type, run.precision.value,
                                          self.learner.precision)
        batch = run.cpu_scheduling is C.CpuScheduling.BATCH
        if self.learner.device.type == "cpu" and batch:
            # The rollout workers on these cores wait on their simulators, then need the CPU
            # at once; a learner in SCHED_BATCH lets them preempt it (docs/benchmarks.md,
            # "Code choices").
            log.info("event=learner_scheduling class=batch threads=%d", schedule_as_batch())
        latest = RunDir(run_dir).restore_latest(lambda ckpt: self.learner.load(learner_checkpoint(ckpt)))
        if latest is not None:
            log.info("event=learner_restored checkpoint=%s updates=%d", latest, self.learner.updates)
        capacity = cfg.replay.capacity
        cached = use_frame_cache(run.frame_cache, self.learner.device, cfg.spec,
                                 len(shards) * capacity)
        log.info("event=learner_frame_cache on=%s rows=%d", cached, len(shards) * capacity)
        self.frame_cache_on = cached
        self.client = ReplayClient(shards, cfg.spec, batch_size=cfg.learner.td3.batch_size,
                                   prefetch=run.prefetch, seed=seed,
                                   cache_capacity=capacity if cached else 0, transport=transport)
        prioritized = cfg.replay.sampler is C.SamplerKind.PRIORITIZED
        self.loop = LearnerLoop(self.learner, self.client.sample, publish,
                                cfg.learner.publish_every,
                                self.client.update_priorities if prioritized else None)
        seconds = self.loop.publish()
        record_publish(self.metrics, self.loop.version, seconds)

    def run_updates(self, n: int, max_seconds: float) -> LearnerReport:
        """Up to ``n`` updates within about ``max_seconds``; records the learner's metrics."""
        try:
            report = self.loop.run_updates(n, max_seconds)
        except Exception:
            if self.frame_cache_on:
                # A batch sampled for the cache may be lost before its frames were stored;
                # later ones would count on them: the learner and the shards start over.
                self.learner.drop_frame_cache()
                self.client.reset_cache()
                log.warning("event=learner_frame_cache_reset")
            raise
        record_learner(self.metrics, report)
        return report

    def save(self, path: str) -> int:
        """Writes the learner's checkpoint file; returns its update count."""
        self.learner.save(path)
        return int(self.learner.updates)


def rollout_env(env_cfg: C.EnvConfig, spec: Any, seed: int, index: int) -> CarlaEnv:
    """Rollout worker ``index``'s env on its server: CARLA, or a fake-server process."""
    module = None
    if env_cfg.backend is C.SimulatorBackend.FAKE:
        from rollout.fakecarla.remote_client import make_remote_module
        module = make_remote_module()
    return CarlaEnv(env_cfg, spec, module, seed, owner_tag(index))


def make_worker(cfg: C.RunConfig, index: int, sink: ChunkSink, weights: WeightSource,
                seed: int, env: Any = None) -> RolloutWorker:
    """A rollout worker for actor ``index``: env, CPU policy, exploration, chunk writer.

    Without ``env``, the env connects on the worker's first reset (``LazyEnv``) to the actor's
    server: a CARLA server, or on the fake backend a fake-server process
    (``carla-td3 fake-server``, reached through the remote fake client).
    """
    import numpy as np

    actor_seed = seed * 1_000 + index
    if env is None:
        env_cfg = actor_env_config(cfg, index)
        env = LazyEnv(lambda: rollout_env(env_cfg, cfg.spec, actor_seed, index))
    rng = np.random.default_rng(actor_seed)
    scale = actor_noise_scale(cfg.rollout.exploration_noise, cfg.rollout.noise_spread, index,
                              cfg.rollout.num_workers)
    writer = ChunkWriter(cfg.spec, cfg.replay.chunk_length, sink,
                         stream_id=random.SystemRandom().getrandbits(63))
    return RolloutWorker(
        env, CpuPolicy(cfg.spec, cfg.learner.network, cfg.rollout.cpu_threads), writer, weights,
        GaussianExploration(scale, rng), actor_index=index,
        learning_starts=cfg.rollout.learning_starts,
        weight_poll_every=cfg.rollout.weight_poll_every, seed=actor_seed)
