"""Routes over a map's waypoints: spawn points, the train/eval split, planning and projection.

Coordinates are CARLA's (left-handed: x forward, y right, yaw in degrees, clockwise seen from
above). A ``Route`` is a dense centre-line polyline (one point per ``ROUTE_STEP_M``) that the
env projects the vehicle onto for progress, lateral deviation and heading error, and samples
ahead of the vehicle for the observation waypoints.

The polyline runs ``extend_m`` past the goal where the road allows (``plan_route``), so the
observation waypoints near the goal show the road ahead like anywhere else on the route. When
they were clamped to the route's end, the last 50 m of every route had its far waypoints
collapsed onto one point, a state seen nowhere else, and learned policies stopped there
(docs/learning.md, "Why some defaults are what they are").

Held-out routes: spawn points are put in a stable order (the server's order, or road, lane and
``s`` for derived ones) and every ``EVAL_EVERY``-th one belongs to the "eval" split, all others
to "train", so the two splits never start from the same spawn point. ``choose_route(seed,
split)`` maps a seed to a spawn point of its split and to the branch choices at junctions, both
drawn from one ``numpy`` generator seeded with ``seed``: the same (seed, split) gives the same
route on the same map.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from common.config import RouteSplit
from common.errors import SimulatorError

ROUTE_STEP_M = 1.0
SPAWN_SPACING_M = 10.0
SPAWN_HEIGHT_M = 0.5
EVAL_EVERY = 5
MIN_ROUTE_FRACTION = 0.9
GOAL_TOLERANCE_M = 2.0
_SEARCH_BACK = 10
_SEARCH_AHEAD = 40


class Projection(NamedTuple):
    """The vehicle's position relative to the route.

    Attributes:
        s: distance along the route of the closest point, metres.
        lateral: signed distance from the centre line, metres (positive: right of it).
        yaw: route direction at that point, radians.
        half_width: half the lane width there, metres.
        index: the route segment of the closest point (a hint for the next projection).
    """

    s: float
    lateral: float
    yaw: float
    half_width: float
    index: int


def wrap_angle(angle: float) -> float:
    """Wraps radians to [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


class Route:
    """A centre-line polyline with cumulative distance, direction and lane half-width, and the
    goal: the distance along it that completes the route (the polyline may run on past it)."""

    def __init__(self, xy: np.ndarray, half_width: np.ndarray,
                 goal_m: float | None = None) -> None:
        """Args:
            xy: float [N, 2] centre-line points, N >= 2, consecutive points distinct.
            half_width: float [N] half lane width at each point.
            goal_m: distance along the polyline that completes the route; None: its end.

        Raises:
            SimulatorError: for fewer than two points, or a goal outside (0, polyline length].
        """
        if len(xy) < 2:
            raise SimulatorError(f"a route needs >= 2 points, got {len(xy)}")
        self.xy = np.asarray(xy, np.float64)
        self.half_width = np.asarray(half_width, np.float64)
        seg = np.diff(self.xy, axis=0)
        self.seg_len = np.maximum(np.hypot(seg[:, 0], seg[:, 1]), 1e-9)
        self.seg_dir = seg / self.seg_len[:, None]
        self.s = np.concatenate([[0.0], np.cumsum(self.seg_len)])
        self.curvature = _vertex_curvature(self.seg_dir, self.seg_len)
        end = float(self.s[-1])
        self.goal_m = end if goal_m is None else float(goal_m)
        if not 0.0 < self.goal_m <= end + 1e-6:
            raise SimulatorError(f"route goal {goal_m} m outside (0, {end:.1f}] m")

    @property
    def length(self) -> float:
        """Distance from the start to the goal, metres."""
        return self.goal_m

    @property
    def polyline_length(self) -> float:
        """Distance from the start to the polyline's end (the goal or past it), metres."""
        return float(self.s[-1])

    def project(self, x: float, y: float, hint: int | None = None) -> Projection:
        """Closest point of the route to (x, y), searched near ``hint`` when given."""
        n_seg = len(self.seg_len)
        lo, hi = (0, n_seg) if hint is None else (
            max(hint - _SEARCH_BACK, 0), min(hint + _SEARCH_AHEAD, n_seg))
        d = np.array([x, y]) - self.xy[lo:hi]
        t = np.clip(np.einsum("ij,ij->i", d, self.seg_dir[lo:hi]), 0.0, self.seg_len[lo:hi])
        closest = self.xy[lo:hi] + self.seg_dir[lo:hi] * t[:, None]
        dist2 = np.sum((np.array([x, y]) - closest) ** 2, axis=1)
        k = int(np.argmin(dist2))
        i = lo + k
        ux, uy = self.seg_dir[i]
        dx, dy = x - self.xy[i, 0], y - self.xy[i, 1]
        frac = t[k] / self.seg_len[i]
        return Projection(
            s=float(self.s[i] + t[k]),
            lateral=float(-dx * uy + dy * ux),
            yaw=math.atan2(uy, ux),
            half_width=float((1 - frac) * self.half_width[i] + frac * self.half_width[i + 1]),
            index=i,
        )

    def points_at(self, s_values: np.ndarray) -> np.ndarray:
        """Polyline points at distances ``s_values`` (clamped to it, so its end repeats)."""
        s = np.clip(np.asarray(s_values, np.float64), 0.0, self.polyline_length)
        return np.stack([np.interp(s, self.s, self.xy[:, 0]),
                         np.interp(s, self.s, self.xy[:, 1])], axis=1)

    def curvature_ahead(self, s: float, window_m: float) -> float:
        """The largest |curvature| (1/m) of the polyline's points from ``s`` to ``s +
        window_m`` (0 where it runs straight or the window holds no point)."""
        lo, hi = np.searchsorted(self.s, [s, s + window_m], side="left")
        return float(self.curvature[lo:hi].max()) if hi > lo else 0.0

    def is_completed(self, s: float) -> bool:
        return s >= self.length - GOAL_TOLERANCE_M

    def completion(self, s: float) -> float:
        return float(np.clip(s / self.length, 0.0, 1.0))


def turn_per_metre(seg_dir: np.ndarray, seg_len: np.ndarray) -> np.ndarray:
    """|Heading change| between consecutive segments of a polyline (unit directions [N, 2],
    lengths [N]) over the mean length of the two: the curvature at its N - 1 inner points."""
    cross = seg_dir[:-1, 0] * seg_dir[1:, 1] - seg_dir[:-1, 1] * seg_dir[1:, 0]
    dot = np.einsum("ij,ij->i", seg_dir[:-1], seg_dir[1:])
    return np.abs(np.arctan2(cross, dot)) / (0.5 * (seg_len[:-1] + seg_len[1:]))


def _vertex_curvature(seg_dir: np.ndarray, seg_len: np.ndarray) -> np.ndarray:
    """``turn_per_metre`` at each inner point; 0 at the two ends."""
    out = np.zeros(len(seg_len) + 1)
    if len(seg_len) >= 2:
        out[1:-1] = turn_per_metre(seg_dir, seg_len)
    return out


def to_vehicle_frame(points: np.ndarray, x: float, y: float, yaw_rad: float) -> np.ndarray:
    """World (x, y) points into the vehicle frame: x forward, y right."""
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    d = np.asarray(points, np.float64) - np.array([x, y])
    return np.stack([d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c], axis=1)


def spawn_points(carla_map: Any, carla_module: Any) -> list[Any]:
    """The map's spawn points, or ones derived from its driving lanes when it has none.

    A server's map lists spawn points; an offline ``carla.Map`` built from OpenDRIVE lists none,
    so then every ``SPAWN_SPACING_M`` along each driving lane outside junctions becomes one,
    ``SPAWN_HEIGHT_M`` above the road, in the order (road, lane, s).

    Raises:
        SimulatorError: if the map has no driving lane at all.
    """
    points = list(carla_map.get_spawn_points())
    if points:
        return points
    waypoints = [w for w in carla_map.generate_waypoints(SPAWN_SPACING_M)
                 if w.lane_type == carla_module.LaneType.Driving and not w.is_junction]
    waypoints.sort(key=lambda w: (w.road_id, w.lane_id, w.s))
    derived = []
    for w in waypoints:
        loc, rot = w.transform.location, w.transform.rotation
        derived.append(carla_module.Transform(
            carla_module.Location(x=loc.x, y=loc.y, z=loc.z + SPAWN_HEIGHT_M),
            carla_module.Rotation(pitch=0.0, yaw=rot.yaw, roll=0.0)))
    if not derived:
        raise SimulatorError(f"map {carla_map.name!r} has no driving lane to spawn on")
    return derived


def split_indices(count: int, split: RouteSplit) -> list[int]:
    """Indices of the spawn points of ``split`` (every EVAL_EVERY-th is "eval").

    Raises:
        SimulatorError: if the split would be empty.
    """
    if split is RouteSplit.EVAL:
        chosen = [i for i in range(count) if i % EVAL_EVERY == EVAL_EVERY - 1]
    else:
        chosen = [i for i in range(count) if i % EVAL_EVERY != EVAL_EVERY - 1]
    if not chosen:
        raise SimulatorError(f"split {split.value!r} is empty with {count} spawn point(s)")
    return chosen


def plan_route(start_waypoint: Any, length_m: float, rng: np.random.Generator,
               extend_m: float = 0.0) -> Route:
    """Follows the lane from ``start_waypoint`` for ``length_m`` plus ``extend_m``, branching at
    random; the goal is at ``length_m``.

    At every fork (``waypoint.next`` returning several), one branch is drawn from ``rng``, so
    the first ``length_m`` do not depend on ``extend_m``. The polyline stops early at a dead
    end, and the goal with it when the dead end comes before ``length_m``.
    """
    points = [start_waypoint]
    travelled = 0.0
    goal_m: float | None = None
    while travelled < length_m + extend_m:
        options = points[-1].next(ROUTE_STEP_M)
        if not options:
            break
        nxt = options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]
        a, b = points[-1].transform.location, nxt.transform.location
        step = math.hypot(b.x - a.x, b.y - a.y)
        if step < 1e-6:
            break
        travelled += step
        points.append(nxt)
        if goal_m is None and travelled >= length_m:
            goal_m = travelled
    xy = np.array([[w.transform.location.x, w.transform.location.y] for w in points])
    half = np.array([0.5 * w.lane_width for w in points])
    return Route(xy, half, goal_m)


