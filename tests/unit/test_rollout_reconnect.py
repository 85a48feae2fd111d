"""The rollout worker outlives its server: a connection that fails at construction or at a
reset is retried with a growing wait, counted, and the worker goes on (rollout/worker.py)."""
from __future__ import annotations

import numpy as np
import pytest

from rollout import worker
from rollout.exploration import GaussianExploration
from rollout.worker import LazyEnv, RolloutWorker
from rollout.writer import ChunkWriter
from common.errors import ConfigError, SimulatorUnreachable, SpecError
from tests.unit.test_metrics_record import SPEC, NoWeights, RandomPolicy, ScriptedEnv


class Server:
    """Fails the first ``down`` connection attempts, as a server that is not up yet."""

    def __init__(self, down: int) -> None:
        self.down, self.attempts = down, 0

    def make(self) -> ScriptedEnv:
        self.attempts += 1
        if self.attempts <= self.down:
            raise SimulatorUnreachable("no CARLA server answered at 127.0.0.1:2000 within 1 s")
        return ScriptedEnv(SPEC, [(3, True, "route_completed", True)])


def _worker(env) -> RolloutWorker:
    writer = ChunkWriter(SPEC, 8, lambda chunk: None, stream_id=1)
    return RolloutWorker(env, RandomPolicy(), writer, NoWeights(),
                         GaussianExploration(0.1, np.random.default_rng(0)), actor_index=0,
                         learning_starts=10**9, weight_poll_every=4, seed=0)


@pytest.fixture(autouse=True)
def short_waits(monkeypatch):
    monkeypatch.setattr(worker, "RECONNECT_WAITS_S", (0.0, 0.01))
    monkeypatch.setattr(worker.time, "sleep", lambda s: waits.append(s))
    waits.clear()


waits: list[float] = []


def test_a_lazy_env_connects_on_the_first_reset_not_before():
    server = Server(down=0)
    env = LazyEnv(server.make)
    assert server.attempts == 0
    with pytest.raises(SpecError, match="before reset"):
        env.step(np.zeros(2, np.float32))
    env.reset(seed=0)
    assert server.attempts == 1


def test_a_server_down_at_start_is_waited_for_with_backoff_and_counted(caplog):
    server = Server(down=3)
    worker = _worker(LazyEnv(server.make))  # the constructor connects to nothing
    caplog.set_level("WARNING")
    report = worker.run_steps(4)
    assert report.env_steps == 4 and server.attempts == 4
    assert waits == [0.0, 0.01, 0.01]
    assert report.connect_failures == 3 and report.reconnects == 1
    assert "event=simulator_unreachable actor=0 attempt=3" in caplog.text
    assert worker.run_steps(3).reconnects == 0, "a plain reset is no reconnect"


def test_errors_that_are_not_the_servers_are_not_retried():
    def bad_town() -> ScriptedEnv:
        raise ConfigError("env.town ('Town99') is not a map of the server")

    with pytest.raises(ConfigError, match="Town99"):
        _worker(LazyEnv(bad_town)).run_steps(1)
    assert waits == []
