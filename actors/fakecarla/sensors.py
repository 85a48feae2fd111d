"""Sensor data types (named as in the real ``carla`` module), late camera delivery, and the
lane-invasion test against the real Map's lanes."""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable

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


def crossed_markings(carla_map: carla.Map, before: np.ndarray, after: np.ndarray) -> list[carla.LaneMarking]:
    """Lane markings crossed by a footprint moving from ``before`` to ``after`` (corners [k, 2]).

    A corner crosses when it leaves the driving lane it was on sideways: its new lateral offset
    from that lane's centre exceeds half the lane width and it is no longer in that lane. The
    marking is the lane's marking on that side (left/right relative to the lane's direction).
    Running along a lane into the next road or junction is not a crossing.
    """
    found: dict[str, carla.LaneMarking] = {}
    for (bx, by), (ax, ay) in zip(before, after):
        was = carla_map.get_waypoint(carla.Location(x=float(bx), y=float(by)), project_to_road=False,
                                     lane_type=carla.LaneType.Driving)
        if was is None:
            continue
        now = carla_map.get_waypoint(carla.Location(x=float(ax), y=float(ay)), project_to_road=False,
                                     lane_type=carla.LaneType.Driving)
        if now is not None and (now.road_id, now.lane_id) == (was.road_id, was.lane_id):
            continue
        centre = was.transform.location
        right = was.transform.get_right_vector()
        lateral = (ax - centre.x) * right.x + (ay - centre.y) * right.y
        if abs(lateral) <= was.lane_width / 2.0:
            continue
        marking = was.right_lane_marking if lateral > 0 else was.left_lane_marking
        found.setdefault(str(marking.type), marking)
    return list(found.values())
