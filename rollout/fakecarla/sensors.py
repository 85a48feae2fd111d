"""Sensor data types (named as in the real ``carla`` module), late camera delivery, and the
lane-invasion test against the real Map's lanes."""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable, NamedTuple

import carla
import numpy as np

log = logging.getLogger(__name__)

IDLE_EXIT_S = 2.0  # a delivery thread with nothing to do for this long exits


class SensorData:
    """Base of every measurement: the frame and simulation time it was produced at."""

    def __init__(self, frame: int, timestamp: float, transform: carla.Transform) -> None:
        self.frame = frame
        self.timestamp = timestamp
        self.transform = transform


class Image(SensorData):
    """An RGB camera image: BGRA bytes, row-major, ``height * width * 4`` long."""

    def __init__(self, frame: int, timestamp: float, transform: carla.Transform, width: int, height: int,
                 fov: float, raw_data: bytes) -> None:
        super().__init__(frame, timestamp, transform)
        self.width, self.height, self.fov = width, height, fov
        self.raw_data = raw_data

    def __len__(self) -> int:
        return self.width * self.height


class CollisionEvent(SensorData):
    """The parent ``actor`` hit ``other_actor``; ``normal_impulse`` in N*s (world frame)."""

    def __init__(self, frame: int, timestamp: float, transform: carla.Transform, actor: Any,
                 other_actor: Any, normal_impulse: carla.Vector3D) -> None:
        super().__init__(frame, timestamp, transform)
        self.actor, self.other_actor, self.normal_impulse = actor, other_actor, normal_impulse


class LaneInvasionEvent(SensorData):
    """The parent ``actor`` crossed ``crossed_lane_markings`` (real carla.LaneMarking objects)."""

    def __init__(self, frame: int, timestamp: float, transform: carla.Transform, actor: Any,
                 crossed_lane_markings: list[carla.LaneMarking]) -> None:
        super().__init__(frame, timestamp, transform)
        self.actor, self.crossed_lane_markings = actor, crossed_lane_markings


class Delivery:
    """Calls sensor callbacks from a worker thread at given wall-clock times, in order.

    The thread starts on the first ``post`` and exits after IDLE_EXIT_S without work, so an
    abandoned server leaves no thread behind.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._last_due = 0.0
        self._closed = False

    def post(self, delay_s: float, callback: Callable[[Any], None], data: Any) -> None:
        """Delivers ``data`` to ``callback`` ``delay_s`` from now, never before earlier posts."""
        with self._cond:
            if self._closed:
                return
            due = max(time.monotonic() + delay_s, self._last_due)
            self._last_due = due
            heapq.heappush(self._heap, (due, next(self._seq), callback, data))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fakecarla-sensors", daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        """Drops everything not yet delivered; later posts are ignored."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    if self._closed:
                        self._thread = None
                        return
                    wait = self._heap[0][0] - time.monotonic() if self._heap else IDLE_EXIT_S
                    if not self._cond.wait(timeout=max(wait, 0.0)) and not self._heap:
                        self._thread = None
                        return
                _, _, callback, data = heapq.heappop(self._heap)
            try:
                callback(data)
            except Exception:  # a failing user callback must not kill delivery
                log.exception("sensor_callback_failed frame=%s", getattr(data, "frame", None))


# LibCarla's LaneCrossingCalculator reads marks on these lane types only (its FLAGS)
MARKED_LANES = int(carla.LaneType.Driving | carla.LaneType.Bidirectional | carla.LaneType.Biking
                   | carla.LaneType.Parking)


class CornerPlace(NamedTuple):
    """Where one corner of a vehicle's box is on the map, as LaneCrossingCalculator sees it."""

    x: float
    y: float
    waypoint: Any  # the nearest waypoint on a marked lane (projected to the road), or None
    off_road: bool  # not inside any marked lane


def corner_places(carla_map: carla.Map, corners: np.ndarray) -> list[CornerPlace]:
    """The places of a footprint's corners ([k, 2]); kept from tick to tick, so each corner is
    looked up once per tick."""
    places = []
    for x, y in corners:
        location = carla.Location(x=float(x), y=float(y))
        waypoint = carla_map.get_waypoint(location, project_to_road=True, lane_type=MARKED_LANES)
        inside = carla_map.get_waypoint(location, project_to_road=False, lane_type=MARKED_LANES)
        places.append(CornerPlace(float(x), float(y), waypoint, inside is None))
    return places


def crossed_markings(before: list[CornerPlace], after: list[CornerPlace]) -> list[carla.LaneMarking]:
    """Lane markings crossed by a footprint's corners moving from ``before`` to ``after``.

    LibCarla's rule (``LaneCrossingCalculator::Calculate``, per corner, as its lane-invasion
    sensor calls it): nothing when the two places are on different roads or lane sections, when
    either is in a junction, or when both are off the marked lanes; nothing when both are on the
    same lane. Otherwise the marking on the side the corner moved to, relative to the lane it
    came from: that lane's own marking, or, coming back from off the road, the lane it lands
    on's marking on the other side. So cutting a corner inside a junction, where a real town has
    no markings, is no invasion, and running along a lane into the next road is none either.
    """
    found: dict[str, carla.LaneMarking] = {}
    for was, now in zip(before, after):
        w0, w1 = was.waypoint, now.waypoint
        if w0 is None or w1 is None:
            continue
        if (w0.road_id, w0.section_id) != (w1.road_id, w1.section_id) or w0.is_junction or w1.is_junction:
            continue
        if was.off_road and now.off_road:
            continue
        if w0.lane_id == w1.lane_id and not was.off_road and not now.off_road:
            continue
        forward = w0.transform.get_forward_vector()
        dx, dy = now.x - was.x, now.y - was.y
        to_right = -forward.x * dy + forward.y * dx < 0.0  # CARLA's frame: +y is right of +x
        if to_right:
            marking = w1.left_lane_marking if was.off_road else w0.right_lane_marking
        else:
            marking = w1.right_lane_marking if was.off_road else w0.left_lane_marking
        if marking is not None:
            found.setdefault(str(marking.type), marking)
    return list(found.values())
