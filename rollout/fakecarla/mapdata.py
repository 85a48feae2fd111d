"""Map assets computed once per loaded map: the real offline ``carla.Map``, a top-down raster of
road surface classes for the renderer, and deterministic roadside obstacles.

The real Map is authoritative for lanes and waypoints; the raster is only what the camera sees.
"""
from __future__ import annotations

import logging
import math
import pathlib
from dataclasses import dataclass

import carla
import cv2
import numpy as np

from common.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_XODR = pathlib.Path(__file__).with_name("town.xodr")
# The shipped towns beside the default one (served when no xodr_path is set), by map name.
EXTRA_TOWNS = {"Town02": pathlib.Path(__file__).with_name("Town02.xodr")}
# The shipped town's map name: the default ``env.town`` (common.config.EnvConfig), so a default
# config, and every run trained on the fake, names the map the fake serves. It is the fake's own
# town (rollout/fakecarla/town.py), not CARLA's Town01.
TOWN_NAME = "Town01"
MAP_PATH_PREFIX = "/Game/Carla/Maps/"  # how get_available_maps spells a map, as CARLA does

# Raster classes (indices into the renderer's palette), numbered by how visible they are, so a
# coarse raster level is a plain max-pool of the finer one.
GROUND, ASPHALT, EDGE, WHITE, YELLOW = 0, 1, 2, 3, 4

SAMPLE_M = 1.0  # spacing of lane samples used to draw the raster
MARKING_M = 0.15  # painted marking width
EDGE_M = 0.6  # dark road-edge strip, centred on the outer lane border
DASH_M = 3.0  # broken markings: DASH_M painted, DASH_M gap
MAX_RASTER_PX = 16_000_000
PYRAMID_LEVELS = 5
MAX_LANE_SAMPLES = 100_000  # guards the lane walk against a cyclic section
OBSTACLE_SPACING_M = 12.0
OBSTACLE_CLEARANCE_M = 1.5  # gap between the outer lane border and a pole's centre
OBSTACLE_HALF_M = 0.2  # half side of a square pole
OBSTACLE_HEIGHT_M = 2.0
_CONTINUOUS = {"Solid", "SolidSolid", "SolidBroken", "BrokenSolid"}
_DASHED = {"Broken", "BrokenBroken", "BottsDots"}


@dataclass(frozen=True)
class Raster:
    """A top-down class image of the map. Pixel (row, col) covers world x = x0 + col * res,
    y = y0 + row * res (CARLA coordinates). ``levels[k]`` is the same map at res * 2**k where
    a coarse cell takes its most visible fine class, so thin markings survive a distant view."""

    classes: np.ndarray  # uint8 [rows, cols]
    x0: float
    y0: float
    res: float
    levels: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class MapAssets:
    """Everything the fake server derives from one OpenDRIVE file.

    Attributes:
        name: map name (what ``Map.name`` reports).
        xodr: the OpenDRIVE text.
        map: the real offline carla.Map.
        raster: road surface classes seen from above.
        obstacles: float32 [N, 3]: x, y, yaw (rad) of square roadside poles.
    """

    name: str
    xodr: str
    map: carla.Map
    raster: Raster
    obstacles: np.ndarray


def map_name(xodr_path: str) -> str:
    """The name the fake serves an OpenDRIVE file under: TOWN_NAME for "" (the shipped town),
    else the file's stem ("/maps/ring.xodr" -> "ring")."""
    return pathlib.PurePath(xodr_path).stem if xodr_path else TOWN_NAME


def load_assets(xodr_path: str) -> MapAssets:
    """Parses an OpenDRIVE file ("" = the shipped town) and precomputes render data.

    Raises:
        ConfigError: if the file is missing or carla.Map yields no driving lanes from it.
    """
    path = pathlib.Path(xodr_path) if xodr_path else DEFAULT_XODR
    if not path.is_file():
        raise ConfigError(f"xodr_path ({xodr_path!r}) is not a file")
    xodr = path.read_text()
    name = map_name(xodr_path)
    carla_map = carla.Map(name, xodr)
    lanes = _lane_polylines(carla_map)
    if not lanes:
        raise ConfigError(f"xodr_path ({xodr_path!r}) has no driving lanes carla.Map can read")
    raster = _rasterize(lanes)
    obstacles = _place_obstacles(carla_map, lanes)
    log.info("fake_map_loaded name=%s lanes=%d raster=%dx%d res_m=%.3f obstacles=%d", name, len(lanes),
             raster.classes.shape[1], raster.classes.shape[0], raster.res, len(obstacles))
    return MapAssets(name, xodr, carla_map, raster, obstacles)


