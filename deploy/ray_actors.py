"""Ray wrappers around the plain component classes (the only place they meet Ray).

Each class here is turned into an actor by ``ray.remote(Cls).options(...)`` in deploy/driver.py;
they hold no training logic of their own.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import cv2
import ray
import torch

from actors.rollout import RolloutReport
from common import config as C
from common import metrics as M
from common.errors import CheckpointError
from common.metrics import MetricsSink, NullSink
from common.types import CachedBatch
from deploy import build, precision_record
from deploy.metrics_record import ShardRecorder, record_learner, record_publish, record_rollout
from deploy.rundir import RunDir
from deploy.weights_source import FilesFirstSource
from deploy.weights_shm import ShmWeightWriter, channel_dir
from learner.device import resolve_device
from learner.frame_cache import use_frame_cache
from learner.loop import LearnerLoop, LearnerReport
from learner.td3 import TD3Learner
from deploy.replay_ray import RAY
from replay.client import ReplayClient
from replay.transport import shard_for
from replay.shard import InsertAck, PackedBatch, RateLimited, ReplayShard
from replay.shard_writer import ShardWriter

log = logging.getLogger(__name__)
INSERT_WINDOW = 2  # inserts in flight per actor before it waits for an ack


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


def _restarted() -> bool:
    """Whether Ray restarted the current actor (one GCS lookup; call it once, at construction)."""
    with warnings.catch_warnings():  # Ray 2.60's property reads its own deprecated actor_id
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


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


class RolloutActor:
    """One rollout actor: one env (one CARLA server), CPU policy, inserts into one shard."""

    def __init__(self, cfg: C.RunConfig, index: int, seed: int, shard: Any, board: Any,
                 metrics: MetricsSink | None = None) -> None:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        threads = max(1, cfg.rollout.cpu_threads)
        torch.set_num_threads(threads)
        # OpenCV's pool has one thread per core by default, and after each parallel call
        # (the observation's resize, the fake camera's warpPerspective) its idle worker spins,
        # for images too small to gain from a second thread. On a full machine that is CPU
        # the other actors lack (docs/benchmarks.md, "Code choices").
        cv2.setNumThreads(threads)
        self.metrics = metrics or NullSink()
        self.shard_writer = ShardWriter(shard, cfg.spec, INSERT_WINDOW, transport=RAY,
                                        shard_index=shard_for(index, cfg.replay.num_shards))
        self.weights = FilesFirstSource(board, ray.get_runtime_context().get_node_id())
        self.worker = build.make_worker(cfg, index, self.shard_writer.send_chunk, self.weights, seed)
        if _restarted():  # Ray restarted this actor: the env above is a new connection
            self.metrics.counter(M.CARLA_RECONNECTS).inc(1, actor=index)

    def run_steps(self, n: int, global_env_steps: int) -> RolloutReport:
        report = self.worker.run_steps(n, global_env_steps)
        (report.broadcast_versions, report.broadcast_latencies, report.broadcast_fetch_latencies,
         report.broadcast_published_at) = self.weights.take_broadcasts()
        record_rollout(self.metrics, report)
        return report

    def threads(self) -> dict[str, int]:
        """The thread pools this process computes with: torch's and OpenCV's."""
        return {"torch": torch.get_num_threads(), "opencv": cv2.getNumThreads()}

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        """Flushes buffered records, waits for inserts, destroys server-side actors."""
        try:
            self.worker.close()
            self.shard_writer.flush()
        finally:
            self.weights.stop()
            self.metrics.close()


class LearnerActor:
    """The learner: TD3 on the GPU (or CPU), sampling through the replay client, publishing
    each snapshot once into the object store and its reference on the weight board, and (with
    ``learner.publish_shm``) into the run's shared-memory weight file first."""

    def __init__(self, cfg: C.RunConfig, shards: list[Any], board: Any, seed: int, run_dir: str,
                 metrics: MetricsSink | None = None) -> None:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        self._board = board
        self._run_dir = run_dir
        self._shm: ShmWeightWriter | None = None
        self._shm_wanted = cfg.learner.publish_shm
        self.metrics = metrics or NullSink()
        torch.set_num_threads(cfg.learner.cpu_threads or os.cpu_count() or 1)
        # A run keeps the precision its first learner chose (deploy/precision_record.py).
        device_type = resolve_device(cfg.learner.device).type
        learner_cfg = precision_record.pinned(cfg.learner, run_dir, device_type)
        self.learner = TD3Learner(cfg.spec, learner_cfg, seed)
        if cfg.learner.precision == "auto":
            precision_record.write_record(run_dir, device_type, cfg.learner.precision,
                                          self.learner.precision)
        batch = cfg.learner.cpu_scheduling is C.CpuScheduling.BATCH
        if self.learner.device.type == "cpu" and batch:
            # The rollout actors on these cores wait on their simulators, then need the CPU
            # at once; a learner in SCHED_BATCH lets them preempt it (docs/benchmarks.md,
            # "Code choices").
            log.info("event=learner_scheduling class=batch threads=%d", schedule_as_batch())
        latest = RunDir(run_dir).restore_latest(lambda ckpt: self.learner.load(learner_checkpoint(ckpt)))
        if latest is not None:
            log.info("event=learner_restored checkpoint=%s updates=%d", latest, self.learner.updates)
        capacity = cfg.replay.capacity
        cached = use_frame_cache(cfg.learner.frame_cache, self.learner.device, cfg.spec,
                                 len(shards) * capacity)
        log.info("event=learner_frame_cache on=%s rows=%d", cached, len(shards) * capacity)
        self._frame_cache_on = cached
        self.client = ReplayClient(shards, cfg.spec, batch_size=cfg.learner.td3.batch_size,
                                   prefetch=cfg.learner.prefetch, seed=seed,
                                   cache_capacity=capacity if cached else 0, transport=RAY)
        prioritized = cfg.replay.sampler is C.SamplerKind.PRIORITIZED
        self.loop = LearnerLoop(self.learner, self.client.sample, self._publish,
                                cfg.learner.publish_every,
                                self.client.update_priorities if prioritized else None)
        self._last_ref: Any = None
        seconds = self.loop.publish()
        record_publish(self.metrics, self.loop.version, seconds)

    def _publish(self, snapshot) -> None:
        # Both transports stamp a version with this moment, so their latencies compare.
        published_at, channel = time.time(), None
        try:
            if self._shm is None and self._shm_wanted:
                self._shm = ShmWeightWriter(channel_dir(self._run_dir), snapshot.state,
                                            ray.get_runtime_context().get_node_id())
            if self._shm is not None:
                if self._shm.publish(snapshot, published_at) is None:
                    # Actors still run on every older slot; they take the next version.
                    log.warning("event=weight_file_busy version=%d", snapshot.version)
                channel = self._shm.channel
        except (OSError, CheckpointError) as exc:  # actors fetch this version from the store
            log.warning("event=weight_file_failed error=%r", exc)
            self._shm_wanted = self._shm is not None  # no file at all: stop trying
        self._last_ref = ray.put(snapshot.state)
        self._board.publish.remote(snapshot.version, [self._last_ref], channel, published_at)

    def run_updates(self, n: int, max_seconds: float) -> LearnerReport:
        try:
            report = self.loop.run_updates(n, max_seconds)
        except Exception:
            if self._frame_cache_on:
                # A batch sampled for the cache may be lost before its frames were stored;
                # later ones would count on them: the learner and the shards start over.
                self.learner.drop_frame_cache()
                self.client.reset_cache()
                log.warning("event=learner_frame_cache_reset")
            raise
        record_learner(self.metrics, report)
        return report

    def save(self, path: str) -> int:
        self.learner.save(path)
        return int(self.learner.updates)

    def device(self) -> str:
        return str(self.learner.device)

    def precision(self) -> str:
        """"fp32" or "bf16": the learner's precision as resolved ("auto" is measured)."""
        return self.learner.precision

    def frame_cache(self) -> str:
        """"device" when batches take their frames from the learner's frame cache, else "off"
        (``learner.frame_cache`` as resolved)."""
        return "device" if self._frame_cache_on else "off"

    def pid(self) -> int:
        return os.getpid()
