"""The fake server's wire format: msgpack frames over TCP, and the carla value types in them.

A frame is a 4-byte big-endian length and one msgpack value. A client opens two sockets to the
server's one port, as a CARLA client uses an RPC port and a streaming port:

* the RPC socket: ``[seq, method, args]`` requests, each answered by ``[seq, status, value]``
  in order; ``seq`` 0 is a one-way message with no answer (CARLA's asynchronous calls, such as
  ``apply_control``). A reply whose ``seq`` is older than the call waiting for it is the late
  answer to a call that timed out, and is dropped.
* the stream socket: ``[sensor_id, kind, ...]`` sensor data pushed by the server (camera frames
  as raw BGRA bytes, collision and lane-invasion events), read by a client thread that calls
  each sensor's ``listen`` callback; and ``[WORLD_TICK, frame, states]`` after another client's
  tick.

A tick's answer carries the world snapshot (each vehicle's transform, velocity, acceleration and
angular velocity), as a real server streams one to every client after each tick; the client
answers those getters from it until the next tick, as the real client does.

Value types travel as flat lists of floats (a Transform is ``[x, y, z, pitch, yaw, roll]``).
"""
from __future__ import annotations

import socket
import struct
from typing import Any

import carla
import msgpack

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 64 << 20  # far above a 4K BGRA camera frame; a larger length is corruption
ONE_WAY = 0

# reply statuses
OK, TIMEOUT, RUNTIME_ERROR, INDEX_ERROR = 0, 1, 2, 3
TIMEOUT_PREFIX = "time-out of "  # how the real client's (and the fake's) time-out text starts

# stream message kinds
IMAGE, COLLISION, LANE_INVASION = "image", "collision", "lane_invasion"
WORLD_TICK = 0  # the "sensor id" of a stream message ``[0, frame, states]``: another client ticked


class ConnectionClosed(ConnectionError):
    """The peer closed the socket (or it broke) before a whole frame arrived."""


def pack(value: Any) -> bytes:
    """One frame: the length header and the msgpack body."""
    body = msgpack.packb(value, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def send(sock: socket.socket, value: Any) -> None:
    """Writes one frame (the caller serialises writers of one socket)."""
    sock.sendall(pack(value))


class FrameReader:
    """Reads frames from one socket. Bytes of a frame cut off by a socket timeout stay in the
    buffer, so the next read continues the same frame."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def read(self) -> Any:
        """The next frame's value.

        Raises:
            ConnectionClosed: the socket closed or broke.
            TimeoutError: the socket's timeout passed first (``socket.timeout``).
            ValueError: a length beyond MAX_FRAME_BYTES (the stream is corrupt).
        """
        while True:
            if len(self._buffer) >= HEADER.size:
                (length,) = HEADER.unpack_from(self._buffer)
                if length > MAX_FRAME_BYTES:
                    raise ValueError(f"frame length {length} above {MAX_FRAME_BYTES}")
                end = HEADER.size + length
                if len(self._buffer) >= end:
                    body = bytes(self._buffer[HEADER.size:end])
                    del self._buffer[:end]
                    return msgpack.unpackb(body, raw=False, strict_map_key=False)
            try:
                chunk = self._sock.recv(1 << 20)
            except (ConnectionResetError, BrokenPipeError, OSError) as exc:
                if isinstance(exc, socket.timeout):
                    raise
                raise ConnectionClosed(str(exc)) from exc
            if not chunk:
                raise ConnectionClosed("peer closed the connection")
            self._buffer += chunk


def tune(sock: socket.socket) -> socket.socket:
    """Small frames go out at once (no Nagle delay on a request or a reply)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def location(value: carla.Location | carla.Vector3D) -> list[float]:
    """``[x, y, z]`` of a Location or a Vector3D."""
    return [value.x, value.y, value.z]


def transform(value: carla.Transform) -> list[float]:
    """``[x, y, z, pitch, yaw, roll]``."""
    loc, rot = value.location, value.rotation
    return [loc.x, loc.y, loc.z, rot.pitch, rot.yaw, rot.roll]


def to_transform(row: list[float]) -> carla.Transform:
    """The Transform of a ``transform`` row."""
    return carla.Transform(carla.Location(*row[:3]), carla.Rotation(*row[3:6]))


def to_vector(row: list[float]) -> carla.Vector3D:
    """The Vector3D of a ``location`` row."""
    return carla.Vector3D(*row)


def control(value: carla.VehicleControl) -> list[Any]:
    """``[throttle, steer, brake, hand_brake, reverse, manual_gear_shift, gear]``."""
    return [value.throttle, value.steer, value.brake, value.hand_brake, value.reverse,
            value.manual_gear_shift, value.gear]


def to_control(row: list[Any]) -> carla.VehicleControl:
    """The VehicleControl of a ``control`` row."""
    throttle, steer, brake, hand_brake, reverse, manual, gear = row
    return carla.VehicleControl(throttle=throttle, steer=steer, brake=brake, hand_brake=hand_brake,
                                reverse=reverse, manual_gear_shift=manual, gear=gear)


def settings(value: carla.WorldSettings) -> list[Any]:
    """``[synchronous_mode, no_rendering_mode, fixed_delta_seconds]`` (the fields the fake honours)."""
    return [value.synchronous_mode, value.no_rendering_mode, value.fixed_delta_seconds]


def to_settings(row: list[Any]) -> carla.WorldSettings:
    """The WorldSettings of a ``settings`` row (other fields at their defaults)."""
    out = carla.WorldSettings()
    out.synchronous_mode, out.no_rendering_mode, out.fixed_delta_seconds = row
    return out
