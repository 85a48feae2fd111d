"""Per-episode breakdown of a policy on the learning benchmark's held-out episodes: why each
episode ended, its collisions and lane invasions, steps and return, the largest distance of the
vehicle's centre from the route's centre line, and whether the centre ever left its lane.
Explains a gap between route completion and success (success also needs zero collisions and
zero lane invasions, where an invasion is any corner of the vehicle's box crossing a marking,
as CARLA's lane-invasion sensor reports it).

    .venv/bin/python -m experiments.learning_diagnose /tmp/learning-runs/separate-seed0 --episodes 10
    .venv/bin/python -m experiments.learning_diagnose --scripted --preset learn --episodes 10

Prints one JSON object: the episodes and their totals.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from experiments.learning_arms import arm_config, baseline_act, eval_env
from common.errors import CarlaTD3Error


def episode_rows(env: Any, act: Callable[[dict], np.ndarray], episodes: int,
                 seed: int) -> list[dict[str, Any]]:
    """One row per episode (seeds seed, seed+1, ...), from the env's last info."""
    rows = []
    for k in range(episodes):
        obs, info = env.reset(seed=seed + k)
        ret, steps, done = 0.0, 0, False
        max_lateral, centre_left_lane = 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs))
            ret, steps, done = ret + reward, steps + 1, terminated or truncated
            lateral = abs(float(info["lateral_m"]))
            max_lateral = max(max_lateral, lateral)
            centre_left_lane = centre_left_lane or lateral > float(info["half_lane_width_m"])
        rows.append({"episode_seed": seed + k, "termination_reason": info["termination_reason"],
                     "success": bool(info["success"]),
                     "route_completion": round(float(info["route_completion"]), 3),
                     "collisions": int(info["collisions"]),
                     "lane_invasions": int(info["lane_invasions"]),
                     "max_lateral_m": round(max_lateral, 3), "centre_left_lane": centre_left_lane,
                     "steps": steps,
                     "return": round(ret, 2)})
    return rows


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over the episodes: reasons, successes, episodes with invasions or collisions."""
    return {"episodes": len(rows), "successes": sum(r["success"] for r in rows),
            "termination_reasons": dict(Counter(r["termination_reason"] for r in rows)),
            "episodes_with_lane_invasion": sum(r["lane_invasions"] > 0 for r in rows),
            "episodes_with_collision": sum(r["collisions"] > 0 for r in rows),
            "episodes_whose_centre_left_the_lane": sum(r["centre_left_lane"] for r in rows),
            "mean_lane_invasions": float(np.mean([r["lane_invasions"] for r in rows]))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="experiments.learning_diagnose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, nargs="?", help="a run directory or checkpoint directory")
    p.add_argument("--scripted", action="store_true", help="the scripted driver instead of a run")
    p.add_argument("--preset", default="learn", help="the preset for --scripted")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--eval-seed", type=int, default=10_000)
    args = p.parse_args(argv)
    try:
        if args.scripted:
            cfg = arm_config(args.preset, {}, "scripted", 0)
            act, source = baseline_act("scripted", cfg, 0), "scripted"
        elif args.run is not None:
            from deploy import evaluate

            run_dir, checkpoint = evaluate.resolve_checkpoint(args.run)
            cfg, _ = run_dir.read_config()
            act, source = evaluate.load_policy(cfg, checkpoint).act, str(checkpoint)
        else:
            p.error("give a run directory or --scripted")
        env = eval_env(cfg, args.eval_seed)
        try:
            rows = episode_rows(env, act, args.episodes, args.eval_seed)
        finally:
            env.close()
    except CarlaTD3Error as exc:
        print(f"experiments.learning_diagnose: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"source": source, "totals": totals(rows), "episodes": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
