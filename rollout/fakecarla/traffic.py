"""The traffic manager: drives autopilot vehicles along lanes, in turn at junctions, with a gap
to whatever is ahead, and stopping or parking in the lane now and then.

Every vehicle keeps a plan: waypoints PLAN_STEP_M apart ahead of it, extended with
``waypoint.next`` and a branch drawn from its own generator at forks. Each tick, for all the
manager's vehicles at once (rollout/fakecarla/traffic_following.py): the gap along the plan to the
nearest vehicle in the way (any vehicle, the ego included), the Intelligent Driver Model's
acceleration for it, a corner speed, and pure-pursuit steering. Junctions are taken in turn
(rollout/fakecarla/traffic_junctions.py): a vehicle without the junction stops before its entry.

Random stops (FakeCarlaConfig.npc_stops_per_min, npc_stop_s, npc_park_fraction, npc_park_s):
while a vehicle drives (above STOP_MIN_SPEED_MPS, at least STOP_CLEAR_M from the junctions
before and after it), it starts a stop with probability ``rate * dt / 60`` per tick; a stop is a
park with probability ``npc_park_fraction``. It brakes at STOP_DECEL_MPS2, stands for the stop's
or the park's time, and drives on.

Determinism: ``set_random_device_seed`` seeds the manager's generator; each vehicle draws its own
generator from it when it is handed over, so the same seed and the same spawn order give the
same traffic.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import carla
import numpy as np

from rollout.fakecarla import traffic_following as follow
from rollout.fakecarla.traffic_junctions import JunctionBook, LaneKey
from common.config import FakeCarlaConfig

if TYPE_CHECKING:
    from rollout.fakecarla.actors import Vehicle
    from rollout.fakecarla.server import Connection

SPEED_LIMIT_MPS = 30.0 / 3.6
DESIRED_SPEED_RANGE = (0.75, 1.0)  # each vehicle's free speed, as a fraction of the limit
PLAN_STEP_M = 2.0
PLAN_POINTS = 20
ASK_JUNCTION_M = 6.0  # a vehicle asks for a junction this far from its entry, plus its braking distance
STOP_LINE_M = 0.5  # a vehicle waiting for a junction stops s0 + this before the entry
EXIT_CLEAR_M = 1.0  # a vehicle releases a junction once its rear is this far out of it
STOP_MIN_SPEED_MPS = 2.0
STOP_CLEAR_M = 30.0
STOP_DECEL_MPS2 = 2.5
DEFAULT_GAP_M = follow.IDM_MIN_GAP_M


@dataclass
class _Point:
    x: float
    y: float
    yaw: float
    junction: int  # junction id, or -1 outside junctions
    key: LaneKey
    waypoint: carla.Waypoint


@dataclass
class _Npc:
    """One autopilot vehicle's plan and state."""

    vehicle: Vehicle
    order: int  # registration order: the last tie-break at junctions
    rng: random.Random
    desired_fraction: float
    plan: list[_Point] = field(default_factory=list)
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    corner_mps: float = math.inf  # the corner speed of the plan's first metres
    stop_left_s: float = 0.0  # standing time left of the current stop
    stopping: bool = False
    past_junction_m: float = math.inf  # distance driven since leaving the last junction
    exit_xy: tuple[float, float] | None = None  # last point passed in the asked junction


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
        self._npcs: dict[int, _Npc] = {}
        self._registered = 0
        self._ticks = 0
        self._book: JunctionBook | None = None
        self._book_map: carla.Map | None = None
        self._stats = {"stops": 0, "parks": 0, "eligible_s": 0.0}

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
        """The standstill gap (the car-following model's s0), metres."""
        self._conn.check()
        self._gap_m = float(distance)

    def shut_down(self) -> None:
        """Stops this manager: its vehicles keep their last control; the next
        ``get_trafficmanager(port)`` makes a new one."""
        self._conn.check()
        self._npcs.clear()
        self._book = None
        if self._conn.server._tms.get(self._port) is self:
            del self._conn.server._tms[self._port]

    # -- called by the server -----------------------------------------------------------------
    def _register(self, vehicle: Vehicle) -> None:
        """Starts driving ``vehicle`` (called by ``Vehicle.set_autopilot``)."""
        rng = random.Random(self._rng.getrandbits(64))
        self._npcs[vehicle.id] = _Npc(vehicle, self._registered, rng, rng.uniform(*DESIRED_SPEED_RANGE))
        self._registered += 1

    def _forget(self, actor_id: int) -> None:
        self._npcs.pop(actor_id, None)
        self._vehicle_speed_pct.pop(actor_id, None)
        if self._book is not None:
            self._book.leave(actor_id)

    def _stats_snapshot(self) -> dict[str, float]:
        """Random stops and parks begun, and the seconds vehicles could have begun one."""
        return dict(self._stats)

    def _drive(self, autopilots: list[Vehicle], vehicles: list[Vehicle], carla_map: carla.Map,
               cfg: FakeCarlaConfig, dt: float) -> None:
        """Sets this tick's control of every vehicle in ``autopilots`` (called by the server's tick).

        Args:
            autopilots: the vehicles this manager drives.
            vehicles: every vehicle in the world (what the autopilots must not hit).
            carla_map: the world's map.
            cfg: the fake's settings (random stops).
            dt: the tick's simulated seconds.
        """
        self._ticks += 1
        book = self._junctions(carla_map)
        npcs = [self._npcs[v.id] for v in autopilots if v.id in self._npcs]
        if not npcs:
            return
        for npc in npcs:
            self._update_plan(npc, carla_map, book, dt)
        world = _world_arrays(vehicles)
        index = {v.id: i for i, v in enumerate(vehicles)}
        paths = self._paths(npcs, world, [index[n.vehicle.id] for n in npcs])
        gap, lead_speed = follow.gaps_ahead(paths, world)
        speed = world.speed[paths.owner]
        closing = speed - lead_speed
        others = np.array([(v._body.x, v._body.y) for v in vehicles if v._autopilot_port is None]).reshape(-1, 2)
        where = {n.vehicle.id: (n.vehicle._body.x, n.vehicle._body.y, n.vehicle._model.half_length) for n in npcs}
        for i, npc in enumerate(npcs):  # every vehicle asks before any is let in
            self._ask(npc, book, paths.s[i])
        for i, npc in enumerate(npcs):
            line = self._junction_gap(npc, book, paths.s[i], where, others)
            if line < gap[i]:
                gap[i], closing[i] = line, speed[i]
        desired = np.array([min(self._desired(n), n.corner_mps) for n in npcs])
        accel = follow.idm_accel(speed, desired, gap, closing, self._gap_m)
        for i, npc in enumerate(npcs):
            accel[i] = self._random_stop(npc, float(speed[i]), float(accel[i]), cfg, dt)
        throttle, brake = follow.pedals(accel, speed)
        wheelbase = np.array([n.vehicle._model.wheelbase for n in npcs])
        steer = follow.pure_pursuit(paths, world, wheelbase)
        for i, npc in enumerate(npcs):
            npc.vehicle._control = carla.VehicleControl(throttle=float(throttle[i]), steer=float(steer[i]),
                                                        brake=float(brake[i]))

    # -- internals -----------------------------------------------------------------------------
    def _junctions(self, carla_map: carla.Map) -> JunctionBook:
        if self._book is None or self._book_map is not carla_map:
            self._book, self._book_map = JunctionBook(carla_map), carla_map
        return self._book

    def _desired(self, npc: _Npc) -> float:
        pct = self._vehicle_speed_pct.get(npc.vehicle.id, self._global_speed_pct)
        return max(SPEED_LIMIT_MPS * npc.desired_fraction * (1.0 - pct / 100.0), 0.1)

    def _update_plan(self, npc: _Npc, carla_map: carla.Map, book: JunctionBook, dt: float) -> None:
        """Drops passed points, tops the plan up to PLAN_POINTS, and tracks junction exits."""
        body = npc.vehicle._body
        if not npc.plan:
            npc.plan.append(_point(carla_map.get_waypoint(carla.Location(x=body.x, y=body.y))))
        npc.past_junction_m += abs(body.speed) * dt
        c, s = math.cos(body.yaw), math.sin(body.yaw)
        changed = False
        while len(npc.plan) > 1 and (npc.plan[0].x - body.x) * c + (npc.plan[0].y - body.y) * s <= 0.5:
            passed = npc.plan.pop(0)
            changed = True
            if passed.junction >= 0 and book.asked(npc.vehicle.id) == passed.junction:
                npc.exit_xy = (passed.x, passed.y)
        while len(npc.plan) < PLAN_POINTS:
            options = npc.plan[-1].waypoint.next(PLAN_STEP_M)
            if not options:
                break
            npc.plan.append(_point(options[0] if len(options) == 1 else npc.rng.choice(options)))
            changed = True
        if changed or npc.arrays is None:
            npc.arrays = _plan_arrays(npc.plan)
            npc.corner_mps = follow.corner_speed(npc.arrays[0], npc.arrays[1])
        asked = book.asked(npc.vehicle.id)
        if asked is not None and npc.exit_xy is not None and asked not in npc.arrays[3]:
            if math.hypot(body.x - npc.exit_xy[0], body.y - npc.exit_xy[1]) >= npc.vehicle._model.half_length + EXIT_CLEAR_M:
                book.leave(npc.vehicle.id)
                npc.exit_xy = None
                npc.past_junction_m = 0.0

    def _paths(self, npcs: list[_Npc], world: follow.Vehicles, owners: list[int]) -> follow.Paths:
        n, k = len(npcs), PLAN_POINTS + 1
        xy, yaw = np.zeros((n, k, 2)), np.zeros((n, k))
        s, valid = np.zeros((n, k)), np.zeros((n, k), bool)
        for i, (npc, owner) in enumerate(zip(npcs, owners)):
            pxy, pyaw, cum, _ = npc.arrays
            m = len(pyaw)
            xy[i, 0], yaw[i, 0] = world.xy[owner], world.yaw[owner]
            xy[i, 1:m + 1], yaw[i, 1:m + 1] = pxy, pyaw
            first = math.hypot(pxy[0, 0] - world.xy[owner, 0], pxy[0, 1] - world.xy[owner, 1])
            s[i, 1:m + 1] = first + cum
            valid[i, :m + 1] = True
            xy[i, m + 1:], yaw[i, m + 1:], s[i, m + 1:] = xy[i, m], yaw[i, m], s[i, m]
        return follow.Paths(xy, yaw, s, valid, np.array(owners, int))

    def _ask(self, npc: _Npc, book: JunctionBook, s: np.ndarray) -> None:
        """Queues ``npc`` for the next junction on its plan once it is within reach of it."""
        ahead = np.flatnonzero(npc.arrays[3] >= 0)
        if book.asked(npc.vehicle.id) is not None or not len(ahead):
            return
        first = int(ahead[0])
        entry_s = float(s[first + 1])
        speed = max(npc.vehicle._body.speed, 0.0)
        if entry_s > ASK_JUNCTION_M + speed * speed / (2.0 * follow.IDM_COMFORT_BRAKE_MPS2):
            return
        point = npc.plan[first]
        book.paths(point.junction, point.waypoint)
        inside = first == 0 and entry_s <= npc.vehicle._model.half_length
        book.ask(npc.vehicle.id, point.junction, point.key, (self._ticks, entry_s, npc.order), granted=inside)

    def _junction_gap(self, npc: _Npc, book: JunctionBook, s: np.ndarray,
                      where: dict[int, tuple[float, float, float]], others: np.ndarray) -> float:
        """Gap to the stop line of a junction ``npc`` asked for and may not enter yet (inf if none)."""
        vid = npc.vehicle.id
        if book.asked(vid) is None or book.may_enter(vid, where, others):
            return math.inf
        ahead = np.flatnonzero(npc.arrays[3] >= 0)
        first = int(ahead[0]) if len(ahead) else 0
        return float(s[first + 1]) - npc.vehicle._model.half_length - STOP_LINE_M

    def _random_stop(self, npc: _Npc, speed: float, accel: float, cfg: FakeCarlaConfig, dt: float) -> float:
        """The acceleration after ``npc``'s random stop, if one is on (starts one at random)."""
        if npc.stopping:
            if speed > 0.05:
                return min(accel, -STOP_DECEL_MPS2)
            npc.stop_left_s -= dt
            if npc.stop_left_s > 0.0:
                return min(accel, -1.0)
            npc.stopping = False
            return accel
        clear = (npc.past_junction_m >= STOP_CLEAR_M and not (npc.arrays[3] >= 0).any()
                 and speed >= STOP_MIN_SPEED_MPS)
        if not clear:
            return accel
        self._stats["eligible_s"] += dt
        if cfg.npc_stops_per_min <= 0.0 or npc.rng.random() >= cfg.npc_stops_per_min * dt / 60.0:
            return accel
        park = npc.rng.random() < cfg.npc_park_fraction
        self._stats["parks" if park else "stops"] += 1
        npc.stopping, npc.stop_left_s = True, cfg.npc_park_s if park else cfg.npc_stop_s
        return min(accel, -STOP_DECEL_MPS2)


def _point(waypoint: carla.Waypoint) -> _Point:
    loc = waypoint.transform.location
    junction = waypoint.junction_id if waypoint.is_junction else -1
    return _Point(loc.x, loc.y, math.radians(waypoint.transform.rotation.yaw), junction,
                  (waypoint.road_id, waypoint.lane_id), waypoint)


def _plan_arrays(plan: list[_Point]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """xy [m, 2], yaw [m], distance from the first point [m], junction ids [m]."""
    xy = np.array([(p.x, p.y) for p in plan])
    steps = np.hypot(*np.diff(xy, axis=0).T) if len(plan) > 1 else np.zeros(0)
    cum = np.concatenate([[0.0], np.cumsum(steps)])
    return xy, np.array([p.yaw for p in plan]), cum, np.array([p.junction for p in plan])


def _world_arrays(vehicles: list[Vehicle]) -> follow.Vehicles:
    bodies = [(v._body.x, v._body.y, v._body.yaw, v._body.speed, v._model.half_length, v._model.half_width)
              for v in vehicles]
    a = np.array(bodies, np.float64).reshape(-1, 6)
    return follow.Vehicles(a[:, :2], a[:, 2], a[:, 3], a[:, 4], a[:, 5])
