"""Car following for the fake traffic manager, for every autopilot vehicle at once (numpy).

Each vehicle's path is its planned waypoints ahead (row 0: its own pose). A vehicle is in the
way when its box reaches into a corridor as wide as the follower around the path; the gap is
the distance along the path from the follower's front to the nearest such box. The
acceleration is the Intelligent Driver Model's (Treiber et al., 2000):
``a_max * (1 - (v / v0)^4 - (s* / s)^2)`` with ``s* = s0 + v T + v dv / (2 sqrt(a_max b))``,
which keeps a time gap T to a moving leader and stops s0 behind a standing one. The wanted
acceleration becomes throttle and brake through the fake's own vehicle dynamics, so the car
gets what was asked.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rollout.fakecarla import dynamics

IDM_ACCEL_MPS2 = 2.0  # a_max
IDM_COMFORT_BRAKE_MPS2 = 2.5  # b
IDM_MIN_GAP_M = 2.0  # s0
IDM_HEADWAY_S = 1.5  # T
EMERGENCY_BRAKE_MPS2 = dynamics.MAX_BRAKE_MPS2
CORRIDOR_MARGIN_M = 0.3  # beyond the two half widths
WINDOW_M = 1.3  # a box belongs to a path point when it is this close to it along the path
CURVE_LATERAL_ACCEL_MPS2 = 2.0  # corner speed: sqrt(a / curvature)
CURVE_WINDOW_M = 15.0


class Vehicles(NamedTuple):
    """Every vehicle in the world (autopilot or not), as arrays [V]."""

    xy: np.ndarray  # [V, 2]
    yaw: np.ndarray
    speed: np.ndarray
    half_length: np.ndarray
    half_width: np.ndarray


class Paths(NamedTuple):
    """The autopilot vehicles' paths, padded to K points ([N, K]); row 0 is the vehicle itself."""

    xy: np.ndarray  # [N, K, 2]
    yaw: np.ndarray  # [N, K]
    s: np.ndarray  # [N, K] distance along the path from the vehicle
    valid: np.ndarray  # bool [N, K]
    owner: np.ndarray  # int [N]: each path's vehicle, an index into Vehicles