class MapCatalog:
    """The maps one fake server has: ``xodr_path``'s alone, or, without one, the shipped town
    (TOWN_NAME, the default) and EXTRA_TOWNS. Each is read on first use and kept."""

    def __init__(self, xodr_path: str, default: MapAssets) -> None:
        """Args:
            xodr_path: FakeCarlaConfig.xodr_path ("" for the shipped towns).
            default: the already loaded default map (``load_assets(xodr_path)``).
        """
        self.default = default
        self._paths = {} if xodr_path else {name: str(path) for name, path in EXTRA_TOWNS.items()}
        self._loaded = {default.name: default}

    @property
    def names(self) -> list[str]:
        return [self.default.name, *self._paths]

    def find(self, name: str) -> MapAssets | None:
        """The map called ``name``, bare ("Town02") or as get_available_maps spells it; None if
        the server has no such map."""
        bare = name[len(MAP_PATH_PREFIX):] if name.startswith(MAP_PATH_PREFIX) else name
        if bare not in self.names:
            return None
        if bare not in self._loaded:
            self._loaded[bare] = load_assets(self._paths[bare])
        return self._loaded[bare]


@dataclass(frozen=True)
class _Lane:
    """One topology segment sampled every SAMPLE_M: centre, unit right vectors, half widths."""

    centre: np.ndarray  # [n, 2]
    right: np.ndarray  # [n, 2]
    half_width: np.ndarray  # [n]
    s: np.ndarray  # [n] distance along the samples
    left_mark: tuple[str, str]  # (type name, colour name) at the segment start
    right_mark: tuple[str, str]
    left_outer: bool  # no driving lane beyond the left border
    right_outer: bool
    is_junction: bool


def _mark(marking: carla.LaneMarking) -> tuple[str, str]:
    return str(marking.type), str(marking.color)


def _is_outer(neighbour: carla.Waypoint | None) -> bool:
    return neighbour is None or neighbour.lane_type != carla.LaneType.Driving


def _lane_polylines(carla_map: carla.Map) -> list[_Lane]:
    lanes = []
    for start in _lane_starts(carla_map):
        samples = _walk(start, forward=True)
        centre = np.array([[w.transform.location.x, w.transform.location.y] for w in samples], np.float64)
        yaw = np.radians([w.transform.rotation.yaw for w in samples])
        right = np.stack([-np.sin(yaw), np.cos(yaw)], axis=1)
        half = np.array([w.lane_width / 2 for w in samples])
        steps = np.linalg.norm(np.diff(centre, axis=0), axis=1) if len(samples) > 1 else np.zeros(0)
        s = np.concatenate([[0.0], np.cumsum(steps)])
        lanes.append(_Lane(centre, right, half, s, _mark(start.left_lane_marking),
                           _mark(start.right_lane_marking), _is_outer(start.get_left_lane()),
                           _is_outer(start.get_right_lane()), start.is_junction))
    return lanes


def _lane_starts(carla_map: carla.Map) -> list[carla.Waypoint]:
    """The first waypoint of every driving lane section: the topology's segment starts, plus
    lanes the topology leaves out (a road with no successor has no topology entry)."""
    starts = [start for start, _end in carla_map.get_topology()]
    seen = {(w.road_id, w.section_id, w.lane_id) for w in starts}
    for waypoint in carla_map.generate_waypoints(5.0):
        key = (waypoint.road_id, waypoint.section_id, waypoint.lane_id)
        if key in seen or waypoint.lane_type != carla.LaneType.Driving:
            continue
        seen.add(key)
        starts.append(_walk(waypoint, forward=False)[-1])
    return starts


def _walk(waypoint: carla.Waypoint, forward: bool) -> list[carla.Waypoint]:
    """Samples SAMPLE_M apart along one lane section to its end (or start), plus the first
    sample beyond it when there is one, so joined sections leave no gap.

    (``next_until_lane_end`` / ``previous_until_lane_start`` crash the offline Map on a road
    without successor or predecessor, so this walks with ``next`` / ``previous``.)
    """
    key = (waypoint.road_id, waypoint.section_id, waypoint.lane_id)
    out = [waypoint]
    while len(out) < MAX_LANE_SAMPLES:
        options = out[-1].next(SAMPLE_M) if forward else out[-1].previous(SAMPLE_M)
        same = [w for w in options if (w.road_id, w.section_id, w.lane_id) == key]
        if not same:
            if options and forward:
                out.append(options[0])
            break
        out.append(same[0])
    return out


def _raster_frame(lanes: list[_Lane]) -> tuple[float, float, float, int, int]:
    points = np.concatenate([lane.centre for lane in lanes])
    margin = 20.0
    x0, y0 = points.min(axis=0) - margin
    x1, y1 = points.max(axis=0) + margin
    res = max(0.1, math.sqrt((x1 - x0) * (y1 - y0) / MAX_RASTER_PX))
    return float(x0), float(y0), res, int(math.ceil((x1 - x0) / res)), int(math.ceil((y1 - y0) / res))


