"""The traffic manager: drives autopilot vehicles along lanes with the TM's seeded RNG.

Each vehicle keeps a planned list of waypoints 2 m apart (extended with ``waypoint.next``,
choosing among branches at junctions at random), steers by pure pursuit and holds the speed
limit, braking for anything in a corridor ahead of it.
"""
from __future__ import annotations

import math
import random
from collections import deque
from typing import TYPE_CHECKING

import carla

from actors.fakecarla.dynamics import MAX_STEER_RAD

if TYPE_CHECKING:
    from actors.fakecarla.actors import Vehicle
    from actors.fakecarla.server import Connection

SPEED_LIMIT_MPS = 30.0 / 3.6
PLAN_STEP_M = 2.0
PLAN_LENGTH = 15
CORRIDOR_HALF_WIDTH_M = 1.8
DEFAULT_GAP_M = 5.0


class TrafficManager:
    """One traffic manager (one per port on a server), as ``client.get_trafficmanager(port)``."""

    def __init__(self, conn: Connection, port: int) -> None:
        self._conn = conn
        self._port = port
        self._rng = random.Random(0)
        self._synchronous = False
        self._global_speed_pct = 0.0
        self._vehicle_speed_pct: dict[int, float] = {}
        self._gap_m = DEFAULT_GAP_M
        self._plans: dict[int, deque[carla.Waypoint]] = {}

    def get_port(self) -> int:
        return self._port

    def set_synchronous_mode(self, mode_switch: bool = True) -> None:
        self._conn.check()
        self._synchronous = bool(mode_switch)

    def set_random_device_seed(self, value: int) -> None:
        self._conn.check()
        self._rng = random.Random(int(value))

    def global_percentage_speed_difference(self, percentage: float) -> None:
        """Drives ``percentage`` % below the speed limit (negative: above)."""
        self._conn.check()
        self._global_speed_pct = float(percentage)

    def vehicle_percentage_speed_difference(self, actor: Vehicle, percentage: float) -> None:
        self._conn.check()
        self._vehicle_speed_pct[actor.id] = float(percentage)

    def set_global_distance_to_leading_vehicle(self, distance: float) -> None:
        self._conn.check()
        self._gap_m = float(distance)

    def _register(self, vehicle: Vehicle) -> None:
        """Starts driving ``vehicle`` (called by ``Vehicle.set_autopilot``)."""
        self._plans.pop(vehicle.id, None)

    def _control(self, vehicle: Vehicle, others: list[Vehicle], carla_map: carla.Map) -> carla.VehicleControl:
        """The control for one autopilot vehicle this tick (called by the server's tick)."""
        plan = self._plan(vehicle, carla_map)
        body = vehicle._body
        lookahead = max(4.0, 0.8 * abs(body.speed) + 3.0)
        target = plan[-1].transform.location
        for waypoint in plan:
            loc = waypoint.transform.location
            if math.hypot(loc.x - body.x, loc.y - body.y) >= lookahead:
                target = loc
                break
        dx, dy = target.x - body.x, target.y - body.y
        alpha = math.atan2(dy, dx) - body.yaw
        distance = max(math.hypot(dx, dy), 1e-3)
        steer_angle = math.atan2(2.0 * vehicle._model.wheelbase * math.sin(alpha), distance)
        pct = self._vehicle_speed_pct.get(vehicle.id, self._global_speed_pct)
        desired = SPEED_LIMIT_MPS * (1.0 - pct / 100.0)
        gap = self._free_distance(vehicle, others)
        desired = min(desired, max(0.0, 0.5 * (gap - self._gap_m)))
        error = desired - body.speed
        throttle = min(max(0.5 * error, 0.0), 1.0)
        brake = 1.0 if desired < 0.1 else min(max(-0.3 * error, 0.0), 1.0)
        return carla.VehicleControl(throttle=throttle, steer=min(max(steer_angle / MAX_STEER_RAD, -1.0), 1.0),
                                    brake=brake)

    def _forget(self, actor_id: int) -> None:
        self._plans.pop(actor_id, None)
        self._vehicle_speed_pct.pop(actor_id, None)

    def _plan(self, vehicle: Vehicle, carla_map: carla.Map) -> deque[carla.Waypoint]:
        body = vehicle._body
        plan = self._plans.get(vehicle.id)
        if not plan:
            here = carla_map.get_waypoint(carla.Location(x=body.x, y=body.y))
            plan = deque([here])
            self._plans[vehicle.id] = plan
        while len(plan) > 1:  # drop waypoints the vehicle has passed
            loc = plan[0].transform.location
            ahead = (loc.x - body.x) * math.cos(body.yaw) + (loc.y - body.y) * math.sin(body.yaw)
            if ahead > 0.5:
                break
            plan.popleft()
        while len(plan) < PLAN_LENGTH:
            options = plan[-1].next(PLAN_STEP_M)
            if not options:
                break
            plan.append(options[0] if len(options) == 1 else self._rng.choice(options))
        return plan

    def _free_distance(self, vehicle: Vehicle, others: list[Vehicle]) -> float:
        """Distance to the nearest other vehicle in a corridor ahead (inf if none)."""
        body = vehicle._body
        c, s = math.cos(body.yaw), math.sin(body.yaw)
        horizon = 15.0 + 2.0 * abs(body.speed)
        best = math.inf
        for other in others:
            if other is vehicle:
                continue
            dx, dy = other._body.x - body.x, other._body.y - body.y
            ahead, side = dx * c + dy * s, -dx * s + dy * c
            if 0.0 < ahead < horizon and abs(side) < CORRIDOR_HALF_WIDTH_M + other._model.half_width:
                best = min(best, ahead - vehicle._model.half_length - other._model.half_length)
        return best
