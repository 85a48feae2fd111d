"""The fake server: world state, the tick (traffic, physics, collisions, sensors), fault
injection, and the host that restarts a dead server when a new client connects.

Fault injection counts ``World.tick`` calls per server life, from 1. ``fail_tick_at=k``: the
k-th tick waits ``fault_delay_s`` and raises the client's time-out error without advancing the
world; the server survives. ``die_at_tick=k``: the k-th tick and every later call on that
server (from any client, world or actor handle) raises the time-out error. A ``Client``
created afterwards on the same fake module reaches a restarted server: empty world, frame 0,
no faults armed (faults apply to the first life only). Handles from the dead life stay dead.
"""
from __future__ import annotations

import logging
import math
import random
import time
from typing import Any

import carla
import numpy as np

from rollout.fakecarla import dynamics
from rollout.fakecarla.actors import Actor, LaneInvasionSensor, Sensor, ServerSideSensor, Vehicle
from rollout.fakecarla.blueprints import VEHICLE_MODELS, ActorBlueprint
from rollout.fakecarla.mapdata import OBSTACLE_HALF_M, OBSTACLE_HEIGHT_M, MapAssets, MapCatalog
from rollout.fakecarla.renderer import BOX_COLUMNS, POLE_COLOUR, CameraRenderer
from rollout.fakecarla.sensors import (CollisionEvent, CornerPlace, Delivery, Image, LaneInvasionEvent, corner_places,
                                      crossed_markings)
from rollout.fakecarla.traffic import TrafficManager
from common.config import FakeCarlaConfig

log = logging.getLogger(__name__)

DEFAULT_DELTA_S = 0.05  # step used when the world has no fixed_delta_seconds
VEHICLE_MASS_KG = 1500.0
SERVER_VERSION = "0.9.16"


def timeout_error(seconds: float, host: str, port: int) -> RuntimeError:
    """The real client's error text for a server that did not answer in time."""
    return RuntimeError(f"time-out of {int(round(seconds * 1000))}ms while waiting for the simulator, "
                        f"make sure the simulator is ready and connected to {host}:{port}")


class Connection:
    """One client's link to one server life: where it connected and its timeout."""

    def __init__(self, server: Server, host: str, port: int) -> None:
        self.server, self.host, self.port = server, host, port
        self.timeout_s = 5.0

    def check(self) -> None:
        """Raises the time-out error (after a short wait) if the server is dead."""
        if self.server.dead:
            self.fail()

    def fail(self) -> None:
        time.sleep(min(self.timeout_s, self.server.cfg.fault_delay_s))
        raise timeout_error(self.timeout_s, self.host, self.port)

    def world(self) -> Any:
        from rollout.fakecarla.client import World  # the world handle lives with the client API
        return World(self)


