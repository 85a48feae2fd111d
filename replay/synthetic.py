"""Synthetic actor streams for tests and benchmarks: StepChunks exactly as an env would emit.

Frames are stacked with common.framestack.FrameStack (the env's own stacking), so a test can
compare what the replay rebuilds with what the env produced, byte for byte. Each record's
``vector[0]`` holds a unique record id (``record_id`` reads it back), which identifies a sampled
transition by its next observation; the other components are uniform in [-1, 1], inside the
spec's bounds.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from common.framestack import FrameStack
from common.specs import EnvSpec
from common.types import StepChunk

# Ids are stored as id * 2**-24 in vector[0]: exact in float32 for every id below 2**24, and
# inside the spec's speed bound [0, 5] (common/specs.py), which an id itself would leave.
_ID_SCALE = 2.0**-24


def record_id(vector: np.ndarray) -> int:
    """The record id a synthetic observation ``vector`` carries."""
    return int(round(float(vector[0]) / _ID_SCALE))


class ExpectedTransition(NamedTuple):
    """What the env produced for one transition, for byte-exact comparison."""

    obs_image: np.ndarray
    obs_vector: np.ndarray
    action: np.ndarray
    reward: np.float32
    next_image: np.ndarray
    next_vector: np.ndarray
    terminated: bool
    truncated: bool
    policy_version: int
    refs: frozenset[int]


class SyntheticStream:
    """One actor's stream of chunks over random episodes.

    Args:
        spec: observation and action spec.
        stream_id: the stream's id.
        chunk_length: records per chunk.
        max_episode: episode lengths (transitions) are uniform in [1, max_episode].
        seed: randomness of frames, lengths and endings.
        record_expected: keep an ExpectedTransition per transition (tests only).
        id_base: first record id (ids must be unique across streams and below 2**24).
    """

    def __init__(self, spec: EnvSpec, stream_id: int, chunk_length: int, max_episode: int = 50,
                 seed: int = 0, record_expected: bool = False, id_base: int = 0) -> None:
        self.spec, self.stream_id, self.chunk_length = spec, stream_id, chunk_length
        self.max_episode, self.record_expected = max_episode, record_expected
        self.rng = np.random.default_rng(seed)
        self.stack = FrameStack(spec.frames, spec.image_size, spec.image_size)
        self.expected: dict[int, ExpectedTransition] = {}
        self.seq = 0
        self.next_id = id_base
        self._left = 0
        self._obs: tuple[np.ndarray, np.ndarray] | None = None
        self._ids: list[int] = []
        self._frames = self.rng.integers(0, 256, (257, spec.image_size, spec.image_size), np.uint8)

    def next_chunk(self) -> StepChunk:
        """Emits the next chunk of ``chunk_length`` records."""
        n, spec = self.chunk_length, self.spec
        out = {"frame": np.empty((n, spec.image_size, spec.image_size), np.uint8),
               "vector": np.empty((n, spec.vector_dim), np.float32),
               "first": np.zeros(n, bool), "action": np.zeros((n, spec.action_dim), np.float32),
               "reward": np.zeros(n, np.float32), "terminated": np.zeros(n, bool),
               "truncated": np.zeros(n, bool), "policy_version": np.full(n, -1, np.int64)}
        for i in range(n):
            self._record(out, i)
        chunk = StepChunk(stream_id=self.stream_id, seq=self.seq, **out)
        self.seq += 1
        return chunk

    def _record(self, out: dict[str, np.ndarray], i: int) -> None:
        frame = self._frames[self.rng.integers(0, len(self._frames))]
        vector = self.rng.uniform(-1, 1, self.spec.vector_dim).astype(np.float32)
        vector[0] = self.next_id * _ID_SCALE
        self.next_id += 1
        out["frame"][i], out["vector"][i] = frame, vector
        if self._left == 0 or self._obs is None:
            out["first"][i] = True
            self._left = int(self.rng.integers(1, self.max_episode + 1))
            self._obs = (self.stack.reset(frame), vector)
            self._ids = [record_id(vector)] * self.spec.frames
            return
        action = self.rng.uniform(-1, 1, self.spec.action_dim).astype(np.float32)
        reward = np.float32(self.rng.normal())
        version = int(self.rng.integers(-1, 100))
        self._left -= 1
        ending = self._left == 0 and self.rng.random() < 0.8
        terminated = ending and self.rng.random() < 0.5
        truncated = ending and not terminated
        out["action"][i], out["reward"][i], out["policy_version"][i] = action, reward, version
        out["terminated"][i], out["truncated"][i] = terminated, truncated
        next_image = self.stack.push(frame)
        next_ids = self._ids[1:] + [record_id(vector)]
        if self.record_expected:
            self.expected[record_id(vector)] = ExpectedTransition(
                self._obs[0], self._obs[1], action, reward, next_image, vector, terminated,
                truncated, version, frozenset(self._ids + next_ids))
        self._ids = next_ids
        self._obs = (next_image, vector)
        if ending:
            self._left = 0
