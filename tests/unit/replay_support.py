"""Helpers shared by the replay tests (not a test module)."""
from __future__ import annotations

import hashlib

import numpy as np

from common.config import ReplayConfig
from common.specs import EnvSpec
from common.types import SampleBatch
from replay.transport import LocalShard
from replay.shard import ReplayShard
from replay.storage import RING_ARRAYS
from replay.synthetic import ExpectedTransition, SyntheticStream, record_id

SMALL_SPEC = EnvSpec(frames=4, image_size=36, num_waypoints=2)


def fingerprint(shard: ReplayShard) -> str:
    """A digest of everything an insert may change (ring, streams, counters, limiter)."""
    h = hashlib.sha256()
    for name in RING_ARRAYS:
        h.update(np.ascontiguousarray(getattr(shard.ring, name)).tobytes())
    for key, value in shard.sampler.state().items():
        h.update(key.encode() + np.ascontiguousarray(value).tobytes())
    streams = sorted((sid, st.last_seq, st.step, st.ended, st.slots.tolist(), st.stamps.tolist(),
                      st.refused_seq) for sid, st in shard.streams.items())
    counts = {k: v for k, v in shard.counts.items()
              if not k.startswith("rejected") and not k.endswith("_seconds")}
    h.update(repr((streams, counts, shard.ring.counter, shard.ring.num_valid,
                   shard.limiter.inserts, shard.limiter.samples)).encode())
    return h.hexdigest()


def make_streams(spec: EnvSpec, count: int, chunk_length: int = 8, max_episode: int = 12,
                 seed: int = 0) -> list[SyntheticStream]:
    return [SyntheticStream(spec, 1000 + k, chunk_length, max_episode, seed + k,
                            record_expected=True, id_base=100_000 * k) for k in range(count)]


def expected_by_id(streams: list[SyntheticStream]) -> dict[int, ExpectedTransition]:
    out: dict[int, ExpectedTransition] = {}
    for stream in streams:
        out.update(stream.expected)
    return out


def assert_batch_matches(batch: SampleBatch, expected: dict[int, ExpectedTransition]) -> None:
    """Every sampled transition equals, byte for byte, what the env produced."""
    for i in range(batch.size):
        e = expected[record_id(batch.next_vector[i])]
        assert batch.obs_image[i].tobytes() == e.obs_image.tobytes(), i
        assert batch.next_image[i].tobytes() == e.next_image.tobytes(), i
        assert batch.obs_vector[i].tobytes() == e.obs_vector.tobytes(), i
        assert batch.next_vector[i].tobytes() == e.next_vector.tobytes(), i
        assert batch.action[i].tobytes() == e.action.tobytes(), i
        assert batch.reward[i] == e.reward
        assert (batch.terminated[i], batch.truncated[i]) == (float(e.terminated), float(e.truncated))
        assert batch.policy_version[i] == e.policy_version


def small_shard(capacity: int = 200, shard_index: int = 0, **overrides) -> ReplayShard:
    overrides.setdefault("min_size_to_sample", 1)
    return ReplayShard(SMALL_SPEC, ReplayConfig(capacity=capacity, **overrides), shard_index)


class LearnerAfterRefusal:
    """A shard whose learner samples it down whenever an insert was refused (the client's
    handle convention, through ``LocalShard``)."""

    def __init__(self, shard):
        self.shard = shard
        self.local = LocalShard(shard)

    def _insert(self, data):
        ack = self.shard.insert(data)
        if ack.rate_limited:
            while self.shard.limiter.can_sample(self.shard.size()):
                self.shard.sample(4)
        return ack

    def __getattr__(self, name):
        return LocalShard(self).__getattr__("_insert") if name == "insert" else getattr(self.local, name)
