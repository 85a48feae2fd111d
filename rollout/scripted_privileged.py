"""The privileged scripted driver: the pure-pursuit driver (rollout/scripted.py) plus the true
positions and velocities of every other vehicle, read from the world. An upper bound for what a
policy that sees traffic only through its camera can do.

Steering is the pure-pursuit driver's. The speed it asks for is the smaller of the driver's own
and the speed that stops it, at PLANNED_DECEL_MPS2, STANDSTILL_GAP_M short of the nearest of:

* a vehicle on the route ahead (its centre projects onto the route ahead of the ego within
  the lane's half width plus ON_ROUTE_MARGIN_M), less the two half lengths, with the leader's
  own braking distance added for a moving leader;
* the place along the route where the ego would meet a crossing vehicle: the ego moves along
  its route at no less than CREEP_MPS, every other vehicle straight on at its velocity, over
  HORIZON_S; they meet where the other's centre comes within MEET_LATERAL_M across and MEET_M
  along the ego's route (a vehicle in the next lane, oncoming or not, does not meet it).

Vehicles on the route behind the ego are left to brake for it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from rollout.route import Route
from rollout.scripted import PurePursuitDriver, PurePursuitSettings
from common.config import EnvConfig, PedalAction
from common.specs import SPEED_SCALE_MPS, EnvSpec

HERO_ROLE = "hero"  # the ego's role_name starts with it (rollout/carla_session.py)
LOOK_AHEAD_M = 45.0
ON_ROUTE_MARGIN_M = 0.6
PLANNED_DECEL_MPS2 = 3.0
STANDSTILL_GAP_M = 3.0
HORIZON_S = 3.0
HORIZON_STEP_S = 0.25
CREEP_MPS = 3.0
BRAKE_GAIN = 2.0  # times the pedal gain, when braking for traffic
BEHIND_M = 15.0
MEET_LATERAL_M = 2.6  # two half widths and a margin
MEET_M = 5.5  # along the route: two half lengths and a margin


class PrivilegedDriver:
    """Maps an observation to ``[steer, throttle_brake]`` like PurePursuitDriver, slowing for
    the traffic it reads from the world (see the module docstring)."""

    def __init__(self, spec: EnvSpec, env_cfg: EnvConfig, env: Any,
                 settings: PurePursuitSettings | None = None) -> None:
        """Args:
            spec: the observation spec.
            env_cfg: the env's settings (what the pedal action means).
            env: the env it drives (its ``route`` and ``world``: the privileged part).
            settings: the pure-pursuit gains.
        """
        self.base = PurePursuitDriver.for_env(spec, env_cfg, settings)
        self.env = env
        self.speed_gain = env_cfg.speed_gain
        self.target_speed = PedalAction(env_cfg.pedal) is PedalAction.TARGET_SPEED
        self.max_target = env_cfg.max_target_speed_mps

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        action = self.base(obs)
        route: Route | None = self.env.route
        vehicles = list(self.env.world.get_actors().filter("vehicle.*"))
        ego = next((v for v in vehicles if v.attributes.get("role_name", "").startswith(HERO_ROLE)), None)
        if route is None or ego is None:
            return action
        speed = float(obs["vector"][0]) * SPEED_SCALE_MPS
        room = free_distance(route, ego, [v for v in vehicles if v.id != ego.id], speed)
        allowed = math.sqrt(2.0 * PLANNED_DECEL_MPS2 * max(room - STANDSTILL_GAP_M, 0.0))
        if self.target_speed:
            command = 2.0 * allowed / self.max_target - 1.0
        else:
            command = -1.0 if allowed < 0.5 else BRAKE_GAIN * self.speed_gain * (allowed - speed)
        action[1] = min(float(action[1]), command)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def _state(actor: Any) -> tuple[float, float, float, float, float, float]:
    t, v = actor.get_transform(), actor.get_velocity()
    return (t.location.x, t.location.y, math.radians(t.rotation.yaw), v.x, v.y, float(actor.bounding_box.extent.x))


def free_distance(route: Route, ego: Any, others: list[Any], speed: float) -> float:
    """Metres the ego may still drive along ``route`` before it must stand (inf: no limit).

    Args:
        route: the ego's route.
        ego: the ego vehicle.
        others: every other vehicle.
        speed: the ego's speed, m/s.
    """
    ex, ey, _, _, _, ego_half = _state(ego)
    here = route.project(ex, ey)
    room = math.inf
    times = np.arange(HORIZON_STEP_S, HORIZON_S + 1e-9, HORIZON_STEP_S)
    pace = max(speed, CREEP_MPS)
    ego_path = route.points_at(here.s + pace * times)
    heading = route.points_at(here.s + pace * times + 0.5) - ego_path
    heading /= np.maximum(np.hypot(heading[:, 0], heading[:, 1]), 1e-6)[:, None]
    for other in others:
        x, y, yaw, vx, vy, half = _state(other)
        if math.hypot(x - ex, y - ey) > LOOK_AHEAD_M + 10.0:
            continue
        at = route.project(x, y, here.index)
        ahead = at.s - here.s
        if abs(at.lateral) < at.half_width + ON_ROUTE_MARGIN_M and -BEHIND_M < ahead < LOOK_AHEAD_M:
            if ahead > 0.0:  # a leader: keep its braking distance less a margin on top of the gap
                along = vx * math.cos(at.yaw) + vy * math.sin(at.yaw)
                stopping = max(along, 0.0) ** 2 / (2.0 * PLANNED_DECEL_MPS2 * 1.5)
                room = min(room, ahead - ego_half - half + stopping)
            continue
        if math.hypot(vx, vy) < 0.3:
            continue
        d = np.stack([x + vx * times, y + vy * times], axis=1) - ego_path
        lon = d[:, 0] * heading[:, 0] + d[:, 1] * heading[:, 1]
        lat = -d[:, 0] * heading[:, 1] + d[:, 1] * heading[:, 0]
        meet = np.flatnonzero((np.abs(lat) < MEET_LATERAL_M) & (np.abs(lon) < MEET_M))
        if len(meet):
            room = min(room, pace * times[meet[0]] - MEET_M)
    return room
