"""A stand-in for the ``carla`` client module, backed by an in-process fake server.

``make_module(cfg)`` returns a module-like object: ``Client`` connects to one fake server
bound to that object (each call makes an independent server), and the value types
(``Location``, ``Transform``, ``VehicleControl``, ``WorldSettings``, ``Map``, ...) are the real
``carla`` ones. Roads, lanes and waypoints come from a real offline ``carla.Map`` built from
OpenDRIVE; the camera is rendered with OpenCV; vehicles follow a kinematic bicycle model.
The server holds the shipped towns, ``Town01`` (the default ``env.town``, from town.xodr) and
``Town02`` (Town02.xodr), or only ``cfg.xodr_path``, named after the file's stem;
``load_world`` of any other name fails as the real server's does ("map not found").
See ``rollout/fakecarla/server.py`` for fault injection and restarts.
"""
from __future__ import annotations

import types

import carla

from rollout.fakecarla import actors, blueprints, client, sensors, traffic
from rollout.fakecarla.mapdata import load_assets
from rollout.fakecarla.server import Host
from common.config import FakeCarlaConfig
from common.errors import ConfigError

# The real value types the fake re-exports unchanged.
REAL_NAMES = ("Location", "Rotation", "Transform", "Vector3D", "Vector2D", "VehicleControl", "WorldSettings",
              "LaneType", "LaneMarkingType", "LaneMarkingColor", "LaneChange", "LaneMarking", "Map", "Waypoint",
              "BoundingBox", "Timestamp", "AttachmentType", "MapLayer", "ActorAttributeType", "Color")
# The fake's own classes, each named after the real class it stands in for.
FAKE_CLASSES = (client.World, client.WorldSnapshot, actors.Actor, actors.Vehicle, actors.Sensor,
                actors.ServerSideSensor, actors.LaneInvasionSensor, actors.ActorList, blueprints.ActorBlueprint,
                blueprints.ActorAttribute, blueprints.BlueprintLibrary, traffic.TrafficManager, sensors.SensorData,
                sensors.Image, sensors.CollisionEvent, sensors.LaneInvasionEvent)


def make_module(cfg: FakeCarlaConfig | None = None) -> types.SimpleNamespace:
    """Builds a carla-like module bound to a new fake server.

    Args:
        cfg: fake-server options (map, latency, faults); None uses the defaults.

    Returns:
        A namespace with ``Client`` and the other names the env uses from ``carla``.

    Raises:
        ConfigError: for negative delays or an unreadable map.
    """
    cfg = cfg or FakeCarlaConfig()
    for name in ("tick_latency_s", "fault_delay_s", "camera_delay_s"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} ({getattr(cfg, name)}) must be >= 0")
    host = Host(cfg, load_assets(cfg.xodr_path))
    names = {name: getattr(carla, name) for name in REAL_NAMES}
    names.update({cls.__name__: cls for cls in FAKE_CLASSES})
    names["Client"] = type("Client", (client.Client,), {"_host": host, "__module__": client.__name__})
    return types.SimpleNamespace(**names)


__all__ = ["make_module"]
