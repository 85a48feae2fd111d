"""One env's connection to one CARLA server: client, world, synchronous settings, traffic
manager, and the vehicles it spawned (the ego and NPCs).

Everything goes through the ``carla`` module the env was given (the real client or the fake).
A server that does not answer within the timeout is reported as SimulatorUnreachable naming
host:port. ``close`` restores asynchronous mode so the server is left as it was found.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from common.config import EnvConfig
from common.errors import SimulatorError, SimulatorUnreachable

log = logging.getLogger(__name__)

LOAD_WORLD_TIMEOUT_S = 60.0
NPC_MIN_DISTANCE_M = 15.0


def _short_map_name(name: str) -> str:
    """"Carla/Maps/Town01" -> "Town01"."""
    return name.rsplit("/", 1)[-1]


class Session:
    """Client, world and the vehicles this env spawned on one server."""

    def __init__(self, cfg: EnvConfig, carla_module: Any, seed: int) -> None:
        """Connects (see ``reconnect``).

        Raises:
            SimulatorUnreachable: naming host:port when no server answers in time.
        """
        self.cfg = cfg
        self._carla = carla_module
        self._seed = seed
        self.broken = False
        self._closed = False
        self._npcs: list[Any] = []
        self.reconnect()

    def reconnect(self) -> None:
        """Builds a new client, loads the town if needed, sets synchronous mode and the TM.

        Raises:
            SimulatorUnreachable: naming host:port when no server answers in time.
        """
        cfg, c = self.cfg, self._carla
        where = f"{cfg.host}:{cfg.port}"
        try:
            client = c.Client(cfg.host, cfg.port)
            client.set_timeout(cfg.timeout_s)
            world = client.get_world()
            if _short_map_name(world.get_map().name) != cfg.town:
                client.set_timeout(max(cfg.timeout_s, LOAD_WORLD_TIMEOUT_S))
                world = client.load_world(cfg.town)
                client.set_timeout(cfg.timeout_s)
            self._original_settings = world.get_settings()
            settings = world.get_settings()
            settings.synchronous_mode = True
            settings.fixed_delta_seconds = cfg.fixed_delta_seconds
            world.apply_settings(settings)
            tm = client.get_trafficmanager(cfg.tm_port)
            tm.set_synchronous_mode(True)
            tm.set_random_device_seed(self._seed)
            carla_map = world.get_map()
        except RuntimeError as exc:
            raise SimulatorUnreachable(
                f"no CARLA server answered at {where} within {cfg.timeout_s} s: {exc}") from exc
        self.client, self.world, self.tm, self.map = client, world, tm, carla_map
        self.broken = False
        self._closed = False
        log.info("event=connected server=%s town=%s tm_port=%d", where, carla_map.name,
                 cfg.tm_port)

    def mark_broken(self) -> None:
        """Records a failed tick: the next episode starts from a new connection."""
        self.broken = True

    def tick(self) -> int:
        """Advances the simulation one step; raises RuntimeError on a time-out."""
        return int(self.world.tick(self.cfg.timeout_s))

    def spawn_ego(self, transform: Any) -> Any:
        """Spawns the ego vehicle at ``transform``.

        Raises:
            SimulatorError: if the spawn point is blocked.
        """
        bp = self.world.get_blueprint_library().find(self.cfg.vehicle)
        if bp.has_attribute("role_name"):
            bp.set_attribute("role_name", "hero")
        ego = self.world.try_spawn_actor(bp, transform)
        if ego is None:
            loc = transform.location
            raise SimulatorError(f"could not spawn {self.cfg.vehicle} at "
                                 f"({loc.x:.1f}, {loc.y:.1f}): spawn point blocked")
        return ego

    def spawn_npcs(self, points: Sequence[Any], ego_transform: Any, seed: int) -> int:
        """Spawns up to ``cfg.num_npcs`` vehicles on the traffic manager's autopilot.

        Spawn points closer than NPC_MIN_DISTANCE_M to the ego are skipped; the points and
        blueprints are drawn from a generator seeded with ``seed``.

        Returns:
            The number of NPCs spawned.
        """
        if self.cfg.num_npcs <= 0:
            return 0
        rng = np.random.default_rng([seed, 1])
        ego = ego_transform.location
        free = [p for p in points if p.location.distance(ego) > NPC_MIN_DISTANCE_M]
        blueprints = list(self.world.get_blueprint_library().filter("vehicle.*"))
        port = self.tm.get_port()
        for i in rng.permutation(len(free)):
            if len(self._npcs) >= self.cfg.num_npcs:
                break
            bp = blueprints[int(rng.integers(len(blueprints)))]
            npc = self.world.try_spawn_actor(bp, free[int(i)])
            if npc is not None:
                npc.set_autopilot(True, port)
                self._npcs.append(npc)
        return len(self._npcs)

    def destroy_npcs(self) -> None:
        npcs, self._npcs = self._npcs, []
        for npc in npcs:
            self.guarded("destroy_npc", npc.destroy)

    def guarded(self, what: str, fn: Callable[[], Any]) -> None:
        """Runs a clean-up call; a dead server's error is logged, not raised."""
        try:
            fn()
        except RuntimeError as exc:
            log.warning("event=cleanup_failed what=%s error=%r", what, exc)

    def close(self) -> None:
        """Destroys the NPCs, ticks once so destruction applies, restores asynchronous mode.

        The caller destroys its sensors and ego first. Safe to call twice.
        """
        if self._closed:
            return
        self.destroy_npcs()
        if not self.broken:
            self.guarded("tick", self.tick)
        settings = self._original_settings
        settings.synchronous_mode = False
        self.guarded("restore_settings", lambda: self.world.apply_settings(settings))
        self.guarded("tm_async", lambda: self.tm.set_synchronous_mode(False))
        self._closed = True
        self.broken = True  # a later reset sets the server up again
