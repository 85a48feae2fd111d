"""Observation and action specs: defined once, read by every component and process boundary.

Observation (a dict):
  ``image``  uint8 [frames, size, size]: stacked grayscale camera frames, oldest first.
  ``vector`` float32 [3 + 2K]: speed / SPEED_SCALE, lateral deviation / the spec's
             lateral_scale_m, heading error / its heading_scale_rad, then K route waypoints
             (x, y) in the vehicle frame divided by the look-ahead distance.
Action: float32 [2] in [-1, 1]: steer, and throttle (positive) / brake (negative).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from common.errors import SpecError

SPEED_SCALE_MPS = 30.0
VECTOR_KINEMATIC_DIMS = 3

IMAGE_KEY = "image"
VECTOR_KEY = "vector"
OBS_KEYS = (IMAGE_KEY, VECTOR_KEY)


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of one array, with optional inclusive bounds.

    Attributes:
        name: what the array is, used in error messages.
        shape: the shape of one item (no batch dimension).
        dtype: numpy dtype name, e.g. ``"uint8"``.
        minimum: inclusive lower bound, or None.
        maximum: inclusive upper bound, or None.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    minimum: float | None = None
    maximum: float | None = None

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.np_dtype.itemsize

    def validate(self, value: np.ndarray, batch_dims: int = 0) -> np.ndarray:
        """Checks dtype, shape (after ``batch_dims`` leading dims), finiteness and bounds.

        Args:
            value: the array to check.
            batch_dims: number of leading batch dimensions to allow.

        Returns:
            ``value`` unchanged.

        Raises:
            SpecError: naming the array and the bad property.
        """
        if not isinstance(value, np.ndarray):
            raise SpecError(f"{self.name}: expected a numpy array, got {type(value).__name__}")
        if value.dtype != self.np_dtype:
            raise SpecError(f"{self.name}: dtype {value.dtype} != expected {self.dtype}")
        if value.ndim != batch_dims + len(self.shape) or tuple(value.shape[batch_dims:]) != self.shape:
            raise SpecError(
                f"{self.name}: shape {tuple(value.shape)} does not end in expected {self.shape} "
                f"after {batch_dims} batch dim(s)")
        if value.dtype.kind == "f":
            if not np.all(np.isfinite(value)):
                bad = np.argwhere(~np.isfinite(value))[0]
                raise SpecError(f"{self.name}: non-finite value {value[tuple(bad)]} at index {tuple(bad)}")
            if self.minimum is not None and value.size and value.min() < self.minimum:
                raise SpecError(f"{self.name}: value {value.min()} below minimum {self.minimum}")
            if self.maximum is not None and value.size and value.max() > self.maximum:
                raise SpecError(f"{self.name}: value {value.max()} above maximum {self.maximum}")
        return value


@dataclass(frozen=True)
class EnvSpec:
    """Everything downstream needs to know about observations and actions.

    Attributes:
        frames: number of stacked camera frames.
        image_size: height and width of one (square) grayscale frame.
        num_waypoints: K, route waypoints in the vector observation.
        lookahead_m: distance that normalises waypoint coordinates.
        action_dim: 2 (steer, throttle/brake).
        lateral_scale_m: divides the lateral deviation in the vector.
        heading_scale_rad: divides the heading error in the vector.
    """

    frames: int = 4
    image_size: int = 84
    num_waypoints: int = 10
    lookahead_m: float = 50.0
    action_dim: int = 2
    lateral_scale_m: float = 3.5
    heading_scale_rad: float = math.pi

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise SpecError(f"frames ({self.frames}) must be >= 1")
        if self.image_size < 36:
            raise SpecError(f"image_size ({self.image_size}) must be >= 36 for the NatureCNN")
        if self.num_waypoints < 1:
            raise SpecError(f"num_waypoints ({self.num_waypoints}) must be >= 1")
        if self.lookahead_m <= 0:
            raise SpecError(f"lookahead_m ({self.lookahead_m}) must be > 0")
        for name in ("lateral_scale_m", "heading_scale_rad"):
            if not getattr(self, name) > 0:
                raise SpecError(f"{name} ({getattr(self, name)}) must be > 0")
        if self.action_dim != 2:
            raise SpecError(f"action_dim ({self.action_dim}) must be 2 (steer, throttle/brake)")

    @property
    def vector_dim(self) -> int:
        return VECTOR_KINEMATIC_DIMS + 2 * self.num_waypoints

    @property
    def frame(self) -> ArraySpec:
        """One grayscale frame, the unit the wire and the replay store."""
        return ArraySpec("frame", (self.image_size, self.image_size), "uint8")

    @property
    def image(self) -> ArraySpec:
        return ArraySpec(IMAGE_KEY, (self.frames, self.image_size, self.image_size), "uint8")

    @property
    def vector(self) -> ArraySpec:
        return ArraySpec(VECTOR_KEY, (self.vector_dim,), "float32")

    @property
    def action(self) -> ArraySpec:
        return ArraySpec("action", (self.action_dim,), "float32", -1.0, 1.0)

    @property
    def observation(self) -> dict[str, ArraySpec]:
        return {IMAGE_KEY: self.image, VECTOR_KEY: self.vector}

    def validate_obs(self, obs: Mapping[str, np.ndarray], batch_dims: int = 0) -> None:
        """Raises SpecError unless ``obs`` has exactly the spec's keys, shapes and dtypes."""
        if set(obs) != set(OBS_KEYS):
            raise SpecError(f"observation keys {sorted(obs)} != expected {sorted(OBS_KEYS)}")
        for key, spec in self.observation.items():
            spec.validate(obs[key], batch_dims)

    def zero_obs(self, batch: int | None = None) -> dict[str, np.ndarray]:
        lead = () if batch is None else (batch,)
        return {k: np.zeros(lead + s.shape, s.np_dtype) for k, s in self.observation.items()}
