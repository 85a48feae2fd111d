"""A replay shard under generated traffic (Hypothesis, stateful): valid chunks from several
streams, retries, and garbage (random bytes, random msgpack, byte-level and field-level
mutations of valid messages, a chunk that continues an ended episode), checked against a
reference model after every step.

The model: every valid chunk stores its non-``first`` records (each stream is sent in order,
its first chunk starts with a ``first`` record, and the ring never wraps); a retry is a
duplicate that stores nothing; every garbage message raises WireError or SpecError, is counted
under its reason and leaves the shard's fingerprint unchanged; sizes, streams and counters
match; a sample never raises and equals, byte for byte, what the streams produced.
"""
from collections import Counter

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from common.codec import decode_chunk, encode_chunk
from common.errors import SpecError, WireError
from common.types import StepChunk
from replay.shard import REJECT_REASONS, InsertAck, RateLimited
from tests.unit.replay_support import (SMALL_SPEC, assert_batch_matches, expected_by_id,
                                       fingerprint, make_streams, small_shard)

N_STREAMS = 3
CHUNK_LENGTH = 4
CAPACITY = 400  # > the records of the longest run (30 steps x 4 records): the ring never wraps
STEPS = 30
CHUNK_KEYS = ("v", "kind", "stream_id", "seq", "frame", "vector", "first", "action", "reward",
              "terminated", "truncated", "policy_version")
ARRAY_KEYS = CHUNK_KEYS[4:]
ALLOWED_DTYPES = ("uint8", "float32", "bool", "int64")

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                     st.text(max_size=8), st.binary(max_size=32))
_array_entries = st.tuples(
    st.sampled_from(["uint8", "float32", "bool", "int64", "float64", "object", ""]),
    st.lists(st.integers(-1, 40), max_size=4), st.binary(max_size=64)).map(list)
_field_values = st.one_of(_scalars, _array_entries, st.lists(_scalars, max_size=4),
                          st.dictionaries(st.text(max_size=4), _scalars, max_size=3))
_random_msgpack = st.dictionaries(st.one_of(st.sampled_from(CHUNK_KEYS), st.text(max_size=6)),
                                  _field_values, max_size=len(CHUNK_KEYS) + 1)
streams = st.integers(0, N_STREAMS - 1)


def _continuation(stream_id: int, seq: int) -> StepChunk:
    """A valid chunk whose records continue an episode (no ``first`` record)."""
    n, s = 2, SMALL_SPEC
    return StepChunk(stream_id, seq, frame=np.zeros((n, s.image_size, s.image_size), np.uint8),
                     vector=np.zeros((n, s.vector_dim), np.float32), first=np.zeros(n, bool),
                     action=np.zeros((n, s.action_dim), np.float32), reward=np.zeros(n, np.float32),
                     terminated=np.zeros(n, bool), truncated=np.zeros(n, bool),
                     policy_version=np.zeros(n, np.int64))


