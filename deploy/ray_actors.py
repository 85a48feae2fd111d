"""Ray wrappers around the plain components (deploy/components.py, rollout/, replay/): the
only place they meet Ray.

Each class here is turned into an actor by ``ray.remote(Cls).options(...)`` in deploy/driver.py;
they hold no training logic of their own, only what needs Ray (node ids, the object store, the
weight board, whether Ray restarted them).
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

import cv2
import ray
import torch

from rollout.worker import RolloutReport
from common import config as C
from common import metrics as M
from common.errors import CheckpointError
from common.metrics_sink import MetricsSink, NullSink
from common.weights import PolicySnapshot
from deploy.components import (LearnerService, RestoringShard, learner_checkpoint, make_worker,
                               schedule_as_batch, shard_checkpoint)
from deploy.metrics_record import record_rollout
from deploy.replay_ray import RAY
from deploy.weights_shm import ShmWeightWriter, channel_dir
from deploy.weights_source import FilesFirstSource
from learner.loop import LearnerReport
from replay.shard_writer import ShardWriter
from replay.transport import shard_for

__all__ = ["LearnerActor", "RestoringShard", "RolloutActor", "learner_checkpoint",
           "schedule_as_batch", "shard_checkpoint"]

log = logging.getLogger(__name__)
INSERT_WINDOW = 2  # inserts in flight per actor before it waits for an ack


def _restarted() -> bool:
    """Whether Ray restarted the current actor (one GCS lookup; call it once, at construction)."""
    with warnings.catch_warnings():  # Ray 2.60's property reads its own deprecated actor_id
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


class RolloutActor:
    """One rollout worker: one env (one CARLA server), CPU policy, inserts into one shard."""

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
        self.worker = make_worker(cfg, index, self.shard_writer.send_chunk, self.weights, seed)
        if _restarted():  # Ray restarted this actor: its env connects anew on its first reset
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
    """The learner in its Ray actor: a ``LearnerService`` whose snapshots go once into the
    object store, their reference onto the weight board, and (with ``learner.execution.publish_shm``)
    first into the run's shared-memory weight file for rollout workers on this node."""

    def __init__(self, cfg: C.RunConfig, shards: list[Any], board: Any, seed: int, run_dir: str,
                 metrics: MetricsSink | None = None) -> None:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        self._board = board
        self._run_dir = run_dir
        self._shm: ShmWeightWriter | None = None
        self._shm_wanted = cfg.learner.execution.publish_shm
        self._last_ref: Any = None
        self.service = LearnerService(cfg, shards, RAY, self._publish, seed, run_dir, metrics)

    def _publish(self, snapshot: PolicySnapshot) -> None:
        # Both transports stamp a version with this moment, so their latencies compare.
        published_at, channel = time.time(), None
        try:
            if self._shm is None and self._shm_wanted:
                self._shm = ShmWeightWriter(channel_dir(self._run_dir), snapshot.state,
                                            ray.get_runtime_context().get_node_id())
            if self._shm is not None:
                if self._shm.publish(snapshot, published_at) is None:
                    # Workers still run on every older slot; they take the next version.
                    log.warning("event=weight_file_busy version=%d", snapshot.version)
                channel = self._shm.channel
        except (OSError, CheckpointError) as exc:  # workers fetch this version from the store
            log.warning("event=weight_file_failed error=%r", exc)
            self._shm_wanted = self._shm is not None  # no file at all: stop trying
        self._last_ref = ray.put(snapshot.state)
        self._board.publish.remote(snapshot.version, [self._last_ref], channel, published_at)

    def run_updates(self, n: int, max_seconds: float) -> LearnerReport:
        return self.service.run_updates(n, max_seconds)

    def save(self, path: str) -> int:
        return self.service.save(path)

    def device(self) -> str:
        return str(self.service.learner.device)

    def precision(self) -> str:
        """"fp32" or "bf16": the learner's precision as resolved ("auto" is measured)."""
        return self.service.learner.precision

    def frame_cache(self) -> str:
        """"device" when batches take their frames from the learner's frame cache, else "off"
        (``learner.execution.frame_cache`` as resolved)."""
        return "device" if self.service.frame_cache_on else "off"

    def pid(self) -> int:
        return os.getpid()
