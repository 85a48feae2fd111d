"""The arms of the learning benchmark, run through the real system.

Trained arms (separate, shared) train with ``deploy.launch.train`` in Ray mode on the fake town
up to the first env-step milestone, are evaluated from the checkpoint the run leaves, then
continue with ``deploy.launch.resume`` to the next milestone, and so on (resume carries the
learner, the replay contents and the counters, so the segments are one run). A run directory
that already exists is continued, so an interrupted benchmark picks up where it stopped.
Baseline arms (random, scripted, privileged) are evaluated on the same held-out routes with the
same episode seeds, with no training. The vector arm is the separate arm with its frames blanked
(``env.camera_input=blank``) in training and evaluation alike: the camera removed.

Each evaluation runs under one or more conditions (learning_report.CONDITIONS): the arm's own
env on held-out routes, the second town, frames blanked.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rollout.carla_env import make_env
from rollout.scripted import PurePursuitDriver
from rollout.scripted_privileged import PrivilegedDriver
from experiments.learning_report import (BASELINE_ARMS, CONDITIONS, HELD_OUT, TRAINED_ARMS,
                                         LearningPoint, point_from_eval)
from common import config as C
from common.errors import ConfigError
from deploy import build, evaluate, launch
from deploy.presets import preset
from deploy.rundir import RunDir

log = logging.getLogger(__name__)

Act = Callable[[dict], np.ndarray]


def arm_config(preset_name: str, overrides: dict[str, Any], arm: str, seed: int) -> C.RunConfig:
    """The preset with ``overrides``, the arm's encoder topology and the seed applied; the
    vector arm is the separate arm with ``env.camera_input=blank``.

    Raises:
        ConfigError: for an unknown arm or override.
    """
    if arm not in TRAINED_ARMS + BASELINE_ARMS:
        raise ConfigError(f"arm ({arm!r}) must be one of {list(TRAINED_ARMS + BASELINE_ARMS)}")
    blank = {"env.camera_input": C.CameraInput.BLANK.value} if arm == "vector" else {}
    cfg = C.with_overrides(preset(preset_name), {**overrides, **blank, "seed": seed})
    if arm in TRAINED_ARMS:
        topology = C.EncoderTopology("separate" if arm == "vector" else arm)
        cfg = replace(cfg, learner=replace(cfg.learner, network=replace(cfg.learner.network,
                                                                        topology=topology)))
    return cfg


def condition_overrides(condition: str) -> dict[str, str]:
    """The ``env.*`` overrides of an evaluation condition.

    Raises:
        ConfigError: for an unknown condition.
    """
    if condition not in CONDITIONS:
        raise ConfigError(f"condition ({condition!r}) must be one of {list(CONDITIONS)}")
    return dict(CONDITIONS[condition])


def eval_env(cfg: C.RunConfig, seed: int, split: C.RouteSplit = C.RouteSplit.EVAL,
             condition: str = HELD_OUT) -> Any:
    """The env ``deploy.evaluate.evaluate_checkpoint`` evaluates on: rollout worker 0's
    settings with the held-out route split (or ``split``), under ``condition``."""
    cfg = replace(cfg, env=replace(build.actor_env_config(cfg, 0), route_split=split))
    cfg = evaluate.with_env_overrides(cfg, condition_overrides(condition))
    return make_env(cfg.env, cfg.spec, seed=seed)


def random_policy(spec_action_dim: int, seed: int) -> Act:
    """Uniform random actions in [-1, 1], reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1.0, 1.0, spec_action_dim).astype(np.float32)


def baseline_act(arm: str, cfg: C.RunConfig, seed: int, env: Any = None) -> Act:
    """The controller of a baseline arm; the privileged one reads the world of ``env``.

    Raises:
        ConfigError: for an arm that is no baseline, or the privileged arm without an env.
    """
    if arm == "random":
        return random_policy(cfg.spec.action_dim, seed)
    if arm == "scripted":
        return PurePursuitDriver.for_env(cfg.spec, cfg.env)
    if arm == "privileged":
        if env is None:
            raise ConfigError("baseline arm 'privileged' needs the env it drives (env=None)")
        return PrivilegedDriver(cfg.spec, cfg.env, env)
    raise ConfigError(f"baseline arm ({arm!r}) must be one of {list(BASELINE_ARMS)}")


def run_baseline(arm: str, seed: int, cfg: C.RunConfig, episodes: int, eval_seed: int,
                 condition: str = HELD_OUT) -> LearningPoint:
    """Evaluates the random, scripted or privileged controller under ``condition``; one
    point at milestone 0."""
    env = eval_env(cfg, eval_seed, condition=condition)
    try:
        result = evaluate.run_episodes(env, baseline_act(arm, cfg, seed, env), episodes, eval_seed)
    finally:
        env.close()
    log.info("event=baseline_eval arm=%s seed=%d condition=%s success_rate=%.2f "
             "route_completion=%.3f collisions_per_km=%.2f driving_score=%.3f mean_return=%.2f",
             arm, seed, condition, result["success_rate"], result["route_completion"],
             result["collisions_per_km"], result["driving_score"], result["mean_return"])
    return point_from_eval(arm, seed, 0, {}, result, "-", condition=condition)


