"""The carla client API over TCP to a fake server process (remote_server.py, wire.py).

``make_remote_module()`` returns a carla-like module whose ``Client(host, port)`` reaches the
fake server at host:port, as the real module reaches a CARLA server: the same value types (the
real ``carla`` ones), the same errors. Like the real client it connects on its first call, not
in the constructor; a server that refuses (down or booting), drops the connection or does not
answer makes a call wait out the client's ``set_timeout`` and raise the real time-out text
("time-out of 5000ms while waiting for the simulator, make sure the simulator is ready and
connected to HOST:PORT"). A client whose connection broke stays broken (each call waits out its
timeout and raises): make a new ``Client``, which reaches a restarted server.
The map comes as OpenDRIVE text and is built locally into a real ``carla.Map``, as the real
client does; a vehicle's transform and velocities come from the last tick's snapshot
(remote_actors.py), as the real client reads them from its episode state.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
import types
import weakref
from typing import Any, Callable

import carla

from rollout.fakecarla import FAKE_CLASSES, REAL_NAMES, wire
from rollout.fakecarla.actors import ActorList
from rollout.fakecarla.blueprints import ActorBlueprint, BlueprintLibrary
from rollout.fakecarla.client import SpawnsActors, WorldSnapshot
from rollout.fakecarla.remote_actors import (Actor, LaneInvasionSensor, Sensor, ServerSideSensor, TrafficManager,
                                            Vehicle, decode_sensor_data, make_actor)
from rollout.fakecarla.server import SERVER_VERSION, timeout_error

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
RETRY_S = 0.05  # wait between connection attempts to a server that refuses


class _Sockets:
    """The link's two sockets, closed when the link is garbage (a weakref finalizer)."""

    def __init__(self) -> None:
        self.rpc: socket.socket | None = None
        self.stream: socket.socket | None = None

    def close(self) -> None:
        for sock in (self.rpc, self.stream):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


