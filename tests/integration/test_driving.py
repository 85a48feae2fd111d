"""The task on the fake town is learnable and not trivial, and an episode can be watched.

The scripted pure-pursuit driver sees only the observation vector; it must finish at least 95%
of routes. Uniform random actions must almost never finish one.
"""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from rollout import rewards as R
from rollout.carla_env import make_env
from rollout.scripted import PurePursuitDriver
from rollout.video import count_frames, record_episode
from common.config import EnvConfig, PedalAction
from common.specs import EnvSpec

pytestmark = pytest.mark.integration

SPEC = EnvSpec()
ROUTE_M = 80.0
STEP_LIMIT = 500


def _episode(env, act, seed):
    obs, _ = env.reset(seed=seed)
    while True:
        obs, _, terminated, truncated, info = env.step(act(obs))
        if terminated or truncated:
            return info


@pytest.mark.parametrize("pedal", list(PedalAction))
def test_scripted_driver_completes_at_least_95_percent_of_routes(pedal):
    cfg = EnvConfig(route_length_m=ROUTE_M, pedal=pedal)
    env = make_env(cfg, SPEC, seed=0)
    driver = PurePursuitDriver.for_env(SPEC, cfg)
    try:
        infos = [_episode(env, driver, seed) for seed in range(20)]
    finally:
        env.close()
    reasons = [i["termination_reason"] for i in infos]
    successes = sum(i["success"] for i in infos)
    assert successes >= 19, reasons
    assert all(i["route_completion"] == 1.0 for i in infos if i["success"])
    assert max(i["step"] for i in infos) < STEP_LIMIT / 1.5


def test_random_actions_almost_never_complete_a_route():
    # Twice the steps the scripted driver needs for these routes (about 250).
    env = make_env(EnvConfig(route_length_m=ROUTE_M, max_steps=STEP_LIMIT), SPEC, seed=0)
    rng = np.random.default_rng(0)
    try:
        infos = [_episode(env, lambda _: rng.uniform(-1, 1, 2).astype(np.float32), seed)
                 for seed in range(5)]
    finally:
        env.close()
    assert sum(i["termination_reason"] == R.ROUTE_COMPLETED for i in infos) <= 1
    assert np.mean([i["route_completion"] for i in infos]) < 0.5


def test_record_episode_writes_a_readable_mp4(tmp_path):
    env = make_env(EnvConfig(route_length_m=ROUTE_M), SPEC, seed=0)
    path = str(tmp_path / "drive.mp4")
    try:
        summary = record_episode(env, PurePursuitDriver.for_env(SPEC, EnvConfig()), path, seed=4,
                                 max_steps=40)
    finally:
        env.close()
    assert summary.frames == 41 == count_frames(path)
    cap = cv2.VideoCapture(path)
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (summary.height, summary.width, 3)
    half = summary.width // 2
    assert frame[:, :half].std() > 5 and frame[:, half:].std() > 5  # both views show something


def test_video_command_line(tmp_path):
    out = tmp_path / "cli.mp4"
    done = subprocess.run([sys.executable, "-m", "rollout.video", "--out", str(out), "--seed", "1",
                           "--route-length", "40", "--max-steps", "30"],
                          capture_output=True, text=True, timeout=120, check=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 31 and out.stat().st_size > 0
