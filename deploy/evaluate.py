"""`carla-td3 evaluate`: the deterministic policy of a checkpoint on held-out routes.

A trained run is evaluated (or driven) with its own saved config; overrides may change only
its ``env.*`` keys (another town or OpenDRIVE map, a step limit, ...): the policy's spec and
network are the run's.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from rollout.carla_env import make_env
from rollout.policy import CpuPolicy
from rollout.video import record_episode
from common import config as C
from common.errors import CheckpointError, ConfigError
from common.weights import PolicySnapshot
from deploy import build, policy_dir
from deploy.components import learner_checkpoint
from deploy.rundir import RunDir
from learner.td3 import TD3Learner

log = logging.getLogger(__name__)


def resolve_checkpoint(path: Path) -> tuple[RunDir, Path]:
    """A run directory (its latest checkpoint), one checkpoint directory inside a run, or a
    policy directory (deploy/policy_dir.py: the policy and the config, nothing else)."""
    path = Path(path)
    if policy_dir.is_policy_dir(path):
        return RunDir(path), path
    if (path / "config.json").exists():
        run_dir = RunDir(path)
        latest = run_dir.latest_checkpoint()
        if latest is None:
            raise CheckpointError(f"run directory {path} has no checkpoint yet")
        return run_dir, latest
    if (path / "counters.json").exists() and (path.parent.parent / "config.json").exists():
        return RunDir(path.parent.parent), path
    raise CheckpointError(f"{path} is neither a run directory, a checkpoint directory in one, "
                          "nor a policy directory (carla-td3 export)")


def check_env_keys(overrides: Mapping[str, object]) -> None:
    """Raises ConfigError naming every dotted key outside ``env.``: a trained run's other
    keys (its spec, its network) are what its policy was trained with."""
    fixed = sorted(key for key in overrides if not key.startswith("env."))
    if fixed:
        raise ConfigError(f"config key(s) {fixed} cannot be overridden for a trained run: its "
                          f"policy's spec and network are the run's; only env.* keys can change")


def with_env_overrides(cfg: C.RunConfig, overrides: Mapping[str, object]) -> C.RunConfig:
    """A trained run's config with dotted-key overrides of its ``env.*`` keys.

    Raises:
        ConfigError: naming every key outside ``env.``, or an unknown key or bad value.
    """
    check_env_keys(overrides)
    return C.with_overrides(cfg, overrides)


def load_learner_policy(cfg: C.RunConfig, checkpoint: Path) -> tuple[CpuPolicy, dict[str, np.ndarray]]:
    """A learner checkpoint's policy on CPU (the learner state is loaded and validated in
    full), and its arrays."""
    on_cpu = replace(cfg.learner.execution, device="cpu", cuda_graphs=False)
    learner = TD3Learner(cfg.spec, replace(cfg.learner, execution=on_cpu), cfg.seed)
    learner.load(learner_checkpoint(checkpoint))
    state = learner.policy_state()
    policy = CpuPolicy(cfg.spec, cfg.learner.network)
    policy.load(PolicySnapshot(int(learner.updates), state))
    return policy, state


def load_policy(cfg: C.RunConfig, checkpoint: Path) -> CpuPolicy:
    """The policy of a learner checkpoint or of a policy directory, on CPU.

    Raises:
        CheckpointError: for a damaged checkpoint or policy directory.
        SpecError: for arrays that do not fit ``cfg``'s spec and network.
    """
    if policy_dir.is_policy_dir(checkpoint):
        policy = CpuPolicy(cfg.spec, cfg.learner.network)
        policy.load(policy_dir.load_snapshot(checkpoint))
        return policy
    return load_learner_policy(cfg, checkpoint)[0]


# The CARLA Leaderboard's infraction penalties for what the fake can produce: a collision with
# another vehicle, and one with the layout or a static prop (leaderboard.carla.org, "Driving
# score"). A route's driving score is its route completion times the product of
# coefficient ** count over its infractions.
LEADERBOARD_PENALTY = {"vehicle_collisions": 0.60, "static_collisions": 0.65}


def driving_score(info: Mapping[str, Any]) -> float:
    """One route's Leaderboard driving score from the env's last ``info``."""
    vehicle = int(info.get("vehicle_collisions", 0))
    static = int(info["collisions"]) - vehicle
    penalty = (LEADERBOARD_PENALTY["vehicle_collisions"] ** vehicle
               * LEADERBOARD_PENALTY["static_collisions"] ** static)
    return float(info["route_completion"]) * penalty


def run_episodes(env: Any, act: Callable[[dict], np.ndarray], episodes: int, seed: int) -> dict[str, Any]:
    """Runs ``episodes`` episodes with seeds seed, seed+1, ...; aggregates the env's info.

    ``success_rate`` is the env's success (route completed, no collision, no lane invasion as
    CARLA's sensor reports one); ``strict_success_rate`` also asks that the vehicle's centre
    stayed within its lane of the route at every step, inside junctions too.
    """
    results, lengths, kept_lane = [], [], []
    for k in range(episodes):
        obs, info = env.reset(seed=seed + k)
        ret, done, length, in_lane = 0.0, False, 0, True
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs))
            ret += reward
            length += 1
            done = terminated or truncated
            in_lane = in_lane and abs(float(info["lateral_m"])) <= float(info["half_lane_width_m"])
        results.append((ret, info))
        lengths.append(length)
        kept_lane.append(in_lane)
    distance_km = sum(i["distance_m"] for _, i in results) / 1000.0
    collisions = sum(int(i["collisions"]) for _, i in results)
    return {
        "episodes": episodes,
        "success_rate": float(np.mean([bool(i["success"]) for _, i in results])),
        # success, and the vehicle's centre never left the route's lane, junctions included,
        # where a real town has no markings and CARLA's lane-invasion sensor reports nothing
        "strict_success_rate": float(np.mean([bool(i["success"]) and kept
                                              for (_, i), kept in zip(results, kept_lane)])),
        "mean_return": float(np.mean([r for r, _ in results])),
        "route_completion": float(np.mean([i["route_completion"] for _, i in results])),
        "driving_score": float(np.mean([driving_score(i) for _, i in results])),
        "mean_episode_length": float(np.mean(lengths)),
        "collisions_per_km": collisions / distance_km if distance_km > 0 else float("nan"),
        "distance_km": distance_km,
        "termination_reasons": sorted({i["termination_reason"] for _, i in results}),
    }


def evaluate_checkpoint(path: Path, episodes: int, seed: int, video: Path | None = None,
                        split: C.RouteSplit = C.RouteSplit.EVAL,
                        overrides: Mapping[str, object] | None = None) -> dict[str, Any]:
    """Evaluates a checkpoint's deterministic policy on its own env: on the held-out routes,
    or with ``split=RouteSplit.TRAIN`` on the training routes (a validation set for choosing
    among checkpoints that leaves the held-out routes untouched).

    Args:
        path: a run directory (its latest checkpoint) or one checkpoint directory.
        episodes: episodes to run, seeds ``seed``, ``seed + 1``, ...
        seed: the first episode's seed.
        video: also record one more episode (seed ``seed``) to this MP4.
        split: the routes to draw from (``env.route_split``).
        overrides: dotted ``env.*`` keys applied last, over the split (``with_env_overrides``).

    Raises:
        CheckpointError: for a bad path or ``episodes`` below 1.
        ConfigError: for an override outside ``env.*``, or a town the server lacks.
    """
    if episodes < 1:
        raise CheckpointError(f"--episodes ({episodes}) must be >= 1")
    overrides = dict(overrides or {})
    check_env_keys(overrides)
    run_dir, checkpoint = resolve_checkpoint(path)
    cfg, _ = run_dir.read_config()
    cfg = replace(cfg, env=replace(build.actor_env_config(cfg, 0), route_split=split))
    cfg = with_env_overrides(cfg, overrides)
    env = make_env(cfg.env, cfg.spec, seed=seed)  # first: a town the server lacks fails at once
    try:
        policy = load_policy(cfg, checkpoint)
        out = run_episodes(env, policy.act, episodes, seed)
        if video is not None:
            summary = record_episode(env, policy.act, str(video), seed=seed)
            out["video"] = {"path": str(video), "frames": summary.frames}
    finally:
        env.close()
    out.update(checkpoint=str(checkpoint), policy_version=policy.version, env=env_record(cfg.env))
    return out


def env_record(env: C.EnvConfig) -> dict[str, Any]:
    """The effective env settings an evaluation ran with, for its JSON."""
    return {"town": env.town, "num_npcs": env.num_npcs, "route_split": env.route_split.value,
            "backend": env.backend.value, "route_length_m": env.route_length_m,
            "max_steps": env.max_steps, "xodr_path": env.fake.xodr_path,
            "npc_stops_per_min": env.fake.npc_stops_per_min,
            "camera_input": env.camera_input.value}
