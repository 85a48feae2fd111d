"""The wire's bounds never refuse real data: episodes of the env over the fake CARLA, under
the smoke preset, driven at random, by the scripted driver and off the road, stay inside every
bound of the spec without the env's clipping ever taking hold, and every chunk they make
decodes."""
import numpy as np
import pytest

from rollout.carla_env import make_env
from rollout.scripted import PurePursuitDriver
from rollout.writer import ChunkWriter
from common.codec import decode_chunk, encode_chunk
from common.specs import VECTOR_KEY
from deploy.presets import smoke

STEPS = 300


def _drive(policy_for, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Runs STEPS env steps; returns the vectors, the rewards and the chunks decoded."""
    cfg = smoke()
    spec = cfg.spec
    env = make_env(cfg.env, spec, seed=seed)
    decoded = []

    def sink(chunk):
        decoded.append(decode_chunk(encode_chunk(chunk, spec), spec))

    writer = ChunkWriter(spec, cfg.replay.chunk_length, sink, stream_id=seed)
    policy = policy_for(cfg)
    vectors, rewards = [], []
    try:
        obs, _ = env.reset(seed=seed)
        writer.add_first(obs)
        vectors.append(obs[VECTOR_KEY])
        for _ in range(STEPS):
            action = policy(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            writer.add(obs, action, reward, terminated, truncated, -1)
            vectors.append(obs[VECTOR_KEY])
            rewards.append(reward)
            if terminated or truncated:
                obs, _ = env.reset()
                writer.add_first(obs)
                vectors.append(obs[VECTOR_KEY])
        writer.flush()
    finally:
        env.close()
    return np.array(vectors), np.array(rewards), len(decoded)


def _random(cfg):
    rng = np.random.default_rng(0)
    return lambda obs: rng.uniform(-1, 1, cfg.spec.action_dim).astype(np.float32)


def _scripted(cfg):
    return PurePursuitDriver.for_env(cfg.spec, cfg.env)


def _swerve(cfg):
    """Full throttle, full lock: off the road again and again, the terminal penalties."""
    return lambda obs: np.array([1.0, 1.0], np.float32)


@pytest.mark.parametrize("policy_for", [_random, _scripted, _swerve],
                         ids=["random", "scripted", "swerve"])
def test_real_episodes_stay_well_inside_the_bounds(policy_for):
    spec = smoke().spec
    vectors, rewards, chunks = _drive(policy_for, seed=5)
    assert chunks >= STEPS // smoke().replay.chunk_length
    low, high = spec.vector.bounds()
    # Never clipped: strictly inside every bound (a standing vehicle's speed is 0, its bound).
    assert np.all(vectors[:, 1:] > low[1:]) and np.all(vectors < high)
    assert np.all(vectors[:, 0] >= 0.0)
    # Generous: real values use at most half of each range, rewards a half of the limit.
    assert np.all(np.abs(vectors) <= high / 2), np.abs(vectors).max(axis=0) / high
    assert np.all(np.abs(rewards) <= spec.reward_limit / 2), np.abs(rewards).max()
