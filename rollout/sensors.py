"""Sensor readings matched to the tick's frame number.

CARLA delivers camera images a few frames late and from another thread, so "the latest image"
after ``world.tick()`` is often an old one. ``FrameQueue.get(frame)`` waits (with a timeout) for
the reading of exactly that frame, dropping older ones (the leaderboard's ``SensorInterface``
pattern). Event sensors (collision, lane invasion) fire only when something happens, so
``EventBuffer.take(frame)`` returns whatever arrived for frames up to the tick's frame.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np

from rollout.observation import bgra_to_array

from common.errors import SimulatorTimeout


class FrameQueue:
    """Readings of one streaming sensor, keyed by frame, consumed in frame order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: dict[int, Any] = {}
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, data: Any) -> None:
        """The sensor callback: stores a reading under ``data.frame``."""
        with self._cond:
            self._items[int(data.frame)] = data
            self._cond.notify_all()

    def get(self, frame: int, timeout_s: float) -> Any:
        """Waits for the reading of ``frame``; drops readings of earlier frames.

        Args:
            frame: the frame number that ``world.tick()`` returned.
            timeout_s: seconds to wait.

        Returns:
            The sensor data object of that frame.

        Raises:
            SimulatorTimeout: naming the sensor and the frame if it did not arrive in time.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while frame not in self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    have = sorted(self._items)
                    raise SimulatorTimeout(
                        f"sensor {self.name!r}: no data for frame {frame} within {timeout_s} s "
                        f"(holding frames {have[-5:]})")
                self._cond.wait(remaining)
            data = self._items.pop(frame)
            stale = [f for f in self._items if f < frame]
            for f in stale:
                del self._items[f]
            self.dropped += len(stale)
            return data

    def clear(self) -> None:
        with self._cond:
            self._items.clear()


class EventBuffer:
    """Events of one event sensor (collision, lane invasion) until the env takes them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._events: list[Any] = []
        self._lock = threading.Lock()

    def put(self, event: Any) -> None:
        """The sensor callback."""
        with self._lock:
            self._events.append(event)

    def take(self, frame: int) -> list[Any]:
        """Removes and returns the events of frames up to and including ``frame``."""
        with self._lock:
            taken = [e for e in self._events if int(e.frame) <= frame]
            self._events = [e for e in self._events if int(e.frame) > frame]
            return taken

    def clear(self) -> None:
        with self._lock:
            self._events.clear()



@dataclass(frozen=True)
class CameraMount:
    """An RGB camera attached to the ego vehicle.

    Attributes:
        name: key of its images in ``SensorReading.images``.
        width: rendered width, pixels.
        height: rendered height, pixels.
        fov: horizontal field of view, degrees.
        x: forward of the vehicle origin, metres.
        z: above the vehicle origin, metres.
        pitch: degrees, negative looks down (-90: straight down).
        yaw: degrees relative to the vehicle.
    """

    name: str
    width: int
    height: int
    fov: float
    x: float
    z: float
    pitch: float
    yaw: float = 0.0


class SensorReading(NamedTuple):
    """What the sensors reported for one tick's frame.

    Attributes:
        images: camera name -> BGRA uint8 [height, width, 4] of exactly that frame.
        collisions: collision events up to that frame.
        lane_invasions: lane-invasion events up to that frame.
    """

    images: dict[str, np.ndarray]
    collisions: list[Any]
    lane_invasions: list[Any]


class SensorRig:
    """The ego's cameras, collision and lane-invasion sensors, spawned through the carla API."""

    def __init__(self, world: Any, carla_module: Any, ego: Any, cameras: Sequence[CameraMount],
                 timeout_s: float) -> None:
        """Spawns and starts every sensor attached to ``ego``.

        Args:
            world: the carla World.
            carla_module: the carla module (real or fake) for Transform and friends.
            ego: the vehicle to attach to.
            cameras: the RGB cameras; the first is the observation camera.
            timeout_s: how long ``read`` waits for each camera's frame.
        """
        self._timeout_s = timeout_s
        self._sensors: list[Any] = []
        self._cameras: dict[str, tuple[CameraMount, FrameQueue]] = {}
        self.collisions = EventBuffer("collision")
        self.lane_invasions = EventBuffer("lane_invasion")
        library = world.get_blueprint_library()
        c = carla_module
        for mount in cameras:
            bp = library.find("sensor.camera.rgb")
            for key, value in (("image_size_x", mount.width), ("image_size_y", mount.height),
                               ("fov", mount.fov), ("sensor_tick", 0.0)):
                bp.set_attribute(key, str(value))
            where = c.Transform(c.Location(x=mount.x, z=mount.z),
                                c.Rotation(pitch=mount.pitch, yaw=mount.yaw))
            queue = FrameQueue(mount.name)
            self._start(world.spawn_actor(bp, where, attach_to=ego), queue.put)
            self._cameras[mount.name] = (mount, queue)
        origin = c.Transform()
        self._start(world.spawn_actor(library.find("sensor.other.collision"), origin,
                                      attach_to=ego), self.collisions.put)
        self._start(world.spawn_actor(library.find("sensor.other.lane_invasion"), origin,
                                      attach_to=ego), self.lane_invasions.put)

    def _start(self, sensor: Any, callback: Any) -> None:
        self._sensors.append(sensor)
        sensor.listen(callback)

    def read(self, frame: int) -> SensorReading:
        """Every camera's image of ``frame`` (waiting for late ones) and the events so far.

        Raises:
            SimulatorTimeout: if a camera's image of ``frame`` does not arrive in time.
        """
        images = {}
        for name, (mount, queue) in self._cameras.items():
            data = queue.get(frame, self._timeout_s)
            images[name] = bgra_to_array(data.raw_data, mount.width, mount.height).copy()
        return SensorReading(images, self.collisions.take(frame), self.lane_invasions.take(frame))

    @property
    def actor_ids(self) -> list[int]:
        return [s.id for s in self._sensors]

    def destroy(self) -> None:
        """Stops every listener, then destroys every sensor (sensors before the vehicle)."""
        for sensor in self._sensors:
            if sensor.is_listening():
                sensor.stop()
        for sensor in self._sensors:
            sensor.destroy()
        self._sensors.clear()
