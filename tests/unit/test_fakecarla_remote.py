"""The remote client against a fake server (in a thread here; tests/integration has processes):
the env sees the same world as in-process, sensor data reaches ``listen`` callbacks, actors
outlive their client, a second client ticks, and failures raise the real client's text."""
import gc
import re
import socket
import time

import numpy as np
import pytest

from rollout.carla_env import CarlaEnv, make_env
from rollout.fakecarla.remote_client import make_remote_module
from rollout.fakecarla.remote_server import FakeServer
from rollout.scripted import PurePursuitDriver
from common.config import EnvConfig, FakeCarlaConfig
from common.errors import ConfigError
from common.specs import EnvSpec

LANE_M1 = (60.0, -1.75)  # road 1, lane -1, heading west (yaw 180)
QUIET = dict(camera_delay_s=0.0, npc_stops_per_min=0.0)


def _timeout_text(ms: int, port: int) -> str:
    return re.escape(f"time-out of {ms}ms while waiting for the simulator, make sure the simulator is ready "
                     f"and connected to 127.0.0.1:{port}")


@pytest.fixture
def serve():
    """Starts in-thread fake servers (``serve(cfg)`` returns one); closes them all after."""
    servers = []

    def start(cfg=None):
        server = FakeServer(cfg or FakeCarlaConfig(**QUIET), "127.0.0.1", 0)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _client(server, timeout_s=2.0):
    carla = make_remote_module()
    client = carla.Client("127.0.0.1", server.port)
    client.set_timeout(timeout_s)
    return carla, client


def _sync_world(client):
    world = client.get_world()
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    return world


def _spawn(carla, world, ahead_m=0.0, role=""):
    waypoint = world.get_map().get_waypoint(carla.Location(x=LANE_M1[0], y=LANE_M1[1]))
    if ahead_m:
        waypoint = waypoint.next(ahead_m)[0]
    blueprint = world.get_blueprint_library().find("vehicle.tesla.model3")
    if role:
        blueprint.set_attribute("role_name", role)
    return world.try_spawn_actor(blueprint, waypoint.transform)


def test_the_env_sees_the_same_world_remote_and_in_process(serve):
    cfg = EnvConfig(num_npcs=4, fake=FakeCarlaConfig(camera_delay_s=0.002))
    server = serve(cfg.fake)
    spec = EnvSpec()
    local = make_env(cfg, spec, seed=0)
    remote = CarlaEnv(EnvConfig(num_npcs=4, port=server.port, fake=cfg.fake), spec, make_remote_module(), seed=0)
    driver = PurePursuitDriver.for_env(spec, cfg)
    try:
        (obs_l, _), (obs_r, _) = local.reset(seed=5), remote.reset(seed=5)
        for _ in range(60):
            for key in obs_l:
                np.testing.assert_array_equal(obs_l[key], obs_r[key])
            action = driver(obs_l)
            obs_l, reward_l, term_l, trunc_l, info_l = local.step(action)
            obs_r, reward_r, term_r, trunc_r, info_r = remote.step(action)
            assert (reward_l, term_l, trunc_l) == (reward_r, term_r, trunc_r)
            assert info_l == info_r
    finally:
        local.close()
        remote.close()
    assert not remote.world.get_settings().synchronous_mode, "close restores asynchronous mode"


