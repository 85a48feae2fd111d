"""A scripted driver: pure pursuit on the OBSERVED route waypoints plus a speed controller.

It reads only the observation vector (common/specs.py): ``vector[0]`` is speed / SPEED_SCALE,
``vector[3:]`` the K route waypoints (x forward, y right) in the vehicle frame over the
look-ahead distance. It shows the task can be solved from what the policy sees, and it drives
the demo videos.

Steering: the target point is where the waypoint polyline leaves a circle of radius
``lookahead = min_lookahead_m + lookahead_gain_s * speed`` around the vehicle; pure pursuit
turns towards it with curvature ``2 * y / d**2`` (d its distance), converted to a wheel angle
with the bicycle model (``atan(wheelbase * curvature)``) and normalised by the maximum wheel
angle. Speed: the cruise speed, lowered where the route ahead bends so that the lateral
acceleration stays below ``max_lateral_accel_mps2``; throttle/brake proportional to the speed
error, or, for an env whose pedal action is a target speed (``PedalAction.TARGET_SPEED``),
that speed itself (``PurePursuitDriver.for_env``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rollout.route import turn_per_metre
from common.config import EnvConfig, PedalAction
from common.specs import SPEED_SCALE_MPS, VECTOR_KINEMATIC_DIMS, EnvSpec

FAKE_MAX_STEER_DEG = 35.0
FAKE_WHEELBASE_M = 2.9


@dataclass(frozen=True)
class PurePursuitSettings:
    """Gains of the scripted driver.

    Attributes:
        cruise_speed_mps: speed on straight road.
        min_lookahead_m: look-ahead radius at standstill.
        lookahead_gain_s: extra look-ahead per m/s of speed.
        max_lateral_accel_mps2: curve speed limit ``sqrt(a / curvature)``.
        speed_gain: pedal per m/s of speed error.
        max_steer_deg: wheel angle at steer = 1 (the fake's bicycle model: 35; a real
            Tesla Model 3 in CARLA: about 70).
        wheelbase_m: bicycle-model wheelbase.
        curve_window_m: how far ahead the curvature for the speed limit is measured.
    """

    cruise_speed_mps: float = 7.0
    min_lookahead_m: float = 3.0
    lookahead_gain_s: float = 0.5
    max_lateral_accel_mps2: float = 2.0
    speed_gain: float = 0.5
    max_steer_deg: float = FAKE_MAX_STEER_DEG
    wheelbase_m: float = FAKE_WHEELBASE_M
    curve_window_m: float = 25.0


def _point_at_radius(path: np.ndarray, radius: float) -> np.ndarray:
    """First point where the polyline ``path`` [K, 2] crosses the circle of ``radius``.

    Falls back to the first point when it already lies outside the circle, and to the last
    point when the whole path lies inside it.
    """
    dist = np.hypot(path[:, 0], path[:, 1])
    if dist[0] >= radius:
        return path[0]
    outside = np.nonzero(dist >= radius)[0]
    if outside.size == 0:
        return path[-1]
    j = int(outside[0])
    a, b = path[j - 1], path[j]
    d = b - a
    # Solve |a + t d| = radius for t in [0, 1].
    qa, qb, qc = d @ d, 2 * (a @ d), a @ a - radius * radius
    t = (-qb + math.sqrt(max(qb * qb - 4 * qa * qc, 0.0))) / (2 * qa) if qa > 1e-12 else 0.0
    return a + min(max(t, 0.0), 1.0) * d


def path_curvature(path: np.ndarray, window_m: float) -> float:
    """Largest |heading change per metre| between consecutive segments within ``window_m``."""
    seg = np.diff(np.vstack([[0.0, 0.0], path]), axis=0)
    length = np.hypot(seg[:, 0], seg[:, 1])
    keep = length > 1e-3
    seg, length = seg[keep], length[keep]
    if len(seg) < 2:
        return 0.0
    travelled = np.cumsum(length)
    turn = turn_per_metre(seg / length[:, None], length)
    within = travelled[1:] <= window_m
    return float(turn[within].max()) if np.any(within) else 0.0


class PurePursuitDriver:
    """Maps an observation to ``[steer, throttle_brake]`` (see the module docstring)."""

    def __init__(self, spec: EnvSpec, settings: PurePursuitSettings | None = None,
                 max_target_speed_mps: float | None = None) -> None:
        """Args:
            spec: the observation spec.
            settings: the gains.
            max_target_speed_mps: None: the action's second component is the pedal; else it
                is a target speed, this at +1 (PedalAction.TARGET_SPEED).
        """
        self.spec = spec
        self.settings = settings or PurePursuitSettings()
        self.max_target_speed_mps = max_target_speed_mps

    @classmethod
    def for_env(cls, spec: EnvSpec, env: EnvConfig,
                settings: PurePursuitSettings | None = None) -> "PurePursuitDriver":
        """The driver whose actions mean what ``env``'s pedal setting says."""
        top = (env.max_target_speed_mps if PedalAction(env.pedal) is PedalAction.TARGET_SPEED
               else None)
        return cls(spec, settings, top)

    def waypoints(self, vector: np.ndarray) -> np.ndarray:
        """The observed waypoints in metres, [K, 2] (x forward, y right)."""
        return vector[VECTOR_KINEMATIC_DIMS:].reshape(-1, 2).astype(np.float64) * self.spec.lookahead_m

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        s = self.settings
        vector = obs["vector"]
        speed = float(vector[0]) * SPEED_SCALE_MPS
        path = self.waypoints(vector)
        target = _point_at_radius(path, s.min_lookahead_m + s.lookahead_gain_s * max(speed, 0.0))
        dist2 = max(float(target @ target), 1e-6)
        curvature = 2.0 * float(target[1]) / dist2
        wheel = math.atan(s.wheelbase_m * curvature)
        steer = wheel / math.radians(s.max_steer_deg)
        bend = path_curvature(path, s.curve_window_m)
        limit = math.sqrt(s.max_lateral_accel_mps2 / bend) if bend > 1e-6 else math.inf
        speed_target = min(s.cruise_speed_mps, limit)
        if self.max_target_speed_mps is not None:
            command = 2.0 * speed_target / self.max_target_speed_mps - 1.0
        else:
            command = s.speed_gain * (speed_target - speed)
        return np.clip(np.array([steer, command], np.float32), -1.0, 1.0)
