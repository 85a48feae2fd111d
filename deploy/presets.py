"""Named run configurations, as Python objects. The CLI starts from one and applies overrides.

- smoke: seconds on a laptop CPU; small images; proves the pipeline end to end (used by tests).
- local: the default `carla-td3 train`: fake CARLA, local Ray, sized by the device it finds
  (``local_cpu``: the learning benchmark's small network; ``local_gpu``: the seed's network).
- cluster: a multi-GPU box with real CARLA servers (see docs/deployment.md).
- learn: the learning benchmark (experiments/learning.py): small enough for a 2-core CPU learner.
- traffic: the driving benchmark with traffic only the camera sees, at the seed's network size
  (docs/learning.md, "Traffic").
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
        learner=replace(base.learner, publish_every=5, checkpoint_every=20,
                        execution=replace(base.learner.execution, prefetch=2),
                        td3=replace(base.learner.td3, batch_size=32),
                        network=replace(base.learner.network, encoder_features=64,
                                        hidden_sizes=(64, 64))),
        replay=replace(base.replay, num_shards=2, capacity=5_000, min_size_to_sample=100,
                       chunk_length=16),
        rollout=replace(base.rollout, num_workers=2, learning_starts=200),
        train=replace(base.train, env_steps=800, worker_steps_per_call=25,
                      learner_updates_per_call=5, progress_every_s=2.0))


def local(device: str | None = None) -> C.RunConfig:
    """The default `carla-td3 train`, sized by the device the learner will find.

    Args:
        device: "cpu" or "cuda"; None looks (``local_device()``).
    """
    return local_gpu() if (device or local_device()) == "cuda" else local_cpu()


def local_device() -> str:
    """"cuda" when this machine's torch sees a GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def local_cpu() -> C.RunConfig:
    """A CPU learner on a few cores shared with the simulators: the learning benchmark's
    sizes (``learn``: 48x48 frames, a 64-feature encoder, batch 64, DrQ's image shift) on
    long enough a budget to watch training success climb (docs/learning.md gives the time
    it takes). Of the two actors, the second explores with the first's noise squared
    (Ape-X's per-actor noise, ``rollout.noise_spread``), so the training episodes' success
    rate shows what the policy can do while the first actor keeps exploring."""
    base = learn()
    return replace(
        base,
        learner=replace(base.learner, checkpoint_every=2_000),
        rollout=replace(base.rollout, noise_spread=1.0),
        train=replace(base.train, env_steps=100_000, progress_every_s=5.0))


def local_gpu() -> C.RunConfig:
    """A learner on a GPU: the seed's network (NatureCNN over 4x84x84, 512 features, batch
    256) with DrQ's image shift, an update per two env steps, and a rollout worker per spare
    core (2 to 8)."""
    import os

    base = C.RunConfig()
    actors = max(2, min(8, (os.cpu_count() or 2) - 2))
    return replace(
        base,
        learner=replace(base.learner, td3=replace(base.learner.td3, image_shift=4)),
        replay=replace(base.replay, num_shards=2, capacity=200_000, min_size_to_sample=2_000),
        rollout=replace(base.rollout, num_workers=actors, learning_starts=5_000,
                        exploration_noise=0.2, noise_spread=1.0),
        train=replace(base.train, env_steps=200_000, updates_per_env_step=0.5))


def cluster() -> C.RunConfig:
    base = C.RunConfig()
    return replace(
        base,
        env=replace(base.env, backend=C.SimulatorBackend.CARLA, num_npcs=20),
        learner=replace(base.learner, publish_every=100, checkpoint_every=10_000),
        replay=replace(base.replay, num_shards=4, capacity=250_000, min_size_to_sample=10_000,
                       chunk_length=32),
        rollout=replace(base.rollout, num_workers=8, learning_starts=20_000,
                        exploration_noise=0.3, noise_spread=1.0),
        train=replace(base.train, env_steps=2_000_000, updates_per_env_step=0.25,
                      worker_steps_per_call=100, learner_updates_per_call=50,
                      progress_every_s=10.0))


def learn() -> C.RunConfig:
    """The learning benchmark's configuration (experiments/learning.py, docs/learning.md).

    Sized so that a CPU learner on two shared cores keeps up: 48x48 frames, a 64-feature
    encoder and 128-128 heads, batch 64, half an update per env step held by the rate
    limiter, 100 m routes. A GPU box runs the same configuration faster, with more actors.
    The learner's images are shifted by up to 4 pixels (DrQ's augmentation,
    ``td3.image_shift``): without it the image encoders fitted the training routes and
    held-out success fell behind (docs/learning.md gives both).
    """
    base = C.RunConfig()
    return replace(
        base,
        spec=EnvSpec(frames=4, image_size=48, num_waypoints=10),
        env=replace(base.env, route_length_m=100.0, max_steps=500,
                    camera=replace(base.env.camera, width=64, height=48)),
        learner=replace(base.learner, publish_every=20, checkpoint_every=0,
                        execution=replace(base.learner.execution, prefetch=2),
                        td3=replace(base.learner.td3, batch_size=64, image_shift=4),
                        network=replace(base.learner.network, encoder_features=64,
                                        hidden_sizes=(128, 128))),
        replay=replace(base.replay, num_shards=1, capacity=100_000, min_size_to_sample=1_000,
                       chunk_length=16),
        rollout=replace(base.rollout, num_workers=2, learning_starts=3_000,
                        exploration_noise=0.2),
        train=replace(base.train, env_steps=60_000, updates_per_env_step=0.5,
                      worker_steps_per_call=25, learner_updates_per_call=10,
                      progress_every_s=10.0))


def traffic() -> C.RunConfig:
    """Held-out routes with traffic that only the camera sees (issue 31, docs/learning.md).

    The seed's network: NatureCNN over 4x84x84 frames, 512 features, 256-256 heads, separate
    policy and critic encoders. Ten NPCs spawn within reach of the ego's route (lead cars that
    slow and stop, crossing traffic at its junctions, cars in the other lanes;
    rollout/npc_spawns.py), and nothing about them enters the vector: the camera alone sees
    them. Batch 128 and half an update per env step keep a CPU learner on two shared cores
    learning (runs stop and continue with ``--resume``); DrQ's image shift as in ``learn``.
    """
    base = C.RunConfig()
    return replace(
        base,
        env=replace(base.env, num_npcs=10, route_length_m=150.0, max_steps=1000),
        learner=replace(base.learner, publish_every=20, checkpoint_every=1_000,
                        execution=replace(base.learner.execution, prefetch=2),
                        td3=replace(base.learner.td3, batch_size=128, image_shift=4)),
        replay=replace(base.replay, num_shards=1, capacity=150_000, min_size_to_sample=2_000,
                       chunk_length=16),
        rollout=replace(base.rollout, num_workers=2, learning_starts=5_000,
                        exploration_noise=0.2, noise_spread=1.0),
        train=replace(base.train, env_steps=300_000, updates_per_env_step=0.5,
                      worker_steps_per_call=25, learner_updates_per_call=10,
                      progress_every_s=10.0))


PRESETS: dict[str, Callable[[], C.RunConfig]] = {"smoke": smoke, "local": local, "cluster": cluster,
                                                 "learn": learn, "traffic": traffic}


def preset(name: str) -> C.RunConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