def test_collision_and_camera_data_reach_listen_callbacks_with_the_tick_frame(serve):
    carla, client = _client(serve())
    world = _sync_world(client)
    ego, parked = _spawn(carla, world), _spawn(carla, world, ahead_m=15.0)
    library = world.get_blueprint_library()
    hits, images = [], []
    collision = world.spawn_actor(library.find("sensor.other.collision"), carla.Transform(), attach_to=ego)
    collision.listen(hits.append)
    camera_bp = library.find("sensor.camera.rgb")
    camera_bp.set_attribute("image_size_x", "32")
    camera_bp.set_attribute("image_size_y", "24")
    camera = world.spawn_actor(camera_bp, carla.Transform(carla.Location(x=1.6, z=1.5)), attach_to=ego)
    camera.listen(images.append)
    assert camera.is_listening() and camera.parent.id == ego.id
    for _ in range(80):
        ego.apply_control(carla.VehicleControl(throttle=0.6))
        frame = world.tick()
        deadline = time.monotonic() + 2.0
        while (not images or images[-1].frame < frame) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert images[-1].frame == frame
        if hits:
            break
    assert hits and hits[0].frame == frame, "an event arrives before the camera frame of its tick"
    assert hits[0].other_actor.id == parked.id and hits[0].actor.id == ego.id
    assert isinstance(hits[0].normal_impulse, carla.Vector3D) and hits[0].normal_impulse.length() > 0
    assert len(images[-1].raw_data) == 32 * 24 * 4 and images[-1].transform.location.z == pytest.approx(1.5)
    camera.stop()
    assert not camera.is_listening()


def test_lane_invasion_events_carry_real_marking_enums(serve):
    carla, client = _client(serve())
    world = _sync_world(client)
    ego = _spawn(carla, world)
    events = []
    sensor = world.spawn_actor(world.get_blueprint_library().find("sensor.other.lane_invasion"), carla.Transform(),
                               attach_to=ego)
    sensor.listen(events.append)
    for i in range(70):
        ego.apply_control(carla.VehicleControl(throttle=1.0 if i < 30 else 0.2, steer=-0.3 if 30 <= i < 40 else 0.0))
        world.tick()
    time.sleep(0.2)
    assert events, "crossing the centre line must raise a lane invasion"
    assert carla.LaneMarkingType.Solid in {m.type for e in events for m in e.crossed_lane_markings}
    assert all(isinstance(m.color, carla.LaneMarkingColor) for e in events for m in e.crossed_lane_markings)


def test_actors_outlive_their_client_and_a_second_client_ticks_the_world(serve):
    server = serve()
    carla, first = _client(server)
    world = _sync_world(first)
    hero = _spawn(carla, world, role="hero")
    hero_id = hero.id
    del first, world, hero
    gc.collect()
    carla, second = _client(server)
    world = second.get_world()
    assert world.get_settings().synchronous_mode, "the first client's synchronous mode is still on"
    found = [a for a in world.get_actors().filter("vehicle.*") if a.attributes.get("role_name") == "hero"]
    assert [a.id for a in found] == [hero_id]
    frame = world.get_snapshot().frame
    assert world.tick() == frame + 1
    assert found[0].destroy() and not found[0].is_alive
    assert len(world.get_actors()) == 0
    with pytest.raises(RuntimeError, match="destroyed actor"):
        found[0].get_transform()


def test_a_vehicles_state_comes_from_the_last_tick_whoever_ticked(serve):
    server = serve()
    carla, first = _client(server)
    world = _sync_world(first)
    ego = _spawn(carla, world)
    start = ego.get_location()  # no tick yet: asked of the server
    ego.apply_control(carla.VehicleControl(throttle=1.0))
    world.tick()
    moved = ego.get_location()
    assert moved.distance(start) > 0.0 and ego.get_velocity().length() > 0.0
    _, second = _client(server)
    other = second.get_world()
    for _ in range(10):
        other.tick()
    there = other.get_actor(ego.id).get_location()  # the second client asks: no tick of its own yet
    deadline = time.monotonic() + 2.0
    while ego.get_location().distance(there) > 1e-6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ego.get_location().distance(there) <= 1e-6 and there.distance(moved) > 0.1, \
        "the first client sees the second client's ticks"
    ego.set_transform(carla.Transform(carla.Location(x=LANE_M1[0], y=LANE_M1[1]), carla.Rotation(yaw=180.0)))
    assert ego.get_location().distance(start) < 1e-3, "a moved vehicle is asked of the server"


