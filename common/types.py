"""Data that crosses process boundaries: what rollout workers send and what the learner samples.

The wire unit is a ``StepChunk``: consecutive observations emitted by ONE actor's env, one
record per observation (Acme/Reverb adder style). Record ``i`` carries the newest camera frame
and the vector of observation ``i``; unless ``first[i]`` (the observation came from reset()),
it also carries the transition that led to it from record ``i - 1`` of the same episode:
``action``, ``reward``, ``terminated``, ``truncated`` and the ``policy_version`` that chose the
action. So every camera frame travels and is stored exactly once; the stacked ``image`` of an
observation is rebuilt with common.framestack.stack_offsets.

A chunk may start mid-episode: its first record then continues the episode of the previous
chunk of the same stream. ``(stream_id, seq)`` identifies a chunk: ``stream_id`` is random per
actor incarnation and ``seq`` counts chunks from 0, so a retried insert is recognised.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class StepChunk(NamedTuple):
    """Consecutive observation records from one actor (see the module docstring).

    Attributes:
        stream_id: random per actor incarnation (uint64 range).
        seq: chunk sequence number within the stream, from 0.
        frame: uint8 [n, H, W], the newest frame of each observation.
        vector: float32 [n, V].
        first: bool [n], observation came from reset().
        action: float32 [n, A], action taken at record i-1 (zeros where first).
        reward: float32 [n], reward of that action (0 where first).
        terminated: bool [n], record i ends its episode by termination.
        truncated: bool [n], record i ends its episode by truncation.
        policy_version: int64 [n], version of the policy that chose ``action`` (-1: random).
    """

    stream_id: int
    seq: int
    frame: np.ndarray
    vector: np.ndarray
    first: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    policy_version: np.ndarray

    @property
    def num_records(self) -> int:
        return int(self.frame.shape[0])

    @property
    def num_transitions(self) -> int:
        return int(self.num_records - np.count_nonzero(self.first))


# The float arrays of a SampleBatch and of a CachedBatch: the ones a NaN or an infinity can
# reach (the camera frames are uint8, the ids and versions int64).
FLOAT_FIELDS = ("obs_vector", "action", "reward", "next_vector", "terminated", "truncated",
                "weight")


class SampleBatch(NamedTuple):
    """A batch of transitions for the learner, stacks rebuilt, native dtypes.

    Attributes:
        obs_image: uint8 [B, F, H, W].
        obs_vector: float32 [B, V].
        action: float32 [B, A].
        reward: float32 [B].
        next_image: uint8 [B, F, H, W].
        next_vector: float32 [B, V].
        terminated: float32 [B], 1.0 masks bootstrapping.
        truncated: float32 [B], informational: truncated transitions bootstrap.
        policy_version: int64 [B].
        weight: float32 [B], importance weights (ones for uniform sampling).
        key: int64 [B], ids for priority updates (shard index in the top bits).
    """

    obs_image: np.ndarray
    obs_vector: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_image: np.ndarray
    next_vector: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    policy_version: np.ndarray
    weight: np.ndarray
    key: np.ndarray

    @property
    def size(self) -> int:
        return int(self.action.shape[0])


class CachedBatch(NamedTuple):
    """A SampleBatch whose image stacks are rows of the learner's frame cache, not pixels.

    A learner that keeps a copy of the replay shards' frame rings on its device
    (``learner.frame_cache.FrameCache``: row ``shard * capacity + slot`` holds that ring slot's
    frame) gets each camera frame once, the first time a sampled stack needs it, instead of
    F + 1 frames per sampled transition. The rows it lacks travel with the batch; the cache
    stores them (``new_rows``, ``new_frames``) before it reads the batch's stacks.

    Attributes:
        frame_rows: int64 [B, F + 1]: the obs stack is rows ``[:, :F]``, the next-obs stack
            rows ``[:, 1:]`` (as ``replay.shard.PackedBatch.frames``).
        new_rows: int64 [K], distinct: rows the cache must store first.
        new_frames: uint8 [K, H, W]: their frames.
        cache_rows: rows of the cache these index (shards x ring capacity).
        obs_vector, action, reward, next_vector, terminated, truncated, policy_version,
        weight, key: as in SampleBatch.
    """

    frame_rows: np.ndarray
    new_rows: np.ndarray
    new_frames: np.ndarray
    cache_rows: int
    obs_vector: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_vector: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    policy_version: np.ndarray
    weight: np.ndarray
    key: np.ndarray

    @property
    def size(self) -> int:
        return int(self.action.shape[0])
