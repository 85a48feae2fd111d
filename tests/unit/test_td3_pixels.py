"""Learning through pixels: the best steer is visible only in the image.

A one-step task (every transition terminates, so Q(s, a) is the reward): a bright vertical bar
on the left half of the image asks for steer -0.6, on the right half for +0.6; the vector is
noise. Trained from a replay of uniformly random actions, the policy must read the bar.
"""
import numpy as np
import torch

from common.config import LearnerConfig, LearnerExecution, NetworkConfig, Precision, TD3Config
from common.specs import EnvSpec
from common.types import SampleBatch
from learner.td3 import TD3Learner

SPEC = EnvSpec(frames=1, image_size=36, num_waypoints=1)
BEST_STEER = 0.6


def _observations(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    side = rng.choice([-1.0, 1.0], size=n).astype(np.float32)
    image = rng.integers(0, 40, (n, 1, 36, 36), dtype=np.uint8)
    column = np.where(side < 0, rng.integers(2, 14, n), rng.integers(22, 34, n))
    for i, c in enumerate(column):
        image[i, 0, :, c - 2:c + 2] = 255
    vector = SPEC.vector.clip(rng.standard_normal((n, SPEC.vector_dim), dtype=np.float32))
    return image, vector, side


def _replay(rng: np.random.Generator, n: int) -> SampleBatch:
    image, vector, side = _observations(rng, n)
    action = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    reward = (-(action[:, 0] - BEST_STEER * side) ** 2).astype(np.float32)
    ones = np.ones(n, np.float32)
    return SampleBatch(image, vector, action, reward, image, vector, ones, np.zeros(n, np.float32),
                       np.full(n, -1, np.int64), ones, np.arange(n, dtype=np.int64))


def _take(replay: SampleBatch, index: np.ndarray) -> SampleBatch:
    return SampleBatch(*(field[index] for field in replay))


def test_policy_reads_the_best_steer_from_the_image():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = LearnerConfig(execution=LearnerExecution(device="cpu", precision=Precision.FP32),
                        td3=TD3Config(batch_size=64, encoder_lr=1e-3, head_lr=1e-3),
                        network=NetworkConfig(encoder_features=64, hidden_sizes=(64, 64)))
    learner = TD3Learner(SPEC, cfg, seed=0)
    replay = _replay(rng, 4096)
    for _ in range(800):
        learner.update(_take(replay, rng.integers(0, 4096, 64)))
    image, vector, side = _observations(np.random.default_rng(1), 200)
    with torch.no_grad():
        steer = learner.nets.policy(torch.from_numpy(image), torch.from_numpy(vector))[:, 0].numpy()
    error = np.abs(steer - BEST_STEER * side)
    assert np.median(error) < 0.1 and np.mean(error < 0.2) > 0.9, (
        f"median |steer error| {np.median(error):.3f}, within 0.2: {np.mean(error < 0.2):.2f}")
