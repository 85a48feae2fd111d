"""Vehicle motion (a kinematic bicycle model) and 2-D footprint overlap tests.

Coordinates are CARLA's: x forward/east, y right/south, yaw in radians, positive turning right
(towards +y), so x' = v cos(yaw), y' = v sin(yaw) and a positive steer turns right.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_STEER_RAD = math.radians(35.0)
MAX_ACCEL_MPS2 = 4.0
MAX_BRAKE_MPS2 = 8.0
MAX_SPEED_MPS = 30.0
DRAG_PER_M = 0.0015  # quadratic drag coefficient: a = -DRAG_PER_M * v^2
ROLLING_MPS2 = 0.15
HAND_BRAKE_MPS2 = 6.0


@dataclass
class BodyState:
    """Planar state of one vehicle.

    Attributes:
        x: position, metres.
        y: position, metres.
        yaw: heading, radians.
        speed: signed speed along the heading, m/s (negative when reversing).
        accel: signed longitudinal acceleration of the last step, m/s^2.
        yaw_rate: rad/s of the last step.
    """

    x: float
    y: float
    yaw: float
    speed: float = 0.0
    accel: float = 0.0
    yaw_rate: float = 0.0


def longitudinal_accel(speed: float, throttle: float, brake: float, hand_brake: bool, reverse: bool) -> float:
    """Acceleration (m/s^2, along the heading) for the given pedals at ``speed``."""
    direction = -1.0 if reverse else 1.0
    drive = direction * throttle * MAX_ACCEL_MPS2 * max(0.0, 1.0 - abs(speed) / MAX_SPEED_MPS)
    stopping = brake * MAX_BRAKE_MPS2 + (HAND_BRAKE_MPS2 if hand_brake else 0.0)
    resist = stopping + ROLLING_MPS2 + DRAG_PER_M * speed * speed
    if speed > 0.0:
        return drive - resist
    if speed < 0.0:
        return drive + resist
    return drive if abs(drive) > stopping + ROLLING_MPS2 else 0.0


def step(state: BodyState, throttle: float, steer: float, brake: float, hand_brake: bool, reverse: bool,
         wheelbase: float, dt: float) -> BodyState:
    """Advances one vehicle by ``dt`` seconds; returns the new state (the input is unchanged).

    Braking and resistance stop the vehicle at zero speed instead of reversing it.
    """
    throttle = min(max(throttle, 0.0), 1.0)
    brake = min(max(brake, 0.0), 1.0)
    steer = min(max(steer, -1.0), 1.0)
    accel = longitudinal_accel(state.speed, throttle, brake, hand_brake, reverse)
    speed = state.speed + accel * dt
    if state.speed > 0.0 > speed or state.speed < 0.0 < speed:
        speed = 0.0  # resistance stops the car; it does not push it backwards
    speed = min(max(speed, -MAX_SPEED_MPS / 3), MAX_SPEED_MPS)
    mean_speed = 0.5 * (state.speed + speed)
    yaw_rate = mean_speed * math.tan(steer * MAX_STEER_RAD) / wheelbase
    yaw = state.yaw + yaw_rate * dt
    mid_yaw = state.yaw + 0.5 * yaw_rate * dt
    x = state.x + mean_speed * math.cos(mid_yaw) * dt
    y = state.y + mean_speed * math.sin(mid_yaw) * dt
    yaw = math.atan2(math.sin(yaw), math.cos(yaw))
    return BodyState(x, y, yaw, speed, (speed - state.speed) / dt, yaw_rate)


def footprint(x: float, y: float, yaw: float, half_length: float, half_width: float) -> np.ndarray:
    """Corners [4, 2] of an oriented rectangle: front-left, front-right, rear-right, rear-left."""
    c, s = math.cos(yaw), math.sin(yaw)
    fx, fy = c * half_length, s * half_length
    rx, ry = -s * half_width, c * half_width
    return np.array([[x + fx - rx, y + fy - ry], [x + fx + rx, y + fy + ry],
                     [x - fx + rx, y - fy + ry], [x - fx - rx, y - fy - ry]])


def rectangles_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex quadrilaterals given as corners [4, 2]."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        axes = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
        pa = a @ axes.T
        pb = b @ axes.T
        if np.any((pa.max(axis=0) < pb.min(axis=0)) | (pb.max(axis=0) < pa.min(axis=0))):
            return False
    return True