def test_a_port_nobody_listens_on_times_out_with_the_real_text():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    carla = make_remote_module()
    client = carla.Client("127.0.0.1", port)
    client.set_timeout(0.3)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=_timeout_text(300, port)):
        client.get_world()
    assert time.monotonic() - started >= 0.3, "the client waits out its timeout, retrying"


def test_a_booting_server_refuses_until_boot_s_then_serves(serve):
    server = serve(FakeCarlaConfig(boot_s=0.6, **QUIET))
    started = time.monotonic()
    _, early = _client(server, timeout_s=0.2)
    with pytest.raises(RuntimeError, match=_timeout_text(200, server.port)):
        early.get_world()
    _, patient = _client(server, timeout_s=5.0)
    assert patient.get_world().get_snapshot().frame == 0
    assert time.monotonic() - started >= 0.6


def test_die_at_tick_times_out_every_client_until_a_new_one_boots_a_restarted_world(serve):
    server = serve(FakeCarlaConfig(die_at_tick=2, fault_delay_s=0.0, boot_s=0.3, **QUIET))
    carla, client = _client(server)
    world = _sync_world(client)
    ego = _spawn(carla, world)
    assert world.tick() == 1
    for call in (world.tick, client.get_world, world.get_actors, ego.get_transform, ego.destroy):
        with pytest.raises(RuntimeError, match=_timeout_text(2000, server.port)):
            call()
    assert not ego.is_alive
    _, fresh = _client(server, timeout_s=0.1)
    with pytest.raises(RuntimeError, match="time-out of 100ms"):
        fresh.get_world()  # the restart boots
    _, fresh = _client(server, timeout_s=5.0)
    world = fresh.get_world()
    assert len(world.get_actors()) == 0 and world.get_snapshot().frame == 0
    assert [world.tick() for _ in range(3)] == [1, 2, 3], "faults are not re-armed after a restart"


def test_a_late_answer_is_dropped_and_the_next_call_gets_its_own(serve):
    server = serve(FakeCarlaConfig(tick_latency_s=0.2, **QUIET))
    _, client = _client(server)
    world = client.get_world()
    with pytest.raises(RuntimeError, match=_timeout_text(50, server.port)):
        world.tick(0.05)
    assert world.get_snapshot().frame == 1, "the server did advance"
    assert world.tick() == 2


def test_fail_tick_at_times_out_once_and_the_server_survives(serve):
    server = serve(FakeCarlaConfig(fail_tick_at=2, fault_delay_s=0.01, **QUIET))
    _, client = _client(server)
    world = client.get_world()
    assert world.tick() == 1
    with pytest.raises(RuntimeError, match=_timeout_text(2000, server.port)):
        world.tick()
    assert world.tick() == 2


def test_server_errors_are_the_real_clients(serve):
    carla, client = _client(serve())
    with pytest.raises(RuntimeError, match="map not found"):
        client.load_world("Town99")
    assert client.get_available_maps() == ["/Game/Carla/Maps/Town01", "/Game/Carla/Maps/Town02"]
    world = client.load_world("Town01")
    with pytest.raises(IndexError):
        world.get_blueprint_library().find("vehicle.nope")
    tm = client.get_trafficmanager(8123)
    assert tm.get_port() == 8123
    tm.set_synchronous_mode(True)
    npc = _spawn(carla, world)
    npc.set_autopilot(True, 8123)
    tm.vehicle_percentage_speed_difference(npc, 20.0)
    with pytest.raises(RuntimeError, match="collision at spawn position"):
        world.spawn_actor(world.get_blueprint_library().find("vehicle.audi.a2"), npc.get_transform())


def test_negative_boot_s_is_rejected_naming_the_value():
    with pytest.raises(ConfigError, match=r"boot_s \(-1.0\) must be >= 0"):
        FakeServer(FakeCarlaConfig(boot_s=-1.0), "127.0.0.1", 0)
