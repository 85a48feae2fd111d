"""The Ray run mode: builds shards, the weight board, the learner and the rollout workers from
one RunConfig, then drives them until the env-step budget is spent.

The driver keeps exactly one call in flight per actor and one for the learner, so it never
blocks a component: it reacts to whichever finishes first, counts, checkpoints and reports.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from common import config as C
from common.errors import ComponentDead, ConfigError, LearnerDiverged, SimulatorError, SpecError
from deploy import build, fake_servers
from deploy.console import ProgressDisplay, make_progress_display
from deploy.liveness import dead_for_good, death_cause
from deploy.metrics_ray import component_sink
from deploy.progress import Progress, RunCounters, summary
from deploy.ray_actors import (LearnerActor, RestoringShard, RolloutActor, learner_checkpoint,
                               shard_checkpoint)
from deploy.rundir import MetricsLog, RunDir
from deploy.weights_ray import WeightBoard
from deploy.weights_shm import channel_dir
from replay.transport import shard_for

log = logging.getLogger(__name__)
ACTOR_MAX_RESTARTS = 20


@dataclass
class Fleet:
    shards: list[Any]
    board: Any
    learner: Any
    actors: list[Any]
    learner_on_gpu: bool = False
    broadcast_latencies: list[float] = field(default_factory=list)
    weights_dir: Path | None = None  # the learner's shared-memory weight files
    servers: fake_servers.FakeServers | None = None  # the fake backend's own servers

    def destroy(self) -> None:
        """Kills every actor of the fleet, stops its fake servers, deletes the weight files."""
        try:
            for handle in [*self.actors, self.learner, *self.shards, self.board]:
                ray.kill(handle, no_restart=True)
        finally:
            if self.servers is not None:
                self.servers.stop()
            if self.weights_dir is not None:
                shutil.rmtree(self.weights_dir, ignore_errors=True)


def _reply_or(ref: Any, default: str, timeout_s: float = 5.0) -> str:
    """A small actor reply, or ``default`` if it failed or is not there in ``timeout_s``."""
    try:
        return str(ray.get(ref, timeout=timeout_s))
    except ray.exceptions.RayError:  # GetTimeoutError included
        return default


def _cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


# Custom node resources of the compose topology (docker-compose.yml): ray-learner advertises
# {"learner": 1}, ray-rollout {"rollout": N}, N being the number of rollout workers it hosts.
LEARNER_RESOURCE = "learner"
ROLLOUT_RESOURCE = "rollout"


@dataclass(frozen=True)
class Placement:
    """The custom resources each kind of actor asks for; empty on a cluster without them."""

    learner: dict[str, float]
    rollout: dict[str, float]


def placement(num_workers: int, cluster: dict[str, float]) -> Placement:
    """Pins the learner to the node advertising ``learner`` and each rollout worker to one unit
    of ``rollout`` (a node's ``rollout`` count is its number of worker slots), where the cluster
    advertises them. Replay shards and the weight board ask for nothing (see ``_build_fleet``).

    Args:
        num_workers: rollout workers to place.
        cluster: ``ray.cluster_resources()``.

    Raises:
        ConfigError: more rollout workers than the cluster's ``rollout`` slots (they would
            wait for a node forever).
    """
    learner = {LEARNER_RESOURCE: 1.0} if cluster.get(LEARNER_RESOURCE, 0.0) >= 1 else {}
    slots = cluster.get(ROLLOUT_RESOURCE, 0.0)
    if slots > 0 and num_workers > slots:
        raise ConfigError(f"rollout.num_workers={num_workers} exceeds the cluster's "
                          f"{ROLLOUT_RESOURCE!r} resource ({slots:g} worker slots): add a "
                          f"rollout node or raise its --resources")
    return Placement(learner, {ROLLOUT_RESOURCE: 1.0} if slots > 0 else {})


def build_fleet(cfg: C.RunConfig, run_dir: RunDir) -> Fleet:
    """Shards, weight board, learner and rollout workers; on the fake backend without
    endpoints, first one fake-server process per rollout worker (stopped by ``destroy``)."""
    cfg, servers = fake_servers.start_for(cfg)
    try:
        return _build_fleet(cfg, run_dir, servers)
    except BaseException:
        if servers is not None:
            servers.stop()
        raise


def _build_fleet(cfg: C.RunConfig, run_dir: RunDir,
                 servers: fake_servers.FakeServers | None) -> Fleet:
    replay_cfg = build.replay_config(cfg)
    where = placement(cfg.rollout.num_workers, ray.cluster_resources())
    log.info("event=placement learner_resources=%s rollout_resources=%s",
             where.learner or "none", where.rollout or "none")
    run_path = str(run_dir.path.resolve())  # the same directory whatever a worker's cwd
    metrics = component_sink(cfg.metrics)  # pickled: each actor records in its own process
    # Shards and the board ask for no resources, so Ray's default policy may put them on any
    # node with CPUs: on the compose topology, the learner or the rollout node (the head and
    # the trainer node advertise none). Any node serves them: every container mounts /runs.
    shards = [ray.remote(RestoringShard).options(
                  num_cpus=0, max_restarts=ACTOR_MAX_RESTARTS, name=None)
              .remote(cfg.spec, replay_cfg, i, cfg.seed + i, run_path, metrics)
              for i in range(replay_cfg.num_shards)]
    board = ray.remote(WeightBoard).options(num_cpus=0, max_concurrency=1000).remote()
    gpus = 1.0 if _cluster_gpus() >= 1 and cfg.learner.execution.device != "cpu" else 0.0
    learner = ray.remote(LearnerActor).options(
        num_cpus=0, num_gpus=gpus, resources=where.learner, max_restarts=ACTOR_MAX_RESTARTS,
    ).remote(cfg, shards, board, cfg.seed, run_path, metrics)
    actors = [ray.remote(RolloutActor).options(num_cpus=0, resources=where.rollout,
                                               max_restarts=ACTOR_MAX_RESTARTS)
              .remote(cfg, i, cfg.seed, shards[shard_for(i, len(shards))], board, metrics)
              for i in range(cfg.rollout.num_workers)]
    return Fleet(shards, board, learner, actors, learner_on_gpu=gpus > 0,
                 weights_dir=channel_dir(run_path), servers=servers)


class Driver:
    """Runs one training run in Ray mode; ``run()`` returns the summary."""

    def __init__(self, cfg: C.RunConfig, run_dir: RunDir, counters: RunCounters | None = None) -> None:
        build.validate(cfg)
        self.cfg = cfg
        self.run_dir = run_dir
        self.counters = counters or RunCounters()
        self.progress = Progress(self.counters)
        self._metrics: MetricsLog | None = None  # open while run() runs
        self._display: ProgressDisplay | None = None
        self.fleet: Fleet | None = None
        self._next_checkpoint = self._round_up(self.counters.updates)
        self._diverged: str | None = None  # why the learner's weights cannot be published
        self._dead: ComponentDead | None = None  # a component that will never answer again
        self._dead_actors: set[int] = set()

    def _round_up(self, updates: int) -> int:
        every = self.cfg.learner.checkpoint_every
        return (updates // every + 1) * every if every > 0 else float("inf")

    def run(self) -> dict[str, Any]:
        fleet = self.fleet = build_fleet(self.cfg, self.run_dir)
        # Answered once the learner is built; a small reply lives on with the driver.
        precision = fleet.learner.precision.remote()
        frame_cache = fleet.learner.frame_cache.remote()
        start = time.monotonic()
        wall0 = self.counters.wall_seconds
        interrupted = False
        try:
            self._open_reporting()
            self._loop(fleet, start, wall0)
        except KeyboardInterrupt:
            interrupted = True
            log.info("event=interrupted action=checkpoint_and_shutdown")
        finally:
            self.counters.wall_seconds = wall0 + time.monotonic() - start
            self._close_reporting()
            self._shutdown(fleet)
        if self._dead is not None:
            raise self._dead
        if self._diverged is not None:
            latest = self.run_dir.latest_checkpoint()
            raise LearnerDiverged(
                f"the learner diverged ({self._diverged}); the run stopped without a final "
                f"checkpoint: --resume continues from "
                f"{latest if latest is not None else 'the start (no checkpoint yet)'}")
        out = summary(self.counters, {"interrupted": interrupted,
                                      "learner_device": "gpu" if fleet.learner_on_gpu else "cpu",
                                      "learner_precision": _reply_or(precision, "unknown"),
                                      "learner_frame_cache": _reply_or(frame_cache, "unknown")})
        self.run_dir.write_summary(out)
        return out

    def _loop(self, fleet: Fleet, start: float, wall0: float) -> None:
        cfg, counters = self.cfg, self.counters
        pending: dict[Any, tuple[str, int]] = {}
        for i, actor in enumerate(fleet.actors):
            pending[actor.run_steps.remote(cfg.train.worker_steps_per_call, counters.env_steps)] = ("actor", i)
        pending[self._learner_call(fleet)] = ("learner", 0)
        next_report = time.monotonic() + cfg.train.progress_every_s
        while counters.env_steps < cfg.train.env_steps and self._stopping() is None:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                kind, i = pending.pop(ref)
                if kind == "actor":
                    self._on_actor(ref, i)
                    if counters.env_steps < cfg.train.env_steps and i not in self._dead_actors:
                        call = fleet.actors[i].run_steps.remote(cfg.train.worker_steps_per_call, counters.env_steps)
                        pending[call] = ("actor", i)
                else:
                    self._on_learner(ref)
                    if self._stopping() is None:
                        pending[self._learner_call(fleet)] = ("learner", 0)
            if time.monotonic() >= next_report:
                counters.wall_seconds = wall0 + time.monotonic() - start
                self._report(fleet)
                next_report = time.monotonic() + cfg.train.progress_every_s
            if counters.updates >= self._next_checkpoint and self._stopping() is None:
                try:
                    self.checkpoint()
                except ray.exceptions.RayError as exc:  # a shard is restarting: next interval
                    log.warning("event=checkpoint_skipped error=%s", type(exc).__name__)
                self._next_checkpoint = self._round_up(counters.updates)
        self._drain(fleet, pending, timeout_s=self._drain_limit(None))
        counters.wall_seconds = wall0 + time.monotonic() - start
        self._report(fleet)  # the last row: the bar and the curves reach the end of the budget

    def _stopping(self) -> str | None:
        """Why the run must stop early (the learner diverged, a component is dead), or None."""
        return self._diverged or (str(self._dead) if self._dead is not None else None)

    def _drain_limit(self, normal: float | None) -> float | None:
        """How long a drain waits: a diverged or dead learner samples no more, so actors whose
        inserts the rate limiter holds would wait for good; they get a few seconds, then are
        killed."""
        return normal if self._stopping() is None else 10.0

    def _drain(self, fleet: Fleet, pending: dict[Any, tuple[str, int]],
               timeout_s: float | None = None) -> None:
        """Lets the calls in flight finish and counts them (actor steps, learner updates, actor
        closes). The learner keeps sampling while any other call is in flight: with a rate
        limiter, an actor's inserts (its last steps, the flush in ``close``) wait for samples."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                log.warning("event=drain_timeout calls_left=%d", len(pending))
                return
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            for ref in ready:
                kind, i = pending.pop(ref)
                if kind == "actor":
                    self._on_actor(ref, i)
                elif kind == "learner":
                    self._on_learner(ref)
                    if self._stopping() is None and any(k != "learner" for k, _ in pending.values()):
                        pending[self._learner_call(fleet)] = ("learner", 0)
                # a finished "close" has nothing to count

    def _learner_call(self, fleet: Fleet) -> Any:
        return fleet.learner.run_updates.remote(self.cfg.train.learner_updates_per_call, 2.0)

    def _on_actor(self, ref: Any, index: int) -> None:
        try:
            report = ray.get(ref)
        except ray.exceptions.RayError as exc:
            if dead_for_good(self.fleet.actors[index], exc):
                self._on_dead_actor(index, exc)
                return
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (SimulatorError, ConfigError)):
                # Not a server failure (those the worker waits out): another client on its
                # server, no route or spawn point, a missing map. Calling again repeats it.
                self._fail(ComponentDead(f"rollout worker {index} cannot drive: {cause}"))
                return
            # Ray restarts the actor (a new env, a new connection); its partial episode is
            # dropped: the replay discards the unfinished stream tail of the dead incarnation.
            self.counters.actor_restarts += 1
            log.warning("event=actor_failed actor=%d restarts=%d error=%s", index,
                        self.counters.actor_restarts, type(exc).__name__)
            return
        self.counters.add_rollout(report)
        self.fleet.broadcast_latencies.extend(report.broadcast_latencies)

    def _on_learner(self, ref: Any) -> None:
        try:
            report = ray.get(ref)
        except ray.exceptions.RayError as exc:
            if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, SpecError):
                # LearnerLoop.publish found NaNs in the policy: more updates cannot repair it.
                self._diverged = str(exc.cause)
                log.error("event=learner_diverged error=%s action=stop_without_checkpoint",
                          exc.cause)
                return
            if dead_for_good(self.fleet.learner, exc):
                self._fail(ComponentDead(f"the learner is dead and will not restart: {death_cause(exc)}"))
                return
            log.warning("event=learner_failed error=%s action=restart_from_checkpoint", type(exc).__name__)
            return
        self.counters.add_learner(report)
        if report.updates:
            self.progress.policy_lag = report.policy_lag
            self.progress.last_learner_stats = report.stats

    def _on_dead_actor(self, index: int, exc: BaseException) -> None:
        """A rollout worker that will not restart: the run goes on with the others, and stops
        when none is left."""
        self._dead_actors.add(index)
        log.error("event=rollout_worker_dead actor=%d alive=%d cause=%s", index,
                  len(self.fleet.actors) - len(self._dead_actors), death_cause(exc))
        if len(self._dead_actors) == len(self.fleet.actors):
            self._fail(ComponentDead(f"every rollout worker is dead; the last, {index}: "
                                     f"{death_cause(exc)}"))

    def _fail(self, error: ComponentDead) -> None:
        if self._dead is None:
            self._dead = error
            log.error("event=component_dead action=stop error=%s", error)

    def _report(self, fleet: Fleet) -> None:
        try:
            sizes = ray.get([s.size.remote() for s in fleet.shards], timeout=30)
            self.progress.replay_size = int(sum(sizes))
        except ray.exceptions.RayError as exc:  # a shard is restarting: keep the last size
            log.warning("event=replay_size_unavailable error=%s", type(exc).__name__)
            for i, shard in enumerate(fleet.shards):
                if dead_for_good(shard, exc):
                    self._fail(ComponentDead(f"replay shard {i} is dead and will not restart"))
        row = self.progress.row(self.counters)
        self._metrics.write(row)
        self._display.update(row)

    def _open_reporting(self) -> None:
        """metrics.csv and TensorBoard (a resumed run purges the points after its checkpoint),
        and the progress bar or lines."""
        self._metrics = MetricsLog(self.run_dir, resumed_at=self.counters.env_steps)
        self._display = make_progress_display(self.cfg.train.env_steps, self.counters.env_steps)

    def _close_reporting(self) -> None:
        for part in (self._display, self._metrics):
            if part is not None:
                part.close()
        self._display = self._metrics = None

    def checkpoint(self) -> Path:
        """Learner state, every shard and the counters, committed atomically."""
        fleet = self.fleet
        tmp = self.run_dir.new_checkpoint_dir(self.counters.updates)
        try:
            updates = ray.get(fleet.learner.save.remote(str(learner_checkpoint(tmp))))
            ray.get([s.save.remote(str(shard_checkpoint(tmp, i))) for i, s in enumerate(fleet.shards)])
        except ray.exceptions.RayError:
            shutil.rmtree(tmp, ignore_errors=True)  # never commit a checkpoint missing a shard
            raise
        self.counters.updates = max(self.counters.updates, updates)
        path = self.run_dir.commit_checkpoint(tmp, updates, self.counters.to_json())
        log.info("event=checkpoint path=%s updates=%d env_steps=%d", path, updates, self.counters.env_steps)
        return path

    def _shutdown(self, fleet: Fleet) -> None:
        t0 = time.monotonic()
        closes = {a.close.remote(): ("close", i) for i, a in enumerate(fleet.actors)}
        if self._stopping() is None:
            closes[self._learner_call(fleet)] = ("learner", 0)
        self._drain(fleet, closes, timeout_s=self._drain_limit(60.0))
        t1 = time.monotonic()
        if self._diverged is not None:  # a checkpoint would hold the learner's NaNs
            log.error("event=final_checkpoint_skipped reason=learner_diverged")
        elif self._dead is not None:  # it would miss the dead component's state
            log.error("event=final_checkpoint_skipped reason=component_dead")
        else:
            try:
                self.checkpoint()
            except Exception as exc:
                log.error("event=final_checkpoint_failed error=%r", exc)
        t2 = time.monotonic()
        fleet.destroy()
        log.info("event=shutdown drain_seconds=%.1f checkpoint_seconds=%.1f destroy_seconds=%.1f",
                 t1 - t0, t2 - t1, time.monotonic() - t2)