class Link:
    """One client's connection: request/reply calls on the RPC socket, and a thread that hands
    the stream's sensor data to ``callbacks`` (sensor id -> listen callback)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, int(port)
        self.timeout_s = DEFAULT_TIMEOUT_S
        self.callbacks: dict[int, Callable[[Any], None]] = {}
        self._sockets = _Sockets()
        self._reader: wire.FrameReader | None = None
        self._broken = False
        self._seq = 0
        self._lock = threading.Lock()
        self._map: tuple[str, str, carla.Map] | None = None
        self._states: tuple[int, dict[int, list[list[float]]]] = (-1, {})  # frame, vehicle states
        weakref.finalize(self, self._sockets.close)

    def store_states(self, frame: int, states: dict[int, list[list[float]]]) -> None:
        """Keeps a tick's snapshot (a later frame replaces an earlier one)."""
        if frame >= self._states[0]:
            self._states = (frame, states)

    def state(self, actor_id: int) -> list[list[float]] | None:
        """A vehicle's ``[transform, velocity, acceleration, angular velocity]`` of the last
        tick, or None (not a vehicle, spawned since, changed since, or no tick yet)."""
        return self._states[1].get(actor_id)

    def forget(self, actor_id: int | None = None) -> None:
        """Drops one actor's snapshot state (it was moved or destroyed), or all of it."""
        if actor_id is None:
            self._states = (-1, {})
        else:
            self._states[1].pop(actor_id, None)

    def set_timeout(self, seconds: float) -> None:
        self.timeout_s = float(seconds)
        if self._sockets.rpc is not None and not self._broken:
            self.post("set_timeout", self.timeout_s)

    def call(self, method: str, *args: Any, timeout_s: float = 0.0) -> Any:
        """Sends one request and waits (``timeout_s``, 0: the client's timeout) for its answer.

        Raises:
            RuntimeError: the real client's time-out text, or the server's error text.
            IndexError: where the real client raises it (an unknown blueprint, ...).
        """
        limit = timeout_s if timeout_s > 0 else self.timeout_s
        deadline = time.monotonic() + limit
        with self._lock:
            sock = self._ready(deadline, limit)
            self._seq += 1
            seq = self._seq
            try:
                wire.send(sock, [seq, method, list(args)])
                while True:
                    sock.settimeout(max(deadline - time.monotonic(), 1e-4))
                    reply_seq, status, value = self._reader.read()
                    if reply_seq == seq:  # older ones answer calls that already timed out
                        break
            except socket.timeout:
                self.forget()  # the server may have moved on without us
                raise timeout_error(limit, self.host, self.port) from None
            except (wire.ConnectionClosed, OSError, ValueError):
                self._break()
                self._wait_out(deadline, limit)
        return self._result(status, value, limit)

    def post(self, method: str, *args: Any) -> None:
        """A one-way call (CARLA's asynchronous ones): nothing waits for an answer, and on a
        broken connection it is dropped."""
        with self._lock:
            if self._broken:
                return
            sock = self._ready(time.monotonic() + self.timeout_s, self.timeout_s)
            try:
                wire.send(sock, [wire.ONE_WAY, method, list(args)])
            except OSError:
                self._break()

    def get_map(self) -> carla.Map:
        """The server's map, built locally from its OpenDRIVE text (cached while it is the same)."""
        name, xodr = self.call("get_map")
        if self._map is None or self._map[:2] != (name, xodr):
            self._map = (name, xodr, carla.Map(name, xodr))
        return self._map[2]

    def _result(self, status: int, value: Any, limit: float) -> Any:
        if status == wire.OK:
            return value
        if status == wire.TIMEOUT:
            self.forget()
            raise timeout_error(limit, self.host, self.port)
        if status == wire.INDEX_ERROR:
            raise IndexError(value)
        raise RuntimeError(value)

    def _ready(self, deadline: float, limit: float) -> socket.socket:
        """The RPC socket, connecting on first use; waits out the deadline when broken."""
        if self._broken:
            self._wait_out(deadline, limit)
        if self._sockets.rpc is None:
            self._connect(deadline, limit)
        assert self._sockets.rpc is not None
        return self._sockets.rpc

    def _connect(self, deadline: float, limit: float) -> None:
        """Connects both sockets, retrying a refusing or dropping server until ``deadline``."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timeout_error(limit, self.host, self.port)
            try:
                rpc = wire.tune(socket.create_connection((self.host, self.port), timeout=remaining))
                self._sockets.rpc = rpc
                reader = wire.FrameReader(rpc)
                wire.send(rpc, ["rpc", self.host, self.port, self.timeout_s])
                _, token, _ = reader.read()
                stream = wire.tune(socket.create_connection((self.host, self.port),
                                                            timeout=max(deadline - time.monotonic(), 1e-3)))
                self._sockets.stream = stream
                wire.send(stream, ["stream", token])
                wire.FrameReader(stream).read()
            except socket.timeout:
                self._sockets.close()
                self._sockets.rpc = self._sockets.stream = None
                raise timeout_error(limit, self.host, self.port) from None
            except (wire.ConnectionClosed, OSError, ValueError):
                self._sockets.close()
                self._sockets.rpc = self._sockets.stream = None
                time.sleep(max(0.0, min(RETRY_S, deadline - time.monotonic())))
                continue
            self._reader = reader
            stream.settimeout(None)
            threading.Thread(target=_stream_loop, args=(weakref.ref(self), stream), name="fakecarla-stream",
                             daemon=True).start()
            return

    def _break(self) -> None:
        self._broken = True
        self.forget()
        self._sockets.close()

    def _wait_out(self, deadline: float, limit: float) -> None:
        time.sleep(max(0.0, deadline - time.monotonic()))
        raise timeout_error(limit, self.host, self.port)


def _stream_loop(link_ref: weakref.ref, sock: socket.socket) -> None:
    """Hands each stream message to its sensor's callback until the stream closes."""
    reader = wire.FrameReader(sock)
    while True:
        try:
            message = reader.read()
        except (wire.ConnectionClosed, OSError, ValueError):
            return
        link = link_ref()
        if link is None:
            return
        if message[0] == wire.WORLD_TICK:
            link.store_states(int(message[1]), message[2])
            continue
        callback = link.callbacks.get(message[0])
        if callback is None:
            continue
        try:
            callback(decode_sensor_data(link, message))
        except Exception:  # a failing user callback must not stop the stream
            log.exception("sensor_callback_failed sensor=%s", message[0])
        del link


