"""The training runtime against fake-server processes failing as CARLA servers do: killed
(kill -9) and restarted, down when the rollout worker starts, hung (SIGSTOP) then resumed, and
shared by two actors. Each run is the smoke preset trimmed to one actor (runtime_support)."""
from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from rollout.carla_env import CarlaEnv
from rollout.carla_session import owner_tag
from rollout.fakecarla.remote_client import make_remote_module
from rollout.fakecarla.remote_process import FakeServerProcess
from common import config as C
from common.errors import ComponentDead, ConfigError
from deploy import build
from deploy.driver import Driver
from deploy.liveness import actor_state
from deploy.rundir import RunDir
from tests.integration.runtime_support import local_ray, tiny_config  # noqa: F401 (local_ray: a fixture)

pytestmark = pytest.mark.integration
TIMEOUT_S = 2.0  # the client's timeout: a hung server costs this much per call


@pytest.fixture
def server():
    process = FakeServerProcess()
    yield process
    process.stop()


def _config(endpoints: tuple[str, ...], env_steps: int = 400) -> C.RunConfig:
    cfg = tiny_config(env_steps=env_steps, worker_steps_per_call=10, endpoints=endpoints)
    return replace(cfg, env=replace(cfg.env, timeout_s=TIMEOUT_S, sensor_timeout_s=TIMEOUT_S),
                   rollout=replace(cfg.rollout, num_workers=len(endpoints)))


class Run:
    """A Driver running in a thread; ``finish`` joins it and returns its summary."""

    def __init__(self, cfg: C.RunConfig, root, name: str) -> None:
        run_dir = RunDir.create(root, name)
        run_dir.write_config(cfg, {})
        self.driver = Driver(cfg, run_dir)
        self.result: dict = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result.update(self.driver.run())
        except BaseException as exc:  # reported by finish
            self.error = exc

    def wait_steps(self, steps: int, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.driver.counters.env_steps < steps and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.driver.counters.env_steps >= steps, f"no {steps} env steps in {timeout_s} s"

    def finish(self, timeout_s: float = 90.0) -> dict:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"the run did not finish within {timeout_s} s"
        if self.error is not None:
            raise self.error
        return self.result


def _actors_left(server: FakeServerProcess) -> list[str]:
    """What a second client finds on the server: the vehicles' and sensors' types."""
    client = make_remote_module().Client(server.host, server.port)
    client.set_timeout(10.0)
    return [a.type_id for a in client.get_world().get_actors()
            if a.type_id.startswith(("vehicle.", "sensor."))]


def test_a_killed_and_restarted_server_the_run_completes_and_leaves_nothing(
        local_ray, server, tmp_path):
    run = Run(_config((server.endpoint,)), tmp_path, "kill9")
    run.wait_steps(100)
    server.kill()
    time.sleep(1.0)
    server.restart()
    summary = run.finish()
    assert summary["env_steps"] >= 400
    assert summary["simulator_reconnects"] >= 1
    assert summary["actor_restarts"] == 0, "the worker reconnected instead of dying"
    assert _actors_left(server) == []


def test_a_server_down_when_the_worker_starts_is_joined_when_it_appears(
        local_ray, server, tmp_path):
    server.kill()  # its port now refuses, as a CARLA server not started yet
    run = Run(_config((server.endpoint,), env_steps=200), tmp_path, "late")
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline and (
            run.driver.fleet is None or actor_state(run.driver.fleet.actors[0]) != "ALIVE"):
        time.sleep(0.2)
    assert actor_state(run.driver.fleet.actors[0]) == "ALIVE", "the constructor did not return"
    time.sleep(3 * TIMEOUT_S)  # the worker tries to connect and waits
    assert run.thread.is_alive() and run.driver.counters.env_steps == 0
    server.restart()
    summary = run.finish()
    assert summary["env_steps"] >= 200
    assert summary["simulator_reconnects"] >= 1
    assert summary["actor_restarts"] == 0
    assert _actors_left(server) == []


def test_a_hung_server_truncates_the_episode_and_the_worker_recovers(
        local_ray, server, tmp_path):
    run = Run(_config((server.endpoint,)), tmp_path, "hung")
    run.wait_steps(100)
    server.pause()
    time.sleep(2 * TIMEOUT_S)
    server.resume()
    summary = run.finish()
    assert summary["env_steps"] >= 400
    assert summary["episode_endings"].get("simulator_timeout", 0) >= 1  # truncated, not crashed
    assert summary["simulator_reconnects"] >= 1
    assert summary["actor_restarts"] == 0
    assert _actors_left(server) == []


def test_two_endpoints_naming_one_server_are_refused_before_the_run(server):
    other = server.endpoint.replace("127.0.0.1", "localhost")
    with pytest.raises(ConfigError, match=f"{server.endpoint} and {other}.*are one server"):
        build.validate(_config((server.endpoint, other)))


def test_two_workers_on_one_server_stop_the_run_naming_it(local_ray, server, tmp_path):
    # Another client (as a second actor behind an address the config check cannot see)
    # drives the server in synchronous mode.
    cfg = _config((server.endpoint,))
    squatter = CarlaEnv(build.actor_env_config(cfg, 0), cfg.spec, make_remote_module(), 0,
                        owner_tag(1))
    try:
        squatter.reset(seed=0)
        run = Run(cfg, tmp_path, "two")
        with pytest.raises(ComponentDead, match=rf"{server.endpoint} is in synchronous mode"):
            run.finish()
    finally:
        squatter.close()
