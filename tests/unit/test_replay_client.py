"""ReplayClient over in-process shards (LocalShard): routing, sampling, resend, priorities."""
import numpy as np
import pytest

from common.codec import encode_chunk
from common.config import SamplerKind
from replay.client import ReplayClient
from replay.shard_writer import writer_for
from replay.transport import LocalShard, shard_for
from replay.shard import KEY_SHARD_SHIFT
from tests.unit.replay_support import (SMALL_SPEC, LearnerAfterRefusal, assert_batch_matches,
                                       expected_by_id, make_streams, small_shard)


def _client(num_shards=2, prefetch=3, **cfg):
    shards = [small_shard(capacity=cfg.pop("capacity", 300), shard_index=i, **cfg)
              for i in range(num_shards)]
    return ReplayClient([LocalShard(s) for s in shards], SMALL_SPEC, batch_size=16,
                        prefetch=prefetch), shards


def test_each_actor_writes_to_one_shard_and_episodes_stay_whole():
    client, shards = _client()
    streams = make_streams(SMALL_SPEC, 4, chunk_length=6, max_episode=8)
    writers = [writer_for(client.shards, i, SMALL_SPEC) for i in range(4)]
    for _ in range(10):
        for w, s in zip(writers, streams):
            w.send_chunk(s.next_chunk())
    for w in writers:
        w.flush()
    assert [shard_for(i, 2) for i in range(4)] == [w.health.shard_index for w in writers] == [0, 1, 0, 1]
    assert {sid for sid in shards[0].streams} == {streams[0].stream_id, streams[2].stream_id}
    assert sum(w.stored for w in writers) == sum(s.size() for s in shards) > 0
    expected = expected_by_id(streams)
    for _ in range(5):
        assert_batch_matches(client.sample(), expected)


def test_retried_insert_is_stored_once():
    client, shards = _client(num_shards=1)
    src = make_streams(SMALL_SPEC, 1)[0]
    data = encode_chunk(src.next_chunk(), SMALL_SPEC)
    writer = writer_for(client.shards, 0, SMALL_SPEC)
    writer.send(data)
    writer.send(data)  # what a Ray task retry does
    writer.flush()
    assert writer.duplicates == 1 and shards[0].size() == writer.stored


def test_sampling_follows_shard_sizes():
    client, shards = _client(prefetch=1)
    big, small = make_streams(SMALL_SPEC, 2, chunk_length=10, max_episode=40)
    for _ in range(24):
        shards[0].insert_chunk(big.next_chunk())
    for _ in range(3):
        shards[1].insert_chunk(small.next_chunk())
    sizes = client.sizes()
    owners = np.concatenate([client.sample().key >> KEY_SHARD_SHIFT for _ in range(300)])
    share = np.mean(owners == 0)
    assert share == pytest.approx(sizes[0] / sum(sizes), abs=0.06)


def test_sample_returns_none_until_min_size_then_batches():
    client, shards = _client(min_size_to_sample=20)
    assert client.sample() is None and client.stats()["rate_limited_samples"] >= 1
    streams = make_streams(SMALL_SPEC, 2, chunk_length=10, max_episode=40)
    for _ in range(5):
        for i, s in enumerate(streams):
            shards[i].insert_chunk(s.next_chunk())
    batches = [client.sample() for _ in range(8)]
    assert batches[-1] is not None and batches[-1].size == 16


def test_writer_resends_refused_chunks_in_order():
    shard = small_shard(capacity=300, samples_per_insert=1.0, error_buffer=12.0, min_size_to_sample=4)
    client = ReplayClient([LearnerAfterRefusal(shard)], SMALL_SPEC, batch_size=4)
    src = make_streams(SMALL_SPEC, 1, chunk_length=5, max_episode=50)[0]
    writer = writer_for(client.shards, 0, SMALL_SPEC, window=3)
    for _ in range(12):
        writer.send_chunk(src.next_chunk())
    writer.flush()
    assert writer.refusals > 0 and writer.blocked_seconds > 0
    assert shard.streams[src.stream_id].last_seq == 11
    assert shard.counts["dropped_records"] == 0  # no gap: every chunk arrived in order
    assert writer.stored == shard.counts["inserts"]


def test_update_priorities_splits_keys_by_shard():
    client, shards = _client(sampler=SamplerKind.PRIORITIZED)
    streams = make_streams(SMALL_SPEC, 2, chunk_length=10, max_episode=40)
    for _ in range(4):
        for i, s in enumerate(streams):
            shards[i].insert_chunk(s.next_chunk())
    client.sizes()
    batch = client.sample()
    client.update_priorities(batch.key, np.full(batch.size, 2.0))
    owners = batch.key >> KEY_SHARD_SHIFT
    for i, shard in enumerate(shards):
        assert shard.counts["priority_updates"] == np.unique(batch.key[owners == i]).size
    with pytest.raises(ValueError, match="out of range"):
        client.update_priorities(np.array([5 << KEY_SHARD_SHIFT]), np.ones(1))
