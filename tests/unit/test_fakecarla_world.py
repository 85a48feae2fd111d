"""The fake server's world: dynamics, collisions, lane invasion, camera delivery, traffic,
determinism and actor lifecycle."""
import math
import threading
import time

import numpy as np
import pytest

from rollout.fakecarla import make_module
from rollout.fakecarla.mapdata import load_assets
from rollout.fakecarla.sensors import corner_places, crossed_markings
from common.config import FakeCarlaConfig

LANE_M1 = (60.0, -1.75)  # road 1, lane -1, heading west (yaw 180)


def _world(cfg=None):
    carla = make_module(cfg or FakeCarlaConfig(camera_delay_s=0.0, npc_stops_per_min=0.0))
    client = carla.Client("127.0.0.1", 2000)
    client.set_timeout(2.0)
    world = client.get_world()
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    return carla, client, world


def _spawn(carla, world, xy=LANE_M1, blueprint="vehicle.tesla.model3", ahead_m=0.0):
    waypoint = world.get_map().get_waypoint(carla.Location(x=xy[0], y=xy[1]))
    if ahead_m:
        waypoint = waypoint.next(ahead_m)[0]
    return world.try_spawn_actor(world.get_blueprint_library().find(blueprint), waypoint.transform)


def _sensor(carla, world, parent, kind):
    sensor = world.spawn_actor(world.get_blueprint_library().find(kind), carla.Transform(), attach_to=parent)
    events = []
    sensor.listen(events.append)
    return sensor, events


def test_throttle_accelerates_brake_stops_and_steer_turns_right():
    carla, _, world = _world()
    ego = _spawn(carla, world)
    yaw0 = ego.get_transform().rotation.yaw
    for _ in range(40):
        ego.apply_control(carla.VehicleControl(throttle=1.0))
        world.tick()
    speed = ego.get_velocity().length()
    assert 5.0 < speed < 12.0
    for _ in range(10):
        ego.apply_control(carla.VehicleControl(throttle=0.3, steer=0.5))
        world.tick()
    turned = (ego.get_transform().rotation.yaw - yaw0 + 180) % 360 - 180
    assert turned > 5.0, "positive steer turns right (yaw increases in CARLA's frame)"
    for _ in range(60):
        ego.apply_control(carla.VehicleControl(brake=1.0))
        world.tick()
    assert ego.get_velocity().length() == 0.0


def test_driving_into_a_stopped_car_is_a_collision_with_that_car():
    carla, _, world = _world()
    ego = _spawn(carla, world)
    parked = _spawn(carla, world, ahead_m=15.0)
    assert parked is not None
    _, events = _sensor(carla, world, ego, "sensor.other.collision")
    for _ in range(80):
        ego.apply_control(carla.VehicleControl(throttle=0.6))
        frame = world.tick()
        if events:
            break
    assert events and events[0].frame == frame
    assert events[0].other_actor.id == parked.id and events[0].actor.id == ego.id
    assert events[0].normal_impulse.length() > 0
    gap = ego.get_location().distance(parked.get_location())
    assert gap > 2 * 2.40 - 0.5, "bodies are not left overlapping"


def test_leaving_the_road_hits_a_roadside_pole():
    carla, _, world = _world()
    pole = load_assets("").obstacles[0]
    ego = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"),
                            carla.Transform(carla.Location(x=float(pole[0]) + 12.0, y=float(pole[1])),
                                            carla.Rotation(yaw=180.0)))
    _, events = _sensor(carla, world, ego, "sensor.other.collision")
    for _ in range(80):
        ego.apply_control(carla.VehicleControl(throttle=0.5))
        world.tick()
        if events:
            break
    assert events and events[0].other_actor.type_id.startswith("static.")
    front = ego.get_location() + ego.get_transform().get_forward_vector() * 2.4
    assert world.get_map().get_waypoint(front, project_to_road=False, lane_type=carla.LaneType.Driving) is None


@pytest.mark.parametrize("steer,expected", [(-0.3, "Solid"), (0.3, "Broken")],
                         ids=["left_over_centre_line", "right_over_lane_line"])
def test_lane_invasion_reports_the_crossed_marking_type(steer, expected):
    carla, _, world = _world()
    ego = _spawn(carla, world)
    _, events = _sensor(carla, world, ego, "sensor.other.lane_invasion")
    for i in range(70):
        ego.apply_control(carla.VehicleControl(throttle=1.0 if i < 30 else 0.2, steer=steer if 30 <= i < 40 else 0.0))
        world.tick()
    assert events, "crossing a line must raise a lane invasion"
    types = {m.type for e in events for m in e.crossed_lane_markings}
    assert getattr(carla.LaneMarkingType, expected) in types
    assert all(isinstance(m.type, carla.LaneMarkingType) for m in events[0].crossed_lane_markings)


