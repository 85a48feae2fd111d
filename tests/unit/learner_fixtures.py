"""Small specs, configs and deterministic batches shared by the learner tests."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from common.config import (EncoderTopology, LearnerConfig, LearnerExecution, NetworkConfig,
                           TD3Config, from_dict, to_dict)
from common.specs import EnvSpec
from common.types import SampleBatch
from learner import update
from learner.device import DeviceBatch
from learner.td3 import TD3Learner
from learner.update import CriticStats, TD3State

SMALL_SPEC = EnvSpec(frames=2, image_size=36, num_waypoints=1)


def small_config(topology: EncoderTopology = EncoderTopology.SEPARATE, **td3: float) -> LearnerConfig:
    """A CPU fp32 learner config with tiny networks (fast, and the same numbers on every CPU)."""
    return LearnerConfig(execution=run_on(LearnerExecution(), device="cpu", precision="fp32"),
                         td3=TD3Config(**{"batch_size": 16, **td3}),
                         network=NetworkConfig(encoder_features=32, hidden_sizes=(32, 32),
                                               topology=topology))


def run_on(cfg, **execution):
    """``cfg`` (a LearnerConfig, or a LearnerExecution) with these execution fields, given as
    in a config file ("fp32", "blocks")."""
    run = cfg.execution if isinstance(cfg, LearnerConfig) else cfg
    run = from_dict(LearnerExecution, {**to_dict(run), **execution})
    return dataclasses.replace(cfg, execution=run) if isinstance(cfg, LearnerConfig) else run


def random_batch(spec: EnvSpec, size: int, seed: int) -> SampleBatch:
    """A batch of random transitions, the same for the same seed (vectors clipped to the
    spec's bounds)."""
    rng = np.random.default_rng(seed)
    image = (spec.frames, spec.image_size, spec.image_size)
    vector = (size, spec.vector_dim)
    return SampleBatch(
        obs_image=rng.integers(0, 256, (size, *image), dtype=np.uint8),
        obs_vector=spec.vector.clip(rng.standard_normal(vector, dtype=np.float32)),
        action=rng.uniform(-1, 1, (size, spec.action_dim)).astype(np.float32),
        reward=rng.standard_normal(size, dtype=np.float32),
        next_image=rng.integers(0, 256, (size, *image), dtype=np.uint8),
        next_vector=spec.vector.clip(rng.standard_normal(vector, dtype=np.float32)),
        terminated=(rng.random(size) < 0.2).astype(np.float32),
        truncated=(rng.random(size) < 0.1).astype(np.float32),
        policy_version=np.full(size, -1, np.int64),
        weight=np.ones(size, np.float32),
        key=np.arange(size, dtype=np.int64),
    )


def params_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of a module's parameters by name."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def packed_batch(spec: EnvSpec, size: int, seed: int) -> SampleBatch:
    """``random_batch`` laid out as a replay shard returns it: obs and next-obs images are
    read-only overlapping views of one [B, F + 1, H, W] block (``PackedBatch.unpack``)."""
    batch = random_batch(spec, size, seed)
    frames = np.random.default_rng(seed + 10_000).integers(
        0, 256, (size, spec.frames + 1, spec.image_size, spec.image_size), dtype=np.uint8)
    frames.flags.writeable = False
    return batch._replace(obs_image=frames[:, :-1], next_image=frames[:, 1:])


def device_batch(learner: TD3Learner, seed: int, size: int = 16) -> DeviceBatch:
    """``random_batch`` on the learner's device (``TD3Learner.to_device``)."""
    return learner.to_device(random_batch(learner.spec, size, seed))


def critic_step(s: TD3State, b: DeviceBatch, noise: torch.Tensor | None = None) -> CriticStats:
    """One critic step through the public pieces (no image shift), with target smoothing
    noise ``noise`` (none if None)."""
    noise = torch.zeros_like(b.action) if noise is None else noise
    y = update.td_target(s, b, update.prepare(s, b.next_image, None), noise)
    return update.critic_step(s, b, update.critic_values(s, b, update.prepare(s, b.image, None)), y)


def policy_step(s: TD3State, b: DeviceBatch, critic_features: torch.Tensor) -> None:
    """One policy step through the public pieces, differentiating the live Q1 head."""
    encoding = update.policy_encoding(s, b, update.prepare(s, b.image, None))
    q1 = {k: v.detach() for k, v in s.q1.items()}
    update.policy_step(s, update.policy_loss(s, b, encoding, critic_features, q1))
