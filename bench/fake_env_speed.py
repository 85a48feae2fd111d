"""Env steps per second on the fake CARLA with the default camera (a benchmark, not a test).

Runs the full env step (control, tick, fake physics and render, frame-matched camera read,
BGRA -> gray -> 84x84, frame stack, route projection, reward) with the scripted driver or
uniform random actions, resetting when episodes end, and prints one JSON object and a table.
``--remote`` runs the same steps twice, on the in-process fake and on a fake server process
(``carla-td3 fake-server``, reached over TCP), alternating rounds of ``--round`` steps so both
see the same machine load, and reports both and the ratio of their mean step times.

    python -m bench.fake_env_speed [--steps 2000] [--driver scripted|random] [--tick-latency 0]
                                   [--remote] [--round 200]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from rollout.carla_env import CarlaEnv, make_env
from rollout.fakecarla.remote_client import make_remote_module
from rollout.fakecarla.remote_process import FakeServerProcess
from rollout.scripted import PurePursuitDriver
from common.config import EnvConfig, FakeCarlaConfig
from common.specs import EnvSpec


class _Driving:
    """One env driven step by step, timing each step and each reset."""

    def __init__(self, env: CarlaEnv, cfg: EnvConfig, spec: EnvSpec, driver: str, seed: int) -> None:
        self.env, self.driver, self.seed = env, driver, seed
        self.rng = np.random.default_rng(seed)
        self.scripted = PurePursuitDriver.for_env(spec, cfg)
        self.step_s: list[float] = []
        self.reset_s: list[float] = []
        self.episodes = 0
        self.obs = self._reset(seed)

    def _reset(self, seed: int) -> dict:
        t = time.perf_counter()
        obs, _ = self.env.reset(seed=seed)
        self.reset_s.append(time.perf_counter() - t)
        return obs

    def drive(self, steps: int) -> None:
        for _ in range(steps):
            if self.driver == "scripted":
                action = self.scripted(self.obs)
            else:
                action = self.rng.uniform(-1, 1, 2).astype(np.float32)
            t = time.perf_counter()
            self.obs, _, terminated, truncated, _ = self.env.step(action)
            self.step_s.append(time.perf_counter() - t)
            if terminated or truncated:
                self.episodes += 1
                self.obs = self._reset(self.seed + self.episodes)


def run(steps: int, driver: str, seed: int, tick_latency_s: float) -> dict:
    """Drives ``steps`` env steps on the in-process fake and returns the timing summary."""
    spec = EnvSpec()
    cfg = EnvConfig(fake=FakeCarlaConfig(tick_latency_s=tick_latency_s))
    t0 = time.perf_counter()
    env = make_env(cfg, spec, seed=seed)
    connect_s = time.perf_counter() - t0
    try:
        driving = _Driving(env, cfg, spec, driver, seed)
        driving.drive(steps)
    finally:
        env.close()
    return _summary(driving, cfg, driver, tick_latency_s, connect_s)


def run_remote(steps: int, driver: str, seed: int, tick_latency_s: float, round_steps: int) -> dict:
    """The same steps on the in-process fake and on a fake server process, in alternating
    rounds; returns both summaries and ``step_ms_ratio`` (remote over in-process)."""
    spec = EnvSpec()
    cfg = EnvConfig(fake=FakeCarlaConfig(tick_latency_s=tick_latency_s))
    with FakeServerProcess(overrides={"env.fake.tick_latency_s": tick_latency_s}) as server:
        remote_cfg = EnvConfig(host=server.host, port=server.port, fake=cfg.fake)
        t0 = time.perf_counter()
        remote_env = CarlaEnv(remote_cfg, spec, make_remote_module(), seed)
        remote_connect_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        local_env = make_env(cfg, spec, seed=seed)
        local_connect_s = time.perf_counter() - t0
        try:
            local = _Driving(local_env, cfg, spec, driver, seed)
            remote = _Driving(remote_env, remote_cfg, spec, driver, seed)
            for done in range(0, steps, round_steps):
                for driving in (local, remote):
                    driving.drive(min(round_steps, steps - done))
        finally:
            local_env.close()
            remote_env.close()
    out = {"benchmark": "fake_env_speed_remote",
           "inprocess": _summary(local, cfg, driver, tick_latency_s, local_connect_s),
           "remote": _summary(remote, remote_cfg, driver, tick_latency_s, remote_connect_s)}
    out["step_ms_ratio"] = out["remote"]["step_ms_mean"] / out["inprocess"]["step_ms_mean"]
    return out


def _summary(driving: _Driving, cfg: EnvConfig, driver: str, tick_latency_s: float, connect_s: float) -> dict:
    step_s, reset_s = driving.step_s, driving.reset_s
    ms = np.array(step_s) * 1e3
    total = float(np.sum(step_s) + np.sum(reset_s))
    steps = len(step_s)
    return {
        "benchmark": "fake_env_speed",
        "driver": driver,
        "camera": f"{cfg.camera.width}x{cfg.camera.height}",
        "tick_latency_s": tick_latency_s,
        "steps": steps,
        "episodes_finished": driving.episodes,
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
    parser.add_argument("--remote", action="store_true",
                        help="also run on a fake server process and compare (alternating rounds)")
    parser.add_argument("--round", type=int, default=200, help="steps per round with --remote")
    args = parser.parse_args(argv)
    if args.remote:
        result = run_remote(args.steps, args.driver, args.seed, args.tick_latency, args.round)
        print(json.dumps(result))
        for key in result["inprocess"]:
            values = [result[side][key] for side in ("inprocess", "remote")]
            shown = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in values]
            print(f"{key:<24}{shown[0]:>16}{shown[1]:>16}")
        print(f"{'step_ms_ratio':<24}{result['step_ms_ratio']:>32.2f}")
        return
    result = run(args.steps, args.driver, args.seed, args.tick_latency)
    print(json.dumps(result))
    for key, value in result.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{key:<24}{shown:>16}")


if __name__ == "__main__":
    main()