def test_no_lane_invasion_along_a_lane():
    carla, _, world = _world()
    ego = _spawn(carla, world)
    _, events = _sensor(carla, world, ego, "sensor.other.lane_invasion")
    for _ in range(40):
        ego.apply_control(carla.VehicleControl(throttle=0.5))
        world.tick()
    assert events == []


def test_camera_images_arrive_late_from_another_thread_with_the_tick_frame():
    carla, _, world = _world(FakeCarlaConfig(camera_delay_s=0.02))
    ego = _spawn(carla, world)
    bp = world.get_blueprint_library().find("sensor.camera.rgb")
    bp.set_attribute("image_size_x", "64")
    bp.set_attribute("image_size_y", "48")
    camera = world.spawn_actor(bp, carla.Transform(carla.Location(x=1.6, z=1.7)), attach_to=ego)
    got, threads = [], set()
    camera.listen(lambda image: (got.append(image.frame), threads.add(threading.get_ident())))
    frames, stale = [], 0
    for _ in range(10):
        frames.append(world.tick())
        stale += not got or got[-1] != frames[-1]
    time.sleep(0.3)
    assert got == frames, "one image per tick, in order, stamped with the tick's frame"
    assert stale >= 5, "most images must not be there yet when tick() returns"
    assert threading.get_ident() not in threads
    camera.stop()
    world.tick()
    time.sleep(0.1)
    assert len(got) == 10 and not camera.is_listening()


def test_sensor_tick_limits_the_camera_rate():
    carla, _, world = _world()
    ego = _spawn(carla, world)
    bp = world.get_blueprint_library().find("sensor.camera.rgb")
    bp.set_attribute("image_size_x", "32")
    bp.set_attribute("image_size_y", "24")
    bp.set_attribute("sensor_tick", "0.1")
    camera = world.spawn_actor(bp, carla.Transform(), attach_to=ego)
    got = []
    camera.listen(lambda image: got.append(image.frame))
    for _ in range(10):
        world.tick()
    time.sleep(0.05)
    assert len(got) == 5


def _drive_npcs(seed, ticks):
    carla, client, world = _world()
    tm = client.get_trafficmanager(8123)
    tm.set_synchronous_mode(True)
    tm.set_random_device_seed(seed)
    npcs = []
    for k, xy in enumerate([(60.0, -1.75), (60.0, 1.75), (0.0, -60.0), (150.0, -1.75)]):
        npc = _spawn(carla, world, xy, blueprint="vehicle.audi.a2")
        npc.set_autopilot(True, tm.get_port())
        npcs.append(npc)
    roads, off_lane = set(), 0
    for _ in range(ticks):
        world.tick()
        for npc in npcs:
            wp = world.get_map().get_waypoint(npc.get_location(), project_to_road=False)
            off_lane += wp is None
            if wp is not None:
                roads.add(wp.road_id)
    poses = [(round(n.get_location().x, 6), round(n.get_location().y, 6)) for n in npcs]
    return poses, roads, off_lane, [n.get_velocity().length() for n in npcs]


def test_autopilot_follows_lanes_through_junctions_deterministically():
    poses, roads, off_lane, speeds = _drive_npcs(seed=3, ticks=600)
    assert off_lane == 0
    assert any(r >= 100 for r in roads), "NPCs must pass through junction roads"
    assert all(3.0 < s < 10.0 for s in speeds)
    assert poses == _drive_npcs(seed=3, ticks=600)[0]


def test_autopilot_stops_behind_a_stopped_car():
    carla, client, world = _world()
    blocker = _spawn(carla, world, ahead_m=40.0)
    npc = _spawn(carla, world, blueprint="vehicle.audi.a2")
    npc.set_autopilot(True, 8000)
    _, events = _sensor(carla, world, npc, "sensor.other.collision")
    for _ in range(300):
        world.tick()
    assert events == []
    assert npc.get_velocity().length() < 0.5
    assert npc.get_location().distance(blocker.get_location()) < 15.0


def test_same_seed_same_trajectory_and_pixels():
    def run():
        carla, client, world = _world()
        ego = _spawn(carla, world)
        client.get_trafficmanager(8000).set_random_device_seed(7)
        npc = _spawn(carla, world, (60.0, 1.75), blueprint="vehicle.audi.a2")
        npc.set_autopilot(True, 8000)
        bp = world.get_blueprint_library().find("sensor.camera.rgb")
        bp.set_attribute("image_size_x", "64")
        bp.set_attribute("image_size_y", "48")
        camera = world.spawn_actor(bp, carla.Transform(carla.Location(x=1.6, z=1.7)), attach_to=ego)
        images = {}
        camera.listen(lambda image: images.__setitem__(image.frame, bytes(image.raw_data)))
        for i in range(50):
            ego.apply_control(carla.VehicleControl(throttle=0.5, steer=0.1 * math.sin(i / 5)))
            world.tick()
        time.sleep(0.05)
        return ego.get_transform().location.x, ego.get_transform().location.y, images
    first, second = run(), run()
    assert first[:2] == second[:2] and first[2] == second[2] and len(first[2]) == 50


