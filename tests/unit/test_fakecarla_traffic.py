"""The fake traffic manager's behaviours: car following, stopping behind a standing car, turn
taking at junctions, random stops and parks at the configured rate, determinism per seed, and
ego-NPC collisions reported through the collision sensor."""
import carla as real_carla
import numpy as np
import pytest

from rollout.fakecarla import make_module
from rollout.fakecarla.mapdata import DEFAULT_XODR
from rollout.fakecarla.traffic_junctions import JunctionBook
from common.config import FakeCarlaConfig

QUIET = FakeCarlaConfig(camera_delay_s=0.0, npc_stops_per_min=0.0)
ROAD1_LANE_M1 = (60.0, -1.75)  # heading west, 25 m before its end at the first junction's arm
ROAD3_LANE_1 = (98.25, -50.0)  # heading north towards the first junction


def _world(cfg=QUIET, seed=0):
    carla = make_module(cfg)
    client = carla.Client("127.0.0.1", 2000)
    world = client.get_world()
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    tm = client.get_trafficmanager(8000)
    tm.set_synchronous_mode(True)
    tm.set_random_device_seed(seed)
    return carla, world, tm


def _spawn(carla, world, xy, back_m=0.0, blueprint="vehicle.audi.a2", autopilot=True):
    waypoint = world.get_map().get_waypoint(carla.Location(x=xy[0], y=xy[1]))
    if back_m:
        waypoint = waypoint.previous(back_m)[0]
    vehicle = world.try_spawn_actor(world.get_blueprint_library().find(blueprint), waypoint.transform)
    assert vehicle is not None
    if autopilot:
        vehicle.set_autopilot(True, 8000)
    return vehicle


def _collisions(carla, world, vehicle):
    events = []
    sensor = world.spawn_actor(world.get_blueprint_library().find("sensor.other.collision"), carla.Transform(),
                               attach_to=vehicle)
    sensor.listen(events.append)
    return events


def _bumper_gap(a, b):
    return a.get_location().distance(b.get_location()) - a.bounding_box.extent.x - b.bounding_box.extent.x


def test_a_follower_keeps_a_time_gap_to_a_slower_leader():
    carla, world, tm = _world()
    leader = _spawn(carla, world, ROAD1_LANE_M1, back_m=0.0)
    follower = _spawn(carla, world, ROAD1_LANE_M1, back_m=25.0)
    tm.vehicle_percentage_speed_difference(leader, 50.0)
    events = _collisions(carla, world, follower)
    gaps = []
    for _ in range(500):
        world.tick()
        gaps.append(_bumper_gap(leader, follower))
    lead_v, follow_v = leader.get_velocity().length(), follower.get_velocity().length()
    assert events == []
    assert min(gaps) > 1.5
    assert abs(follow_v - lead_v) < 0.5, "the follower settles at the leader's speed"
    assert gaps[-1] > 2.0 + 0.8 * follow_v, "and keeps about s0 + v T behind it"


def test_a_standing_car_makes_the_follower_stop_without_contact():
    carla, world, tm = _world()
    standing = _spawn(carla, world, ROAD1_LANE_M1, autopilot=False, blueprint="vehicle.tesla.model3")
    follower = _spawn(carla, world, ROAD1_LANE_M1, back_m=40.0)
    events = _collisions(carla, world, follower)
    for _ in range(400):
        world.tick()
    assert events == []
    assert follower.get_velocity().length() < 0.2
    assert 1.0 < _bumper_gap(standing, follower) < 4.0


def test_npcs_brake_for_the_ego_behind_it():
    carla, world, tm = _world()
    ego = _spawn(carla, world, ROAD1_LANE_M1, autopilot=False, blueprint="vehicle.tesla.model3")
    npc = _spawn(carla, world, ROAD1_LANE_M1, back_m=30.0)
    events = _collisions(carla, world, ego)
    for _ in range(300):
        ego.apply_control(carla.VehicleControl(brake=1.0))
        world.tick()
    assert events == [] and npc.get_velocity().length() < 0.2


def test_an_ego_npc_collision_reaches_the_ego_collision_sensor():
    carla, world, tm = _world()
    npc = _spawn(carla, world, ROAD1_LANE_M1, blueprint="vehicle.nissan.micra")
    tm.vehicle_percentage_speed_difference(npc, 100.0)  # it hardly moves
    ego = _spawn(carla, world, ROAD1_LANE_M1, back_m=25.0, autopilot=False, blueprint="vehicle.tesla.model3")
    events = _collisions(carla, world, ego)
    for _ in range(200):
        ego.apply_control(carla.VehicleControl(throttle=1.0))
        world.tick()
        if events:
            break
    assert events, "driving into an NPC must be reported"
    event = events[0]
    assert event.actor.id == ego.id and event.other_actor.id == npc.id
    assert event.other_actor.type_id == "vehicle.nissan.micra"
    assert event.normal_impulse.length() > 1000.0  # N*s: a 1500 kg car at several m/s


def _conflicting_and_free_keys(book, junction_id, waypoint):
    paths = book.paths(junction_id, waypoint)
    n = len(paths.keys)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    conflict = next((paths.keys[i], paths.keys[j]) for i, j in pairs if paths.conflicts[i, j])
    free = next((paths.keys[i], paths.keys[j]) for i, j in pairs if not paths.conflicts[i, j]
                and np.hypot(*(paths.points[i][0] - paths.points[j][0])) > 1.0)
    return paths, conflict, free


