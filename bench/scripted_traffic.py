"""The scripted drivers on held-out routes with traffic (fake CARLA): success, collisions per
km, route completion, and how NPC traffic behaved (NPC-NPC contacts). One JSON object out.

    python -m bench.scripted_traffic [--driver privileged|scripted] [--episodes 20] [--npcs 15]
        [--town Town01] [--split eval] [--seed 0] [--set env.KEY=VALUE ...]

``privileged`` reads every vehicle's position and velocity from the world
(rollout/scripted_privileged.py): the upper bound of the traffic benchmark; ``scripted`` is the
pure-pursuit driver that sees only the observation vector and ignores traffic.
"""
from __future__ import annotations

import argparse
import json
import time

from rollout.carla_env import make_env
from rollout.scripted import PurePursuitDriver
from rollout.scripted_privileged import PrivilegedDriver
from common.config import EnvConfig, RouteSplit
from common.specs import EnvSpec


def traffic_env_config(npcs: int, town: str, split: RouteSplit) -> EnvConfig:
    """The env of the traffic benchmark: ``npcs`` NPCs near the route on ``town``."""
    return EnvConfig(num_npcs=npcs, town=town, route_split=split)


def run(cfg: EnvConfig, driver_name: str, episodes: int, seed: int) -> dict:
    """Drives ``episodes`` episodes (seeds ``seed``, ``seed + 1``, ...) and sums them up."""
    spec = EnvSpec()
    env = make_env(cfg, spec, seed=seed)
    driver = (PrivilegedDriver(spec, cfg, env) if driver_name == "privileged"
              else PurePursuitDriver.for_env(spec, cfg))
    rows = []
    started = time.perf_counter()
    try:
        for k in range(episodes):
            obs, info = env.reset(seed=seed + k)
            done = False
            while not done:
                obs, _, terminated, truncated, info = env.step(driver(obs))
                done = terminated or truncated
            rows.append({"seed": seed + k, "success": bool(info["success"]),
                         "reason": info["termination_reason"], "collisions": info["collisions"],
                         "lane_invasions": info["lane_invasions"], "distance_m": info["distance_m"],
                         "route_completion": info["route_completion"], "steps": info["step"]})
    finally:
        env.close()
    km = sum(r["distance_m"] for r in rows) / 1000.0
    return {
        "benchmark": "scripted_traffic", "driver": driver_name, "episodes": episodes,
        "env": {"town": cfg.town, "num_npcs": cfg.num_npcs, "route_split": cfg.route_split.value},
        "success_rate": sum(r["success"] for r in rows) / max(len(rows), 1),
        "collisions_per_km": sum(r["collisions"] for r in rows) / km if km > 0 else 0.0,
        "route_completion": sum(r["route_completion"] for r in rows) / max(len(rows), 1),
        "wall_s": time.perf_counter() - started,
        "episodes_detail": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", choices=("privileged", "scripted"), default="privileged")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--npcs", type=int, default=15)
    parser.add_argument("--town", default="Town01")
    parser.add_argument("--split", choices=[s.value for s in RouteSplit], default=RouteSplit.EVAL.value)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = traffic_env_config(args.npcs, args.town, RouteSplit(args.split))
    print(json.dumps(run(cfg, args.driver, args.episodes, args.seed)))


if __name__ == "__main__":
    main()
