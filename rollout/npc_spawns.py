"""Where an episode's NPC vehicles start: within reach of the ego's route.

Three kinds of spawn transforms, all on driving lanes outside junctions, taken in turn so that
any number of NPCs mixes them:

* lead vehicles on the route itself, ahead of the ego (LEAD_AHEAD_M along it);
* crossing traffic: on every lane that enters a junction the route passes, other than the
  route's own, at about the distance from the junction that the ego has to cover to it
  (CROSSING_PACE times it, and CROSSING_SPREAD_M further), so that both arrive together;
* traffic beside the route: the other driving lanes of its roads (oncoming and parallel),
  every SIDE_SPACING_M.

Each kind is shuffled with a generator seeded by the episode seed, so the same seed gives the
same transforms in the same order. Everything goes through the ``carla`` API (a real server or
the fake).
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from rollout.route import Route

LEAD_AHEAD_M = (25.0, 45.0, 70.0, 100.0, 135.0, 170.0)
CROSSING_PACE = 0.8
CROSSING_SPREAD_M = (0.0, 15.0, 30.0)
MIN_CROSSING_M = 8.0
SIDE_SPACING_M = 20.0
SAMPLE_M = 2.0
SPAWN_HEIGHT_M = 0.5
DISTINCT_M = 6.0  # two candidates closer than this would block each other: keep the first


def route_spawn_points(carla_map: Any, carla_module: Any, route: Route, seed: int) -> list[Any]:
    """Spawn transforms near ``route``, the three kinds interleaved (see the module docstring).

    Args:
        carla_map: the world's map.
        carla_module: the carla module (real or fake).
        route: the ego's route.
        seed: the episode seed.

    Returns:
        carla.Transform list, in the order to try them.
    """
    driving = carla_module.LaneType.Driving
    samples = _route_waypoints(carla_map, carla_module, route)
    lead = [w for s in LEAD_AHEAD_M if s < route.length for w in [_waypoint_at(samples, s)] if w is not None]
    crossing = _crossing(samples, route, driving)
    side = _beside(samples, driving)
    rng = np.random.default_rng([seed, 2])
    kinds = [[group[i] for i in rng.permutation(len(group))] for group in (lead, crossing, side)]
    ordered = [w for w in itertools.chain(*itertools.zip_longest(*kinds)) if w is not None]
    kept: list[Any] = []
    for waypoint in ordered:
        loc = waypoint.transform.location
        if waypoint.is_junction or any(loc.distance(k.transform.location) < DISTINCT_M for k in kept):
            continue
        kept.append(waypoint)
    return [_transform(carla_module, w) for w in kept]


def _route_waypoints(carla_map: Any, carla_module: Any, route: Route) -> list[tuple[float, Any]]:
    """(distance along the route, the route lane's waypoint there), every SAMPLE_M up to the goal."""
    out = []
    for s in np.arange(0.0, route.length, SAMPLE_M):
        x, y = route.points_at(np.array([s]))[0]
        waypoint = carla_map.get_waypoint(carla_module.Location(x=float(x), y=float(y)), project_to_road=True,
                                          lane_type=carla_module.LaneType.Driving)
        if waypoint is not None:
            out.append((float(s), waypoint))
    return out


def _waypoint_at(samples: list[tuple[float, Any]], s: float) -> Any:
    for at, waypoint in samples:
        if at >= s and not waypoint.is_junction:
            return waypoint
    return None


def _crossing(samples: list[tuple[float, Any]], route: Route, driving: Any) -> list[Any]:
    """Points on the lanes entering the route's junctions, the ego's time away from them."""
    found, seen = [], set()
    route_xy = route.xy
    for s, waypoint in samples:
        if not waypoint.is_junction or waypoint.junction_id in seen:
            continue
        seen.add(waypoint.junction_id)
        entries = {(e.road_id, e.lane_id): e for e, _ in waypoint.get_junction().get_waypoints(driving)}
        for entry in entries.values():
            for spread in CROSSING_SPREAD_M:
                before = _back_along_lane(entry, max(MIN_CROSSING_M, CROSSING_PACE * s) + spread)
                if before is None:
                    continue
                loc = before.transform.location
                on_route = np.hypot(route_xy[:, 0] - loc.x, route_xy[:, 1] - loc.y).min() < 1.0
                if not on_route:
                    found.append(before)
    return found


def _back_along_lane(entry: Any, distance_m: float) -> Any:
    """The waypoint ``distance_m`` before a junction's ``entry`` on the lane leading into it;
    None where that lane comes out of another junction first."""
    waypoint, travelled = entry, 0.0
    while travelled < distance_m:
        options = waypoint.previous(min(SAMPLE_M, distance_m - travelled))
        if not options or options[0].is_junction:
            return None
        waypoint = options[0]
        travelled += SAMPLE_M
    return waypoint


def _beside(samples: list[tuple[float, Any]], driving: Any) -> list[Any]:
    """The other driving lanes of the route's roads, every SIDE_SPACING_M."""
    found = []
    next_s = SIDE_SPACING_M
    for s, waypoint in samples:
        if s < next_s or waypoint.is_junction:
            continue
        next_s = s + SIDE_SPACING_M
        for step in ("get_left_lane", "get_right_lane"):
            lane = getattr(waypoint, step)()
            hops = 0
            while lane is not None and lane.lane_type == driving and hops < 4:
                found.append(lane)
                lane = getattr(lane, step)() if lane.lane_id * waypoint.lane_id > 0 else _outward(lane, step)
                hops += 1
    return found


def _outward(lane: Any, step: str) -> Any:
    """The next lane away from the centre on the opposite side (its left is our right)."""
    return lane.get_right_lane() if step == "get_left_lane" else lane.get_left_lane()


def _transform(carla_module: Any, waypoint: Any) -> Any:
    loc, rot = waypoint.transform.location, waypoint.transform.rotation
    return carla_module.Transform(carla_module.Location(x=loc.x, y=loc.y, z=loc.z + SPAWN_HEIGHT_M),
                                  carla_module.Rotation(pitch=0.0, yaw=rot.yaw, roll=0.0))