class ShardMachine(RuleBasedStateMachine):
    """One shard and its reference model; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.shard = small_shard(capacity=CAPACITY)
        self.sources = make_streams(SMALL_SPEC, N_STREAMS, chunk_length=CHUNK_LENGTH, max_episode=5)
        self.template = encode_chunk(make_streams(SMALL_SPEC, 1, seed=99)[0].next_chunk(), SMALL_SPEC)
        self.sent: list[list[bytes]] = [[] for _ in range(N_STREAMS)]
        self.ended = [False] * N_STREAMS  # the stream's last chunk ended its episode
        self.size = 0
        self.stream_ids: set[int] = set()
        self.duplicates = 0
        self.rejected: Counter[str] = Counter()

    def _base(self, k: int) -> bytes:
        return self.sent[k][-1] if self.sent[k] else self.template

    def _insert_garbage(self, data: bytes, reason: str | None = None) -> None:
        """Sends ``data``; it must be rejected under ``reason`` (by default the reason the
        codec gives) without changing the shard. A mutant the codec accepts is not garbage
        and is not sent."""
        if reason is None:
            try:
                decode_chunk(data, SMALL_SPEC, self.shard.limits)
            except (WireError, SpecError) as exc:
                reason = "spec" if isinstance(exc, SpecError) else "wire"
            else:
                return
        before = fingerprint(self.shard)
        with pytest.raises((WireError, SpecError)) as info:
            self.shard.insert(data)
        assert ("spec" if isinstance(info.value, SpecError) else reason) == reason
        assert fingerprint(self.shard) == before
        self.rejected[reason] += 1

    @rule(k=streams)
    def insert_valid(self, k: int) -> None:
        chunk = self.sources[k].next_chunk()
        data = encode_chunk(chunk, SMALL_SPEC)
        stored = int(np.count_nonzero(~chunk.first))
        assert self.shard.insert(data) == InsertAck(chunk.stream_id, chunk.seq, stored, 0, False, False)
        self.size += stored
        self.stream_ids.add(chunk.stream_id)
        self.sent[k].append(data)
        self.ended[k] = bool(chunk.terminated[-1] or chunk.truncated[-1])

    @rule(k=streams, back=st.integers(0, 6))
    def retry_a_sent_chunk(self, k: int, back: int) -> None:
        if not self.sent[k]:
            return
        data = self.sent[k][-1 - min(back, len(self.sent[k]) - 1)]
        ack = self.shard.insert(data)
        assert ack.duplicate and ack.stored == 0 and not ack.rate_limited
        self.duplicates += 1

    @rule(data=st.binary(max_size=256))
    def insert_random_bytes(self, data: bytes) -> None:
        self._insert_garbage(data)

    @rule(msg=_random_msgpack)
    def insert_random_msgpack(self, msg: dict) -> None:
        self._insert_garbage(msgpack.packb(msg, use_bin_type=True))

    @rule(k=streams, where=st.floats(0, 1, exclude_max=True))
    def insert_truncated(self, k: int, where: float) -> None:
        data = self._base(k)
        self._insert_garbage(data[: int(where * len(data))])

    @rule(k=streams, where=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255),
          extra=st.binary(max_size=8))
    def insert_flipped_or_spliced(self, k: int, where: float, mask: int, extra: bytes) -> None:
        data = bytearray(self._base(k))
        i = int(where * len(data))
        data[i] ^= mask
        self._insert_garbage(bytes(data[:i] + extra + data[i:]) if extra else bytes(data))

    @rule(k=streams, key=st.sampled_from(CHUNK_KEYS), value=_field_values, drop=st.booleans())
    def insert_with_a_bad_field(self, k: int, key: str, value, drop: bool) -> None:
        msg = msgpack.unpackb(self._base(k), raw=False)
        if drop:
            del msg[key]
        else:
            msg[key] = value
        self._insert_garbage(msgpack.packb(msg, use_bin_type=True))

    @rule(k=streams, key=st.sampled_from(ARRAY_KEYS), dtype=st.sampled_from(ALLOWED_DTYPES),
          grow=st.integers(-1, 1), axis=st.integers(0, 2))
    def insert_against_the_spec(self, k: int, key: str, dtype: str, grow: int, axis: int) -> None:
        msg = msgpack.unpackb(self._base(k), raw=False)
        _, shape, raw = msg[key]
        if grow and axis < len(shape):
            shape[axis] = max(0, shape[axis] + grow)
        msg[key] = [dtype, shape, raw]
        self._insert_garbage(msgpack.packb(msg, use_bin_type=True))

    @rule(k=streams)
    def continue_an_ended_episode(self, k: int) -> None:
        if not self.ended[k]:
            return
        src = self.sources[k]
        self._insert_garbage(encode_chunk(_continuation(src.stream_id, src.seq), SMALL_SPEC), "stream")

    @rule(batch_size=st.integers(1, 32))
    def sample(self, batch_size: int) -> None:
        batch = self.shard.sample(batch_size)
        if self.size == 0:
            assert isinstance(batch, RateLimited) and batch.reason == "min_size"
        else:
            assert batch.size == batch_size
            assert_batch_matches(batch, expected_by_id(self.sources))

    @invariant()
    def shard_matches_the_model(self) -> None:
        counts = self.shard.stats()
        assert counts["size"] == counts["inserts"] == self.size
        assert set(self.shard.streams) == self.stream_ids
        assert counts["streams"] == len(self.stream_ids)
        assert counts["duplicates"] == self.duplicates
        assert counts["rejected"] == sum(self.rejected.values())
        assert {r: counts[f"rejected_{r}"] for r in REJECT_REASONS} == {r: self.rejected[r] for r in REJECT_REASONS}


ShardMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=STEPS, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestShardFuzz = ShardMachine.TestCase
