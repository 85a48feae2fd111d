"""Observation and action specs: defined once, read by every component and process boundary.

Observation (a dict):
  ``image``  uint8 [frames, size, size]: stacked grayscale camera frames, oldest first.
  ``vector`` float32 [3 + 2K]: speed / SPEED_SCALE, lateral deviation / the spec's
             lateral_scale_m, heading error / its heading_scale_rad, then K route waypoints
             (x, y) in the vehicle frame divided by the look-ahead distance.
Action: float32 [2] in [-1, 1]: steer, and throttle (positive) / brake (negative).
Reward: float32, one per transition, in [-reward_limit, reward_limit].

Bounds. Every float the wire carries has a finite range, so that a value no driving episode
produces (1e30, 3e38, an infinity, a NaN) is refused where it enters (common/codec.py) instead
of reaching the critic. Each range is generous, several times what the env produces, and the
env clips its vector to it (rollout/observation.py), so real data is never refused:
  speed      [0, SPEED_LIMIT_MPS / SPEED_SCALE_MPS] (5): 150 m/s, 540 km/h, far beyond any
             road vehicle (the env's target speeds are 8 to 12 m/s); a norm, never negative.
  lateral    +-LATERAL_LIMIT_M / lateral_scale_m (28.6): 100 m; an episode ends off the road
             at env.max_lateral_m (2.5 m by default), one step after at most.
  heading    +-HEADING_LIMIT_RAD / heading_scale_rad (2): the error is wrapped to [-pi, pi),
             so twice the largest it can be.
  waypoints  +-(lookahead_m + LATERAL_LIMIT_M) / lookahead_m (3): a waypoint lies at most
             lookahead_m along the route from the vehicle's projection on it, which is
             |lateral| away from the vehicle.
  action     [-1, 1], the action box itself.
  reward     +-reward_limit (100): the default reward weights (common.config.RewardConfig)
             give a step at most about 40 in magnitude, a collision at twice the target speed
             with a lane invasion and leaving the road (rollout.rewards.step_reward_bound).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from common.errors import SpecError

SPEED_SCALE_MPS = 30.0
VECTOR_KINEMATIC_DIMS = 3
SPEED_LIMIT_MPS = 150.0
LATERAL_LIMIT_M = 100.0
HEADING_LIMIT_RAD = 2.0 * math.pi

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
        minimum: inclusive lower bound, one for every component or one per component (a
            tuple of the item's length, for a 1-D item), or None.
        maximum: inclusive upper bound, as ``minimum``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    minimum: float | tuple[float, ...] | None = None
    maximum: float | tuple[float, ...] | None = None

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.np_dtype.itemsize

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The inclusive (minimum, maximum) of each component, float64 of the item's shape
        (-inf and inf where unbounded)."""
        return (np.broadcast_to(np.asarray(-np.inf if self.minimum is None else self.minimum,
                                           np.float64), self.shape),
                np.broadcast_to(np.asarray(np.inf if self.maximum is None else self.maximum,
                                           np.float64), self.shape))

    def clip(self, value: np.ndarray) -> np.ndarray:
        """``value`` clipped to the bounds, in the spec's (float) dtype; a NaN stays a NaN."""
        low, high = self.bounds()
        dtype = self.np_dtype
        inner_low, inner_high = low.astype(dtype), high.astype(dtype)
        # Bounds rounded inwards to the dtype, so that a clipped value passes ``validate``.
        inner_low = np.where(inner_low < low, np.nextafter(inner_low, dtype.type(np.inf)),
                             inner_low)
        inner_high = np.where(inner_high > high, np.nextafter(inner_high, dtype.type(-np.inf)),
                              inner_high)
        return np.clip(np.clip(value, low, high).astype(dtype), inner_low, inner_high)

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
            self._check_values(value, batch_dims)
        return value

    def _check_values(self, value: np.ndarray, batch_dims: int) -> None:
        """Raises SpecError naming the first value (``name[i][j]``) that is not finite or
        lies outside the bounds."""
        low, high = self.bounds()
        inside = (value >= low) & (value <= high)  # False for a NaN
        if inside.all():
            return
        index = tuple(int(i) for i in np.argwhere(~inside)[0])
        where = self.name + "".join(f"[{i}]" for i in index)
        bad = float(value[index])
        if not math.isfinite(bad):
            raise SpecError(f"{where}: non-finite value {bad}")
        item = index[batch_dims:]
        if bad < low[item]:
            raise SpecError(f"{where} ({bad:g}) below minimum {round(float(low[item]), 6)}")
        raise SpecError(f"{where} ({bad:g}) above maximum {round(float(high[item]), 6)}")


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
        reward_limit: the largest |reward| of one transition (see the module docstring);
            the env refuses reward weights that could exceed it.
    """

    frames: int = 4
    image_size: int = 84
    num_waypoints: int = 10
    lookahead_m: float = 50.0
    action_dim: int = 2
    lateral_scale_m: float = 3.5
    heading_scale_rad: float = math.pi
    reward_limit: float = 100.0

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise SpecError(f"frames ({self.frames}) must be >= 1")
        if self.image_size < 36:
            raise SpecError(f"image_size ({self.image_size}) must be >= 36 for the NatureCNN")
        if self.num_waypoints < 1:
            raise SpecError(f"num_waypoints ({self.num_waypoints}) must be >= 1")
        for name in ("lookahead_m", "lateral_scale_m", "heading_scale_rad", "reward_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, numbers.Real)
                                               and 0 < value < math.inf):
                raise SpecError(f"{name} ({value!r}) must be > 0 and finite")
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
        """Speed, lateral, heading and K waypoints (x, y), each bounded (module docstring)."""
        waypoint = (self.lookahead_m + LATERAL_LIMIT_M) / self.lookahead_m
        high = ((SPEED_LIMIT_MPS / SPEED_SCALE_MPS, LATERAL_LIMIT_M / self.lateral_scale_m,
                 HEADING_LIMIT_RAD / self.heading_scale_rad)
                + (waypoint,) * (2 * self.num_waypoints))
        low = (0.0,) + tuple(-h for h in high[1:])
        return ArraySpec(VECTOR_KEY, (self.vector_dim,), "float32", low, high)

    @property
    def action(self) -> ArraySpec:
        return ArraySpec("action", (self.action_dim,), "float32", -1.0, 1.0)

    @property
    def reward(self) -> ArraySpec:
        """One transition's reward, in [-reward_limit, reward_limit]."""
        return ArraySpec("reward", (), "float32", -self.reward_limit, self.reward_limit)

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
