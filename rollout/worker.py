"""The env loop of one rollout worker: env + policy + exploration + writer + weight pulls.

A plain class: deploy/ wraps it in a Ray actor; tests build it directly. An env
step never waits on the learner: before each inference a non-blocking ``WeightSource``
(rollout/weights.py) offers newer weights if it has any, and the worker applies them to its
policy.

A server that fails (a tick times out, a reset cannot reach it, the server is down when the
worker starts) never ends the worker: ``reset`` is retried with a growing wait (RECONNECT_WAITS_S,
logged as ``event=simulator_unreachable``) until the server answers, and the worker goes on
from there. Build the env with ``LazyEnv`` so that even the first connection happens in this
loop, not in a constructor (Ray never restarts an actor whose constructor raised).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from rollout.exploration import GaussianExploration
from rollout.policy import CpuPolicy
from rollout.weights import WeightSource
from rollout.writer import ChunkWriter
from common.errors import SimulatorTimeout, SimulatorUnreachable, SpecError
from common.weights import RANDOM_POLICY_VERSION

log = logging.getLogger(__name__)
RECONNECT_WAITS_S = (0.5, 1.0, 2.0, 5.0)  # waits between reset attempts; the last repeats
RETRIED = (SimulatorUnreachable, SimulatorTimeout, RuntimeError)  # the server's failures


class DrivingEnv(Protocol):
    def reset(self, seed: int | None = None) -> tuple[dict, dict]: ...
    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]: ...
    def close(self) -> None: ...


class LazyEnv:
    """An env that ``make`` builds (connecting to its server) on the first ``reset``; a
    ``make`` that fails is called again on the next ``reset``."""

    def __init__(self, make: Callable[[], DrivingEnv]) -> None:
        self._make = make
        self.env: DrivingEnv | None = None

    def reset(self, seed: int | None = None) -> tuple[dict, dict]:
        if self.env is None:
            self.env = self._make()
        return self.env.reset(seed=seed)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        if self.env is None:
            raise SpecError("step() before reset()")
        return self.env.step(action)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


@dataclass
class EpisodeResult:
    """One finished episode, as the env reported it at its last step."""

    ret: float
    length: int
    success: bool
    route_completion: float
    distance_m: float
    collisions: int
    reason: str
    truncated: bool = False  # ended by the step limit or a simulator failure, not terminated


@dataclass
class RolloutReport:
    """What ``run_steps`` did; crosses the process boundary to the driver."""

    actor_index: int
    env_steps: int = 0
    episodes: list[EpisodeResult] = field(default_factory=list)
    policy_version: int = RANDOM_POLICY_VERSION
    weight_loads: int = 0
    step_seconds: float = 0.0
    weight_wait_seconds: float = 0.0
    simulator_timeouts: int = 0
    reconnects: int = 0  # resets that reached the server after a timeout or failed attempts
    connect_failures: int = 0  # reset attempts that found the server unreachable or hung
    tick_seconds: list[float] = field(default_factory=list)  # wall time of each env.step
    broadcast_versions: list[int] = field(default_factory=list)
    broadcast_latencies: list[float] = field(default_factory=list)  # publish -> 1st inference
    broadcast_fetch_latencies: list[float] = field(default_factory=list)  # publish -> fetched
    broadcast_published_at: list[float] = field(default_factory=list)  # time.time() of publish
    reset_spans: list[tuple[float, float]] = field(default_factory=list)  # time.time() in, out


class RolloutWorker:
    """Drives one env, writing every observation to the replay through ``writer``."""

    def __init__(self, env: DrivingEnv, policy: CpuPolicy, writer: ChunkWriter,
                 weights: WeightSource, exploration: GaussianExploration, *, actor_index: int,
                 learning_starts: int, weight_poll_every: int, seed: int) -> None:
        self.env = env
        self.policy = policy
        self.writer = writer
        self.weights = weights
        self.exploration = exploration
        self.actor_index = actor_index
        self.learning_starts = learning_starts
        self.weight_poll_every = max(1, weight_poll_every)
        self._seed = seed
        self._episode = 0
        self._obs: dict | None = None
        self._ret = 0.0
        self._len = 0
        self._steps = 0
        self._timed_out = False  # the last episode ended on a simulator timeout

    def _reset(self, report: RolloutReport) -> None:
        """Resets the env, retrying (with RECONNECT_WAITS_S between) while the server fails."""
        seed = self._seed * 100_003 + self._episode
        failures = 0
        while True:
            try:
                self._obs, _ = self.env.reset(seed=seed)
                break
            except RETRIED as exc:
                wait = RECONNECT_WAITS_S[min(failures, len(RECONNECT_WAITS_S) - 1)]
                failures += 1
                log.warning("event=simulator_unreachable actor=%d attempt=%d wait_s=%.1f error=%r",
                            self.actor_index, failures, wait, exc)
                time.sleep(wait)
        report.connect_failures += failures
        # After a simulator timeout the env reconnects in reset (rollout/carla_env.py).
        if failures or self._timed_out:
            report.reconnects += 1
            log.info("event=simulator_reconnected actor=%d failed_attempts=%d",
                     self.actor_index, failures)
        self._timed_out = False
        self._episode += 1
        self._ret, self._len = 0.0, 0
        self.writer.add_first(self._obs)

    def _act(self, global_env_steps: int, report: RolloutReport) -> tuple[np.ndarray, int]:
        t0 = time.perf_counter()
        poll = self._steps % self.weight_poll_every == 0
        try:
            offer = self.weights.newer(self.policy.version, poll)
            if offer is not None:
                before = self.policy.version
                self.policy.apply(offer)
                report.weight_loads += int(self.policy.version > before)
            report.weight_wait_seconds += time.perf_counter() - t0
            return self._choose(global_env_steps)
        finally:
            self.weights.release()

    def _choose(self, global_env_steps: int) -> tuple[np.ndarray, int]:
        if global_env_steps < self.learning_starts or not self.policy.ready:
            return self.exploration.random_action(self.policy.action_dim), RANDOM_POLICY_VERSION
        return self.exploration(self.policy.act(self._obs)), self.policy.version

    def run_steps(self, n: int, global_env_steps: int = 0) -> RolloutReport:
        """Runs ``n`` env steps (across episode boundaries) and reports what happened.

        Args:
            n: env steps to run.
            global_env_steps: env steps of all actors so far, for the random warm-up.
        """
        report = RolloutReport(actor_index=self.actor_index)
        t0 = time.perf_counter()
        for i in range(n):
            if self._obs is None:
                started = time.time()
                self._reset(report)
                report.reset_spans.append((started, time.time()))
            action, version = self._act(global_env_steps + i, report)
            t_step = time.perf_counter()
            obs, reward, terminated, truncated, info = self.env.step(action)
            report.tick_seconds.append(time.perf_counter() - t_step)
            self.writer.add(obs, action, reward, terminated, truncated, version)
            self._steps += 1
            self._ret += reward
            self._len += 1
            self._obs = obs
            if terminated or truncated:
                report.episodes.append(_episode_result(self._ret, self._len, bool(truncated), info))
                self._timed_out = info.get("termination_reason") == "simulator_timeout"
                report.simulator_timeouts += int(self._timed_out)
                self._obs = None
        report.env_steps = n
        report.policy_version = self.policy.version
        report.step_seconds = time.perf_counter() - t0
        return report

    def close(self) -> None:
        """Sends buffered records and closes the env (destroying its server-side actors)."""
        try:
            self.writer.flush()
        finally:
            self.env.close()


def _episode_result(ret: float, length: int, truncated: bool, info: dict[str, Any]) -> EpisodeResult:
    return EpisodeResult(
        ret=float(ret), length=length, success=bool(info.get("success", False)),
        route_completion=float(info.get("route_completion", 0.0)),
        distance_m=float(info.get("distance_m", 0.0)), collisions=int(info.get("collisions", 0)),
        reason=str(info.get("termination_reason", "")), truncated=truncated)
