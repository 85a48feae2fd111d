"""Fault injection and latency of the fake server, and what a reconnect after a death reaches."""
import time

import pytest

from rollout.fakecarla import make_module
from common.config import FakeCarlaConfig
from common.errors import ConfigError

TIMEOUT_TEXT = r"time-out of 2000ms while waiting for the simulator, make sure the simulator is ready and connected to 10\.0\.0\.7:2003"


def _connect(carla):
    client = carla.Client("10.0.0.7", 2003)
    client.set_timeout(2.0)
    return client, client.get_world()


def test_fail_tick_at_times_out_once_and_the_server_survives():
    carla = make_module(FakeCarlaConfig(fail_tick_at=3, fault_delay_s=0.01))
    _, world = _connect(carla)
    assert [world.tick(), world.tick()] == [1, 2]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=TIMEOUT_TEXT):
        world.tick()
    assert time.monotonic() - started >= 0.01
    assert world.tick() == 3, "the failed tick did not advance the world"
    assert world.get_snapshot().frame == 3


def test_die_at_tick_kills_every_handle_until_a_new_client_reaches_a_restarted_server():
    carla = make_module(FakeCarlaConfig(die_at_tick=2, fault_delay_s=0.0))
    client, world = _connect(carla)
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"),
                            carla.Transform(carla.Location(x=60.0, y=-1.75), carla.Rotation(yaw=180.0)))
    assert world.tick() == 1
    for call in (world.tick, client.get_world, world.get_actors, ego.get_transform, ego.destroy,
                 lambda: client.get_trafficmanager(8000)):
        with pytest.raises(RuntimeError, match=TIMEOUT_TEXT):
            call()
    assert not ego.is_alive
    fresh_client, fresh = _connect(carla)
    assert len(fresh.get_actors()) == 0 and fresh.get_snapshot().frame == 0
    assert [fresh.tick() for _ in range(3)] == [1, 2, 3], "faults are not re-armed after a restart"
    with pytest.raises(RuntimeError, match="time-out"):
        world.tick()


def test_independent_modules_are_independent_servers():
    a, b = make_module(FakeCarlaConfig(die_at_tick=1, fault_delay_s=0.0)), make_module()
    _, world_a = _connect(a)
    _, world_b = _connect(b)
    with pytest.raises(RuntimeError):
        world_a.tick()
    assert world_b.tick() == 1


def test_tick_latency_costs_wall_clock_not_cpu():
    carla = make_module(FakeCarlaConfig(tick_latency_s=0.03))
    _, world = _connect(carla)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(5):
        world.tick()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert wall >= 5 * 0.03
    assert cpu < 0.5 * wall


def test_a_server_slower_than_the_tick_timeout_times_out_the_client():
    carla = make_module(FakeCarlaConfig(tick_latency_s=0.2))
    _, world = _connect(carla)
    with pytest.raises(RuntimeError, match="time-out of 50ms while waiting for the simulator"):
        world.tick(0.05)
    assert world.get_snapshot().frame == 1, "the server did advance"


@pytest.mark.parametrize("field", ["tick_latency_s", "fault_delay_s", "camera_delay_s"])
def test_negative_delays_are_rejected_naming_the_value(field):
    with pytest.raises(ConfigError, match=rf"{field} \(-1.0\) must be >= 0"):
        make_module(FakeCarlaConfig(**{field: -1.0}))


def test_missing_map_file_is_a_config_error():
    with pytest.raises(ConfigError, match="nope.xodr"):
        make_module(FakeCarlaConfig(xodr_path="/nonexistent/nope.xodr"))
