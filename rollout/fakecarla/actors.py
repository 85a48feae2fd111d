"""Actors as the client sees them: ``Actor``, ``Vehicle``, the sensors and ``ActorList``.

Each object is a handle on the server's state; every call goes through the connection it was
spawned on, so a dead server makes it raise the client's time-out error.
"""
from __future__ import annotations

import fnmatch
import math
from typing import TYPE_CHECKING, Any, Callable, Iterator

import carla

from rollout.fakecarla.blueprints import VehicleModel
from rollout.fakecarla.dynamics import BodyState

if TYPE_CHECKING:
    from rollout.fakecarla.server import Connection


class Actor:
    """Common actor state: id, type, attributes, parent, liveness."""

    def __init__(self, conn: Connection, actor_id: int, type_id: str, attributes: dict[str, str],
                 parent: Actor | None = None) -> None:
        self._conn = conn
        self.id = actor_id
        self.type_id = type_id
        self.attributes = attributes
        self.parent = parent
        self.semantic_tags: list[int] = []
        self._alive = True

    @property
    def is_alive(self) -> bool:
        return self._alive and not self._conn.server.dead

    def get_world(self) -> Any:
        self._conn.check()
        return self._conn.world()

    def get_transform(self) -> carla.Transform:
        self._conn.check()
        return self._transform()

    def get_location(self) -> carla.Location:
        return self.get_transform().location

    def get_velocity(self) -> carla.Vector3D:
        self._conn.check()
        return carla.Vector3D()

    def get_acceleration(self) -> carla.Vector3D:
        self._conn.check()
        return carla.Vector3D()

    def get_angular_velocity(self) -> carla.Vector3D:
        self._conn.check()
        return carla.Vector3D()

    def destroy(self) -> bool:
        """Removes the actor from the world; False if it was already gone."""
        self._conn.check()
        if not self._alive:
            return False
        self._conn.server.remove_actor(self)
        self._alive = False
        return True

    def _transform(self) -> carla.Transform:
        return carla.Transform()

    def __repr__(self) -> str:
        return f"Actor(id={self.id}, type={self.type_id})"


class Vehicle(Actor):
    """A car moved by the kinematic bicycle model, by its own controls or by a traffic manager."""

    def __init__(self, conn: Connection, actor_id: int, type_id: str, attributes: dict[str, str],
                 model: VehicleModel, transform: carla.Transform) -> None:
        super().__init__(conn, actor_id, type_id, attributes)
        self._model = model
        self._body = BodyState(transform.location.x, transform.location.y, math.radians(transform.rotation.yaw))
        self._previous = self._body  # the state before the last tick (collisions restore it)
        self._control = carla.VehicleControl()
        self._autopilot_port: int | None = None
        self.bounding_box = carla.BoundingBox(carla.Location(z=model.half_height),
                                              carla.Vector3D(model.half_length, model.half_width, model.half_height))

    def _transform(self) -> carla.Transform:
        return carla.Transform(carla.Location(x=self._body.x, y=self._body.y, z=0.0),
                               carla.Rotation(yaw=math.degrees(self._body.yaw)))

    def get_velocity(self) -> carla.Vector3D:
        self._conn.check()
        return carla.Vector3D(self._body.speed * math.cos(self._body.yaw), self._body.speed * math.sin(self._body.yaw), 0.0)

    def get_acceleration(self) -> carla.Vector3D:
        """Longitudinal plus centripetal acceleration of the last tick, world frame."""
        self._conn.check()
        b = self._body
        lateral = b.speed * b.yaw_rate
        c, s = math.cos(b.yaw), math.sin(b.yaw)
        return carla.Vector3D(b.accel * c - lateral * s, b.accel * s + lateral * c, 0.0)

    def get_angular_velocity(self) -> carla.Vector3D:
        self._conn.check()
        return carla.Vector3D(0.0, 0.0, math.degrees(self._body.yaw_rate))

    def apply_control(self, control: carla.VehicleControl) -> None:
        self._conn.check()
        self._control = control

    def get_control(self) -> carla.VehicleControl:
        self._conn.check()
        return self._control

    def set_autopilot(self, enabled: bool = True, tm_port: int = 8000) -> None:
        """Hands the vehicle to the traffic manager on ``tm_port`` (created if needed)."""
        self._conn.check()
        self._autopilot_port = tm_port if enabled else None
        if enabled:
            self._conn.server.traffic_manager(tm_port)._register(self)

    def set_transform(self, transform: carla.Transform) -> None:
        """Teleports the vehicle and stops it."""
        self._conn.check()
        self._body = BodyState(transform.location.x, transform.location.y, math.radians(transform.rotation.yaw))

    def set_target_velocity(self, velocity: carla.Vector3D) -> None:
        """Sets the speed along the current heading to the velocity's projection on it."""
        self._conn.check()
        self._body.speed = velocity.x * math.cos(self._body.yaw) + velocity.y * math.sin(self._body.yaw)


class Sensor(Actor):
    """A sensor; ``listen`` registers the callback that receives its data."""

    def __init__(self, conn: Connection, actor_id: int, type_id: str, attributes: dict[str, str],
                 relative: carla.Transform, parent: Actor | None) -> None:
        super().__init__(conn, actor_id, type_id, attributes, parent)
        self._relative = relative
        self._callback: Callable[[Any], None] | None = None
        self._last_capture_s = -math.inf
        self._parent_transform = carla.Transform()

    def listen(self, callback: Callable[[Any], None]) -> None:
        self._conn.check()
        self._callback = callback

    def stop(self) -> None:
        self._conn.check()
        self._callback = None

    def is_listening(self) -> bool:
        return self._callback is not None

    def _transform(self) -> carla.Transform:
        """World pose: the parent's pose composed with the mount (parents only yaw)."""
        if self.parent is None:
            return self._relative
        if isinstance(self.parent, Vehicle) and self.parent._alive:
            self._parent_transform = self.parent._transform()
        base, rel = self._parent_transform, self._relative
        location = base.transform(carla.Location(rel.location))
        rotation = carla.Rotation(pitch=rel.rotation.pitch, yaw=base.rotation.yaw + rel.rotation.yaw,
                                  roll=rel.rotation.roll)
        return carla.Transform(location, rotation)


class ServerSideSensor(Sensor):
    """Camera and collision sensors (produced by the server)."""


class LaneInvasionSensor(Sensor):
    """The lane-invasion sensor (client-side in real CARLA)."""


class ActorList:
    """An immutable list of actors with CARLA's ``filter`` and ``find``."""

    def __init__(self, actors: list[Actor]) -> None:
        self._actors = list(actors)

    def filter(self, wildcard_pattern: str) -> ActorList:
        return ActorList([a for a in self._actors if fnmatch.fnmatch(a.type_id, wildcard_pattern)])

    def find(self, id: int) -> Actor | None:  # noqa: A002 - the real keyword name
        return next((a for a in self._actors if a.id == id), None)

    def __iter__(self) -> Iterator[Actor]:
        return iter(self._actors)

    def __len__(self) -> int:
        return len(self._actors)

    def __getitem__(self, index: int) -> Actor:
        return self._actors[index]
