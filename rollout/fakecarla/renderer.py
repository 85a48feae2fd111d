"""The fake camera: a pinhole perspective view rendered with numpy and OpenCV.

Ground: every pixel's ray is intersected with the z = 0 plane and looks up the map raster (road
surface, markings, edges); rays that miss the ground show the sky. Boxes (vehicles, roadside
poles) are drawn on top, far to near, face by face, clipped at the near plane. The same code
serves a driver's-eye camera and a top-down camera (pitch -90 high above the ego).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

from rollout.fakecarla.mapdata import Raster

# BGRA, indexed by raster class: ground, asphalt, edge, white, yellow.
# Grass and asphalt differ by ~50 grey levels, so the road stays visible in grayscale.
PALETTE = np.array([[50, 150, 90, 255], [72, 72, 72, 255], [28, 28, 28, 255], [235, 235, 235, 255],
                    [40, 200, 235, 255]], np.uint8)
SKY = np.array([235, 206, 160, 255], np.uint8)
HAZE = np.array([150, 160, 150, 255], np.uint8)  # ground beyond the draw distance
MAX_GROUND_M = 250.0
MAX_BOX_M = 120.0
NEAR_M = 0.05
BOX_COLUMNS = 8  # x, y, z_bottom, yaw, half_length, half_width, height, colour index
BOX_COLOURS = np.array([[40, 40, 200], [200, 90, 30], [40, 170, 40], [30, 150, 230], [160, 60, 160],
                        [200, 200, 60], [60, 60, 60], [220, 220, 220], [0, 110, 255]], np.float64)
POLE_COLOUR = 8
# Unit-box corners (x, y, z): bottom ring then top ring; faces list outward normals.
_CORNERS = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0],
                     [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], np.float64)
_FACES = ((4, 5, 6, 7), (1, 2, 6, 5), (0, 3, 7, 4), (3, 2, 6, 7), (0, 1, 5, 4))
_NORMALS = np.array([[0, 0, 1], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], np.float64)
_FACE_INDEX = np.array(_FACES)
_SHADE = np.array([1.15, 0.95, 0.75, 0.85, 0.65])


class _BoxSet(NamedTuple):
    """Boxes with the geometry the renderer derives from them (``_box_set``)."""

    boxes: np.ndarray  # [N, BOX_COLUMNS]
    corners: np.ndarray  # [N, 8, 3] world corners
    normals: np.ndarray  # [N, 5, 3] outward face normals
    face_centres: np.ndarray  # [N, 5, 3]
    sphere_centres: np.ndarray  # [N, 3] bounding spheres
    radii: np.ndarray  # [N]


def _box_set(boxes: np.ndarray) -> _BoxSet:
    boxes = np.asarray(boxes, np.float64).reshape(-1, BOX_COLUMNS)
    corners, normals = _box_geometry(boxes)
    centres = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] + boxes[:, 6] / 2.0], axis=1)
    radii = np.sqrt(boxes[:, 4] ** 2 + boxes[:, 5] ** 2 + (boxes[:, 6] / 2.0) ** 2)
    return _BoxSet(boxes, corners, normals, corners[:, _FACE_INDEX].mean(axis=2), centres, radii)


class CameraRenderer:
    """Renders BGRA images of one size and field of view.

    Args:
        raster: the map's top-down class raster.
        width: image width in pixels.
        height: image height in pixels.
        fov_deg: horizontal field of view in degrees.
        static_boxes: float [N, BOX_COLUMNS] boxes drawn in every frame (the map's poles):
            their corners, normals and bounding spheres are computed once, here.
    """

    def __init__(self, raster: Raster, width: int, height: int, fov_deg: float,
                 static_boxes: np.ndarray | None = None) -> None:
        self._raster = raster
        self._static = _box_set(np.zeros((0, BOX_COLUMNS)) if static_boxes is None else static_boxes)
        self.width, self.height = width, height
        self.focal = width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
        # Camera-frame ray of pixel (u, v) = A @ (u, v, 1): x forward, y right, z up.
        self._pixel_to_ray = np.array([[0.0, 0.0, 1.0],
                                       [1.0 / self.focal, 0.0, (0.5 - width / 2.0) / self.focal],
                                       [0.0, -1.0 / self.focal, (height / 2.0 - 0.5) / self.focal]])
        u = (np.arange(width, dtype=np.float32) + 0.5 - width / 2.0) / self.focal
        v = (np.arange(height, dtype=np.float32) + 0.5 - height / 2.0) / self.focal
        self._ray_u, self._ray_v = np.meshgrid(u, -v)
        self._ray_norm = np.sqrt(1.0 + self._ray_u ** 2 + self._ray_v ** 2)
        self._mask_key: tuple[float, ...] | None = None
        self._mask: tuple[np.ndarray, np.ndarray] = (np.zeros(0, bool), np.zeros(0, np.uint32))
        self._palette = PALETTE.view(np.uint32).ravel()
        self._sky = SKY.view(np.uint32)[0]
        self._haze = HAZE.view(np.uint32)[0]
        shades = np.clip(BOX_COLOURS[:, None, :] * _SHADE[None, :, None], 0, 255)
        self._face_colours = [[(*map(float, shade), 255.0) for shade in colour] for colour in shades]

    def render(self, camera_matrix: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Renders one frame.

        Args:
            camera_matrix: 4x4 world-from-camera matrix (CARLA axes: x forward, y right, z up).
            boxes: float [N, BOX_COLUMNS] solid boxes standing on the ground, drawn with the
                static boxes.

        Returns:
            uint8 [height, width, 4] BGRA image.
        """
        image = self._ground(np.asarray(camera_matrix, np.float64))
        if len(boxes) == 0:
            scene = self._static
        else:
            scene = _BoxSet(*(np.concatenate([a, b]) for a, b in zip(self._static, _box_set(boxes))))
        self._draw_boxes(image, np.asarray(camera_matrix, np.float64), scene)
        return image

    def _ground(self, camera_matrix: np.ndarray) -> np.ndarray:
        """Ground pixels via the image-to-raster homography of the z = 0 plane."""
        rotation, (cx, cy, cz) = camera_matrix[:3, :3], camera_matrix[:3, 3]
        r = self._raster
        if cz <= 0.0:
            sky = np.full((self.height, self.width), self._sky, np.uint32)
            return sky.view(np.uint8).reshape(self.height, self.width, 4)
        # Ground point = C - cz * d / dz with d = R A (u, v, 1); in raster pixels (centres at
        # integers) that is a homography of (u, v, 1) whose third row is res * dz.
        rx, ry, rz = rotation
        level = self._level(rotation[2, 0], cz)
        res = r.res * 2 ** level
        homography = np.stack([(cx - r.x0 - 0.5 * res) * rz - cz * rx,
                               (cy - r.y0 - 0.5 * res) * rz - cz * ry,
                               res * rz]) @ self._pixel_to_ray
        classes = cv2.warpPerspective(r.levels[level], homography, (self.width, self.height),
                                      flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        ground_mask, background = self._masks(rz, cz)
        image = np.where(ground_mask, self._palette[classes], background)
        return image.view(np.uint8).reshape(self.height, self.width, 4)

    def _masks(self, rz: np.ndarray, cz: float) -> tuple[np.ndarray, np.ndarray]:
        """Pixels whose ray meets the ground within MAX_GROUND_M, and the sky/haze elsewhere.

        They depend only on the camera's height and the z row of its rotation (pitch and
        roll), which stay the same while a vehicle drives on flat ground, so the last pair is
        kept and reused."""
        key = (float(rz[0]), float(rz[1]), float(rz[2]), float(cz))
        if self._mask_key != key:
            dz = rz[0] + rz[1] * self._ray_u + rz[2] * self._ray_v
            # A ray meets the ground within MAX_GROUND_M iff its downward slope is steep enough.
            near_enough = -dz * MAX_GROUND_M > cz * self._ray_norm
            ground = (dz < 0.0) & near_enough
            background = np.where(dz < 0.0, self._haze, self._sky).astype(np.uint32)
            self._mask_key, self._mask = key, (ground, background)
        return self._mask

    def _level(self, forward_z: float, height: float) -> int:
        """The coarsest raster level whose cells are no smaller than a pixel's ground footprint
        at the image centre (level 0 when the centre looks at or above the horizon)."""
        if forward_z >= -1e-6:
            return 0
        metres_per_pixel = height / -forward_z / self.focal
        ratio = metres_per_pixel / self._raster.res
        if ratio <= 1.0:
            return 0
        return int(min(math.ceil(math.log2(ratio)), len(self._raster.levels) - 1))

    def _draw_boxes(self, image: np.ndarray, camera_matrix: np.ndarray, scene: _BoxSet) -> None:
        if len(scene.boxes) == 0:
            return
        rotation, position = camera_matrix[:3, :3], camera_matrix[:3, 3]
        distance = np.hypot(scene.boxes[:, 0] - position[0], scene.boxes[:, 1] - position[1])
        keep = distance < MAX_BOX_M
        # Boxes whose bounding sphere lies outside the frustum cannot be visible: dropped
        # before the corner geometry (most of the map's poles, every frame).
        keep &= ~self._sphere_outside_frustum((scene.sphere_centres - position) @ rotation,
                                              scene.radii)
        if not keep.any():
            return
        boxes, corners, normals, face_centres = (
            a[keep] for a in (scene.boxes, scene.corners, scene.normals, scene.face_centres))
        distance = distance[keep]
        cam = (corners - position) @ rotation  # [N, 8, 3] in the camera frame
        visible = ~self._outside_frustum(cam)
        if not visible.any():
            return
        boxes, distance, normals, face_centres, cam = (
            a[visible] for a in (boxes, distance, normals, face_centres, cam))
        depth = np.maximum(cam[..., 0], NEAR_M)
        u = self.width / 2.0 + self.focal * cam[..., 1] / depth
        v = self.height / 2.0 - self.focal * cam[..., 2] / depth
        pixels = np.round(np.clip(np.stack([u, v], -1), -1e5, 1e5) * 16.0).astype(np.int32)
        face_in_front = (cam[..., 0] >= NEAR_M)[:, _FACE_INDEX].all(axis=2)  # [N, 5]
        facing = np.einsum("nfk,nfk->nf", normals, position - face_centres) > 0.0
        # Far to near (painter's order), each box's facing faces in face order.
        order = np.argsort(-distance)
        rows, faces = np.nonzero(facing[order])
        drawn = order[rows]
        polygons = pixels[drawn[:, None], _FACE_INDEX[faces]]  # [K, 4, 2]
        in_front = face_in_front[drawn, faces].tolist()
        colours = (boxes[drawn, 7].astype(np.int64) % len(BOX_COLOURS)).tolist()
        for k, (b, f) in enumerate(zip(drawn.tolist(), faces.tolist())):
            if in_front[k]:
                polygon = polygons[k]
            else:
                clipped = _clip_near(cam[b, _FACES[f]])
                if clipped is None:
                    continue
                polygon = self._project(clipped)
            cv2.fillConvexPoly(image, polygon, self._face_colours[colours[k]][f], cv2.LINE_8, 4)

    def _sphere_outside_frustum(self, centre: np.ndarray, radius: np.ndarray) -> np.ndarray:
        """[N] True for spheres (camera-frame centres, radii) wholly outside one plane of the
        view frustum: behind the near plane, or beyond a side plane (through the camera
        centre) by more than the radius."""
        x, y, z = centre[:, 0], centre[:, 1], centre[:, 2]
        half_w, half_h = self.width / 2.0, self.height / 2.0
        # Side planes focal * y = +-half_w * x, as unit normals: distance = (f*y - hw*x) / norm
        norm_w, norm_h = math.hypot(self.focal, half_w), math.hypot(self.focal, half_h)
        return ((x < NEAR_M - radius)
                | ((self.focal * y - half_w * x) / norm_w > radius)
                | ((-self.focal * y - half_w * x) / norm_w > radius)
                | ((self.focal * z - half_h * x) / norm_h > radius)
                | ((-self.focal * z - half_h * x) / norm_h > radius))

    def _outside_frustum(self, cam: np.ndarray) -> np.ndarray:
        """[N] True for boxes whose 8 camera-frame corners all lie outside one plane of the
        view frustum (near, left, right, top, bottom), so they cannot cover a pixel. The side
        planes pass through the camera centre, so the test also holds for corners behind it."""
        x, y, z = cam[..., 0], cam[..., 1], cam[..., 2]
        half_w, half_h = self.width / 2.0 * x, self.height / 2.0 * x
        fy, fz = self.focal * y, self.focal * z
        return ((x < NEAR_M).all(1) | (fy > half_w).all(1) | (fy < -half_w).all(1)
                | (fz > half_h).all(1) | (fz < -half_h).all(1))

    def _project(self, points: np.ndarray) -> np.ndarray:
        u = self.width / 2.0 + self.focal * points[:, 1] / points[:, 0]
        v = self.height / 2.0 - self.focal * points[:, 2] / points[:, 0]
        limit = 1e5
        uv = np.clip(np.stack([u, v], axis=1), -limit, limit)
        return np.round(uv * 16.0).astype(np.int32)


def _box_geometry(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World corners [N, 8, 3] and face normals [N, 5, 3] of ground-standing yawed boxes."""
    c, s = np.cos(boxes[:, 3]), np.sin(boxes[:, 3])
    local = _CORNERS[None, :, :] * np.stack([boxes[:, 4], boxes[:, 5], boxes[:, 6]], axis=1)[:, None, :]
    x = boxes[:, None, 0] + local[..., 0] * c[:, None] - local[..., 1] * s[:, None]
    y = boxes[:, None, 1] + local[..., 0] * s[:, None] + local[..., 1] * c[:, None]
    z = boxes[:, None, 2] + local[..., 2]
    corners = np.stack([x, y, z], axis=-1)
    nx = _NORMALS[None, :, 0] * c[:, None] - _NORMALS[None, :, 1] * s[:, None]
    ny = _NORMALS[None, :, 0] * s[:, None] + _NORMALS[None, :, 1] * c[:, None]
    nz = np.broadcast_to(_NORMALS[None, :, 2], nx.shape)
    return corners, np.stack([nx, ny, nz], axis=-1)


def _clip_near(polygon: np.ndarray) -> np.ndarray | None:
    """Sutherland-Hodgman clip of a camera-frame polygon [k, 3] to x >= NEAR_M."""
    inside = polygon[:, 0] >= NEAR_M
    if inside.all():
        return polygon
    if not inside.any():
        return None
    out = []
    for i in range(len(polygon)):
        a, b = polygon[i], polygon[(i + 1) % len(polygon)]
        a_in, b_in = a[0] >= NEAR_M, b[0] >= NEAR_M
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (NEAR_M - a[0]) / (b[0] - a[0])
            out.append(a + t * (b - a))
    return np.array(out) if len(out) >= 3 else None