def check_milestones(milestones: Sequence[int], learning_starts: int) -> list[int]:
    """Sorted, distinct milestones, each beyond ``learning_starts``.

    Raises:
        ConfigError: naming the first bad milestone.
    """
    ordered = sorted(set(int(m) for m in milestones))
    if not ordered:
        raise ConfigError("milestones ([]) must name at least one env-step count")
    if ordered[0] <= learning_starts:
        raise ConfigError(f"milestone ({ordered[0]}) must exceed rollout.learning_starts "
                          f"({learning_starts}): before that the policy never acts")
    return ordered


def _train_to(cfg: C.RunConfig, run_path: Path, steps: int) -> dict[str, Any]:
    """Trains a new run at ``run_path`` or continues it, until ``steps`` env steps."""
    if (run_path / "config.json").exists():
        return launch.resume(run_path, steps=steps, dashboard=False)
    cfg = replace(cfg, train=replace(cfg.train, env_steps=steps))
    return launch.train(cfg, run_path.parent, name=run_path.name, dashboard=False,
                        options={"preset": "learning-bench"})


def _done_steps(run_path: Path) -> int:
    if not (run_path / "config.json").exists():
        return 0
    latest = RunDir(run_path).latest_checkpoint()
    return 0 if latest is None else int(RunDir.read_counters(latest)["env_steps"])


def run_trained(arm: str, seed: int, cfg: C.RunConfig, milestones: Sequence[int], runs_root: Path,
                episodes: int, eval_seed: int,
                on_point: Callable[[LearningPoint], None] = lambda p: None,
                validation_episodes: int = 0, validation_seed: int = 0,
                conditions: Sequence[str] = (HELD_OUT,)) -> list[LearningPoint]:
    """Trains ``arm`` in segments up to each milestone and evaluates after each segment, on
    the held-out routes and, if ``validation_episodes``, on validation episodes (training-split
    routes, ``validation_seed`` onwards) for choosing a checkpoint without the held-out ones.

    Args:
        arm: "separate", "shared" or "vector".
        seed: the run's master seed.
        cfg: the arm's config (see ``arm_config``); train.env_steps is set per segment.
        milestones: env-step targets; milestones a continued run already passed are skipped.
        runs_root: where the run directory ``<arm>-seed<seed>`` lives.
        episodes: evaluation episodes per milestone.
        eval_seed: first evaluation episode seed.
        on_point: called with each point as soon as it is measured (to save progress).
        validation_episodes: validation episodes per milestone (0: none).
        validation_seed: first validation episode seed.
        conditions: evaluation conditions (learning_report.CONDITIONS), one point each per
            milestone; the validation figures go with every one of them.

    Returns:
        The points measured by this call.
    """
    run_path = Path(runs_root) / f"{arm}-seed{seed}"
    points = []
    for milestone in check_milestones(milestones, cfg.rollout.learning_starts):
        if _done_steps(run_path) >= milestone:
            log.info("event=milestone_skipped arm=%s seed=%d milestone=%d reason=already_trained",
                     arm, seed, milestone)
            continue
        out = _train_to(cfg, run_path, milestone)
        device = f'{out.get("learner_device", "cpu")} {out.get("learner_precision", "")}'.strip()
        results = {condition: evaluate.evaluate_checkpoint(
            run_path, episodes=episodes, seed=eval_seed, overrides=condition_overrides(condition))
            for condition in conditions}
        validation = None
        if validation_episodes:
            validation = evaluate.evaluate_checkpoint(run_path, episodes=validation_episodes,
                                                      seed=validation_seed, split=C.RouteSplit.TRAIN)
        for condition, result in results.items():
            counters = RunDir.read_counters(Path(result["checkpoint"]))
            point = point_from_eval(arm, seed, milestone, counters, result, device, validation,
                                    condition=condition)
            log.info("event=milestone_eval arm=%s seed=%d condition=%s env_steps=%d updates=%d "
                     "wall_s=%.0f success_rate=%.2f route_completion=%.3f collisions_per_km=%.2f "
                     "driving_score=%.3f mean_return=%.2f validation_success_rate=%.2f", arm, seed,
                     condition, point.env_steps, point.updates, point.wall_seconds,
                     point.success_rate, point.route_completion, point.collisions_per_km,
                     point.driving_score, point.mean_return, point.validation_success_rate)
            points.append(point)
            on_point(point)
    return points
