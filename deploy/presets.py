"""Named run configurations, as Python objects. The CLI starts from one and applies overrides.

- smoke: seconds on a laptop CPU; small images; proves the pipeline end to end (used by tests).
- local: the default `carla-td3 train`: fake CARLA, local Ray, a few actors and shards, sized to
  show learning progress within minutes on a CPU and to use a GPU when there is one.
- cluster: a multi-GPU box with real CARLA servers (see docs/deployment.md).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from common import config as C
from common.errors import ConfigError
from common.specs import EnvSpec


def smoke() -> C.RunConfig:
    base = C.RunConfig()
    return replace(
        base,
        spec=EnvSpec(frames=4, image_size=48, num_waypoints=10),
        env=replace(base.env, route_length_m=60.0, max_steps=150,
                    camera=replace(base.env.camera, width=64, height=48)),
        learner=replace(base.learner, publish_every=5, checkpoint_every=20, prefetch=2,
                        td3=replace(base.learner.td3, batch_size=32),
                        network=replace(base.learner.network, encoder_features=64,
                                        hidden_sizes=(64, 64))),
        replay=replace(base.replay, num_shards=2, capacity=5_000, min_size_to_sample=100,
                       chunk_length=16),
        rollout=replace(base.rollout, num_actors=2, learning_starts=200),
        train=replace(base.train, env_steps=800, actor_steps_per_call=25,
                      learner_updates_per_call=5, progress_every_s=2.0))


def local() -> C.RunConfig:
    base = C.RunConfig()
    return replace(
        base,
        replay=replace(base.replay, num_shards=2, capacity=100_000, min_size_to_sample=2_000),
        rollout=replace(base.rollout, num_actors=2, learning_starts=2_000,
                        exploration_noise=0.2),
        train=replace(base.train, env_steps=50_000, updates_per_env_step=0.0))


def cluster() -> C.RunConfig:
    base = C.RunConfig()
    return replace(
        base,
        env=replace(base.env, backend=C.SimulatorBackend.CARLA, num_npcs=20),
        learner=replace(base.learner, publish_every=100, checkpoint_every=10_000),
        replay=replace(base.replay, num_shards=4, capacity=250_000, min_size_to_sample=10_000,
                       chunk_length=32),
        rollout=replace(base.rollout, num_actors=8, learning_starts=20_000,
                        exploration_noise=0.3, noise_spread=1.0),
        train=replace(base.train, env_steps=2_000_000, updates_per_env_step=0.25,
                      actor_steps_per_call=100, learner_updates_per_call=50,
                      progress_every_s=10.0))


PRESETS: dict[str, Callable[[], C.RunConfig]] = {"smoke": smoke, "local": local, "cluster": cluster}


def preset(name: str) -> C.RunConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