class Server:
    """One life of the fake server (see the module docstring for faults and restarts)."""

    def __init__(self, cfg: FakeCarlaConfig, assets: MapAssets, life: int,
                 maps: MapCatalog | None = None) -> None:
        self.cfg, self.assets, self.life = cfg, assets, life
        self.maps = maps if maps is not None else MapCatalog(cfg.xodr_path, assets)
        self.dead = False
        self.frame = 0
        self.elapsed_s = 0.0
        self.episode_id = 1
        self.tick_calls = 0
        self.settings = carla.WorldSettings()
        self.actors: dict[int, Actor] = {}
        self._next_id = 1
        self._tms: dict[int, TrafficManager] = {}
        self._delivery = Delivery()
        self._delay_rng = random.Random(life)
        self._renderers: dict[tuple[int, int, float], CameraRenderer] = {}
        self._poles = _pole_boxes(assets.obstacles)
        self._prev_corners: dict[int, list[CornerPlace]] = {}

    # -- actors --------------------------------------------------------------------------------
    def spawn(self, conn: Connection, blueprint: ActorBlueprint, transform: carla.Transform,
              parent: Actor | None) -> Actor | None:
        """Creates an actor; None when a vehicle would overlap something."""
        attributes = blueprint._attribute_values()
        actor_id = self._next_id
        if blueprint.id in VEHICLE_MODELS:
            vehicle = Vehicle(conn, actor_id, blueprint.id, attributes, VEHICLE_MODELS[blueprint.id], transform)
            if self._blocked(vehicle):
                return None
            actor: Actor = vehicle
        elif blueprint.id == "sensor.other.lane_invasion":
            actor = LaneInvasionSensor(conn, actor_id, blueprint.id, attributes, transform, parent)
        else:
            actor = ServerSideSensor(conn, actor_id, blueprint.id, attributes, transform, parent)
        self._next_id += 1
        self.actors[actor_id] = actor
        return actor

    def remove_actor(self, actor: Actor) -> None:
        self.actors.pop(actor.id, None)
        self._prev_corners.pop(actor.id, None)
        for tm in self._tms.values():
            tm._forget(actor.id)

    def traffic_manager(self, port: int) -> TrafficManager:
        if port not in self._tms:
            self._tms[port] = TrafficManager(Connection(self, "127.0.0.1", port), port)
        return self._tms[port]

    def reset_world(self, reset_settings: bool, assets: MapAssets | None = None) -> None:
        """``load_world``: every actor goes, a new episode starts (on ``assets``' map if given)."""
        if assets is not None and assets is not self.assets:
            self.assets = assets
            self._renderers.clear()
            self._poles = _pole_boxes(assets.obstacles)
        for actor in list(self.actors.values()):
            actor._alive = False
        self.actors.clear()
        self._prev_corners.clear()
        self._tms.clear()
        self.episode_id += 1
        if reset_settings:
            self.settings = carla.WorldSettings()

    def kill(self) -> None:
        self.dead = True
        self._delivery.close()
        log.info("fake_server_died life=%d frame=%d", self.life, self.frame)

    # -- the tick ------------------------------------------------------------------------------
    def tick(self, conn: Connection, seconds: float) -> int:
        """Advances the world one step; returns the new frame.

        Args:
            conn: the calling client's connection.
            seconds: how long the client waits (0: its ``set_timeout`` value).

        Raises:
            RuntimeError: the client's time-out text, for injected faults, a dead server, or a
                ``tick_latency_s`` longer than the client waits.
        """
        conn.check()
        started = time.perf_counter()
        self.tick_calls += 1
        first_life = self.life == 0
        if first_life and self.tick_calls == self.cfg.die_at_tick:
            self.kill()
            conn.fail()
        if first_life and self.tick_calls == self.cfg.fail_tick_at:
            log.info("fake_tick_timeout tick=%d frame=%d", self.tick_calls, self.frame)
            conn.fail()
        dt = self.settings.fixed_delta_seconds or DEFAULT_DELTA_S
        vehicles = [a for a in self.actors.values() if isinstance(a, Vehicle)]
        self._drive(vehicles, dt)
        self.frame += 1
        self.elapsed_s += dt
        collisions = self._collide(vehicles)
        self._emit(vehicles, collisions)
        limit = seconds if seconds > 0 else conn.timeout_s
        if self.cfg.tick_latency_s > limit:  # the server advanced, but too late for the client
            time.sleep(max(0.0, limit - (time.perf_counter() - started)))
            raise timeout_error(limit, conn.host, conn.port)
        wait = self.cfg.tick_latency_s - (time.perf_counter() - started)
        if wait > 0:
            time.sleep(wait)
        return self.frame

    def _drive(self, vehicles: list[Vehicle], dt: float) -> None:
        by_port: dict[int, list[Vehicle]] = {}
        for vehicle in vehicles:
            if vehicle._autopilot_port is not None:
                by_port.setdefault(vehicle._autopilot_port, []).append(vehicle)
        for port, autopilots in by_port.items():
            self.traffic_manager(port)._drive(autopilots, vehicles, self.assets.map, self.cfg, dt)
        for vehicle in vehicles:
            c, m = vehicle._control, vehicle._model
            vehicle._previous = vehicle._body
            vehicle._body = dynamics.step(vehicle._body, c.throttle, c.steer, c.brake, c.hand_brake, c.reverse,
                                         m.wheelbase, dt)

    def _collide(self, vehicles: list[Vehicle]) -> list[tuple[Vehicle, Actor | None, np.ndarray]]:
        """Overlaps after the move: (vehicle, other vehicle or None for a pole, push direction)."""
        hits: list[tuple[Vehicle, Actor | None, np.ndarray]] = []
        prints = {v.id: _footprint(v) for v in vehicles}
        near_pole = self._near_poles(vehicles)
        for i, a in enumerate(vehicles):
            for b in vehicles[i + 1:]:
                reach = a._model.half_length + b._model.half_length
                if abs(a._body.x - b._body.x) > reach or abs(a._body.y - b._body.y) > reach:
                    continue
                if dynamics.rectangles_overlap(prints[a.id], prints[b.id]):
                    hits.append((a, b, _unit(a._body.x - b._body.x, a._body.y - b._body.y)))
                    hits.append((b, a, _unit(b._body.x - a._body.x, b._body.y - a._body.y)))
            pole = self._pole_hit(a, prints[a.id]) if near_pole[i] else None
            if pole is not None:
                hits.append((a, None, _unit(a._body.x - pole[0], a._body.y - pole[1])))
        for vehicle, _, _ in hits:  # both bodies stop where they were before the overlap
            previous = vehicle._previous
            vehicle._body = dynamics.BodyState(previous.x, previous.y, previous.yaw)
        return hits

    def _near_poles(self, vehicles: list[Vehicle]) -> np.ndarray:
        """bool [V]: which vehicles have a pole within reach (one vectorised distance test)."""
        if not vehicles or len(self._poles) == 0:
            return np.zeros(len(vehicles), bool)
        xy = np.array([(v._body.x, v._body.y) for v in vehicles])
        reach = np.array([v._model.half_length for v in vehicles]) + 1.0
        gaps = np.abs(xy[:, None, :] - self._poles[None, :, :2]).max(axis=2)
        return (gaps < reach[:, None]).any(axis=1)

    def _pole_hit(self, vehicle: Vehicle, corners: np.ndarray) -> np.ndarray | None:
        if len(self._poles) == 0:
            return None
        near = np.hypot(self._poles[:, 0] - vehicle._body.x, self._poles[:, 1] - vehicle._body.y)
        for k in np.flatnonzero(near < vehicle._model.half_length + 1.0):
            pole = dynamics.footprint(self._poles[k, 0], self._poles[k, 1], self._poles[k, 3],
                                      OBSTACLE_HALF_M, OBSTACLE_HALF_M)
            if dynamics.rectangles_overlap(corners, pole):
                return self._poles[k, :2]
        return None

    def _emit(self, vehicles: list[Vehicle], collisions: list[tuple[Vehicle, Actor | None, np.ndarray]]) -> None:
        sensors = [a for a in self.actors.values() if isinstance(a, Sensor)]
        by_parent: dict[int, list[Sensor]] = {}
        for sensor in sensors:
            if sensor.parent is not None:
                by_parent.setdefault(sensor.parent.id, []).append(sensor)
        for vehicle, other, direction in collisions:
            impulse = direction * VEHICLE_MASS_KG * max(abs(vehicle._previous.speed), 0.1)
            for sensor in by_parent.get(vehicle.id, []):
                if sensor.type_id == "sensor.other.collision" and sensor._callback is not None:
                    other_actor = other if other is not None else Actor(sensor._conn, 0, "static.pole", {})
                    sensor._callback(CollisionEvent(self.frame, self.elapsed_s, sensor._transform(), vehicle,
                                                   other_actor, carla.Vector3D(*map(float, impulse), 0.0)))
        for vehicle in vehicles:
            self._lane_invasion(vehicle, by_parent.get(vehicle.id, []))
        for sensor in sensors:
            if sensor.type_id == "sensor.camera.rgb" and sensor._callback is not None:
                self._capture(sensor)

    def _lane_invasion(self, vehicle: Vehicle, sensors: list[Sensor]) -> None:
        listeners = [s for s in sensors if s.type_id == "sensor.other.lane_invasion" and s._callback is not None]
        if not listeners:
            self._prev_corners.pop(vehicle.id, None)
            return
        corners = corner_places(self.assets.map, _footprint(vehicle))
        before = self._prev_corners.get(vehicle.id)
        self._prev_corners[vehicle.id] = corners
        if before is None:
            return
        crossed = crossed_markings(before, corners)
        if crossed:
            for sensor in listeners:
                sensor._callback(LaneInvasionEvent(self.frame, self.elapsed_s, sensor._transform(), vehicle, crossed))

    def _capture(self, camera: Sensor) -> None:
        attrs = camera.attributes
        period = float(attrs.get("sensor_tick", "0") or 0.0)
        if self.elapsed_s - camera._last_capture_s < period - 1e-9:
            return
        camera._last_capture_s = self.elapsed_s
        width, height, fov = int(attrs["image_size_x"]), int(attrs["image_size_y"]), float(attrs["fov"])
        key = (width, height, fov)
        if key not in self._renderers:
            self._renderers[key] = CameraRenderer(self.assets.raster, width, height, fov, self._poles)
        transform = camera._transform()
        matrix = np.array(transform.get_matrix())
        pixels = self._renderers[key].render(matrix, self._boxes(camera, transform))
        image = Image(self.frame, self.elapsed_s, transform, width, height, fov, pixels.tobytes())
        callback = camera._callback
        self._delivery.post(self._delay_rng.uniform(0.0, self.cfg.camera_delay_s),
                            lambda data: camera._callback is callback and callback(data), image)

    def _boxes(self, camera: Sensor, transform: carla.Transform) -> np.ndarray:
        """Vehicles as renderer boxes (the renderer holds the poles); a parent that encloses the
        camera is left out."""
        rows = []
        for actor in self.actors.values():
            if not isinstance(actor, Vehicle):
                continue
            m, b = actor._model, actor._body
            if actor is camera.parent and _encloses(actor, transform.location):
                continue
            rows.append((b.x, b.y, 0.0, b.yaw, m.half_length, m.half_width, 2 * m.half_height, actor.id % 7))
        return np.array(rows, np.float64).reshape(-1, BOX_COLUMNS)

    def _blocked(self, vehicle: Vehicle) -> bool:
        corners = _footprint(vehicle)
        others = [a for a in self.actors.values() if isinstance(a, Vehicle)]
        if any(dynamics.rectangles_overlap(corners, _footprint(o)) for o in others):
            return True
        return self._pole_hit(vehicle, corners) is not None


