"""Env steps per second on the fake CARLA with the default camera (a benchmark, not a test).

Runs the full env step (control, tick, fake physics and render, frame-matched camera read,
BGRA -> gray -> 84x84, frame stack, route projection, reward) with the scripted driver or
uniform random actions, resetting when episodes end, and prints one JSON object and a table.

    python -m bench.fake_env_speed [--steps 2000] [--driver scripted|random] [--tick-latency 0]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from actors.carla_env import make_env
from actors.scripted import PurePursuitDriver
from common.config import EnvConfig, FakeCarlaConfig
from common.specs import EnvSpec


def run(steps: int, driver: str, seed: int, tick_latency_s: float) -> dict:
    """Drives ``steps`` env steps and returns the timing summary."""
    spec = EnvSpec()
    cfg = EnvConfig(fake=FakeCarlaConfig(tick_latency_s=tick_latency_s))
    t0 = time.perf_counter()
    env = make_env(cfg, spec, seed=seed)
    connect_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    scripted = PurePursuitDriver.for_env(spec, cfg)
    step_s, reset_s = [], []
    episodes = 0
    try:
        t = time.perf_counter()
        obs, _ = env.reset(seed=seed)
        reset_s.append(time.perf_counter() - t)
        for _ in range(steps):
            action = scripted(obs) if driver == "scripted" else rng.uniform(-1, 1, 2).astype(np.float32)
            t = time.perf_counter()
            obs, _, terminated, truncated, _ = env.step(action)
            step_s.append(time.perf_counter() - t)
            if terminated or truncated:
                episodes += 1
                t = time.perf_counter()
                obs, _ = env.reset(seed=seed + episodes)
                reset_s.append(time.perf_counter() - t)
    finally:
        env.close()
    ms = np.array(step_s) * 1e3
    total = float(np.sum(step_s) + np.sum(reset_s))
    return {
        "benchmark": "fake_env_speed",
        "driver": driver,
        "camera": f"{cfg.camera.width}x{cfg.camera.height}",
        "tick_latency_s": tick_latency_s,
        "steps": steps,
        "episodes_finished": episodes,
        "env_steps_per_s": steps / total,
        "step_only_steps_per_s": 1e3 / float(ms.mean()),
        "step_ms_mean": float(ms.mean()),
        "step_ms_p50": float(np.percentile(ms, 50)),
        "step_ms_p95": float(np.percentile(ms, 95)),
        "reset_ms_mean": 1e3 * float(np.mean(reset_s)),
        "connect_s": connect_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--driver", choices=("scripted", "random"), default="scripted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tick-latency", type=float, default=0.0,
                        help="seconds each fake tick costs at least (a real server: ~0.05)")
    args = parser.parse_args(argv)
    result = run(args.steps, args.driver, args.seed, args.tick_latency)
    print(json.dumps(result))
    for key, value in result.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{key:<24}{shown:>16}")


if __name__ == "__main__":
    main()