def _rasterize(lanes: list[_Lane]) -> Raster:
    x0, y0, res, cols, rows = _raster_frame(lanes)
    classes = np.full((rows, cols), GROUND, np.uint8)
    shift = 4  # sub-pixel bits for cv2 drawing
    scale = (1 << shift) / res

    def px(points: np.ndarray) -> np.ndarray:
        return np.round((points - (x0, y0)) * scale).astype(np.int32)

    def thickness(metres: float) -> int:
        return max(1, int(round(metres / res)))

    borders = [(lane.centre - lane.right * lane.half_width[:, None],
                lane.centre + lane.right * lane.half_width[:, None]) for lane in lanes]
    for lane, (left, right) in zip(lanes, borders):  # dark edges first; asphalt covers the inner half
        for outer, edge in ((lane.left_outer, left), (lane.right_outer, right)):
            if outer and not lane.is_junction:
                cv2.polylines(classes, [px(edge)], False, EDGE, thickness(EDGE_M), cv2.LINE_8, shift)
    for left, right in borders:
        lp, rp = px(left), px(right)
        quads = np.stack([lp[:-1], lp[1:], rp[1:], rp[:-1]], axis=1)  # [n - 1, 4, 2]
        for quad in quads:
            cv2.fillConvexPoly(classes, quad, ASPHALT, cv2.LINE_8, shift)
    for lane, (left, right) in zip(lanes, borders):
        for (kind, colour), edge in ((lane.left_mark, left), (lane.right_mark, right)):
            _paint_marking(classes, px(edge), lane.s, kind, colour, thickness(MARKING_M), shift)
    return Raster(classes, x0, y0, res, _pyramid(classes))


def _pyramid(classes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Levels 0..PYRAMID_LEVELS-1, each halving the resolution by a max-pool of classes."""
    levels = [classes]
    for _ in range(PYRAMID_LEVELS - 1):
        fine = levels[-1]
        rows, cols = fine.shape[0] // 2 * 2, fine.shape[1] // 2 * 2
        levels.append(np.maximum(np.maximum(fine[0:rows:2, 0:cols:2], fine[1:rows:2, 0:cols:2]),
                                 np.maximum(fine[0:rows:2, 1:cols:2], fine[1:rows:2, 1:cols:2])))
    return tuple(levels)


def _paint_marking(classes: np.ndarray, edge_px: np.ndarray, s: np.ndarray, kind: str, colour: str,
                   width_px: int, shift: int) -> None:
    value = YELLOW if colour == "Yellow" else WHITE
    if kind in _CONTINUOUS:
        cv2.polylines(classes, [edge_px], False, value, width_px, cv2.LINE_8, shift)
    elif kind in _DASHED:
        painted = (np.floor(s / DASH_M) % 2) == 0
        for i in range(len(edge_px) - 1):
            if painted[i]:
                cv2.line(classes, tuple(edge_px[i]), tuple(edge_px[i + 1]), value, width_px, cv2.LINE_8, shift)


def _place_obstacles(carla_map: carla.Map, lanes: list[_Lane]) -> np.ndarray:
    """Square poles beside outer lane borders outside junctions, where no driving lane lies."""
    found: list[tuple[float, float, float]] = []
    for lane in lanes:
        if lane.is_junction:
            continue
        every = max(1, int(round(OBSTACLE_SPACING_M / SAMPLE_M)))
        for i in range(every // 2, len(lane.centre), every):
            for outer, sign in ((lane.right_outer, 1.0), (lane.left_outer, -1.0)):
                if not outer:
                    continue
                offset = lane.half_width[i] + OBSTACLE_CLEARANCE_M
                xy = lane.centre[i] + sign * offset * lane.right[i]
                near_road = lane.centre[i] + sign * (offset - OBSTACLE_CLEARANCE_M / 2) * lane.right[i]
                if _on_driving_lane(carla_map, xy) or _on_driving_lane(carla_map, near_road):
                    continue
                yaw = math.atan2(lane.right[i][0], -lane.right[i][1])
                found.append((float(xy[0]), float(xy[1]), yaw))
    unique = {(round(x, 1), round(y, 1)): (x, y, yaw) for x, y, yaw in found}
    return np.array(sorted(unique.values()), np.float32).reshape(-1, 3)


def _on_driving_lane(carla_map: carla.Map, xy: np.ndarray) -> bool:
    location = carla.Location(x=float(xy[0]), y=float(xy[1]), z=0.0)
    return carla_map.get_waypoint(location, project_to_road=False, lane_type=carla.LaneType.Driving) is not None