def test_spawn_on_an_occupied_spot_fails_and_destroy_leaves_nothing():
    carla, _, world = _world()
    ego = _spawn(carla, world)
    assert _spawn(carla, world) is None
    bp = world.get_blueprint_library().find("vehicle.tesla.model3")
    with pytest.raises(RuntimeError, match="collision at spawn position"):
        world.spawn_actor(bp, ego.get_transform())
    sensor, _ = _sensor(carla, world, ego, "sensor.other.collision")
    assert len(world.get_actors().filter("vehicle.*")) == 1 and len(world.get_actors()) == 2
    assert world.get_actor(sensor.id) is sensor
    assert sensor.destroy() and ego.destroy() and not ego.destroy()
    assert len(world.get_actors()) == 0 and not ego.is_alive


def test_blueprints_and_attributes_behave_like_the_real_library():
    carla, _, world = _world()
    library = world.get_blueprint_library()
    assert len(library.filter("vehicle.*")) >= 5 and library.filter("sensor.*")
    with pytest.raises(IndexError):
        library.find("vehicle.nope")
    camera = library.find("sensor.camera.rgb")
    assert camera.has_attribute("fov") and not camera.has_attribute("nope")
    camera.set_attribute("fov", "100")
    assert camera.get_attribute("fov").as_float() == 100.0
    assert library.find("sensor.camera.rgb").get_attribute("fov").as_int() == 90


def test_snapshot_and_settings():
    carla, client, world = _world()
    assert world.get_settings().synchronous_mode and world.get_settings().fixed_delta_seconds == 0.05
    frame = world.tick()
    snap = world.get_snapshot()
    assert snap.frame == frame == 1 and snap.timestamp.elapsed_seconds == pytest.approx(0.05)
    assert client.get_server_version() == "0.9.16"
    fresh = client.load_world("Town01")
    assert not fresh.get_settings().synchronous_mode and fresh.get_map().name == "Town01"
    assert np.isclose(world.get_map().get_waypoint(carla.Location(x=60, y=-1.75)).lane_width, 3.5)


def _moves_across(carla_map, waypoint, metres):
    """crossed_markings for one corner moving ``metres`` to the right of ``waypoint``'s lane."""
    start = waypoint.transform.location
    right = waypoint.transform.get_right_vector()
    before = np.array([[start.x, start.y]])
    after = np.array([[start.x + right.x * metres, start.y + right.y * metres]])
    return crossed_markings(corner_places(carla_map, before), corner_places(carla_map, after))


def test_lane_crossing_follows_libcarla_inside_junctions_and_off_the_road():
    """LibCarla's LaneCrossingCalculator: a move across lanes on a road reports the marking on
    that side; the same move inside a junction (no markings in a real town) reports nothing;
    leaving the road and coming back onto it both report the road's edge line."""
    carla = make_module(FakeCarlaConfig())
    carla_map = load_assets("").map
    road = carla_map.get_waypoint(carla.Location(x=LANE_M1[0], y=LANE_M1[1]))
    assert not road.is_junction and road.lane_id == -1
    [broken] = _moves_across(carla_map, road, 3.5)
    assert broken.type == carla.LaneMarkingType.Broken
    [centre] = _moves_across(carla_map, road, -3.5)
    assert centre.type == carla.LaneMarkingType.Solid

    junction = next(w for w in carla_map.generate_waypoints(2.0) if w.is_junction)
    assert _moves_across(carla_map, junction, 3.5) == []
    assert _moves_across(carla_map, junction, -3.5) == []

    outer = road.get_right_lane()
    assert outer.lane_id == -2
    [edge] = _moves_across(carla_map, outer, 3.0)
    assert edge.type == carla.LaneMarkingType.Solid
    off = outer.transform.location + outer.transform.get_right_vector() * 3.0
    back = carla_map.get_waypoint(off, project_to_road=True)
    assert carla_map.get_waypoint(off, project_to_road=False) is None and back.lane_id == -2
    places = corner_places(carla_map, np.array([[off.x, off.y], [outer.transform.location.x,
                                                                 outer.transform.location.y]]))
    [edge_back] = crossed_markings(places[:1], places[1:])
    assert edge_back.type == carla.LaneMarkingType.Solid
