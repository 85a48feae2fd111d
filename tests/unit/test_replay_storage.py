"""Frame-deduplicating storage: byte-exact stacks, FIFO validity, streams, memory."""
import numpy as np
import pytest

from common.config import SamplerKind
from common.errors import ConfigError, WireError
from common.specs import EnvSpec
from common.types import StepChunk
from replay.storage import FrameRing
from replay.synthetic import SyntheticStream, record_id
from tests.unit.replay_support import (SMALL_SPEC, assert_batch_matches, expected_by_id,
                                       make_streams, small_shard)


def _intact_ids(shard) -> set[int]:
    ring = shard.ring
    return {record_id(v) for v in ring.vector[ring.stamp >= 0]}


def _assert_valid_set_exact(shard, expected) -> None:
    """The valid slots are exactly the transitions whose every referenced frame is intact,
    and each rebuilds byte for byte."""
    intact = _intact_ids(shard)
    want = {tid for tid, e in expected.items() if e.refs <= intact}
    valid_slots = np.flatnonzero(shard.ring.valid)
    got = {record_id(v) for v in shard.ring.vector[valid_slots]}
    assert got == want
    assert shard.ring.num_valid == len(want)
    if valid_slots.size:
        batch = shard._packed(valid_slots, np.ones(valid_slots.size, np.float32)).unpack()
        assert_batch_matches(batch, expected)


@pytest.mark.parametrize("sampler", [SamplerKind.UNIFORM, SamplerKind.PRIORITIZED])
@pytest.mark.parametrize("max_episode,streams", [
    pytest.param(3, 3, id="short_episodes"), pytest.param(40, 2, id="long_episodes"),
    pytest.param(7, 1, id="one_stream")])
def test_sampled_stacks_equal_env_stacks_byte_for_byte(sampler, max_episode, streams):
    shard = small_shard(capacity=150, sampler=sampler)
    sources = make_streams(SMALL_SPEC, streams, chunk_length=5, max_episode=max_episode)
    for round_ in range(60):  # several ring turns, chunks interleaved across streams
        for src in sources:
            shard.insert_chunk(src.next_chunk())
        if round_ % 7 == 0:
            _assert_valid_set_exact(shard, expected_by_id(sources))
    _assert_valid_set_exact(shard, expected_by_id(sources))
    assert_batch_matches(shard.sample(64), expected_by_id(sources))


def test_stalled_stream_never_serves_overwritten_frames():
    shard = small_shard(capacity=60)
    slow, fast = make_streams(SMALL_SPEC, 2, chunk_length=6, max_episode=50)
    shard.insert_chunk(slow.next_chunk())
    for _ in range(15):  # the fast stream overwrites the whole ring
        shard.insert_chunk(fast.next_chunk())
    for _ in range(3):
        shard.insert_chunk(slow.next_chunk())
        _assert_valid_set_exact(shard, expected_by_id([slow, fast]))


def test_episode_start_repeats_first_frame():
    shard = small_shard()
    src = SyntheticStream(SMALL_SPEC, 7, chunk_length=4, max_episode=30, seed=3, record_expected=True)
    chunk = src.next_chunk()
    shard.insert_chunk(chunk)
    batch = shard._packed(np.array([1]), np.ones(1, np.float32)).unpack()
    first = chunk.frame[0]
    assert all(np.array_equal(f, first) for f in batch.obs_image[0])
    assert np.array_equal(batch.next_image[0][-1], chunk.frame[1])


def test_duplicate_seq_is_acknowledged_and_ignored():
    shard = small_shard()
    src = make_streams(SMALL_SPEC, 1)[0]
    chunk = src.next_chunk()
    first = shard.insert_chunk(chunk)
    size = shard.size()
    again = shard.insert_chunk(chunk)
    assert again.duplicate and again.stored == 0 and not first.duplicate
    assert shard.size() == size


def test_seq_gap_drops_records_until_next_episode_start():
    shard = small_shard()
    src = make_streams(SMALL_SPEC, 1, chunk_length=6, max_episode=4)[0]
    shard.insert_chunk(src.next_chunk())
    src.next_chunk()  # lost on the way
    chunk = src.next_chunk()
    ack = shard.insert_chunk(chunk)
    assert ack.dropped == int(np.flatnonzero(chunk.first)[0])
    _assert_valid_set_exact(shard, {k: v for k, v in src.expected.items()})


def test_unknown_stream_mid_episode_starts_at_first_record():
    shard = small_shard()
    src = make_streams(SMALL_SPEC, 1, chunk_length=6, max_episode=30)[0]
    src.next_chunk()
    ack = shard.insert_chunk(src.next_chunk())
    assert ack.stored == 0 and ack.dropped == 6
    _assert_valid_set_exact(shard, src.expected)


def test_continuing_an_ended_episode_is_rejected_without_change():
    shard = small_shard()
    n = 3
    base = dict(frame=np.zeros((n, 36, 36), np.uint8), vector=np.zeros((n, 7), np.float32),
                action=np.zeros((n, 2), np.float32), reward=np.zeros(n, np.float32),
                truncated=np.zeros(n, bool), policy_version=np.zeros(n, np.int64))
    ends = StepChunk(1, 0, first=np.array([True, False, False]),
                     terminated=np.array([False, False, True]), **base)
    goes_on = StepChunk(1, 1, first=np.zeros(n, bool), terminated=np.zeros(n, bool), **base)
    shard.insert_chunk(ends)
    before = shard.ring.counter
    with pytest.raises(WireError, match="ended in seq 0"):
        shard.insert_chunk(goes_on)
    assert shard.ring.counter == before


def test_memory_per_transition_within_budget():
    spec = EnvSpec()
    ring = FrameRing(spec, 1000)
    essential = spec.frame.nbytes + spec.vector.nbytes + spec.action.nbytes + 4 + 1 + 1 + 8
    assert ring.bytes_per_slot() <= 1.25 * essential
    one_million = ring.bytes_per_slot() * 1_000_000 * 33 / 32  # T+1 slots for T transitions
    assert one_million < 8 * 2**30
    full_obs = 2 * (spec.image.nbytes + spec.vector.nbytes)  # what storing obs and next_obs costs
    assert ring.bytes_per_slot() * 33 / 32 < full_obs / 7


def test_capacity_must_hold_a_stack():
    with pytest.raises(ConfigError, match=r"capacity \(4\)"):
        FrameRing(SMALL_SPEC, 4)


def test_memory_estimate_is_logged_at_construction(caplog):
    with caplog.at_level("INFO", logger="replay.shard"):
        shard = small_shard(capacity=100)
    assert f"bytes={shard.ring.nbytes}" in caplog.text and "bytes_per_slot=" in caplog.text


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_interleaving_gaps_and_retries_keep_the_valid_set_exact(seed):
    rng = np.random.default_rng(seed)
    shard = small_shard(capacity=int(rng.integers(40, 120)))
    sources = make_streams(SMALL_SPEC, 3, chunk_length=int(rng.integers(1, 9)),
                           max_episode=int(rng.integers(1, 20)), seed=10 * seed)
    last = {}
    for step in range(150):
        k = int(rng.integers(len(sources)))
        action = rng.random()
        if action < 0.1 and k in last:
            assert shard.insert_chunk(last[k]).duplicate  # a retried insert
            continue
        chunk = sources[k].next_chunk()
        if action < 0.2:
            continue  # lost chunk: the next one arrives after a seq gap
        shard.insert_chunk(chunk)
        last[k] = chunk
        if step % 10 == 0:
            _assert_valid_set_exact(shard, expected_by_id(sources))
    _assert_valid_set_exact(shard, expected_by_id(sources))
