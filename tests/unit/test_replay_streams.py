"""The shard's stream table: bounded, swept, LRU-capped; seq jumps; rejections by reason."""
import msgpack
import numpy as np
import pytest

from common.codec import encode_chunk
from common.config import ReplayConfig
from common.errors import ConfigError, SpecError, WireError
from common.types import StepChunk
from replay import streams as streams_mod
from replay.shard import ReplayShard
from replay.storage import StreamState
from replay.streams import DUPLICATE_WINDOW, StreamTable
from tests.unit.replay_support import SMALL_SPEC, fingerprint, make_streams, small_shard

SEQ_MAX = 2**63 - 1


def _one_record(sid: int, seq: int = 0, first: bool = True) -> StepChunk:
    """A one-record chunk: a ``first`` record holds a slot, a non-first one stores nothing
    for a new stream (no episode to continue)."""
    s = SMALL_SPEC
    return StepChunk(sid, seq, frame=np.zeros((1, s.image_size, s.image_size), np.uint8),
                     vector=np.zeros((1, s.vector_dim), np.float32), first=np.array([first]),
                     action=np.zeros((1, s.action_dim), np.float32), reward=np.zeros(1, np.float32),
                     terminated=np.zeros(1, bool), truncated=np.zeros(1, bool),
                     policy_version=np.zeros(1, np.int64))


def _state(stamp: int, refused_seq: int = -1) -> StreamState:
    f = SMALL_SPEC.frames
    return StreamState(0, -1, False, np.zeros(f, np.int64), np.full(f, stamp, np.int64), refused_seq)


def _counting_checks(monkeypatch) -> list[int]:
    calls = [0]
    real = streams_mod.holds_nothing

    def counted(state, intact_from):
        calls[0] += 1
        return real(state, intact_from)
    monkeypatch.setattr(streams_mod, "holds_nothing", counted)
    return calls


def test_table_of_100k_distinct_streams_stays_capped_at_constant_cost(monkeypatch):
    checks = _counting_checks(monkeypatch)
    table, n = StreamTable(max_streams=256), 100_000
    for sid in range(n):
        # Half hold a live slot (never swept, only evicted), half hold nothing (swept).
        table.put(sid, _state(stamp=sid if sid % 2 else -1), intact_from=0)
        assert len(table) <= 256
    assert checks[0] <= 2 * n  # each sweep is paid for by as many puts as the table held
    assert table.evicted + table.pruned + len(table) == n
    assert table.pruned > 0 and table.evicted > 0


