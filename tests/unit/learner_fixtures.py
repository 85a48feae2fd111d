"""Small specs, configs and deterministic batches shared by the learner tests."""
from __future__ import annotations

import numpy as np
import torch

from common.config import EncoderTopology, LearnerConfig, NetworkConfig, TD3Config
from common.specs import EnvSpec
from common.types import SampleBatch

SMALL_SPEC = EnvSpec(frames=2, image_size=36, num_waypoints=1)


def small_config(topology: EncoderTopology = EncoderTopology.SEPARATE, **td3: float) -> LearnerConfig:
    """A CPU fp32 learner config with tiny networks (fast, and the same numbers on every CPU)."""
    return LearnerConfig(device="cpu", precision="fp32",
                         td3=TD3Config(**{"batch_size": 16, **td3}),
                         network=NetworkConfig(encoder_features=32, hidden_sizes=(32, 32),
                                               topology=topology))


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


def critic_step(learner, b, px, noise) -> list[torch.Tensor]:
    """One critic step of ``learner`` on a device batch, as ``TD3Learner._step`` runs it."""
    y = learner._queue_td_target(b, px.next, noise)
    q1, q2, features = learner._terms["critic"](b, px.obs)
    learner._lanes.join("target_critic")
    return learner._critic_step(b, q1, q2, y, features)


def policy_step(learner, b, encoding, features) -> None:
    """One policy step (paper order: the live Q1 head) and Polyak step of every target."""
    q1 = {k: v.detach() for k, v in learner.nets.critic.q1.named_parameters()}
    learner._policy_step(b, encoding, features, q1, learner.nets.target_pairs)
