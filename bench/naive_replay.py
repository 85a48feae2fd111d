"""The naive baseline: a shard that stores full obs and next_obs stacks for every transition.

This is what Stable-Baselines3's DictReplayBuffer (without optimize_memory_usage) does, and
what a plain Ray actor replay does: every transition travels and is stored with both uint8
image stacks. Used only by bench/replay_throughput.py for comparison.
"""
from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from common.specs import EnvSpec
from common.types import SampleBatch, StepChunk

_FIELDS = ("obs_image", "obs_vector", "action", "reward", "next_image", "next_vector",
           "terminated", "truncated", "policy_version")


def chunk_to_transitions(chunk: StepChunk, spec: EnvSpec) -> dict[str, np.ndarray]:
    """Rebuilds per-transition obs and next_obs stacks from a chunk (the actor's side)."""
    f, n = spec.frames, chunk.num_records
    stacks = np.empty((n, f) + chunk.frame.shape[1:], np.uint8)
    step = -1
    for i in range(n):
        step = 0 if chunk.first[i] else step + 1
        for j in range(f):
            stacks[i, j] = chunk.frame[i - min(f - 1 - j, step)]
    has_prev = ~chunk.first
    has_prev[0] = False
    idx = np.flatnonzero(has_prev)
    return {"obs_image": stacks[idx - 1], "obs_vector": chunk.vector[idx - 1],
            "action": chunk.action[idx], "reward": chunk.reward[idx],
            "next_image": stacks[idx], "next_vector": chunk.vector[idx],
            "terminated": chunk.terminated[idx], "truncated": chunk.truncated[idx],
            "policy_version": chunk.policy_version[idx]}


def encode_transitions(arrays: dict[str, np.ndarray]) -> bytes:
    return msgpack.packb({k: [v.dtype.name, list(v.shape), v.tobytes()] for k, v in arrays.items()},
                         use_bin_type=True)


class NaiveShard:
    """Ring arrays holding obs and next_obs stacks per transition; uniform sampling."""

    def __init__(self, spec: EnvSpec, capacity: int, seed: int = 0) -> None:
        img = (capacity, spec.frames, spec.image_size, spec.image_size)
        self.capacity, self.count, self.spec = capacity, 0, spec
        self.arrays = {
            "obs_image": np.zeros(img, np.uint8), "next_image": np.zeros(img, np.uint8),
            "obs_vector": np.zeros((capacity, spec.vector_dim), np.float32),
            "next_vector": np.zeros((capacity, spec.vector_dim), np.float32),
            "action": np.zeros((capacity, spec.action_dim), np.float32),
            "reward": np.zeros(capacity, np.float32), "terminated": np.zeros(capacity, bool),
            "truncated": np.zeros(capacity, bool), "policy_version": np.zeros(capacity, np.int64)}
        self.rng = np.random.default_rng(seed)

    def insert(self, data: bytes) -> int:
        msg: dict[str, Any] = msgpack.unpackb(data, raw=False)
        n = int(msg["reward"][1][0])
        pos = (self.count + np.arange(n)) % self.capacity
        for key, (dtype, shape, raw) in msg.items():
            self.arrays[key][pos] = np.frombuffer(raw, dtype).reshape(shape)
        self.count += n
        return n

    def size(self) -> int:
        return min(self.count, self.capacity)

    def capacity_slots(self) -> int:
        return self.capacity

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def sample(self, batch_size: int) -> SampleBatch:
        idx = self.rng.integers(0, self.size(), batch_size)
        a = self.arrays
        return SampleBatch(**{k: a[k][idx] for k in _FIELDS if k not in ("terminated", "truncated")},
                           terminated=a["terminated"][idx].astype(np.float32),
                           truncated=a["truncated"][idx].astype(np.float32),
                           weight=np.ones(batch_size, np.float32),
                           key=idx.astype(np.int64))
