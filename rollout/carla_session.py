"""One env's connection to one CARLA server: client, world, synchronous settings, traffic
manager, and the vehicles it spawned (the ego and NPCs).

Everything goes through the ``carla`` module the env was given (the real client or the fake).
A server that does not answer within the timeout is reported as SimulatorUnreachable naming
host:port. ``close`` restores asynchronous mode so the server is left as it was found.

Ownership: every vehicle a session spawns carries ``role_name`` = its ``owner_tag``
("carla-td3/<actor index>"; the ego's is "hero/" + the tag, so tools that look for a hero by
prefix find it). On each (re)connect the session destroys what carries its tag (left by a dead
client of the same actor index) and the sensors attached to those vehicles, and shuts the old
traffic manager down (LibCarla keeps one per process and port, bound to the episode it met).
A server in synchronous mode with a hero vehicle of another tag is driven by another client:
a SimulatorError naming host:port. On a dead server, clean-up stops at the first time-out
instead of waiting out one per call.

The town: a server whose current map is not ``target_town(cfg)`` loads it, the same way on a
real server and on the fake; a town the server does not have is a ConfigError that names it
and the server's maps, raised on connecting, before any episode.
"""
from __future__ import annotations

import logging
from pathlib import PurePath
from typing import Any, Callable, Sequence

import numpy as np

from common.config import EnvConfig, SimulatorBackend
from common.errors import ConfigError, SimulatorError, SimulatorUnreachable

log = logging.getLogger(__name__)

LOAD_WORLD_TIMEOUT_S = 60.0
HERO_PREFIX = "hero"
NPC_MIN_DISTANCE_M = 15.0
DEFAULT_TOWN: str = EnvConfig.town  # the dataclass field's default


def owner_tag(actor_index: int) -> str:
    """The role_name tag of the vehicles rollout worker ``actor_index`` spawns."""
    return f"carla-td3/{actor_index}"


def _short_map_name(name: str) -> str:
    """"Carla/Maps/Town01" -> "Town01"."""
    return name.rsplit("/", 1)[-1]


def target_town(cfg: EnvConfig) -> str:
    """The map an env drives on: ``cfg.town``, except on the fake with ``cfg.fake.xodr_path``
    set, where the file wins and the map is named after its stem (the fake serves it so).

    Raises:
        ConfigError: if the file is set and ``cfg.town`` is neither its stem nor the default.
    """
    if cfg.backend is not SimulatorBackend.FAKE or not cfg.fake.xodr_path:
        return cfg.town
    stem = PurePath(cfg.fake.xodr_path).stem
    if cfg.town not in (stem, DEFAULT_TOWN):
        raise ConfigError(f"env.town ({cfg.town!r}) contradicts env.fake.xodr_path "
                          f"({cfg.fake.xodr_path!r}), whose map is {stem!r}: leave env.town at "
                          f"{DEFAULT_TOWN!r} or set it to {stem!r}")
    return stem


def _load_town(client: Any, world: Any, town: str, where: str, timeout_s: float) -> Any:
    """``world``, or the world of ``town`` loaded (with at least LOAD_WORLD_TIMEOUT_S to do
    it) when the server runs another map.

    Raises:
        ConfigError: naming ``town`` and the server's maps when it has no such map.
    """
    current = _short_map_name(world.get_map().name)
    if current == _short_map_name(town):
        return world
    available = sorted(_short_map_name(m) for m in client.get_available_maps())
    if _short_map_name(town) not in available:
        raise ConfigError(f"env.town ({town!r}) is not a map of the server at {where}; "
                          f"available: {available}")
    log.info("event=load_world server=%s town=%s previous=%s", where, town, current)
    client.set_timeout(max(timeout_s, LOAD_WORLD_TIMEOUT_S))
    world = client.load_world(town)
    client.set_timeout(timeout_s)
    return world


