"""Route planning on real offline carla.Map objects: a straight road written here, and the
fake's shipped town (curves and junctions)."""
import math
import pathlib

import carla
import numpy as np
import pytest

from rollout import route as R
from common.config import RouteSplit
from common.errors import SimulatorError

TOWN = pathlib.Path(__file__).resolve().parents[2] / "rollout" / "fakecarla" / "town.xodr"
STRAIGHT_M = 120.0


def _straight_xodr(length: float) -> str:
    def lane(i: int) -> str:
        mark = "broken" if abs(i) == 1 else "solid"
        return (f'<lane id="{i}" type="driving" level="false"><link/>'
                f'<width sOffset="0" a="3.5" b="0" c="0" d="0"/>'
                f'<roadMark sOffset="0" type="{mark}" weight="standard" color="white" width="0.15"/></lane>')
    return (
        '<?xml version="1.0" standalone="yes"?><OpenDRIVE>'
        '<header revMajor="1" revMinor="4" name="t" version="1"/>'
        f'<road name="r" length="{length}" id="1" junction="-1"><link/>'
        f'<planView><geometry s="0" x="0" y="0" hdg="0" length="{length}"><line/></geometry></planView>'
        '<elevationProfile/><lateralProfile/><lanes><laneSection s="0">'
        f'<left>{lane(2)}{lane(1)}</left>'
        '<center><lane id="0" type="none" level="false"/></center>'
        f'<right>{lane(-1)}{lane(-2)}</right></laneSection></lanes></road></OpenDRIVE>')


@pytest.fixture(scope="module")
def straight():
    return carla.Map("straight", _straight_xodr(STRAIGHT_M))


@pytest.fixture(scope="module")
def town():
    return carla.Map("town", TOWN.read_text())


def test_derived_spawn_points_sit_on_driving_lanes_above_the_road(straight):
    points = R.spawn_points(straight, carla)
    lanes = {}
    for p in points:
        lanes.setdefault(round(p.location.y, 2), []).append(p.location.x)
    assert len(lanes) == 4  # two lanes each way
    for xs in lanes.values():
        gaps = np.diff(sorted(xs))
        assert len(xs) >= STRAIGHT_M / R.SPAWN_SPACING_M - 1
        assert np.allclose(gaps, R.SPAWN_SPACING_M, atol=1e-3)
    for p in points:
        assert p.location.z == pytest.approx(R.SPAWN_HEIGHT_M)
        wp = straight.get_waypoint(p.location, project_to_road=False,
                                   lane_type=carla.LaneType.Driving)
        assert wp is not None
        assert abs(math.cos(math.radians(p.rotation.yaw - wp.transform.rotation.yaw)) - 1) < 1e-6


def test_server_spawn_points_are_used_when_the_map_has_them():
    class ServerMap:
        def get_spawn_points(self):
            return ["a", "b"]
    assert R.spawn_points(ServerMap(), carla) == ["a", "b"]


@pytest.mark.parametrize("count", [5, 7, 252])
def test_train_and_eval_spawn_points_are_disjoint_and_cover_all(count):
    train = R.split_indices(count, RouteSplit.TRAIN)
    held_out = R.split_indices(count, RouteSplit.EVAL)
    assert not set(train) & set(held_out)
    assert sorted(train + held_out) == list(range(count))
    assert len(held_out) == count // R.EVAL_EVERY


def test_an_empty_split_names_the_split():
    with pytest.raises(SimulatorError, match="'eval' is empty with 3"):
        R.split_indices(3, RouteSplit.EVAL)


def test_projection_signs_on_a_straight_lane(straight):
    start = straight.get_waypoint(carla.Location(x=5.0, y=1.75), lane_type=carla.LaneType.Driving)
    route = R.plan_route(start, 50.0, np.random.default_rng(0))
    assert route.length == pytest.approx(50.0, abs=1.01)
    heading = route.xy[-1] - route.xy[0]
    yaw = math.atan2(heading[1], heading[0])
    right = np.array([-math.sin(yaw), math.cos(yaw)])
    probe = route.xy[0] + 20.0 * np.array([math.cos(yaw), math.sin(yaw)]) + 0.7 * right
    p = route.project(*probe)
    assert p.s == pytest.approx(20.0, abs=1e-6)
    assert p.lateral == pytest.approx(0.7, abs=1e-6)
    assert p.yaw == pytest.approx(yaw, abs=1e-6)
    assert p.half_width == pytest.approx(1.75)
    assert route.project(*(probe - 1.4 * right)).lateral == pytest.approx(-0.7, abs=1e-6)


def test_points_at_clamps_to_the_route_end(straight):
    start = straight.get_waypoint(carla.Location(x=5.0, y=1.75), lane_type=carla.LaneType.Driving)
    route = R.plan_route(start, 30.0, np.random.default_rng(0))
    pts = route.points_at(np.array([0.0, 10.0, route.length + 50.0]))
    assert np.allclose(pts[0], route.xy[0]) and np.allclose(pts[2], route.xy[-1])
    assert np.hypot(*(pts[1] - pts[0])) == pytest.approx(10.0, abs=1e-6)
    assert route.is_completed(route.length - 1.0) and not route.is_completed(route.length / 2)
    assert route.completion(2 * route.length) == 1.0 and route.completion(-3.0) == 0.0