class World(SpawnsActors):
    """A handle on the server's current world, reached through one client's link."""

    def __init__(self, link: Link) -> None:
        self._link = link

    @property
    def id(self) -> int:
        return int(self._link.call("world_id"))

    def get_settings(self) -> carla.WorldSettings:
        return wire.to_settings(self._link.call("get_settings"))

    def apply_settings(self, settings: carla.WorldSettings, seconds: float = 0.0) -> int:
        return int(self._link.call("apply_settings", wire.settings(settings), seconds, timeout_s=seconds))

    def tick(self, seconds: float = 0.0) -> int:
        """Advances the world one fixed step and returns the new frame.

        Raises:
            RuntimeError: the real client's time-out text after ``seconds`` (0: the client's
                timeout) without an answer.
        """
        frame, states = self._link.call("tick", seconds, timeout_s=seconds)
        self._link.store_states(int(frame), states)
        return int(frame)

    def get_snapshot(self) -> WorldSnapshot:
        episode, frame, elapsed, delta, actor_ids = self._link.call("get_snapshot")
        return WorldSnapshot(episode, carla.Timestamp(frame, elapsed, delta, 0.0), set(actor_ids))

    def get_map(self) -> carla.Map:
        return self._link.get_map()

    def get_blueprint_library(self) -> BlueprintLibrary:
        return BlueprintLibrary(self._link.call("blueprint_ids"))

    def try_spawn_actor(self, blueprint: ActorBlueprint, transform: carla.Transform, attach_to: Actor | None = None,
                        attachment_type: carla.AttachmentType = carla.AttachmentType.Rigid,
                        bone: str = "") -> Actor | None:
        """Spawns an actor; None where the server finds the place blocked."""
        description = self._link.call("spawn", blueprint.id, {a.id: str(a) for a in blueprint},
                                      wire.transform(transform), None if attach_to is None else attach_to.id)
        return None if description is None else make_actor(self._link, description)

    def get_actors(self, actor_ids: list[int] | None = None) -> ActorList:
        wanted = None if actor_ids is None else [int(i) for i in actor_ids]
        return ActorList([make_actor(self._link, d) for d in self._link.call("get_actors", wanted)])

    def get_actor(self, actor_id: int) -> Actor | None:
        description = self._link.call("get_actor", int(actor_id))
        return None if description is None else make_actor(self._link, description)


class Client:
    """A client of the fake server at host:port; connects on its first call."""

    def __init__(self, host: str = "127.0.0.1", port: int = 2000, worker_threads: int = 0) -> None:
        self._link = Link(host, port)

    def set_timeout(self, seconds: float) -> None:
        self._link.set_timeout(seconds)

    def get_world(self) -> World:
        self._link.call("get_world")
        return World(self._link)

    def load_world(self, map_name: str, reset_settings: bool = True,
                   map_layers: carla.MapLayer = carla.MapLayer.All) -> World:
        """Starts a new episode on the server's one map.

        Raises:
            RuntimeError: "map not found" for a map the server does not have.
        """
        self._link.call("load_world", map_name, bool(reset_settings))
        self._link.forget()
        return World(self._link)

    def reload_world(self, reset_settings: bool = True) -> World:
        return self.load_world(self._link.get_map().name, reset_settings)

    def get_available_maps(self) -> list[str]:
        return list(self._link.call("get_available_maps"))

    def get_trafficmanager(self, port: int = 8000) -> TrafficManager:
        return TrafficManager(self._link, int(self._link.call("get_trafficmanager", int(port))))

    def get_server_version(self) -> str:
        return str(self._link.call("get_server_version"))

    def get_client_version(self) -> str:
        return SERVER_VERSION


# The remote module's own classes, each named after the real class it stands in for (the
# contract test holds them to it); the others it shares with the in-process fake.
REMOTE_CLASSES = (World, Actor, Vehicle, Sensor, ServerSideSensor, LaneInvasionSensor, TrafficManager)


def make_remote_module() -> types.SimpleNamespace:
    """A carla-like module whose ``Client(host, port)`` reaches a fake server process there.

    Returns:
        A namespace with ``Client``, the real value types, and the fake's other names.
    """
    names: dict[str, Any] = {name: getattr(carla, name) for name in REAL_NAMES}
    names.update({cls.__name__: cls for cls in FAKE_CLASSES})
    names.update({cls.__name__: cls for cls in REMOTE_CLASSES})
    names["Client"] = Client
    return types.SimpleNamespace(**names)


__all__ = ["Client", "REMOTE_CLASSES", "World", "make_remote_module"]
