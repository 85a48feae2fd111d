"""ShardWriter: a chunk the shard rejects is dropped and counted, and the writer moves on."""
import logging

import msgpack
import numpy as np
import pytest

from common.codec import encode_chunk
from replay import shard_writer as writer_mod
from replay.transport import LocalShard
from replay.shard_writer import ShardWriter
from tests.unit.replay_support import LearnerAfterRefusal, SMALL_SPEC, make_streams, small_shard


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _wrong_shape(data: bytes) -> bytes:
    msg = msgpack.unpackb(data, raw=False)
    msg["frame"][1] = [msg["frame"][1][0], 3, 3]
    return msgpack.packb(msg, use_bin_type=True)


def _send_with_one_bad(writer, src, bad_at, corrupt, count=10):
    for k in range(count):
        data = encode_chunk(src.next_chunk(), SMALL_SPEC)
        writer.send(corrupt(data) if k == bad_at else data)
    writer.flush()


@pytest.mark.parametrize("window", [1, 2, 4])
@pytest.mark.parametrize("reason, corrupt", [("wire", _truncated), ("spec", _wrong_shape)])
def test_a_rejected_chunk_is_dropped_and_later_chunks_are_delivered(window, reason, corrupt, caplog):
    shard = small_shard(capacity=400)
    writer = ShardWriter(LocalShard(shard), SMALL_SPEC, window=window, shard_index=3)
    src = make_streams(SMALL_SPEC, 1, chunk_length=5, max_episode=6)[0]
    with caplog.at_level(logging.WARNING, logger="replay.shard_writer"):
        _send_with_one_bad(writer, src, bad_at=3, corrupt=corrupt)
    assert writer.rejected[reason] == 1 and writer.rejected_chunks == 1
    assert writer.stats()["rejected_chunks"] == 1 and writer.stats()[f"rejected_chunks_{reason}"] == 1
    assert shard.streams[src.stream_id].last_seq == 9  # chunks 4..9 arrived
    assert writer.stored == shard.counts["inserts"] > 0
    assert writer.lost_chunks == 0 and writer.health.up
    lines = [r.getMessage() for r in caplog.records if "writer_chunk_rejected" in r.getMessage()]
    assert len(lines) == 1 and f"shard=3 reason={reason} rejected=1" in lines[0]


def test_a_rejected_chunk_behind_a_rate_limited_one_is_dropped_and_the_rest_resent_in_order():
    shard = small_shard(capacity=300, samples_per_insert=1.0, error_buffer=12.0, min_size_to_sample=4)
    writer = ShardWriter(LearnerAfterRefusal(shard), SMALL_SPEC, window=3)
    src = make_streams(SMALL_SPEC, 1, chunk_length=5, max_episode=50)[0]
    for k in range(16):
        data = encode_chunk(src.next_chunk(), SMALL_SPEC)
        writer.send(_truncated(data) if k in (4, 9) else data)
    writer.flush()
    assert writer.refusals > 0 and writer.rejected["wire"] == 2
    assert shard.streams[src.stream_id].last_seq == 15
    assert writer.stored == shard.counts["inserts"]


def test_a_chunk_that_cannot_be_encoded_is_dropped_and_counted():
    shard = small_shard()
    writer = ShardWriter(LocalShard(shard), SMALL_SPEC)
    src = make_streams(SMALL_SPEC, 1, chunk_length=5)[0]
    chunk = src.next_chunk()
    bad = chunk._replace(action=np.full_like(chunk.action, np.nan))
    writer.send_chunk(bad)
    writer.send_chunk(src.next_chunk())
    writer.flush()
    assert writer.rejected == {"wire": 0, "spec": 0, "encode": 1}
    assert shard.streams[src.stream_id].last_seq == 1


def test_a_long_rate_limited_wait_warns_naming_the_shard(monkeypatch, caplog):
    monkeypatch.setattr(writer_mod, "BLOCKED_WARN_EVERY_S", 0.0)
    shard = small_shard(capacity=300, samples_per_insert=1.0, error_buffer=12.0, min_size_to_sample=4)
    writer = ShardWriter(LearnerAfterRefusal(shard), SMALL_SPEC, window=2, shard_index=1)
    src = make_streams(SMALL_SPEC, 1, chunk_length=5, max_episode=50)[0]
    with caplog.at_level(logging.WARNING, logger="replay.shard_writer"):
        for _ in range(10):
            writer.send_chunk(src.next_chunk())
        writer.flush()
    assert writer.refusals > 0 and writer.rejected_chunks == 0
    assert any("event=writer_blocked shard=1 reason=rate_limited" in r.getMessage() for r in caplog.records)
    assert shard.streams[src.stream_id].last_seq == 9