def _footprint(vehicle: Vehicle) -> np.ndarray:
    b, m = vehicle._body, vehicle._model
    return dynamics.footprint(b.x, b.y, b.yaw, m.half_length, m.half_width)


def _unit(dx: float, dy: float) -> np.ndarray:
    norm = math.hypot(dx, dy)
    return np.array([dx / norm, dy / norm]) if norm > 1e-9 else np.array([1.0, 0.0])


def _encloses(vehicle: Vehicle, location: carla.Location) -> bool:
    b, m = vehicle._body, vehicle._model
    dx, dy = location.x - b.x, location.y - b.y
    ahead = dx * math.cos(b.yaw) + dy * math.sin(b.yaw)
    side = -dx * math.sin(b.yaw) + dy * math.cos(b.yaw)
    return abs(ahead) <= m.half_length and abs(side) <= m.half_width and location.z <= 2 * m.half_height + 0.5


def _pole_boxes(obstacles: np.ndarray) -> np.ndarray:
    boxes = np.zeros((len(obstacles), BOX_COLUMNS))
    boxes[:, 0:2] = obstacles[:, 0:2]
    boxes[:, 3] = obstacles[:, 2]
    boxes[:, 4:6] = OBSTACLE_HALF_M
    boxes[:, 6] = OBSTACLE_HEIGHT_M
    boxes[:, 7] = POLE_COLOUR
    return boxes


class Host:
    """The machine the fake server runs on: restarts it when a client connects after a death."""

    def __init__(self, cfg: FakeCarlaConfig, assets: MapAssets) -> None:
        self.cfg, self.assets = cfg, assets
        self.maps = MapCatalog(cfg.xodr_path, assets)
        self.server = Server(cfg, assets, life=0, maps=self.maps)

    def connect(self, host: str, port: int) -> Connection:
        if self.server.dead:  # a restarted server serves its default map again
            self.server = Server(self.cfg, self.assets, life=self.server.life + 1, maps=self.maps)
            log.info("fake_server_restarted life=%d", self.server.life)
        return Connection(self.server, host, port)
