"""Reward and termination of the driving task, as pure functions of one step's measurements.

The reward is ``sum(weight_c * term_c)`` over five components, each weight taken from
common.config.RewardConfig. Every term is bounded so that, with the default weights, an
ordinary step earns roughly [-1, 1]; only terminal events (collision, leaving the road, reaching
the goal) and a lane invasion go beyond that.

* efficiency in [-1, 1]: speed along the route ``v * cos(heading_error)`` over the target speed,
  rising to 1 at the target, then falling linearly to 0 at ``overspeed_zero_ratio`` times the
  target and on at the same slope to -1; driving backwards along the route is negative.
  Below a quarter of the target speed it also pays ``standstill_penalty``, in full at a
  standstill and falling linearly to 0 at that speed, so that standing still costs something
  instead of earning exactly 0.
* lane_keeping in [-1, 1]: ``1 - lateral error / lateral room - heading error /
  heading_error_scale_rad`` (each error capped at 1), multiplied by a speed gate that is 0 at
  standstill and 1 from a quarter of the target speed on, so standing still earns nothing. The
  lateral room is half the lane width less half the vehicle's width (at least
  MIN_ROOM_FRACTION of the half lane): the offset at which, driving straight, a corner of the
  vehicle's box touches the marking and the lane-invasion sensor fires. For a Model 3 in a
  3.5 m lane that is 0.67 m; measured against the half lane (1.75 m), an offset that already
  touches the marking still earned most of the term, and learned policies drove that far off
  centre (docs/learning.md, "Why some defaults are what they are").
* comfort in [-1, 0]: minus the jerk (change of acceleration per second) over
  COMFORT_JERK_SCALE_MPS3, capped at 1.
* safety: ``-lane_invasion_penalty`` on a step that crosses a lane marking or ends with the
  vehicle's centre outside the route's own lane (both at most once per step),
  ``-off_road_penalty`` when the lateral deviation ends the episode, and on a collision ``-collision_penalty * (1 + min(v / target, 2)) / 2``: half the
  penalty at standstill, the full penalty at the target speed, 1.5 times it at twice the target.
* progress: distance gained along the route this step over the distance the target speed would
  gain (capped to [-1, 1]), plus ``waypoint_bonus`` per observation waypoint passed and
  ``goal_bonus`` once when the route is completed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from common.config import RewardConfig

COMFORT_JERK_SCALE_MPS3 = 30.0
SPEED_GATE_FRACTION = 0.25
MIN_ROOM_FRACTION = 0.25
REFERENCE_LANE_WIDTH_M = 3.5  # the lane width env.max_lateral_m is stated for

COLLISION = "collision"
OFF_ROAD = "off_road"
ROUTE_COMPLETED = "route_completed"
STEP_LIMIT = "step_limit"
SIMULATOR_TIMEOUT = "simulator_timeout"
TERMINATION_REASONS = ("", COLLISION, OFF_ROAD, ROUTE_COMPLETED, STEP_LIMIT, SIMULATOR_TIMEOUT)


@dataclass(frozen=True)
class StepMeasurements:
    """What the env measured over one step, the only input of the reward.

    Attributes:
        speed_mps: speed at the end of the step.
        heading_error_rad: vehicle yaw minus route yaw, wrapped to [-pi, pi].
        lateral_m: signed distance from the route's centre line (positive: right of it).
        half_lane_width_m: half the width of the lane the route follows here.
        vehicle_half_width_m: half the width of the vehicle's bounding box.
        progress_m: distance gained along the route during the step (negative: went back).
        dt_s: simulated seconds per step.
        waypoints_passed: observation waypoints passed during the step.
        route_completed: the vehicle reached the end of the route.
        collided: a collision event arrived for this step.
        collision_speed_mps: speed before the impact (the larger of the step's start and end).
        lane_invasion: a lane-marking crossing was reported for this step.
        on_driving_lane: the vehicle's centre is inside the route's own lane (|lateral_m| at
            most half_lane_width_m). The lane is the route's, not whatever lane the map finds
            at the vehicle's place: inside junctions whose connecting roads overlap,
            ``map.get_waypoint(location, project_to_road=False)`` returns another road's lane,
            or none, a metre or two from the route's own lane centre.
        off_road_margin_m: the episode ends off the road when |lateral_m| exceeds
            half_lane_width_m by more than this (``off_road``).
        jerk_mps3: magnitude of the change of acceleration over the step, per second.
    """

    speed_mps: float
    heading_error_rad: float
    lateral_m: float
    half_lane_width_m: float
    progress_m: float
    dt_s: float
    waypoints_passed: int = 0
    route_completed: bool = False
    collided: bool = False
    collision_speed_mps: float = 0.0
    lane_invasion: bool = False
    on_driving_lane: bool = True
    off_road_margin_m: float = 0.75
    jerk_mps3: float = 0.0
    vehicle_half_width_m: float = 0.0


class RewardTerms(NamedTuple):
    """The weighted reward components of one step; their sum is the reward."""

    efficiency: float
    lane_keeping: float
    comfort: float
    safety: float
    progress: float

    @property
    def total(self) -> float:
        return float(sum(self))


def _clip(x: float, low: float, high: float) -> float:
    return max(low, min(high, x))


def _speed_gate(m: StepMeasurements, cfg: RewardConfig) -> float:
    """0 at a standstill, rising linearly to 1 at SPEED_GATE_FRACTION of the target speed."""
    return _clip(m.speed_mps / (SPEED_GATE_FRACTION * cfg.target_speed_mps), 0.0, 1.0)


def efficiency(m: StepMeasurements, cfg: RewardConfig) -> float:
    """Speed along the route towards the target speed, in [-1, 1] (see the module docstring)."""
    ratio = m.speed_mps * math.cos(m.heading_error_rad) / cfg.target_speed_mps
    if ratio <= 1.0:
        return _clip(ratio - cfg.standstill_penalty * (1.0 - _speed_gate(m, cfg)), -1.0, 1.0)
    return _clip(1.0 - (ratio - 1.0) / (cfg.overspeed_zero_ratio - 1.0), -1.0, 1.0)


def lane_keeping(m: StepMeasurements, cfg: RewardConfig) -> float:
    """Lateral and heading error, gated by speed, in [-1, 1]."""
    gate = _speed_gate(m, cfg)
    half_lane = max(m.half_lane_width_m, 1e-3)
    room = max(half_lane - m.vehicle_half_width_m, MIN_ROOM_FRACTION * half_lane)
    lateral = min(abs(m.lateral_m) / room, 1.0)
    heading = min(abs(m.heading_error_rad) / cfg.heading_error_scale_rad, 1.0)
    return gate * (1.0 - lateral - heading)


def comfort(m: StepMeasurements) -> float:
    """Minus the normalised jerk, in [-1, 0]."""
    return -min(abs(m.jerk_mps3) / COMFORT_JERK_SCALE_MPS3, 1.0)


def safety(m: StepMeasurements, cfg: RewardConfig) -> float:
    """Collision (scaled by speed), lane invasion or off the lanes, and leaving the road."""
    value = 0.0
    if invaded_lane(m):
        value -= cfg.lane_invasion_penalty
    if off_road(m):
        value -= cfg.off_road_penalty
    if m.collided:
        severity = 1.0 + min(m.collision_speed_mps / cfg.target_speed_mps, 2.0)
        value -= cfg.collision_penalty * severity / 2.0
    return value


def progress(m: StepMeasurements, cfg: RewardConfig) -> float:
    """Distance along the route per step (in [-1, 1]) plus waypoint and goal bonuses."""
    nominal = cfg.target_speed_mps * m.dt_s
    value = _clip(m.progress_m / nominal, -1.0, 1.0)
    value += cfg.waypoint_bonus * max(m.waypoints_passed, 0)
    if m.route_completed:
        value += cfg.goal_bonus
    return value


def reward_terms(m: StepMeasurements, cfg: RewardConfig) -> RewardTerms:
    """Each component times its weight from ``cfg``.

    Args:
        m: the step's measurements.
        cfg: weights, target speed, penalties and bonuses.

    Returns:
        The weighted components; ``.total`` is the step's reward.
    """
    return RewardTerms(
        efficiency=cfg.efficiency * efficiency(m, cfg),
        lane_keeping=cfg.lane_keeping * lane_keeping(m, cfg),
        comfort=cfg.comfort * comfort(m),
        safety=cfg.safety * safety(m, cfg),
        progress=cfg.progress * progress(m, cfg),
    )


def step_reward_bound(cfg: RewardConfig, waypoints_per_step: int) -> float:
    """The largest |reward| one step can earn: every component at its largest magnitude (a
    collision at twice the target speed, a lane invasion, leaving the road, the goal), the
    weights' signs ignored.

    Args:
        cfg: weights, penalties and bonuses.
        waypoints_per_step: the most observation waypoints one step can pass.
    """
    safety = cfg.lane_invasion_penalty + cfg.off_road_penalty + 1.5 * cfg.collision_penalty
    progress = 1.0 + cfg.waypoint_bonus * waypoints_per_step + cfg.goal_bonus
    return (abs(cfg.efficiency) + abs(cfg.lane_keeping) + abs(cfg.comfort)
            + abs(cfg.safety) * safety + abs(cfg.progress) * progress)


def invaded_lane(m: StepMeasurements) -> bool:
    """The step crossed a lane marking or ended with the centre outside the route's lane."""
    return m.lane_invasion or not m.on_driving_lane


def off_road(m: StepMeasurements) -> bool:
    """|lateral_m| beyond the route lane's half width plus ``off_road_margin_m``."""
    return abs(m.lateral_m) > m.half_lane_width_m + m.off_road_margin_m


def off_road_margin(max_lateral_m: float) -> float:
    """The margin beyond the lane's half width at which an episode ends off the road, for
    ``env.max_lateral_m`` (the limit in a REFERENCE_LANE_WIDTH_M lane): the same margin in
    every lane width, so a 3.0 m lane ends 0.25 m sooner than a 3.5 m one."""
    return max_lateral_m - 0.5 * REFERENCE_LANE_WIDTH_M


def termination_reason(m: StepMeasurements, cfg: RewardConfig) -> str:
    """Why the episode terminates after this step, or "" if it goes on.

    Priority when several apply: collision, then off road (``off_road``), then route
    completed. A lane invasion is penalised (``safety``) but does not end the episode: ending
    it there lost (docs/learning.md, "Why some defaults are what they are").
    """
    if m.collided:
        return COLLISION
    if off_road(m):
        return OFF_ROAD
    if m.route_completed:
        return ROUTE_COMPLETED
    return ""