def test_shard_flooded_with_distinct_streams_stays_capped_and_keeps_its_live_writers(monkeypatch):
    checks = _counting_checks(monkeypatch)
    shard = ReplayShard(SMALL_SPEC, ReplayConfig(capacity=2000, min_size_to_sample=1), max_streams=64)
    honest = make_streams(SMALL_SPEC, 2, chunk_length=4, max_episode=30)
    n = 3000
    for i in range(n):
        shard.insert_chunk(_one_record(10**9 + i, first=i % 3 == 0))
        assert len(shard.streams) <= 64
        if i % 20 == 0:
            for src in honest:
                ack = shard.insert_chunk(src.next_chunk())
                assert ack.dropped == 0 and not ack.duplicate  # its state was never forgotten
    assert checks[0] <= 2 * (n + 2 * n // 20)
    stats = shard.stats()
    assert stats["streams"] <= 64 and stats["streams_pruned"] > 0 and stats["streams_evicted"] > 0


def test_streams_that_stored_nothing_are_pruned_before_the_ring_wraps():
    shard = small_shard(capacity=5000)
    for i in range(500):
        ack = shard.insert_chunk(_one_record(i, first=False))
        assert ack.stored == 0 and ack.dropped == 1
    assert shard.ring.counter == 0 and len(shard.streams) <= 2
    assert shard.stats()["streams_pruned"] >= 498


def test_streams_idle_past_the_rings_oldest_entry_are_pruned():
    shard = small_shard(capacity=100)
    idle, busy = make_streams(SMALL_SPEC, 2, chunk_length=5, max_episode=30)
    shard.insert_chunk(idle.next_chunk())
    for _ in range(30):  # 150 records: the idle stream's slots are overwritten
        shard.insert_chunk(busy.next_chunk())
    assert idle.stream_id not in shard.streams and busy.stream_id in shard.streams


def test_a_stream_waiting_for_a_refused_seq_is_not_swept():
    table = StreamTable(max_streams=8)
    table.put(1, _state(stamp=-1, refused_seq=5), intact_from=0)
    table.put(2, _state(stamp=-1), intact_from=0)
    assert table.sweep(intact_from=0) == 1 and list(table) == [1]


def test_least_recently_used_stream_is_evicted_first():
    table = StreamTable(max_streams=3)
    for sid in (1, 2, 3):
        table.put(sid, _state(stamp=10), intact_from=0)
    table.put(1, _state(stamp=11), intact_from=0)  # 1 is now the most recent
    table.put(4, _state(stamp=12), intact_from=0)
    assert list(table) == [3, 1, 4] and table.evicted == 1


def test_max_streams_must_be_positive():
    with pytest.raises(ConfigError, match=r"max_streams \(0\)"):
        StreamTable(max_streams=0)


def _chunk_like(src_chunk: StepChunk, seq: int) -> StepChunk:
    return src_chunk._replace(seq=seq)


@pytest.mark.parametrize("when", ["mid_stream", "first_chunk"])
def test_seq_2_63_minus_1_does_not_make_later_chunks_duplicates(when):
    shard = small_shard(capacity=500)
    src = make_streams(SMALL_SPEC, 1, chunk_length=4, max_episode=6)[0]
    chunks = [src.next_chunk() for _ in range(12)]
    if when == "mid_stream":
        for chunk in chunks[:2]:
            shard.insert_chunk(chunk)
        rest = chunks[2:]
    else:
        rest = chunks
    shard.insert_chunk(_chunk_like(chunks[0], SEQ_MAX))  # a confused or hostile sender
    acks = [shard.insert_chunk(chunk) for chunk in rest]
    assert not any(ack.duplicate for ack in acks)
    assert shard.streams[src.stream_id].last_seq == rest[-1].seq
    assert shard.counts["stream_restarts"] == 1
    assert sum(ack.stored for ack in acks[1:]) == sum(int(np.count_nonzero(~c.first)) for c in rest[1:])


def test_a_seq_within_the_window_is_a_retry_and_one_further_behind_restarts_the_stream():
    shard = small_shard(capacity=500)
    chunk = make_streams(SMALL_SPEC, 1, chunk_length=3, max_episode=6)[0].next_chunk()
    shard.insert_chunk(chunk)
    shard.insert_chunk(_chunk_like(chunk, 10))  # a gap: stored from its first record
    assert shard.insert_chunk(_chunk_like(chunk, 3)).duplicate  # a late retry
    shard.insert_chunk(_chunk_like(chunk, 15 + DUPLICATE_WINDOW))
    ack = shard.insert_chunk(_chunk_like(chunk, 15))  # DUPLICATE_WINDOW behind: started over
    assert not ack.duplicate and ack.stored == np.count_nonzero(~chunk.first)
    assert shard.counts["stream_restarts"] == 1
    assert shard.streams[chunk.stream_id].last_seq == 15


def _ended_then_continued() -> tuple[StepChunk, StepChunk]:
    """A chunk whose last record ends its episode, and a next chunk that continues it."""
    n, s = 3, SMALL_SPEC
    base = dict(frame=np.zeros((n, s.image_size, s.image_size), np.uint8),
                vector=np.zeros((n, s.vector_dim), np.float32), action=np.zeros((n, s.action_dim), np.float32),
                reward=np.zeros(n, np.float32), truncated=np.zeros(n, bool), policy_version=np.zeros(n, np.int64))
    ends = StepChunk(77, 0, first=np.array([True, False, False]),
                     terminated=np.array([False, False, True]), **base)
    continues = StepChunk(77, 1, first=np.zeros(n, bool), terminated=np.zeros(n, bool), **base)
    return ends, continues


def _wrong_shape(data: bytes) -> bytes:
    msg = msgpack.unpackb(data, raw=False)
    msg["frame"][1] = [msg["frame"][1][0], 3, 3]
    return msgpack.packb(msg, use_bin_type=True)


def test_each_rejection_is_counted_by_reason_and_changes_nothing():
    shard = small_shard(capacity=300)
    src = make_streams(SMALL_SPEC, 2, chunk_length=5, max_episode=8)
    for _ in range(4):
        for s in src:
            shard.insert_chunk(s.next_chunk())
    ends, continues = _ended_then_continued()
    shard.insert_chunk(ends)
    valid = encode_chunk(src[0].next_chunk(), SMALL_SPEC)
    bad = [("wire", WireError, valid[: len(valid) // 2]),
           ("wire", WireError, b"\x00garbage"),
           ("spec", SpecError, _wrong_shape(valid)),
           ("stream", WireError, encode_chunk(continues, SMALL_SPEC))]
    shard.rng = np.random.default_rng(5)
    sample_before = shard.sample(16)
    before = fingerprint(shard)
    for reason, error, data in bad:
        with pytest.raises(error):
            shard.insert(data)
        assert fingerprint(shard) == before, reason
    with pytest.raises(WireError):
        shard.insert_chunk(continues)  # the in-process path counts the same way
    assert fingerprint(shard) == before
    counts = shard.stats()
    assert counts["rejected"] == 5
    assert (counts["rejected_wire"], counts["rejected_spec"], counts["rejected_stream"]) == (2, 1, 2)
    shard.rng = np.random.default_rng(5)
    again = shard.sample(16)
    assert all(np.array_equal(a, b) for a, b in zip(sample_before, again))
