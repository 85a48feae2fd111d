"""Shared pieces of the runtime tests: a tiny run config and a local Ray session."""
from __future__ import annotations

from dataclasses import replace

import pytest
import ray

from common import config as C
from deploy import presets
from deploy.replay_ray import ray_system_config


def tiny_config(env_steps: int = 500, frame_cache: str = "auto", **train) -> C.RunConfig:
    """The smoke preset, trimmed so a whole run takes seconds on 2 cores."""
    cfg = presets.smoke()
    return replace(cfg,
                   learner=replace(cfg.learner, checkpoint_every=10, publish_every=3,
                                   execution=replace(cfg.learner.execution,
                                                     frame_cache=C.FrameCacheMode(frame_cache))),
                   rollout=replace(cfg.rollout, learning_starts=150),
                   train=replace(cfg.train, env_steps=env_steps, progress_every_s=1.0,
                                 **{"updates_per_env_step": 0.1, **train}))


def start_ray(cfg: C.RunConfig) -> None:
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING",
             _system_config=ray_system_config(cfg.spec, cfg.replay.chunk_length))


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray session for one test module, sized for ``tiny_config``; yields that config."""
    cfg = tiny_config()
    start_ray(cfg)
    yield cfg
    ray.shutdown()
