"""Lane rules judged against the route's own lane: a perfect driver through junctions whose
connecting roads overlap is not a lane invader, leaving the route's lane inside a junction is
one, and off road is relative to the lane's width (the fake's towns: 3.5 m lanes in Town01,
3.2 m in Town02)."""
import math

import carla
import numpy as np
import pytest

from rollout import rewards
from rollout.carla_env import make_env
from common.config import EnvConfig
from common.specs import EnvSpec

STEP_M = 0.5


class _RealMapInJunctions:
    """The env's map as a real CARLA town behaves inside junctions whose connecting roads
    overlap: ``get_waypoint(project_to_road=False)`` finds no lane there."""

    def __init__(self, carla_map):
        self._map = carla_map

    def get_waypoint(self, location, project_to_road=True, lane_type=None):
        kwargs = {} if lane_type is None else {"lane_type": lane_type}
        found = self._map.get_waypoint(location, project_to_road=project_to_road, **kwargs)
        if not project_to_road and found is not None and found.is_junction:
            return None
        return found

    def __getattr__(self, name):
        return getattr(self._map, name)


def _ego(env):
    return next(v for v in env.world.get_actors().filter("vehicle.*")
                if v.attributes.get("role_name", "").startswith("hero"))


def _route_through_a_junction(env, town_map):
    for seed in range(40):
        env.reset(seed=seed)
        route = env.route
        points = route.points_at(np.arange(0.0, route.length, 2.0))
        if any(town_map.get_waypoint(carla.Location(x=float(x), y=float(y))).is_junction for x, y in points):
            return seed, route
    raise AssertionError("no route through a junction in 40 seeds")


def _drive_along(env, route, lateral_m=0.0, only_in_junction=False, town_map=None):
    """Teleports the ego along the route, ``lateral_m`` to its right, and steps the env."""
    ego, info, s = _ego(env), {}, STEP_M
    while s <= route.polyline_length:
        (x, y), (x2, y2) = route.points_at(np.array([s, s + 0.5]))
        yaw = math.atan2(y2 - y, x2 - x)
        offset = lateral_m
        if only_in_junction and not town_map.get_waypoint(carla.Location(x=float(x), y=float(y))).is_junction:
            offset = 0.0
        x, y = x - offset * math.sin(yaw), y + offset * math.cos(yaw)
        ego.set_transform(carla.Transform(carla.Location(x=float(x), y=float(y), z=0.0),
                                          carla.Rotation(yaw=math.degrees(yaw))))
        _, _, terminated, truncated, info = env.step(np.zeros(2, np.float32))
        if terminated or truncated:
            return info
        s += STEP_M
    return info


@pytest.mark.parametrize("town", ["Town01", "Town02"])
def test_a_perfect_driver_through_overlapping_junction_connectors_invades_no_lane(town):
    env = make_env(EnvConfig(town=town, max_steps=2000), EnvSpec())
    try:
        real = env._session.map
        seed, route = _route_through_a_junction(env, real)
        points = route.points_at(np.arange(0.0, route.length, 1.0))
        nearest = [real.get_waypoint(carla.Location(x=float(x), y=float(y))) for x, y in points]
        assert sum(n.is_junction for n in nearest) > 5, "the route must run through a junction"
        env._session.map = _RealMapInJunctions(real)
        env.reset(seed=seed)
        info = _drive_along(env, env.route)
        assert info["termination_reason"] == rewards.ROUTE_COMPLETED
        assert info["lane_invasions"] == 0 and info["success"], info
    finally:
        env.close()


def test_leaving_the_route_lane_inside_a_junction_is_a_lane_invasion():
    env = make_env(EnvConfig(max_steps=2000), EnvSpec())
    try:
        real = env._session.map
        seed, route = _route_through_a_junction(env, real)
        env.reset(seed=seed)
        info = _drive_along(env, env.route, lateral_m=2.0, only_in_junction=True, town_map=real)
        assert info["lane_invasions"] > 0 and not info["success"]
    finally:
        env.close()


@pytest.mark.parametrize("town, lateral_m, off", [("Town01", -2.4, False), ("Town02", -2.4, True),
                                                  ("Town02", -2.2, False)])
def test_off_road_is_relative_to_the_lane_width(town, lateral_m, off):
    env = make_env(EnvConfig(town=town, max_steps=2000), EnvSpec())
    try:
        env.reset(seed=0)
        info = _drive_along(env, env.route, lateral_m=lateral_m)
        assert (info["termination_reason"] == rewards.OFF_ROAD) is off, info
    finally:
        env.close()


@pytest.mark.parametrize("half_lane, lateral, off", [(1.75, 2.49, False), (1.75, 2.51, True),
                                                      (1.5, 2.24, False), (1.5, 2.26, True)])
def test_off_road_margin_keeps_max_lateral_m_in_a_3_5_m_lane(half_lane, lateral, off):
    margin = rewards.off_road_margin(2.5)
    m = rewards.StepMeasurements(speed_mps=5.0, heading_error_rad=0.0, lateral_m=lateral,
                                 half_lane_width_m=half_lane, progress_m=0.3, dt_s=0.05,
                                 off_road_margin_m=margin)
    assert margin == pytest.approx(0.75)
    assert rewards.off_road(m) is off
    assert (rewards.termination_reason(m, EnvConfig().reward) == rewards.OFF_ROAD) is off
