"""Turn-taking at junctions for the fake traffic manager: a reservation per junction.

CARLA's traffic manager gives non-signalised junctions to vehicles by order of arrival
(``TrafficLightStage.h``). This does the same, path by path: the junction's connecting lanes
are sampled once, and two of them conflict when their centre lines come closer than
CONFLICT_M anywhere, unless they leave from the same point (a vehicle behind another on the same
entry follows it, which car following handles). A vehicle asks for the junction when it comes
within reach of it; it may enter once no vehicle that asked before it, on a conflicting path,
still holds or awaits the junction, and no other vehicle (the ego) stands inside the junction
near its path. Ties between vehicles that ask on the same tick go to the one nearer the
junction, then to the one registered first. A vehicle that asked earlier stops blocking a
conflicting path once its rear is CLEAR_M past the last point where the two paths come close,
and holds its place until its rear has left the junction; no vehicle waits for one that asked
after it, so vehicles cannot wait on each other in a circle at one junction.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import carla
import numpy as np

CONFLICT_M = 3.0  # centre lines closer than this: two vehicles on them could touch
SAME_ENTRY_M = 0.5  # lanes starting this close share an entry (one queue, car following)
SAMPLE_M = 1.0  # spacing of the samples of a connecting lane
OCCUPIED_M = 3.0  # a vehicle centre this close to a conflicting path occupies it
CLEAR_M = 2.0  # a vehicle's rear this far past a conflict no longer blocks it

LaneKey = tuple[int, int]  # (road_id, lane_id) of a connecting lane


@dataclass
class JunctionPaths:
    """One junction's connecting lanes and which of them conflict.

    Attributes:
        keys: the connecting lanes, in a fixed order.
        points: per lane, its centre line samples [n, 2].
        conflicts: bool [L, L]: the lanes' vehicles must take turns.
        clear_after: [L, L]: distance along lane i past which it no longer comes near lane j.
        box: (x_min, y_min, x_max, y_max) around every connecting lane.
    """

    keys: list[LaneKey]
    points: list[np.ndarray]
    conflicts: np.ndarray
    clear_after: np.ndarray
    box: tuple[float, float, float, float]
    index: dict[LaneKey, int] = field(default_factory=dict)

    def conflict(self, a: LaneKey, b: LaneKey) -> bool:
        ia, ib = self.index.get(a), self.index.get(b)
        if ia is None or ib is None:
            return True  # a lane this table does not know: take turns to be safe
        return bool(self.conflicts[ia, ib])

    def blocks(self, holder: LaneKey, progress_m: float, half_length: float, waiting: LaneKey) -> bool:
        """Whether a vehicle ``progress_m`` along lane ``holder`` (its centre; negative before
        the entry) still blocks lane ``waiting``."""
        if not self.conflict(holder, waiting):
            return False
        i, j = self.index.get(holder), self.index.get(waiting)
        if i is None or j is None:
            return True
        return progress_m < self.clear_after[i, j] + half_length + CLEAR_M

    def progress(self, key: LaneKey, x: float, y: float) -> float:
        """Distance along lane ``key`` of the point nearest (x, y); negative before its entry,
        beyond its length past its end."""
        i = self.index.get(key)
        if i is None:
            return -np.inf
        points = self.points[i]
        k = int(np.argmin(np.hypot(points[:, 0] - x, points[:, 1] - y)))
        if len(points) > 1 and k in (0, len(points) - 1):
            a, b = (points[0], points[1]) if k == 0 else (points[-2], points[-1])
            d = b - a
            along = ((x - a[0]) * d[0] + (y - a[1]) * d[1]) / max(float(np.hypot(*d)), 1e-9)
            return min(along, 0.0) if k == 0 else k * SAMPLE_M + max(along - float(np.hypot(*d)), 0.0)
        return k * SAMPLE_M

    def guarded(self, key: LaneKey) -> np.ndarray:
        """The samples [n, 2] of ``key``'s lane and of every lane conflicting with it."""
        i = self.index.get(key)
        if i is None:
            return np.concatenate(self.points)
        return np.concatenate([p for j, p in enumerate(self.points) if j == i or self.conflicts[i, j]])


def junction_paths(junction: carla.Junction) -> JunctionPaths:
    """Samples ``junction``'s driving connecting lanes and tabulates their conflicts."""
    keys: list[LaneKey] = []
    points: list[np.ndarray] = []
    for entry, _exit in junction.get_waypoints(carla.LaneType.Driving):
        key = (entry.road_id, entry.lane_id)
        if key in keys:
            continue
        keys.append(key)
        points.append(_lane_samples(entry))
    count = len(keys)
    conflicts = np.zeros((count, count), bool)
    clear_after = np.zeros((count, count))
    for i in range(count):
        for j in range(i + 1, count):
            shared_entry = np.hypot(*(points[i][0] - points[j][0])) < SAME_ENTRY_M
            gaps = np.hypot(points[i][:, None, 0] - points[j][None, :, 0], points[i][:, None, 1] - points[j][None, :, 1])
            close = gaps < CONFLICT_M
            conflicts[i, j] = conflicts[j, i] = (not shared_entry) and bool(close.any())
            if conflicts[i, j]:
                clear_after[i, j] = SAMPLE_M * float(np.flatnonzero(close.any(axis=1)).max())
                clear_after[j, i] = SAMPLE_M * float(np.flatnonzero(close.any(axis=0)).max())
    everything = np.concatenate(points) if points else np.zeros((1, 2))
    low, high = everything.min(axis=0), everything.max(axis=0)
    box = (float(low[0]), float(low[1]), float(high[0]), float(high[1]))
    return JunctionPaths(keys, points, conflicts, clear_after, box, {k: i for i, k in enumerate(keys)})