def test_extended_route_keeps_the_goal_and_shows_road_past_it(town):
    """The polyline runs on past the goal, so the observation waypoints near the goal are
    spread like anywhere else instead of collapsing onto the route's last point."""
    points = R.spawn_points(town, carla)
    for seed in range(6):
        _, plain = R.choose_route(town, carla, points, seed, RouteSplit.EVAL, 100.0)
        _, ext = R.choose_route(town, carla, points, seed, RouteSplit.EVAL, 100.0, extend_m=50.0)
        assert ext.length == pytest.approx(plain.length)  # same goal, same held-out route
        n = len(plain.xy)
        assert np.array_equal(ext.xy[:n], plain.xy)
        assert ext.polyline_length >= ext.length + 49.0
        near_goal = ext.length - 5.0
        ahead = ext.points_at(near_goal + 5.0 * np.arange(1, 11))
        gaps = np.hypot(*np.diff(ahead, axis=0).T)
        assert gaps.min() > 4.0, f"seed {seed}: waypoints collapse near the goal: {gaps}"
        assert not ext.is_completed(ext.length - 3.0) and ext.is_completed(ext.length - 1.0)
        assert ext.completion(ext.polyline_length) == 1.0
        assert ext.completion(ext.length / 2) == pytest.approx(0.5)


def test_route_goal_must_lie_on_the_polyline():
    xy = np.array([[0.0, 0.0], [10.0, 0.0]])
    with pytest.raises(SimulatorError, match="route goal 12.0 m outside"):
        R.Route(xy, np.full(2, 1.75), goal_m=12.0)


@pytest.mark.parametrize("name,yaw_deg,world,expected", [
    ("ahead_east", 0.0, (10.0, 0.0), (10.0, 0.0)),
    ("right_when_facing_east", 0.0, (0.0, 3.0), (0.0, 3.0)),
    ("ahead_facing_plus_y", 90.0, (0.0, 10.0), (10.0, 0.0)),
    ("right_facing_plus_y", 90.0, (-3.0, 0.0), (0.0, 3.0)),
])
def test_to_vehicle_frame(name, yaw_deg, world, expected):
    got = R.to_vehicle_frame(np.array([world]), 0.0, 0.0, math.radians(yaw_deg))[0]
    assert np.allclose(got, expected, atol=1e-9), name


def test_dead_ends_are_reported_with_the_longest_route(straight):
    points = R.spawn_points(straight, carla)
    with pytest.raises(SimulatorError, match=r"no route of 500.0 m .* \(longest"):
        R.choose_route(straight, carla, points, 0, RouteSplit.TRAIN, 500.0)


def test_town_routes_are_seeded_long_enough_and_split(town):
    points = R.spawn_points(town, carla)
    train_ids = {id(points[i]) for i in R.split_indices(len(points), RouteSplit.TRAIN)}
    starts = set()
    for seed in range(12):
        t1, r1 = R.choose_route(town, carla, points, seed, RouteSplit.TRAIN, 150.0)
        t2, r2 = R.choose_route(town, carla, points, seed, RouteSplit.TRAIN, 150.0)
        assert t1 is t2 and np.array_equal(r1.xy, r2.xy)
        assert id(t1) in train_ids
        assert r1.length >= R.MIN_ROUTE_FRACTION * 150.0
        steps = np.hypot(*np.diff(r1.xy, axis=0).T)
        assert steps.max() < 2.5 * R.ROUTE_STEP_M  # dense and continuous through junctions
        starts.add(id(t1))
        held_out, _ = R.choose_route(town, carla, points, seed, RouteSplit.EVAL, 150.0)
        assert id(held_out) not in train_ids
    assert len(starts) >= 8


def test_junction_branches_are_drawn_from_the_generator(town):
    junction_entries = [w for w in town.generate_waypoints(2.0)
                        if not w.is_junction and len(w.next(20.0)) > 1]
    assert junction_entries, "the town must have a fork"
    start = junction_entries[0]
    ends = {tuple(np.round(R.plan_route(start, 60.0, np.random.default_rng(s)).xy[-1], 1))
            for s in range(16)}
    assert len(ends) >= 2


def test_curvature_of_a_circle_and_of_a_straight_line():
    radius = 10.0
    angles = np.arange(0.0, math.pi / 2, 1.0 / radius)  # points 1 m apart along the arc
    arc = R.Route(radius * np.stack([np.sin(angles), 1 - np.cos(angles)], axis=1),
                  np.full(len(angles), 1.75))
    assert arc.curvature[0] == arc.curvature[-1] == 0.0  # the ends have one segment
    np.testing.assert_allclose(arc.curvature[1:-1], 1.0 / radius, rtol=1e-3)
    line = R.Route(np.stack([np.arange(20.0), np.zeros(20)], axis=1), np.full(20, 1.75))
    assert line.curvature_ahead(0.0, 50.0) == 0.0


def test_curvature_ahead_reads_only_the_window():
    # straight for 30 m, then a 90 degree bend of radius 5 m
    straight = np.stack([np.arange(30.0), np.zeros(30)], axis=1)
    angles = np.arange(0.2, math.pi / 2, 0.2)
    bend = np.stack([29.0 + 5.0 * np.sin(angles), 5.0 * (1 - np.cos(angles))], axis=1)
    route = R.Route(np.vstack([straight, bend]), np.full(len(straight) + len(bend), 1.75))
    assert route.curvature_ahead(0.0, 20.0) == 0.0
    assert route.curvature_ahead(15.0, 20.0) == pytest.approx(0.2, rel=0.05)
    assert route.curvature_ahead(route.polyline_length + 1.0, 20.0) == 0.0
