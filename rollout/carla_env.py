"""The driving env: a Gymnasium-style env over the ``carla`` client API (a real server or the fake).

One env owns one connection to one server: synchronous mode with ``fixed_delta_seconds``, its
own traffic-manager port (synchronous too), an ego vehicle with an RGB camera, collision and
lane-invasion sensors, and optional NPC traffic. Each ``reset(seed)`` destroys the previous
episode's actors, draws a spawn point and a route from ``seed`` (rollout/route.py), spawns
everything anew and ticks once. Each ``step`` applies the action, ticks, waits for the camera
image of exactly that tick's frame, and scores the step with rollout/rewards.py.

A tick that times out (``RuntimeError`` from ``world.tick`` or a camera frame that never comes)
ends the episode with ``truncated=True`` and ``termination_reason="simulator_timeout"``, the
observation repeating the last one; the env then rebuilds its connection on the next reset and
raises SimulatorUnreachable if the server stays unreachable.

Episode seeds: ``reset(seed)`` uses ``seed``; ``reset()`` draws the next one from a generator
seeded with the constructor's ``seed``.
"""
from __future__ import annotations

import importlib
import logging
import math
from typing import Any

import numpy as np
from gymnasium import spaces

from rollout import rewards
from rollout.npc_spawns import route_spawn_points
from rollout.observation import ObservationBuilder, build_vector
from rollout.route import Projection, Route, choose_route, spawn_points, to_vehicle_frame, wrap_angle
from rollout.sensors import CameraMount, SensorReading, SensorRig
from rollout.carla_session import Session, owner_tag
from common.config import EnvConfig, PedalAction, SimulatorBackend
from common.errors import ConfigError, SimulatorError, SimulatorTimeout, SpecError
from common.specs import IMAGE_KEY, SPEED_LIMIT_MPS, VECTOR_KEY, EnvSpec

log = logging.getLogger(__name__)

MAIN_CAMERA = "camera"
EGO_SPAWN_ATTEMPTS = 5  # routes of seed, seed+1, ... tried when the ego's spawn point is blocked


def _hit_a_vehicle(event: Any) -> bool:
    """Whether a collision event's other actor is a vehicle (``vehicle.*``), as CARLA reports it."""
    other = getattr(event, "other_actor", None)
    return str(getattr(other, "type_id", "")).startswith("vehicle.")


