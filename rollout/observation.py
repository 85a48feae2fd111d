"""The observation: camera frames (BGRA -> gray -> 84x84, stacked) and the vector.

The image pipeline follows the spec (common/specs.py): OpenCV ``COLOR_BGRA2GRAY`` then
``resize`` with ``INTER_AREA`` to ``spec.image_size`` squared, uint8, stacked by
common.framestack.FrameStack (reset repeats the first frame). The vector is speed, lateral
deviation and heading error, each over its scale from the spec, then the K route waypoints in
the vehicle frame over the look-ahead distance, clipped to the spec's bounds.

With ``CameraInput.BLANK`` every frame is one constant grey (BLANK_LEVEL) whatever the camera
sees, and the vector is built as ever: the camera removed from what the policy reads.
"""
from __future__ import annotations

import cv2
import numpy as np

from common.config_env import CameraInput
from common.errors import SpecError
from common.framestack import FrameStack
from common.specs import IMAGE_KEY, SPEED_SCALE_MPS, VECTOR_KEY, EnvSpec

BLANK_LEVEL = 128  # the grey of a blanked frame


def bgra_to_array(raw_data: bytes | memoryview, width: int, height: int) -> np.ndarray:
    """A camera image's ``raw_data`` as a uint8 [height, width, 4] BGRA array (no copy).

    Raises:
        SpecError: if the buffer size is not height * width * 4.
    """
    buf = np.frombuffer(raw_data, dtype=np.uint8)
    if buf.size != height * width * 4:
        raise SpecError(f"camera raw_data has {buf.size} bytes, expected {height}*{width}*4")
    return buf.reshape(height, width, 4)


def preprocess_frame(bgra: np.ndarray, size: int) -> np.ndarray:
    """BGRA [H, W, 4] -> grayscale uint8 [size, size] (INTER_AREA)."""
    gray = cv2.cvtColor(bgra, cv2.COLOR_BGRA2GRAY)
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)


def build_vector(spec: EnvSpec, speed_mps: float, lateral_m: float, heading_error_rad: float,
                 waypoints_vehicle: np.ndarray) -> np.ndarray:
    """The float32 vector of the spec.

    Args:
        spec: gives K and the look-ahead distance.
        speed_mps: vehicle speed.
        lateral_m: signed lateral deviation from the route (positive: right).
        heading_error_rad: vehicle yaw minus route yaw, in [-pi, pi].
        waypoints_vehicle: [K, 2] route points in the vehicle frame (x forward, y right).

    Raises:
        SpecError: if ``waypoints_vehicle`` is not [K, 2].
    """
    if waypoints_vehicle.shape != (spec.num_waypoints, 2):
        raise SpecError(f"waypoints shape {waypoints_vehicle.shape} != "
                        f"({spec.num_waypoints}, 2)")
    head = np.array([speed_mps / SPEED_SCALE_MPS, lateral_m / spec.lateral_scale_m,
                     heading_error_rad / spec.heading_scale_rad])
    tail = (waypoints_vehicle / spec.lookahead_m).reshape(-1)
    # Clipped to the spec's bounds, which no ordinary step reaches (common/specs.py), so that a
    # simulator glitch (a vehicle flung at 300 m/s) is not refused on the wire.
    return spec.vector.clip(np.concatenate([head, tail]))


class ObservationBuilder:
    """Turns camera images and vectors into spec observations, stacking frames per episode."""

    def __init__(self, spec: EnvSpec, camera_input: CameraInput = CameraInput.RGB) -> None:
        """Args:
            spec: the observation spec.
            camera_input: the camera's frames, or one constant frame in their place.
        """
        self.spec = spec
        self.camera_input = CameraInput(camera_input)
        self._blank = np.full((spec.image_size, spec.image_size), BLANK_LEVEL, np.uint8)
        self._stack = FrameStack(spec.frames, spec.image_size, spec.image_size)
        self._last: dict[str, np.ndarray] | None = None

    def reset(self, bgra: np.ndarray, vector: np.ndarray) -> dict[str, np.ndarray]:
        """The first observation of an episode: the first frame repeated F times."""
        image = self._stack.reset(self._frame(bgra))
        return self._emit(image, vector)

    def push(self, bgra: np.ndarray, vector: np.ndarray) -> dict[str, np.ndarray]:
        """The next observation: the newest frame appended to the stack."""
        image = self._stack.push(self._frame(bgra))
        return self._emit(image, vector)

    def repeat_last(self) -> dict[str, np.ndarray]:
        """A copy of the last observation (used when the simulator failed mid-step).

        Raises:
            SpecError: if no observation was built yet.
        """
        if self._last is None:
            raise SpecError("no observation to repeat before the first reset")
        return {k: v.copy() for k, v in self._last.items()}

    def _frame(self, bgra: np.ndarray) -> np.ndarray:
        if self.camera_input is CameraInput.BLANK:
            return self._blank
        return preprocess_frame(bgra, self.spec.image_size)

    def _emit(self, image: np.ndarray, vector: np.ndarray) -> dict[str, np.ndarray]:
        obs = {IMAGE_KEY: image, VECTOR_KEY: vector}
        self.spec.validate_obs(obs)
        self._last = obs
        return {k: v.copy() for k, v in obs.items()}
