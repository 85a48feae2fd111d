"""Turns an env's observations into StepChunks (common/types.py) and hands them to a sink."""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from common.specs import IMAGE_KEY, VECTOR_KEY, EnvSpec
from common.types import StepChunk
from common.weights import RANDOM_POLICY_VERSION

ChunkSink = Callable[[StepChunk], None]


class ChunkWriter:
    """Buffers one record per observation; emits a StepChunk every ``chunk_length`` records.

    Only the newest frame of each observation's stack is kept: the replay rebuilds stacks.
    """

    def __init__(self, spec: EnvSpec, chunk_length: int, sink: ChunkSink, stream_id: int) -> None:
        if chunk_length < 1:
            raise ValueError(f"chunk_length ({chunk_length}) must be >= 1")
        self._spec = spec
        self._sink = sink
        self.stream_id = int(stream_id)
        self._seq = 0
        self._n = 0
        n, size = chunk_length, spec.image_size
        self._frame = np.zeros((n, size, size), np.uint8)
        self._vector = np.zeros((n, spec.vector_dim), np.float32)
        self._first = np.zeros(n, bool)
        self._action = np.zeros((n, spec.action_dim), np.float32)
        self._reward = np.zeros(n, np.float32)
        self._terminated = np.zeros(n, bool)
        self._truncated = np.zeros(n, bool)
        self._version = np.zeros(n, np.int64)

    @property
    def chunks_sent(self) -> int:
        return self._seq

    def add_first(self, obs: Mapping[str, np.ndarray]) -> None:
        """Records an observation returned by reset()."""
        self._put(obs, True, np.zeros(self._spec.action_dim, np.float32), 0.0, False, False,
                  RANDOM_POLICY_VERSION)

    def add(self, obs: Mapping[str, np.ndarray], action: np.ndarray, reward: float,
            terminated: bool, truncated: bool, policy_version: int) -> None:
        """Records the observation a step returned, with the transition that led to it."""
        self._put(obs, False, action, reward, terminated, truncated, policy_version)

    def flush(self) -> None:
        """Sends what is buffered, if anything, as one (shorter) chunk."""
        if self._n == 0:
            return
        n = self._n
        chunk = StepChunk(
            stream_id=self.stream_id, seq=self._seq, frame=self._frame[:n].copy(),
            vector=self._vector[:n].copy(), first=self._first[:n].copy(),
            action=self._action[:n].copy(), reward=self._reward[:n].copy(),
            terminated=self._terminated[:n].copy(), truncated=self._truncated[:n].copy(),
            policy_version=self._version[:n].copy())
        self._n = 0
        self._seq += 1
        self._sink(chunk)

    def _put(self, obs, first, action, reward, terminated, truncated, version) -> None:
        i = self._n
        self._frame[i] = obs[IMAGE_KEY][-1]
        self._vector[i] = obs[VECTOR_KEY]
        self._first[i] = first
        self._action[i] = action
        self._reward[i] = reward
        self._terminated[i] = terminated
        self._truncated[i] = truncated
        self._version[i] = version
        self._n += 1
        if self._n == len(self._frame):
            self.flush()