def gaps_ahead(paths: Paths, world: Vehicles) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each path owner's front to the nearest box in its way, and that box's
    speed along the path (inf and 0 when the way is clear).

    Only (owner, vehicle) pairs within reach of the path's end are examined.

    Returns:
        gap [N] metres (may be <= 0 when boxes touch) and leader speed [N] m/s.
    """
    n = len(paths.owner)
    gap, lead_speed = np.full(n, np.inf), np.zeros(n)
    if n == 0:
        return gap, lead_speed
    own_xy = world.xy[paths.owner]
    reach = paths.s.max(axis=1) + world.half_length.max() + 2.0
    apart = np.hypot(own_xy[:, None, 0] - world.xy[None, :, 0], own_xy[:, None, 1] - world.xy[None, :, 1])
    near = apart < reach[:, None]
    near[np.arange(n), paths.owner] = False
    rows, cols = np.nonzero(near)  # pairs: path row, vehicle
    if not len(rows):
        return gap, lead_speed
    pc, ps = np.cos(paths.yaw[rows]), np.sin(paths.yaw[rows])  # [P, K]
    dx = world.xy[cols, 0][:, None] - paths.xy[rows, :, 0]
    dy = world.xy[cols, 1][:, None] - paths.xy[rows, :, 1]
    lon, lat = dx * pc + dy * ps, -dx * ps + dy * pc
    vc, vs = np.cos(world.yaw[cols])[:, None], np.sin(world.yaw[cols])[:, None]
    cos_turn, sin_turn = vc * pc + vs * ps, vs * pc - vc * ps
    ct, st = np.abs(cos_turn), np.abs(sin_turn)
    hl, hw = world.half_length[cols][:, None], world.half_width[cols][:, None]
    side_reach, along_reach = hl * st + hw * ct, hl * ct + hw * st
    s = paths.s[rows]
    own_width = world.half_width[paths.owner[rows]][:, None]
    hit = (np.abs(lon) <= WINDOW_M) & (np.abs(lat) < own_width + side_reach + CORRIDOR_MARGIN_M) & paths.valid[rows]
    hit &= s + lon > 0.0
    pair_gap = np.where(hit, s + lon - world.half_length[paths.owner[rows]][:, None] - along_reach, np.inf)
    point = pair_gap.argmin(axis=1)
    best = pair_gap[np.arange(len(rows)), point]
    speed = world.speed[cols] * cos_turn[np.arange(len(rows)), point]
    order = np.lexsort((best, rows))  # per row, nearest first
    first = np.ones(len(order), bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    chosen = order[first]
    gap[rows[chosen]] = best[chosen]
    lead_speed[rows[chosen]] = np.where(np.isfinite(best[chosen]), speed[chosen], 0.0)
    return gap, lead_speed


def idm_accel(speed: np.ndarray, desired: np.ndarray, gap: np.ndarray, closing: np.ndarray,
              min_gap: float = IDM_MIN_GAP_M) -> np.ndarray:
    """The Intelligent Driver Model's acceleration [N], limited to [-emergency, a_max].

    Args:
        speed: own speeds.
        desired: free-road speeds (v0, > 0).
        gap: bumper gaps (inf: nothing ahead).
        closing: own speed minus the leader's (dv).
        min_gap: the standstill gap s0.
    """
    v = np.maximum(speed, 0.0)
    free = 1.0 - (v / np.maximum(desired, 0.1)) ** 4
    wanted = min_gap + np.maximum(0.0, v * IDM_HEADWAY_S
                                        + v * closing / (2.0 * np.sqrt(IDM_ACCEL_MPS2 * IDM_COMFORT_BRAKE_MPS2)))
    with np.errstate(divide="ignore", invalid="ignore"):
        interaction = np.where(np.isfinite(gap), (wanted / np.maximum(gap, 0.05)) ** 2, 0.0)
    return np.clip(IDM_ACCEL_MPS2 * (free - interaction), -EMERGENCY_BRAKE_MPS2, IDM_ACCEL_MPS2)


def pedals(accel: np.ndarray, speed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Throttle and brake [N] that give ``accel`` at ``speed`` under rollout.fakecarla.dynamics;
    a vehicle at a standstill that should not move holds the full brake."""
    v = np.maximum(speed, 0.0)
    resist = dynamics.ROLLING_MPS2 + dynamics.DRAG_PER_M * v * v
    drive = dynamics.MAX_ACCEL_MPS2 * np.maximum(1.0 - v / dynamics.MAX_SPEED_MPS, 0.05)
    throttle = np.where(accel > 0.0, np.clip((accel + resist) / drive, 0.0, 1.0), 0.0)
    brake = np.where(accel > 0.0, 0.0, np.clip((-accel - resist) / dynamics.MAX_BRAKE_MPS2, 0.0, 1.0))
    holding = (v < 0.05) & (accel <= 0.0)
    return throttle, np.where(holding, 1.0, brake)


def corner_speed(xy: np.ndarray, yaw: np.ndarray) -> float:
    """The speed that keeps the lateral acceleration in the sharpest bend of the first
    CURVE_WINDOW_M of a path (points [m, 2], headings [m]) at CURVE_LATERAL_ACCEL_MPS2 (inf on
    straight road)."""
    if len(yaw) < 2:
        return float("inf")
    turn = np.abs((np.diff(yaw) + np.pi) % (2.0 * np.pi) - np.pi)
    step = np.maximum(np.hypot(*np.diff(xy, axis=0).T), 0.5)
    within = np.cumsum(step) <= CURVE_WINDOW_M
    sharpest = float((turn / step)[within].max()) if within.any() else 0.0
    return float(np.sqrt(CURVE_LATERAL_ACCEL_MPS2 / sharpest)) if sharpest > 1e-4 else float("inf")


def pure_pursuit(paths: Paths, world: Vehicles, wheelbase: np.ndarray) -> np.ndarray:
    """Steer [N] in [-1, 1] towards the first path point beyond a speed-dependent look-ahead."""
    n = len(paths.owner)
    own = world.xy[paths.owner]
    speed = world.speed[paths.owner]
    d = paths.xy - own[:, None, :]
    dist = np.hypot(d[..., 0], d[..., 1])
    lookahead = np.maximum(4.0, 0.8 * np.abs(speed) + 3.0)
    beyond = (dist >= lookahead[:, None]) & paths.valid
    last = paths.valid.sum(axis=1) - 1
    target = np.where(beyond.any(axis=1), beyond.argmax(axis=1), last)
    tx, ty = d[np.arange(n), target, 0], d[np.arange(n), target, 1]
    alpha = np.arctan2(ty, tx) - world.yaw[paths.owner]
    reach = np.maximum(np.hypot(tx, ty), 1e-3)
    angle = np.arctan2(2.0 * wheelbase * np.sin(alpha), reach)
    return np.clip(angle / dynamics.MAX_STEER_RAD, -1.0, 1.0)
