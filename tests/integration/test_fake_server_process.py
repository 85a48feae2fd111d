"""``carla-td3 fake-server`` as a real process, failing as a CARLA server does: killed (refuses,
then a restart boots an empty world), stopped (calls time out, then answer again), a client
process that exits (its actors stay), injected faults and SIGTERM; and the env over it."""
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rollout.carla_env import CarlaEnv
from rollout.fakecarla.remote_client import make_remote_module
from rollout.fakecarla.remote_process import FakeServerProcess
from common.config import EnvConfig
from common.specs import EnvSpec

QUIET = {"env.fake.camera_delay_s": 0.0}


@pytest.fixture
def servers():
    """``servers(overrides)`` starts a fake server process; every one is stopped after the test."""
    started = []

    def start(overrides=None, port=0):
        process = FakeServerProcess(port=port, overrides={**QUIET, **(overrides or {})})
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _client(server, timeout_s):
    carla = make_remote_module()
    client = carla.Client(server.host, server.port)
    client.set_timeout(timeout_s)
    return carla, client


def _timeout_text(ms, server):
    return re.escape(f"time-out of {ms}ms while waiting for the simulator, make sure the simulator is ready "
                     f"and connected to {server.endpoint}")


def _spawn_hero(carla, world):
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    blueprint = world.get_blueprint_library().find("vehicle.tesla.model3")
    blueprint.set_attribute("role_name", "hero")
    waypoint = world.get_map().get_waypoint(carla.Location(x=60.0, y=-1.75))
    return world.spawn_actor(blueprint, waypoint.transform)


def _timed_failure(call, pattern):
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=pattern):
        call()
    return time.monotonic() - started


def test_a_killed_server_refuses_and_a_restarted_one_boots_an_empty_world(servers):
    server = servers()
    carla, client = _client(server, 0.5)
    world = client.get_world()
    _spawn_hero(carla, world)
    world.tick()
    server.kill()
    waited = _timed_failure(world.tick, _timeout_text(500, server))
    assert 0.5 <= waited < 3.0, "a dead server's call waits out the client's timeout"
    _, fresh = _client(server, 0.3)
    assert _timed_failure(fresh.get_world, _timeout_text(300, server)) >= 0.3, "refused until the timeout"
    server.restart({**QUIET, "env.fake.boot_s": 1.5})
    _, early = _client(server, 0.3)
    _timed_failure(early.get_world, _timeout_text(300, server))
    _, patient = _client(server, 10.0)
    world = patient.get_world()
    assert len(world.get_actors()) == 0 and world.get_snapshot().frame == 0
    assert not world.get_settings().synchronous_mode
    _timed_failure(client.get_world, _timeout_text(500, server))  # the old client stays broken


def test_a_stopped_server_times_out_calls_and_answers_again_when_continued(servers):
    server = servers()
    _, client = _client(server, 0.4)
    world = client.get_world()
    assert world.tick() == 1
    server.pause()
    try:
        waited = _timed_failure(world.tick, _timeout_text(400, server))
        assert 0.4 <= waited < 2.0
        _, other = _client(server, 0.3)
        _timed_failure(other.get_world, _timeout_text(300, server))
    finally:
        server.resume()
    assert world.get_snapshot().frame == 2, "the stopped server ran the tick when continued"
    assert world.tick() == 3, "the late answer was dropped; this call got its own"


def test_a_client_process_exits_and_its_actors_stay(servers):
    server = servers()
    script = textwrap.dedent(f"""
        from rollout.fakecarla.remote_client import make_remote_module
        from tests.integration.test_fake_server_process import _spawn_hero
        carla = make_remote_module()
        client = carla.Client("{server.host}", {server.port})
        client.set_timeout(10.0)
        print(_spawn_hero(carla, client.get_world()).id)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    hero_id = int(done.stdout.split()[-1])
    _, client = _client(server, 5.0)
    world = client.get_world()
    assert world.get_settings().synchronous_mode, "a second client finds synchronous mode on"
    heroes = [a for a in world.get_actors() if a.attributes.get("role_name") == "hero"]
    assert [a.id for a in heroes] == [hero_id]
    assert world.tick() == 1, "a second client ticks the world"


def test_injected_faults_work_in_the_process_and_sigterm_stops_it(servers):
    server = servers({"env.fake.die_at_tick": 2, "env.fake.fault_delay_s": 0.0})
    _, client = _client(server, 5.0)
    world = client.get_world()
    assert world.tick() == 1
    waited = _timed_failure(world.tick, _timeout_text(5000, server))
    assert waited < 2.0, "an injected death answers after fault_delay_s, not the timeout"
    assert client_world_frame(server) == 0, "a new client reaches a restarted world"
    server.stop()
    assert server.proc.returncode == 0
    assert any("event=fake_server_stopped" in line for line in server.lines)


def client_world_frame(server):
    _, client = _client(server, 5.0)
    return client.get_world().get_snapshot().frame


def test_the_cli_takes_only_env_fake_keys():
    done = subprocess.run([sys.executable, "-m", "deploy.cli", "fake-server", "--port", "0", "--set", "env.town=X"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "fake-server takes only env.fake.* keys, got ['env.town']" in done.stderr


def test_the_env_truncates_on_a_killed_server_and_resets_onto_the_restarted_one(servers):
    server = servers()
    cfg = EnvConfig(host=server.host, port=server.port, timeout_s=0.5, sensor_timeout_s=0.5)
    env = CarlaEnv(cfg, EnvSpec(), make_remote_module(), seed=0)
    try:
        env.reset(seed=1)
        for _ in range(3):
            assert not any(env.step(np.array([0.0, 0.5], np.float32))[2:4])
        server.kill()
        _, _, terminated, truncated, info = env.step(np.array([0.0, 0.5], np.float32))
        assert truncated and not terminated and info["termination_reason"] == "simulator_timeout"
        server.restart()
        env.reset(seed=1)
        assert not any(env.step(np.array([0.0, 0.5], np.float32))[2:4])
        heroes = [a for a in env.world.get_actors() if a.attributes.get("role_name", "").startswith("hero")]
        assert len(heroes) == 1, "the restarted server holds only the new episode's ego"
    finally:
        env.close()
