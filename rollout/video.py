"""Drive one episode and write an MP4 of what the camera sees beside a top-down view.

The top-down view is one more RGB camera attached to the ego through the same carla API
(``TOPDOWN_HEIGHT_M`` above it, pitch -90), so the same code records on a real server.
Run ``python -m rollout.video --out drive.mp4 [--seed S]`` to record the scripted driver on the
fake town; ``record_episode`` takes any ``act_fn`` (e.g. a checkpoint's policy).
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
from typing import Any, Callable, NamedTuple

import cv2
import numpy as np

from rollout.carla_env import MAIN_CAMERA, CarlaEnv, make_env
from rollout.scripted import PurePursuitDriver
from rollout.sensors import CameraMount
from common.config import EnvConfig
from common.errors import CarlaTD3Error
from common.specs import EnvSpec

log = logging.getLogger(__name__)

TOPDOWN = "topdown"
TOPDOWN_HEIGHT_M = 35.0
VIEW_HEIGHT_PX = 240
TEXT_STRIP_PX = 24


class VideoSummary(NamedTuple):
    """What ``record_episode`` wrote.

    Attributes:
        path: the MP4 file.
        frames: frames written (and read back).
        width: frame width, pixels.
        height: frame height, pixels.
        episode_return: sum of rewards.
        termination_reason: the last step's info["termination_reason"].
        success: the last step's info["success"].
    """

    path: str
    frames: int
    width: int
    height: int
    episode_return: float
    termination_reason: str
    success: bool


def _fit(bgra: np.ndarray, height: int) -> np.ndarray:
    """BGRA -> BGR scaled to ``height`` (width even, as the codec wants)."""
    h, w = bgra.shape[:2]
    width = int(round(w * height / h / 2)) * 2
    return cv2.resize(cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR), (width, height),
                      interpolation=cv2.INTER_LINEAR)


def compose_frame(images: dict[str, np.ndarray], caption: str) -> np.ndarray:
    """The camera image beside the top-down view, with a caption strip below."""
    views = np.hstack([_fit(images[MAIN_CAMERA], VIEW_HEIGHT_PX),
                       _fit(images[TOPDOWN], VIEW_HEIGHT_PX)])
    strip = np.zeros((TEXT_STRIP_PX, views.shape[1], 3), np.uint8)
    cv2.putText(strip, caption, (6, TEXT_STRIP_PX - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([views, strip])


def _caption(step: int, reward: float, info: dict[str, Any]) -> str:
    return (f"step {step}  v {info['speed_mps']:.1f} m/s  lat {info['lateral_m']:+.2f} m  "
            f"r {reward:+.2f}  route {100 * info['route_completion']:.0f}%  "
            f"{info['termination_reason']}")


def count_frames(path: str) -> int:
    """Frames that OpenCV can read back from ``path`` (0 if it does not open)."""
    cap = cv2.VideoCapture(path)
    frames = 0
    while cap.isOpened():
        ok, _ = cap.read()
        if not ok:
            break
        frames += 1
    cap.release()
    return frames


def record_episode(env: CarlaEnv, act_fn: Callable[[dict[str, np.ndarray]], np.ndarray],
                   path: str, seed: int | None = None, max_steps: int | None = None,
                   fps: float = 20.0) -> VideoSummary:
    """Drives one episode with ``act_fn`` and writes it to ``path`` as MP4 ('mp4v').

    Args:
        env: the env; a top-down camera is added to it if it has none.
        act_fn: observation -> action.
        path: output file.
        seed: episode seed.
        max_steps: stop earlier than the env's own step limit.
        fps: frames per second of the video.

    Returns:
        What was written.

    Raises:
        CarlaTD3Error: if the written file does not open or has fewer frames than written.
    """
    if TOPDOWN not in env.camera_names:
        env.add_camera(CameraMount(TOPDOWN, VIEW_HEIGHT_PX, VIEW_HEIGHT_PX, 90.0, 0.0,
                                   TOPDOWN_HEIGHT_M, -90.0))
    obs, info = env.reset(seed=seed)
    first = compose_frame(env.camera_images(), _caption(0, 0.0, info))
    height, width = first.shape[:2]
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    written, total, step = 1, 0.0, 0
    try:
        writer.write(first)
        done = False
        while not done and (max_steps is None or step < max_steps):
            obs, reward, terminated, truncated, info = env.step(act_fn(obs))
            step += 1
            total += reward
            done = terminated or truncated
            writer.write(compose_frame(env.camera_images(), _caption(step, reward, info)))
            written += 1
    finally:
        writer.release()
    readable = count_frames(path)
    if readable < written:
        raise CarlaTD3Error(f"video {path}: wrote {written} frames, read back {readable}")
    return VideoSummary(path, readable, width, height, total, info["termination_reason"],
                        bool(info["success"]))


def main(argv: list[str] | None = None) -> None:
    """``python -m rollout.video --out FILE [--seed S]``: the scripted driver on the fake town."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="MP4 file to write")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (route)")
    parser.add_argument("--route-length", type=float, default=EnvConfig.route_length_m,
                        help="route length in metres")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    spec = EnvSpec()
    cfg = EnvConfig(route_length_m=args.route_length)
    env = make_env(cfg, spec, seed=args.seed)
    try:
        summary = record_episode(env, PurePursuitDriver.for_env(spec, cfg), args.out,
                                 seed=args.seed, max_steps=args.max_steps)
    finally:
        env.close()
    print(json.dumps(summary._asdict()))


if __name__ == "__main__":
    main()