def choose_route(carla_map: Any, carla_module: Any, points: Sequence[Any], seed: int,
                 split: RouteSplit, length_m: float, attempts: int = 20,
                 extend_m: float = 0.0) -> tuple[Any, Route]:
    """Maps (seed, split) to a spawn transform and a route of at least 90% of ``length_m``.

    Args:
        carla_map: the world's map.
        carla_module: the carla module (real or fake) for the LaneType enum.
        points: spawn points from ``spawn_points``.
        seed: the episode seed.
        split: which half of the spawn points to draw from.
        length_m: wanted route length.
        attempts: spawn points tried before giving up on dead ends.
        extend_m: road planned past the goal for the observation waypoints.

    Returns:
        The spawn transform and the route that starts there.

    Raises:
        SimulatorError: if no tried spawn point has a long enough route.
    """
    rng = np.random.default_rng(seed)
    candidates = split_indices(len(points), split)
    best: tuple[Any, Route] | None = None
    for _ in range(attempts):
        transform = points[candidates[int(rng.integers(len(candidates)))]]
        start = carla_map.get_waypoint(transform.location, project_to_road=True,
                                       lane_type=carla_module.LaneType.Driving)
        if start is None:
            continue
        route = plan_route(start, length_m, rng, extend_m)
        if route.length >= MIN_ROUTE_FRACTION * length_m:
            return transform, route
        if best is None or route.length > best[1].length:
            best = (transform, route)
    longest = 0.0 if best is None else best[1].length
    raise SimulatorError(
        f"no route of {length_m} m from {attempts} spawn points of split {split.value!r} "
        f"(longest {longest:.1f} m)")
