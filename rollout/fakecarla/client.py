"""``Client``, ``World`` and ``WorldSnapshot``: the entry points of the fake carla API."""
from __future__ import annotations

from typing import Any

import carla

from rollout.fakecarla.actors import Actor, ActorList
from rollout.fakecarla.blueprints import ActorBlueprint, BlueprintLibrary
from rollout.fakecarla.mapdata import MAP_PATH_PREFIX
from rollout.fakecarla.server import SERVER_VERSION, Connection, Host
from rollout.fakecarla.traffic import TrafficManager


def _copy_settings(settings: carla.WorldSettings) -> carla.WorldSettings:
    """The settings the fake honours, copied so later edits by the caller do not leak in."""
    copy = carla.WorldSettings()
    copy.synchronous_mode = settings.synchronous_mode
    copy.no_rendering_mode = settings.no_rendering_mode
    copy.fixed_delta_seconds = settings.fixed_delta_seconds
    return copy


class WorldSnapshot:
    """The state of the world at one frame (ids of the actors in it, frame, timestamp)."""

    def __init__(self, episode_id: int, timestamp: carla.Timestamp, actor_ids: set[int]) -> None:
        self.id = episode_id
        self.frame = timestamp.frame
        self.timestamp = timestamp
        self._actor_ids = actor_ids

    def has_actor(self, actor_id: int) -> bool:
        return actor_id in self._actor_ids

    def __len__(self) -> int:
        return len(self._actor_ids)


class SpawnsActors:
    """``spawn_actor`` over a world's ``try_spawn_actor``, failing as the real client does; the
    in-process and the remote fake worlds share it."""

    def spawn_actor(self, blueprint: ActorBlueprint, transform: carla.Transform, attach_to: Any = None,
                    attachment_type: carla.AttachmentType = carla.AttachmentType.Rigid, bone: str = "") -> Any:
        """Spawns an actor.

        Raises:
            RuntimeError: "Spawn failed because of collision at spawn position", as the real one.
        """
        actor = self.try_spawn_actor(blueprint, transform, attach_to, attachment_type, bone)
        if actor is None:
            loc = transform.location
            raise RuntimeError(f"Spawn failed because of collision at spawn position "
                               f"({loc.x:.2f}, {loc.y:.2f}, {loc.z:.2f}) for {blueprint.id}")
        return actor


class World(SpawnsActors):
    """A handle on the server's current world, reached through one client's connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def id(self) -> int:
        return self._conn.server.episode_id

    def get_settings(self) -> carla.WorldSettings:
        self._conn.check()
        return _copy_settings(self._conn.server.settings)

    def apply_settings(self, settings: carla.WorldSettings, seconds: float = 0.0) -> int:
        """Stores synchronous_mode, no_rendering_mode and fixed_delta_seconds; returns the frame."""
        self._conn.check()
        self._conn.server.settings = _copy_settings(settings)
        return self._conn.server.frame

    def tick(self, seconds: float = 0.0) -> int:
        """Advances the world one fixed step and returns the new frame.

        Raises:
            RuntimeError: "time-out of ...ms while waiting for the simulator" (injected fault or
                dead server), as the real client does.
        """
        return self._conn.server.tick(self._conn, seconds)

    def get_snapshot(self) -> WorldSnapshot:
        self._conn.check()
        server = self._conn.server
        dt = server.settings.fixed_delta_seconds or 0.0
        stamp = carla.Timestamp(server.frame, server.elapsed_s, dt, 0.0)
        return WorldSnapshot(server.episode_id, stamp, set(server.actors))

    def get_map(self) -> carla.Map:
        """The real offline carla.Map of the loaded OpenDRIVE file (it has no spawn points)."""
        self._conn.check()
        return self._conn.server.assets.map

    def get_blueprint_library(self) -> BlueprintLibrary:
        self._conn.check()
        return BlueprintLibrary()

    def try_spawn_actor(self, blueprint: ActorBlueprint, transform: carla.Transform, attach_to: Actor | None = None,
                        attachment_type: carla.AttachmentType = carla.AttachmentType.Rigid,
                        bone: str = "") -> Actor | None:
        """Spawns an actor; None if a vehicle's footprint overlaps a vehicle or an obstacle."""
        self._conn.check()
        return self._conn.server.spawn(self._conn, blueprint, transform, attach_to)

    def get_actors(self, actor_ids: list[int] | None = None) -> ActorList:
        self._conn.check()
        actors = list(self._conn.server.actors.values())
        if actor_ids is not None:
            wanted = set(actor_ids)
            actors = [a for a in actors if a.id in wanted]
        return ActorList(actors)

    def get_actor(self, actor_id: int) -> Actor | None:
        self._conn.check()
        return self._conn.server.actors.get(actor_id)


class Client:
    """Connects to the fake module's server whatever ``host`` and ``port`` say (they are kept
    for error messages). Created after the server died, it reaches a restarted server."""

    _host: Host  # set on the per-module subclass made by make_module

    def __init__(self, host: str = "127.0.0.1", port: int = 2000, worker_threads: int = 0) -> None:
        self._conn = self._host.connect(host, port)

    def set_timeout(self, seconds: float) -> None:
        self._conn.timeout_s = float(seconds)

    def get_world(self) -> World:
        self._conn.check()
        return World(self._conn)

    def load_world(self, map_name: str, reset_settings: bool = True,
                   map_layers: carla.MapLayer = carla.MapLayer.All) -> World:
        """Starts a new episode on one of the server's maps, named bare ("Town01") or as
        ``get_available_maps`` spells it ("/Game/Carla/Maps/Town01").

        Raises:
            RuntimeError: "map not found" for any other name, as the real server answers.
        """
        self._conn.check()
        assets = self._conn.server.maps.find(map_name)
        if assets is None:
            raise RuntimeError("map not found")
        self._conn.server.reset_world(reset_settings, assets)
        return World(self._conn)

    def reload_world(self, reset_settings: bool = True) -> World:
        return self.load_world(self._conn.server.assets.name, reset_settings)

    def get_available_maps(self) -> list[str]:
        self._conn.check()
        return [MAP_PATH_PREFIX + name for name in self._conn.server.maps.names]

    def get_trafficmanager(self, port: int = 8000) -> TrafficManager:
        self._conn.check()
        return self._conn.server.traffic_manager(port)

    def get_server_version(self) -> str:
        self._conn.check()
        return SERVER_VERSION

    def get_client_version(self) -> str:
        return SERVER_VERSION