def _lane_samples(entry: carla.Waypoint) -> np.ndarray:
    """The centre line of one connecting lane, SAMPLE_M apart, from its entry to its end."""
    out = [entry]
    while len(out) < 1000:
        options = [w for w in out[-1].next(SAMPLE_M) if (w.road_id, w.lane_id) == (entry.road_id, entry.lane_id)]
        if not options or options[0].s <= out[-1].s:
            break
        out.append(options[0])
    return np.array([[w.transform.location.x, w.transform.location.y] for w in out])


@dataclass
class _Request:
    vehicle_id: int
    key: LaneKey
    order: tuple[int, float, int]  # (tick asked, distance to the entry then, registration)
    granted: bool = False


class JunctionBook:
    """The reservations of every junction on one traffic manager's map."""

    def __init__(self, carla_map: carla.Map) -> None:
        self._map = carla_map
        self._paths: dict[int, JunctionPaths] = {}
        self._queues: dict[int, list[_Request]] = {}
        self._held: dict[int, int] = {}  # vehicle id -> junction id it asked for

    def paths(self, junction_id: int, waypoint: carla.Waypoint) -> JunctionPaths:
        """The conflict table of the junction ``waypoint`` lies in (built once)."""
        if junction_id not in self._paths:
            self._paths[junction_id] = junction_paths(waypoint.get_junction())
        return self._paths[junction_id]

    def asked(self, vehicle_id: int) -> int | None:
        """The junction ``vehicle_id`` asked for and has not left, or None."""
        return self._held.get(vehicle_id)

    def ask(self, vehicle_id: int, junction_id: int, key: LaneKey, order: tuple[int, float, int],
            granted: bool = False) -> None:
        """Queues ``vehicle_id`` for ``junction_id`` on connecting lane ``key`` (once);
        ``granted`` for a vehicle that is already inside it."""
        if vehicle_id in self._held:
            return
        queue = self._queues.setdefault(junction_id, [])
        queue.append(_Request(vehicle_id, key, order, granted))
        queue.sort(key=lambda r: r.order)
        self._held[vehicle_id] = junction_id

    def may_enter(self, vehicle_id: int, where: dict[int, tuple[float, float, float]], others: np.ndarray) -> bool:
        """Whether ``vehicle_id`` may enter the junction it asked for (granted for good once true).

        Args:
            vehicle_id: a vehicle that asked.
            where: (x, y, half length) of every vehicle that may have asked, by id.
            others: float [k, 2]: centres of vehicles outside the traffic manager (the ego).
        """
        junction_id = self._held[vehicle_id]
        queue = self._queues[junction_id]
        paths = self._paths[junction_id]
        mine = next(r for r in queue if r.vehicle_id == vehicle_id)
        if mine.granted:
            return True
        ahead = True
        for request in queue:
            if request is mine:
                ahead = False
                continue
            if not (ahead or request.granted):  # those behind wait for it, unless let in before
                continue
            x, y, half = where.get(request.vehicle_id, (np.inf, np.inf, 0.0))
            if paths.blocks(request.key, paths.progress(request.key, x, y), half, mine.key):
                return False
        if len(others) and _occupied(paths, mine.key, others):
            return False
        mine.granted = True
        return True

    def leave(self, vehicle_id: int) -> None:
        """Drops ``vehicle_id``'s reservation (it left the junction, or the world)."""
        junction_id = self._held.pop(vehicle_id, None)
        if junction_id is not None:
            self._queues[junction_id] = [r for r in self._queues[junction_id] if r.vehicle_id != vehicle_id]


def _occupied(paths: JunctionPaths, key: LaneKey, centres: np.ndarray) -> bool:
    """Some centre stands inside the junction's box within OCCUPIED_M of ``key``'s lane or a
    lane conflicting with it."""
    x0, y0, x1, y1 = paths.box
    inside = centres[(centres[:, 0] >= x0) & (centres[:, 0] <= x1) & (centres[:, 1] >= y0) & (centres[:, 1] <= y1)]
    if not len(inside):
        return False
    guarded = paths.guarded(key)
    gaps = np.hypot(inside[:, None, 0] - guarded[None, :, 0], inside[:, None, 1] - guarded[None, :, 1])
    return bool(gaps.min() < OCCUPIED_M)
