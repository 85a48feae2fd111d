"""Actors and the traffic manager as a remote client sees them: handles that call the fake
server process (remote_client.py has the link they call through), and the sensor data rebuilt
from the stream. A vehicle's transform, velocity, acceleration and angular velocity come from
the last tick's snapshot, as the real client reads them from its episode state; the fake asks
the server instead where it has none (before a tick, after ``set_transform``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import carla

from rollout.fakecarla import wire
from rollout.fakecarla.sensors import CollisionEvent, Image, LaneInvasionEvent

if TYPE_CHECKING:
    from rollout.fakecarla.remote_client import Link


class Actor:
    """One actor on the server: id, type, attributes and parent, as spawned."""

    def __init__(self, link: Link, description: list[Any]) -> None:
        actor_id, type_id, attributes, parent, _, _ = description
        self._link = link
        self.id = int(actor_id)
        self.type_id = str(type_id)
        self.attributes = dict(attributes)
        self.parent = None if parent is None else make_actor(link, parent)
        self.semantic_tags: list[int] = []

    @property
    def is_alive(self) -> bool:
        """False for a destroyed actor and for any actor of a server that does not answer."""
        try:
            return bool(self._link.call("is_alive", self.id))
        except RuntimeError:
            return False

    def get_world(self) -> Any:
        from rollout.fakecarla.remote_client import World  # the world handle lives with the client
        self._link.call("get_world")
        return World(self._link)

    def _state(self, index: int, method: str) -> list[float]:
        """One field of the last tick's snapshot (no call), else asked of the server."""
        state = self._link.state(self.id)
        return state[index] if state is not None else self._link.call(method, self.id)

    def get_transform(self) -> carla.Transform:
        return wire.to_transform(self._state(0, "get_transform"))

    def get_location(self) -> carla.Location:
        return self.get_transform().location

    def get_velocity(self) -> carla.Vector3D:
        return wire.to_vector(self._state(1, "get_velocity"))

    def get_acceleration(self) -> carla.Vector3D:
        return wire.to_vector(self._state(2, "get_acceleration"))

    def get_angular_velocity(self) -> carla.Vector3D:
        return wire.to_vector(self._state(3, "get_angular_velocity"))

    def destroy(self) -> bool:
        """Removes the actor from the world; False if it was already gone."""
        self._link.forget(self.id)
        return bool(self._link.call("destroy", self.id))

    def __repr__(self) -> str:
        return f"Actor(id={self.id}, type={self.type_id})"


class Vehicle(Actor):
    """A vehicle; ``apply_control`` is a one-way call, as CARLA's is."""

    def __init__(self, link: Link, description: list[Any]) -> None:
        super().__init__(link, description)
        location, extent = description[5]
        self.bounding_box = carla.BoundingBox(carla.Location(*location), carla.Vector3D(*extent))

    def apply_control(self, control: carla.VehicleControl) -> None:
        self._link.post("apply_control", self.id, wire.control(control))

    def get_control(self) -> carla.VehicleControl:
        return wire.to_control(self._link.call("get_control", self.id))

    def set_autopilot(self, enabled: bool = True, tm_port: int = 8000) -> None:
        self._link.call("set_autopilot", self.id, bool(enabled), int(tm_port))

    def set_transform(self, transform: carla.Transform) -> None:
        self._link.forget(self.id)
        self._link.call("set_transform", self.id, wire.transform(transform))

    def set_target_velocity(self, velocity: carla.Vector3D) -> None:
        self._link.forget(self.id)
        self._link.call("set_target_velocity", self.id, wire.location(velocity))


class Sensor(Actor):
    """A sensor; ``listen`` has the server stream its data to this client's callback."""

    def __init__(self, link: Link, description: list[Any]) -> None:
        super().__init__(link, description)
        self._listening = False

    def listen(self, callback: Callable[[Any], None]) -> None:
        self._link.callbacks[self.id] = callback
        self._link.call("listen", self.id)
        self._listening = True

    def stop(self) -> None:
        self._link.call("stop", self.id)
        self._link.callbacks.pop(self.id, None)
        self._listening = False

    def is_listening(self) -> bool:
        return self._listening


class ServerSideSensor(Sensor):
    """Camera and collision sensors."""


class LaneInvasionSensor(Sensor):
    """The lane-invasion sensor (computed by the fake server; client-side in real CARLA)."""


_KINDS = {"vehicle": Vehicle, "sensor": ServerSideSensor, "lane_invasion": LaneInvasionSensor, "actor": Actor}


def make_actor(link: Link, description: list[Any]) -> Actor:
    """The handle of the class a description's kind names."""
    return _KINDS[description[4]](link, description)


class TrafficManager:
    """The traffic manager on ``port`` of the server, as ``client.get_trafficmanager(port)``."""

    def __init__(self, link: Link, port: int) -> None:
        self._link = link
        self._port = port

    def get_port(self) -> int:
        return self._port

    def _call(self, method: str, *args: Any) -> None:
        self._link.call("tm", self._port, method, list(args))

    def set_synchronous_mode(self, mode_switch: bool = True) -> None:
        self._call("set_synchronous_mode", bool(mode_switch))

    def set_random_device_seed(self, value: int) -> None:
        self._call("set_random_device_seed", int(value))

    def global_percentage_speed_difference(self, percentage: float) -> None:
        self._call("global_percentage_speed_difference", float(percentage))

    def vehicle_percentage_speed_difference(self, actor: Actor, percentage: float) -> None:
        self._call("vehicle_percentage_speed_difference", actor.id, float(percentage))

    def set_global_distance_to_leading_vehicle(self, distance: float) -> None:
        self._call("set_global_distance_to_leading_vehicle", float(distance))

    def shut_down(self) -> None:
        """Stops the server's manager on this port; the next ``get_trafficmanager`` makes a new one."""
        self._call("shut_down")


class LaneMarking(NamedTuple):
    """A crossed lane marking: real ``carla`` enum values (``carla.LaneMarking`` itself cannot
    be built in Python, so the event carries this stand-in with the same four fields)."""

    type: carla.LaneMarkingType
    color: carla.LaneMarkingColor
    lane_change: carla.LaneChange
    width: float


def decode_sensor_data(link: Link, message: list[Any]) -> Any:
    """The sensor data object of one stream message (``[sensor_id, kind, ...]``)."""
    kind, frame, timestamp, transform = message[1], message[2], message[3], wire.to_transform(message[4])
    if kind == wire.IMAGE:
        width, height, fov, raw = message[5:9]
        return Image(frame, timestamp, transform, width, height, fov, raw)
    if kind == wire.COLLISION:
        actor, other, impulse = message[5:8]
        return CollisionEvent(frame, timestamp, transform, make_actor(link, actor), make_actor(link, other),
                              wire.to_vector(impulse))
    if kind == wire.LANE_INVASION:
        marks = [LaneMarking(carla.LaneMarkingType.names[t], carla.LaneMarkingColor.names[c],
                             carla.LaneChange.names[change], float(width))
                 for t, c, change, width in message[6]]
        return LaneInvasionEvent(frame, timestamp, transform, make_actor(link, message[5]), marks)
    raise ValueError(f"stream message of unknown kind {kind!r}")
