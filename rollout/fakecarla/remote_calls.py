"""The fake server process's RPC methods: each runs one call of a remote client on the
in-process fake (client.py, actors.py, server.py), so faults, restarts and the world behave
exactly as in-process; values cross the wire as wire.py spells them.

A ``Session`` is one remote client: an in-process ``Client`` bound to the host (so to one server
life), and the stream socket its sensor data goes to.
"""
from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Callable

from rollout.fakecarla import wire
from rollout.fakecarla.actors import Actor, LaneInvasionSensor, Sensor, Vehicle
from rollout.fakecarla.blueprints import ActorBlueprint
from rollout.fakecarla.client import Client, World
from rollout.fakecarla.sensors import CollisionEvent, Image, LaneInvasionEvent

log = logging.getLogger(__name__)

DESTROYED = ("trying to operate on a destroyed actor; an actor's function was called, but the actor "
             "is already destroyed.")  # the real client's text


class Stream:
    """The socket a client's sensor data is pushed on; a broken one drops data silently (a
    real server streams to a vanished client the same way)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self.open = True

    def send(self, message: list[Any]) -> None:
        frame = wire.pack(message)
        with self._lock:
            if not self.open:
                return
            try:
                self.sock.sendall(frame)
            except OSError:
                self.open = False


class Session:
    """One remote client: its in-process client handle and its sensor stream."""

    def __init__(self, client: Client, token: str) -> None:
        self.client = client
        self.conn = client._conn  # noqa: SLF001 - the fake's own connection object
        self.world = World(self.conn)
        self.token = token
        self.stream: Stream | None = None

    def actor(self, actor_id: int) -> Actor:
        """The live actor of that id on this session's server life.

        Raises:
            RuntimeError: the real client's "destroyed actor" text for an unknown id.
        """
        found = self.conn.server.actors.get(actor_id)
        if found is None:
            raise RuntimeError(DESTROYED)
        return found

    def push(self, message: list[Any]) -> None:
        if self.stream is not None:
            self.stream.send(message)


def describe(actor: Actor | None) -> list[Any] | None:
    """``[id, type_id, attributes, parent, kind, bounding box]`` (parent described the same
    way, or None; the box ``[location, extent]`` for vehicles, else None)."""
    if actor is None:
        return None
    box = None
    if isinstance(actor, Vehicle):
        box = [wire.location(actor.bounding_box.location), wire.location(actor.bounding_box.extent)]
    kind = ("vehicle" if isinstance(actor, Vehicle) else "lane_invasion" if isinstance(actor, LaneInvasionSensor)
            else "sensor" if isinstance(actor, Sensor) else "actor")
    return [actor.id, actor.type_id, dict(actor.attributes), describe(actor.parent), kind, box]


def _encode(sensor_id: int, data: Any) -> list[Any]:
    head = [sensor_id]
    stamp = [data.frame, data.timestamp, wire.transform(data.transform)]
    if isinstance(data, Image):
        return head + [wire.IMAGE, *stamp, data.width, data.height, data.fov, data.raw_data]
    if isinstance(data, CollisionEvent):
        return head + [wire.COLLISION, *stamp, describe(data.actor), describe(data.other_actor),
                       wire.location(data.normal_impulse)]
    if isinstance(data, LaneInvasionEvent):
        marks = [[str(m.type), str(m.color), str(m.lane_change), m.width] for m in data.crossed_lane_markings]
        return head + [wire.LANE_INVASION, *stamp, describe(data.actor), marks]
    raise TypeError(f"sensor {sensor_id}: no wire form for {type(data).__name__}")


def _listen(session: Session, sensor_id: int) -> None:
    sensor = session.actor(sensor_id)
    if not isinstance(sensor, Sensor):
        raise RuntimeError(f"actor {sensor_id} ({sensor.type_id}) is not a sensor")
    sensor.listen(lambda data: session.push(_encode(sensor_id, data)))


def _spawn(session: Session, blueprint_id: str, attributes: dict[str, str], transform: list[float],
           parent_id: int | None) -> list[Any] | None:
    blueprint = ActorBlueprint(blueprint_id, blueprint_id.split("."), attributes)
    parent = None if parent_id is None else session.actor(parent_id)
    return describe(session.world.try_spawn_actor(blueprint, wire.to_transform(transform), parent))


def _get_actors(session: Session, actor_ids: list[int] | None) -> list[Any]:
    return [describe(a) for a in session.world.get_actors(actor_ids)]


def _snapshot(session: Session) -> list[Any]:
    snap = session.world.get_snapshot()
    stamp = snap.timestamp
    return [snap.id, stamp.frame, stamp.elapsed_seconds, stamp.delta_seconds, sorted(snap._actor_ids)]  # noqa: SLF001


def vehicle_states(session: Session) -> dict[int, list[list[float]]]:
    """Every vehicle's ``[transform, velocity, acceleration, angular velocity]`` by id: the
    world snapshot a tick sends its clients (a real server streams one after every tick)."""
    states = {}
    for actor in session.conn.server.actors.values():
        if isinstance(actor, Vehicle):
            states[actor.id] = [wire.transform(actor.get_transform()), wire.location(actor.get_velocity()),
                                wire.location(actor.get_acceleration()), wire.location(actor.get_angular_velocity())]
    return states


def _tick(session: Session, seconds: float) -> list[Any]:
    frame = session.world.tick(seconds)
    return [frame, vehicle_states(session)]


def _get_map(session: Session) -> list[str]:
    session.world.get_map()  # raises on a dead server
    assets = session.conn.server.assets
    return [assets.name, assets.xodr]


def _is_alive(session: Session, actor_id: int) -> bool:
    actor = session.conn.server.actors.get(actor_id)
    return actor is not None and actor.is_alive


def _destroy(session: Session, actor_id: int) -> bool:
    session.conn.check()
    actor = session.conn.server.actors.get(actor_id)
    return actor.destroy() if actor is not None else False


def _tm_call(session: Session, port: int, method: str, args: list[Any]) -> None:
    tm = session.client.get_trafficmanager(port)
    if method == "vehicle_percentage_speed_difference":
        tm.vehicle_percentage_speed_difference(session.actor(args[0]), args[1])
    elif method in TM_METHODS:
        getattr(tm, method)(*args)
    else:
        raise RuntimeError(f"traffic manager has no method {method!r}")


TM_METHODS = ("set_synchronous_mode", "set_random_device_seed", "global_percentage_speed_difference",
              "set_global_distance_to_leading_vehicle", "shut_down")

Method = Callable[..., Any]
METHODS: dict[str, Method] = {
    # client
    "set_timeout": lambda s, seconds: s.client.set_timeout(seconds),
    "get_world": lambda s: s.client.get_world() and None,
    "load_world": lambda s, name, reset: s.client.load_world(name, reset) and None,
    "get_available_maps": lambda s: s.client.get_available_maps(),
    "get_trafficmanager": lambda s, port: s.client.get_trafficmanager(port).get_port(),
    "get_server_version": lambda s: s.client.get_server_version(),
    "tm": _tm_call,
    # world
    "world_id": lambda s: s.world.id,
    "get_settings": lambda s: wire.settings(s.world.get_settings()),
    "apply_settings": lambda s, row, seconds: s.world.apply_settings(wire.to_settings(row), seconds),
    "tick": _tick,
    "get_snapshot": _snapshot,
    "get_map": _get_map,
    "blueprint_ids": lambda s: [bp.id for bp in s.world.get_blueprint_library()],
    "spawn": _spawn,
    "get_actors": _get_actors,
    "get_actor": lambda s, actor_id: describe(s.world.get_actor(actor_id)),
    # actors
    "is_alive": _is_alive,
    "destroy": _destroy,
    "get_transform": lambda s, i: wire.transform(s.actor(i).get_transform()),
    "get_velocity": lambda s, i: wire.location(s.actor(i).get_velocity()),
    "get_acceleration": lambda s, i: wire.location(s.actor(i).get_acceleration()),
    "get_angular_velocity": lambda s, i: wire.location(s.actor(i).get_angular_velocity()),
    "apply_control": lambda s, i, row: s.actor(i).apply_control(wire.to_control(row)),
    "get_control": lambda s, i: wire.control(s.actor(i).get_control()),
    "set_autopilot": lambda s, i, enabled, port: s.actor(i).set_autopilot(enabled, port),
    "set_transform": lambda s, i, row: s.actor(i).set_transform(wire.to_transform(row)),
    "set_target_velocity": lambda s, i, row: s.actor(i).set_target_velocity(wire.to_vector(row)),
    "listen": _listen,
    "stop": lambda s, i: s.actor(i).stop(),
}
# calls that answer on a dead server without waiting (the real client reads them locally)
NO_CHECK = frozenset({"set_timeout", "is_alive"})


def run_call(session: Session, method: str, args: list[Any]) -> list[Any]:
    """Runs one call; returns ``[status, value]`` (wire.OK and the result, or an error status
    and its text: the client raises it as the real client would)."""
    handler = METHODS.get(method)
    if handler is None:
        return [wire.RUNTIME_ERROR, f"unknown method {method!r}"]
    try:
        if method not in NO_CHECK:
            session.conn.check()
        return [wire.OK, handler(session, *args)]
    except RuntimeError as exc:
        text = str(exc)
        return [wire.TIMEOUT if text.startswith(wire.TIMEOUT_PREFIX) else wire.RUNTIME_ERROR, text]
    except IndexError as exc:
        return [wire.INDEX_ERROR, str(exc.args[0]) if exc.args else ""]
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a malformed request
        log.warning("event=fake_server_bad_call method=%s error=%r", method, exc)
        return [wire.RUNTIME_ERROR, f"{method}: {exc!r}"]