class Session:
    """Client, world and the vehicles this env spawned on one server."""

    def __init__(self, cfg: EnvConfig, carla_module: Any, seed: int,
                 tag: str = owner_tag(0)) -> None:
        """Connects (see ``reconnect``).

        Args:
            cfg: the env's settings (server, ports, timeouts).
            carla_module: the ``carla`` module to talk through.
            seed: the traffic manager's first seed.
            tag: ``role_name`` of the vehicles this session spawns (``owner_tag``).

        Raises:
            SimulatorUnreachable: naming host:port when no server answers in time.
            SimulatorError: if another client drives the server.
            ConfigError: if the server has no map named ``target_town(cfg)``.
        """
        self.cfg = cfg
        self._carla = carla_module
        self._seed = seed
        self.tag = tag
        self.broken = False
        self._closed = False
        self._dead = False  # a clean-up call timed out: skip the others
        self._npcs: list[Any] = []
        self.tm: Any = None
        self.reconnect()

    def reconnect(self) -> None:
        """Builds a new client, loads the town if needed, removes this tag's leftovers, sets
        synchronous mode and a new traffic manager.

        Raises:
            SimulatorUnreachable: naming host:port when no server answers in time.
            SimulatorError: naming host:port if another client drives the server.
            ConfigError: if the server has no map named ``target_town(cfg)``.
        """
        cfg, c = self.cfg, self._carla
        where = f"{cfg.host}:{cfg.port}"
        town = target_town(cfg)
        self._shut_down_tm()
        self._npcs = []
        try:
            client = c.Client(cfg.host, cfg.port)
            client.set_timeout(cfg.timeout_s)
            world = _load_town(client, client.get_world(), town, where, cfg.timeout_s)
            self._original_settings = world.get_settings()
            self._claim(world, where)
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
        self._dead = False
        log.info("event=connected server=%s town=%s tm_port=%d", where, carla_map.name,
                 cfg.tm_port)

    def _claim(self, world: Any, where: str) -> None:
        """Destroys this tag's leftover vehicles and their sensors.

        Raises:
            SimulatorError: if the server is in synchronous mode with another tag's hero.
            RuntimeError: from the server (a time-out).
        """
        actors = list(world.get_actors())
        roles = {a.id: a.attributes.get("role_name", "") for a in actors}
        ours = {i for i, role in roles.items() if role in (self.tag, self.ego_role)}
        others = sorted(role for role in roles.values()
                        if role.startswith(HERO_PREFIX) and role != self.ego_role)
        if others and self._original_settings.synchronous_mode:
            raise SimulatorError(
                f"the CARLA server at {where} is in synchronous mode and drives another "
                f"client's hero vehicle ({others[0]!r}): two rollout workers on one server? "
                "Give each actor its own server (--carla HOST:PORT,...)")
        leftovers = [a for a in actors if a.id in ours or
                     (a.parent is not None and a.parent.id in ours)]
        for actor in sorted(leftovers, key=lambda a: a.parent is None):  # sensors first
            actor.destroy()
        if leftovers:
            log.warning("event=leftovers_destroyed server=%s tag=%s actors=%d", where,
                        self.tag, len(leftovers))

    def _shut_down_tm(self) -> None:
        """Releases the traffic manager of the previous connection (the real client keeps one
        per process and port, bound to the episode it was made in). Tried even after a
        clean-up call timed out: a stale manager would outlive the server's restart."""
        tm, self.tm = self.tm, None
        if tm is not None:
            self._dead = False
            self.guarded("tm_shut_down", tm.shut_down)

    @property
    def ego_role(self) -> str:
        return f"{HERO_PREFIX}/{self.tag}"

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
            bp.set_attribute("role_name", self.ego_role)
        ego = self.world.try_spawn_actor(bp, transform)
        if ego is None:
            loc = transform.location
            raise SimulatorError(f"could not spawn {self.cfg.vehicle} at "
                                 f"({loc.x:.1f}, {loc.y:.1f}): spawn point blocked")
        return ego

    def spawn_npcs(self, points: Sequence[Any], ego_transform: Any, seed: int) -> int:
        """Spawns up to ``cfg.num_npcs`` vehicles on the traffic manager's autopilot.

        The points are tried in the order given (rollout/npc_spawns.py orders them); those closer
        than NPC_MIN_DISTANCE_M to the ego are skipped. The traffic manager is seeded with
        ``seed`` and the blueprints drawn from a generator seeded with it, so the same seed
        gives the same traffic.

        Returns:
            The number of NPCs spawned.
        """
        if self.cfg.num_npcs <= 0:
            return 0
        rng = np.random.default_rng([seed, 1])
        self.tm.set_random_device_seed(seed)
        ego = ego_transform.location
        free = [p for p in points if p.location.distance(ego) > NPC_MIN_DISTANCE_M]
        blueprints = list(self.world.get_blueprint_library().filter("vehicle.*"))
        port = self.tm.get_port()
        for point in free:
            if len(self._npcs) >= self.cfg.num_npcs:
                break
            bp = blueprints[int(rng.integers(len(blueprints)))]
            if bp.has_attribute("role_name"):
                bp.set_attribute("role_name", self.tag)
            npc = self.world.try_spawn_actor(bp, point)
            if npc is not None:
                npc.set_autopilot(True, port)
                self._npcs.append(npc)
        return len(self._npcs)

    def destroy_npcs(self) -> None:
        npcs, self._npcs = self._npcs, []
        for npc in npcs:
            self.guarded("destroy_npc", npc.destroy)

    def guarded(self, what: str, fn: Callable[[], Any]) -> None:
        """Runs a clean-up call; a dead server's error is logged, not raised. After one call
        timed out the others are skipped until the next connection (each would wait out its
        own time-out)."""
        if self._dead:
            return
        try:
            fn()
        except RuntimeError as exc:
            self._dead = "time-out" in str(exc) or "timed out" in str(exc)
            log.warning("event=cleanup_failed what=%s error=%r skip_rest=%s", what, exc,
                        self._dead)

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