class CarlaEnv:
    """Gymnasium-style driving env (reset/step/close, observation and action spaces)."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, cfg: EnvConfig, spec: EnvSpec, carla_module: Any = None,
                 seed: int = 0, tag: str = owner_tag(0)) -> None:
        """Connects to the server and sets it up; spawns nothing until ``reset``.

        Args:
            cfg: the env's settings.
            spec: observation and action spec.
            carla_module: the ``carla`` module to talk through; None imports the real client.
            seed: seeds the episode seeds used when ``reset`` gets none.
            tag: ``role_name`` of the vehicles it spawns (carla_session.owner_tag).

        Raises:
            ConfigError: the reward weights allow a step reward beyond the spec's limit.
            SimulatorUnreachable: no server answered at cfg.host:cfg.port within cfg.timeout_s.
            SimulatorError: another client drives that server.
        """
        check_reward_limit(cfg, spec)
        self.cfg = cfg
        self.spec = spec
        self._carla = carla_module if carla_module is not None else importlib.import_module("carla")
        self.observation_space = spaces.Dict({
            IMAGE_KEY: spaces.Box(0, 255, spec.image.shape, np.uint8),
            VECTOR_KEY: spaces.Box(*(spec.vector.clip(b) for b in spec.vector.bounds()),
                                   spec.vector.shape, np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, spec.action.shape, np.float32)
        self._seeds = np.random.default_rng(seed)
        self._builder = ObservationBuilder(spec, cfg.camera_input)
        cam = cfg.camera
        self._cameras = [CameraMount(MAIN_CAMERA, cam.width, cam.height, cam.fov, cam.x, cam.z,
                                     cam.pitch)]
        self._session = Session(cfg, self._carla, seed, tag)
        self._spawn_points: list[Any] = spawn_points(self._session.map, self._carla)
        self._rig: SensorRig | None = None
        self._last_images: dict[str, np.ndarray] = {}
        self._episode: _Episode | None = None

    # ----------------------------------------------------------------------------- public API

    def add_camera(self, mount: CameraMount) -> None:
        """Adds a camera (e.g. a top-down view for videos) spawned with the ego from next reset.

        Raises:
            SpecError: if a camera of that name exists.
        """
        if any(m.name == mount.name for m in self._cameras):
            raise SpecError(f"camera name {mount.name!r} is already used")
        self._cameras.append(mount)

    @property
    def camera_names(self) -> list[str]:
        return [m.name for m in self._cameras]

    def camera_images(self) -> dict[str, np.ndarray]:
        """BGRA images of the last observation's frame, by camera name."""
        return dict(self._last_images)

    @property
    def route(self) -> Route | None:
        return None if self._episode is None else self._episode.route

    @property
    def world(self) -> Any:
        return self._session.world

    def reset(self, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """Starts an episode on the route that ``seed`` selects.

        Args:
            seed: episode seed (spawn point, route, NPCs); None draws the next one.
            options: unused, for the Gymnasium signature.

        Returns:
            The first observation and an info dict (see ``step``).

        Raises:
            SimulatorUnreachable: if a broken connection cannot be rebuilt.
            SimulatorError: if no route fits, the spawn point is blocked, or the simulator
                fails again right after a reconnect.
        """
        episode_seed = int(self._seeds.integers(2**31)) if seed is None else int(seed)
        try:
            return self._start_episode(episode_seed)
        except (RuntimeError, SimulatorTimeout) as exc:
            log.warning("event=reset_failed seed=%d error=%r action=reconnect", episode_seed, exc)
            self._session.mark_broken()
            return self._start_episode(episode_seed)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        """Applies ``[steer, throttle_brake]``, ticks once and scores the step.

        Returns:
            obs, reward, terminated, truncated, info. ``info`` holds ``termination_reason``
            ("collision", "off_road", "route_completed", "step_limit",
            "simulator_timeout" or ""), ``route_completion`` (0..1; 1 once completed),
            ``distance_m`` (furthest point reached along the route), ``collisions`` (events
            this episode; ``vehicle_collisions`` those with another vehicle),
            ``lane_invasions`` (steps that crossed a marking or ended outside the route's lane),
            ``success`` (route completed with no collision and no lane invasion),
            ``reward_terms`` (weighted components) and the step's ``speed_mps``,
            ``lateral_m``, ``heading_error_rad``, ``episode_seed`` and ``step``.

        Raises:
            SpecError: for an action of the wrong shape or a step before reset.
            SimulatorError: for a step after a simulator failure, before the next reset.
        """
        ep = self._episode
        if ep is None or self._rig is None:
            raise SpecError("step() before reset()")
        if self._session.broken:
            raise SimulatorError("step() after a simulator failure; reset() reconnects")
        a = np.asarray(action, np.float32)
        if a.shape != self.spec.action.shape or not np.all(np.isfinite(a)):
            raise SpecError(f"action {a!r} must be finite with shape {self.spec.action.shape}")
        steer, command = (float(v) for v in np.clip(a, -1.0, 1.0))
        pedal = pedal_from_action(command, ep.speed, self.cfg)
        c = self._carla
        try:
            ep.ego.apply_control(c.VehicleControl(throttle=max(pedal, 0.0), brake=max(-pedal, 0.0),
                                                  steer=steer))
            frame = self._session.tick()
            reading = self._rig.read(frame)
        except (RuntimeError, SimulatorTimeout) as exc:
            return self._simulator_failed(ep, exc)
        ep.step += 1
        obs, m = self._measure(ep, reading, push=True)
        terms = rewards.reward_terms(m, self.cfg.reward)
        reason = rewards.termination_reason(m, self.cfg.reward)
        terminated = bool(reason)
        truncated = not terminated and ep.step >= self.cfg.max_steps
        if truncated:
            reason = rewards.STEP_LIMIT
        return obs, terms.total, terminated, truncated, ep.info(reason, terms, m)

    def close(self) -> None:
        """Destroys sensors, then vehicles, restores asynchronous mode; safe to call twice."""
        self._destroy_episode()
        self._session.close()

    # ---------------------------------------------------------------------------- internals

    def _start_episode(self, episode_seed: int) -> tuple[dict[str, np.ndarray], dict]:
        if self._session.broken:
            self._destroy_episode()
            self._session.reconnect()
            self._spawn_points = spawn_points(self._session.map, self._carla)
        self._destroy_episode()
        ego, transform, route = self._spawn_ego(episode_seed)
        self._episode = _Episode(ego, route, episode_seed, self.cfg, self.spec)
        self._rig = SensorRig(self._session.world, self._carla, ego, self._cameras,
                              self.cfg.sensor_timeout_s)
        if self.cfg.num_npcs > 0:
            near = route_spawn_points(self._session.map, self._carla, route, episode_seed)
            self._session.spawn_npcs(near, transform, episode_seed)
        frame = self._session.tick()
        obs, m = self._measure(self._episode, self._rig.read(frame), push=False)
        info = self._episode.info("", rewards.RewardTerms(0.0, 0.0, 0.0, 0.0, 0.0), m)
        log.debug("event=reset seed=%d route_m=%.1f", episode_seed, route.length)
        return obs, info

    def _spawn_ego(self, episode_seed: int) -> tuple[Any, Any, Route]:
        """The ego on the route ``episode_seed`` selects; when its spawn point is blocked (a
        vehicle stands there), on the routes of the next seeds, up to EGO_SPAWN_ATTEMPTS.

        Raises:
            SimulatorError: if every tried spawn point is blocked or no route fits.
        """
        for attempt in range(EGO_SPAWN_ATTEMPTS):
            transform, route = choose_route(self._session.map, self._carla, self._spawn_points,
                                            episode_seed + attempt, self.cfg.route_split,
                                            self.cfg.route_length_m,
                                            extend_m=self.spec.lookahead_m)
            try:
                return self._session.spawn_ego(transform), transform, route
            except SimulatorError as exc:
                blocked = exc
                log.warning("event=ego_spawn_blocked seed=%d attempt=%d error=%r",
                            episode_seed, attempt, exc)
        raise SimulatorError(f"the ego's spawn point was blocked on the routes of seeds "
                             f"{episode_seed}..{episode_seed + EGO_SPAWN_ATTEMPTS - 1}, "
                             f"the last: {blocked}")

    def _measure(self, ep: _Episode, reading: SensorReading,
                 push: bool) -> tuple[dict[str, np.ndarray], rewards.StepMeasurements]:
        self._last_images = reading.images
        t = ep.ego.get_transform()
        v = ep.ego.get_velocity()
        acc = ep.ego.get_acceleration()
        x, y, yaw = t.location.x, t.location.y, math.radians(t.rotation.yaw)
        speed = math.hypot(v.x, v.y)
        proj = ep.route.project(x, y, ep.hint)
        # Judged against the route's own lane, not the map's lane at the vehicle's place (see
        # rewards.StepMeasurements.on_driving_lane).
        on_lane = abs(proj.lateral) <= proj.half_width
        m = ep.advance(proj, speed, yaw, np.array([acc.x, acc.y]), reading, on_lane)
        ahead = ep.route.points_at(proj.s + ep.spacing * np.arange(1, self.spec.num_waypoints + 1))
        vector = build_vector(self.spec, speed, proj.lateral, m.heading_error_rad,
                              to_vehicle_frame(ahead, x, y, yaw))
        bgra = reading.images[MAIN_CAMERA]
        obs = self._builder.push(bgra, vector) if push else self._builder.reset(bgra, vector)
        return obs, m

    def _simulator_failed(self, ep: _Episode, exc: Exception) -> tuple[dict, float, bool, bool, dict]:
        log.warning("event=simulator_timeout host=%s port=%d step=%d error=%r",
                    self.cfg.host, self.cfg.port, ep.step, exc)
        self._session.mark_broken()
        ep.step += 1
        info = ep.info(rewards.SIMULATOR_TIMEOUT, rewards.RewardTerms(0.0, 0.0, 0.0, 0.0, 0.0),
                       ep.last)
        return self._builder.repeat_last(), 0.0, False, True, info

    def _destroy_episode(self) -> None:
        rig, self._rig = self._rig, None
        ep, self._episode = self._episode, None
        if rig is not None:
            self._session.guarded("destroy_sensors", rig.destroy)
        if ep is not None:
            self._session.guarded("destroy_ego", ep.ego.destroy)
        self._session.destroy_npcs()


def check_reward_limit(cfg: EnvConfig, spec: EnvSpec) -> None:
    """Raises ConfigError if ``cfg.reward`` allows a step reward beyond ``spec.reward_limit``,
    which the wire would refuse (common/specs.py). A step passes at most the waypoints that a
    vehicle at the spec's speed bound covers in one step, plus one.
    """
    spacing = spec.lookahead_m / spec.num_waypoints
    passed = math.ceil(SPEED_LIMIT_MPS * cfg.fixed_delta_seconds / spacing) + 1
    bound = rewards.step_reward_bound(cfg.reward, passed)
    if bound > spec.reward_limit:
        raise ConfigError(f"reward weights allow a step reward of {bound:.1f}, beyond "
                          f"spec.reward_limit ({spec.reward_limit}): raise it or lower them")


def pedal_from_action(command: float, speed_mps: float, cfg: EnvConfig) -> float:
    """The pedal in [-1, 1] (throttle above 0, brake below) for the action's second component
    ``command`` in [-1, 1], under ``cfg.pedal`` (common.config.PedalAction)."""
    if PedalAction(cfg.pedal) is PedalAction.THROTTLE_BRAKE:
        return command
    target = 0.5 * (command + 1.0) * cfg.max_target_speed_mps
    return min(max(cfg.speed_gain * (target - speed_mps), -1.0), 1.0)


class _Episode:
    """Per-episode state: the ego, its route and the running totals for rewards and info."""

    def __init__(self, ego: Any, route: Route, seed: int, cfg: EnvConfig, spec: EnvSpec) -> None:
        self.ego, self.route, self.seed = ego, route, seed
        self.half_width = float(ego.bounding_box.extent.y)
        self.cfg = cfg
        self.spacing = spec.lookahead_m / spec.num_waypoints
        self.step = 0
        self.hint: int | None = None
        self.s = self.s_max = 0.0
        self.speed = 0.0
        self.acc: np.ndarray | None = None
        self.collisions = 0
        self.vehicle_collisions = 0  # of which with another vehicle (the rest: the layout, props)
        self.lane_invasions = 0
        self.completed = False
        self.last: rewards.StepMeasurements | None = None

    def advance(self, proj: Projection, speed: float, yaw: float, acc: np.ndarray,
                reading: SensorReading, on_lane: bool) -> rewards.StepMeasurements:
        """Updates the totals with one tick's measurements and returns the reward input."""
        first = self.hint is None
        dt = self.cfg.fixed_delta_seconds
        s_prev, s_max_prev = (proj.s, proj.s) if first else (self.s, self.s_max)
        self.s, self.s_max, self.hint = proj.s, max(self.s_max, proj.s), proj.index
        jerk = 0.0 if self.acc is None else float(np.linalg.norm(acc - self.acc)) / dt
        collided = bool(reading.collisions)
        invaded = bool(reading.lane_invasions)
        self.collisions += len(reading.collisions)
        self.vehicle_collisions += sum(_hit_a_vehicle(e) for e in reading.collisions)
        self.completed = self.completed or self.route.is_completed(self.s_max)
        m = rewards.StepMeasurements(
            speed_mps=speed, heading_error_rad=wrap_angle(yaw - proj.yaw),
            lateral_m=proj.lateral, half_lane_width_m=proj.half_width,
            progress_m=proj.s - s_prev, dt_s=dt,
            waypoints_passed=int(self.s_max // self.spacing) - int(s_max_prev // self.spacing),
            route_completed=self.completed, collided=collided,
            collision_speed_mps=max(speed, self.speed), lane_invasion=invaded,
            on_driving_lane=on_lane,
            off_road_margin_m=rewards.off_road_margin(self.cfg.max_lateral_m),
            jerk_mps3=jerk, vehicle_half_width_m=self.half_width)
        self.lane_invasions += int(rewards.invaded_lane(m))
        self.speed, self.acc, self.last = speed, acc, m
        return m

    def info(self, reason: str, terms: rewards.RewardTerms,
             m: rewards.StepMeasurements | None) -> dict[str, Any]:
        success = (reason == rewards.ROUTE_COMPLETED and self.collisions == 0
                   and self.lane_invasions == 0)
        return {
            "termination_reason": reason,
            "route_completion": 1.0 if self.completed else self.route.completion(self.s_max),
            "distance_m": self.s_max,
            "collisions": self.collisions,
            "vehicle_collisions": self.vehicle_collisions,
            "lane_invasions": self.lane_invasions,
            "success": success,
            "reward_terms": terms._asdict(),
            "speed_mps": 0.0 if m is None else m.speed_mps,
            "lateral_m": 0.0 if m is None else m.lateral_m,
            "half_lane_width_m": 0.0 if m is None else m.half_lane_width_m,
            "heading_error_rad": 0.0 if m is None else m.heading_error_rad,
            "episode_seed": self.seed,
            "step": self.step,
        }


def make_env(cfg: EnvConfig, spec: EnvSpec, seed: int = 0) -> CarlaEnv:
    """The env on the configured backend: a new in-process fake server, or a real one.

    Raises:
        SimulatorUnreachable: if a real server does not answer at cfg.host:cfg.port.
    """
    if cfg.backend is SimulatorBackend.FAKE:
        from rollout.fakecarla import make_module  # the fake is only imported when used
        return CarlaEnv(cfg, spec, make_module(cfg.fake), seed)
    return CarlaEnv(cfg, spec, None, seed)