def test_the_junction_book_lets_conflicting_paths_in_one_at_a_time_first_come_first_served():
    carla_map = real_carla.Map("town", DEFAULT_XODR.read_text())
    waypoint = next(w for w in carla_map.generate_waypoints(2.0) if w.is_junction)
    book = JunctionBook(carla_map)
    paths, (a, b), (c, d) = _conflicting_and_free_keys(book, waypoint.junction_id, waypoint)
    start_a, start_b = paths.points[paths.index[a]][0], paths.points[paths.index[b]][0]
    where = {1: (*start_a, 2.0), 2: (*start_b, 2.0)}
    nobody = np.zeros((0, 2))
    book.ask(2, waypoint.junction_id, b, (5, 3.0, 1))
    book.ask(1, waypoint.junction_id, a, (5, 2.0, 0))  # same tick, nearer: goes first
    assert book.may_enter(1, where, nobody) and not book.may_enter(2, where, nobody)
    lane_a = paths.points[paths.index[a]]
    beyond = lane_a[-1] + 10.0 * (lane_a[-1] - lane_a[-2]) / np.hypot(*(lane_a[-1] - lane_a[-2]))
    where[1] = (*beyond, 2.0)  # vehicle 1 is through the junction
    assert book.may_enter(2, where, nobody)
    book.leave(1)
    book.leave(2)
    book.ask(3, waypoint.junction_id, c, (7, 2.0, 0))
    book.ask(4, waypoint.junction_id, d, (7, 2.0, 1))
    where.update({3: (*paths.points[paths.index[c]][0], 2.0), 4: (*paths.points[paths.index[d]][0], 2.0)})
    assert book.may_enter(3, where, nobody) and book.may_enter(4, where, nobody), "paths apart go together"
    book.leave(3)
    book.leave(4)
    book.ask(5, waypoint.junction_id, a, (9, 2.0, 0))
    ego_inside = paths.points[paths.index[b]][len(paths.points[paths.index[b]]) // 2][None, :]
    assert not book.may_enter(5, {5: (*start_a, 2.0)}, ego_inside), "a vehicle inside on a conflicting path"


def test_npcs_arriving_together_take_turns_and_all_get_through():
    carla, world, tm = _world()
    carla_map = world.get_map()
    junction = next(w for w in carla_map.generate_waypoints(2.0) if w.is_junction).get_junction()
    entries = {(e.road_id, e.lane_id): e for e, _ in junction.get_waypoints(carla.LaneType.Driving)}
    starts = {(w.road_id, w.lane_id): w for e in entries.values() for w in e.previous(10.0)}
    npcs = [world.try_spawn_actor(world.get_blueprint_library().find("vehicle.audi.a2"), w.transform)
            for w in starts.values()]
    npcs = [n for n in npcs if n is not None]
    for npc in npcs:
        npc.set_autopilot(True, 8000)
    assert len(npcs) >= 5
    events = [e for n in npcs for e in [_collisions(carla, world, n)]]
    start = {n.id: n.get_location() for n in npcs}
    waited = set()
    for _ in range(500):
        world.tick()
        moving = [n for n in npcs if n.get_velocity().length() > 1.0]
        waited |= {n.id for n in npcs if n.get_velocity().length() < 0.3 and moving
                   and n.get_location().distance(start[n.id]) < 8.0}
    assert all(e == [] for e in events)
    assert waited, "some NPC had to wait for another"
    assert all(n.get_location().distance(start[n.id]) > 40.0 for n in npcs), "nobody is left locked"


def _drive(cfg, seed, ticks, spots):
    carla, world, tm = _world(cfg, seed)
    npcs = [_spawn(carla, world, xy, back_m=back) for xy, back in spots]
    for _ in range(ticks):
        world.tick()
    return [(round(n.get_location().x, 6), round(n.get_location().y, 6)) for n in npcs], tm


SPOTS = [(ROAD1_LANE_M1, 0.0), (ROAD1_LANE_M1, 15.0), (ROAD3_LANE_1, 0.0), ((150.0, 1.75), 0.0),
         ((150.0, -1.75), 0.0), ((0.0, -60.0), 0.0)]


def test_traffic_is_deterministic_per_seed():
    cfg = FakeCarlaConfig(camera_delay_s=0.0, npc_stops_per_min=6.0)
    first, _ = _drive(cfg, 3, 400, SPOTS)
    assert first == _drive(cfg, 3, 400, SPOTS)[0]
    assert first != _drive(cfg, 4, 400, SPOTS)[0]


@pytest.mark.parametrize("rate, park_fraction", [(6.0, 0.5), (0.0, 0.5)])
def test_random_stops_and_parks_happen_at_the_configured_rate(rate, park_fraction):
    cfg = FakeCarlaConfig(camera_delay_s=0.0, npc_stops_per_min=rate, npc_stop_s=2.0,
                          npc_park_fraction=park_fraction, npc_park_s=6.0)
    _, tm = _drive(cfg, 1, 2400, SPOTS)
    stats = tm._stats_snapshot()
    events = stats["stops"] + stats["parks"]
    assert stats["eligible_s"] > 120.0
    expected = rate * stats["eligible_s"] / 60.0
    assert abs(events - expected) <= 3.0 * np.sqrt(max(expected, 1.0)), (events, expected)
    if rate:
        assert 0.25 < stats["parks"] / events < 0.75
