"""Shards that die: the client and the writer go on with the live shards and count the loss."""
import time

import numpy as np

from common.codec import encode_chunk
from common.config import SamplerKind
from common.errors import ShardUnavailable
from replay.client import ReplayClient
from replay.transport import LocalShard
from replay.shard_writer import ShardWriter
from replay.transport import LocalRef
from replay.health import ShardHealth
from replay.shard import KEY_SHARD_SHIFT
from tests.unit.replay_support import (SMALL_SPEC, assert_batch_matches, expected_by_id,
                                       make_streams, small_shard)

BACKOFF = 0.02


class FlakyShard:
    """A shard handle that fails every call with ShardUnavailable while ``down``, as a dead
    or restarting Ray actor does; ``restart`` swaps in a new shard, as Ray's restart does."""

    def __init__(self, shard):
        self.shard, self.down, self.calls_while_down = shard, False, 0

    def restart(self, shard):
        self.shard, self.down = shard, False

    def __getattr__(self, name):
        flaky = self

        class _Method:
            def remote(self, *args):
                if flaky.down:
                    flaky.calls_while_down += 1
                    return LocalRef(_raise, (name,))
                return getattr(LocalShard(flaky.shard), name).remote(*args)
        return _Method()


def _raise(name):
    raise ShardUnavailable(f"shard died before answering {name}")


def _filled_client(sampler=SamplerKind.UNIFORM, prefetch=3):
    shards = [small_shard(capacity=300, shard_index=i, sampler=sampler) for i in range(2)]
    streams = make_streams(SMALL_SPEC, 2, chunk_length=10, max_episode=30)
    for _ in range(6):
        for shard, stream in zip(shards, streams):
            shard.insert_chunk(stream.next_chunk())
    handles = [FlakyShard(s) for s in shards]
    client = ReplayClient(handles, SMALL_SPEC, batch_size=16, prefetch=prefetch,
                          size_refresh_every=2, down_backoff_s=BACKOFF)
    client.sizes()
    return client, handles, expected_by_id(streams)


def _owners(batch):
    return set((batch.key >> KEY_SHARD_SHIFT).tolist())


def test_sample_goes_on_with_live_shards_and_a_dead_shard_rejoins():
    client, handles, expected = _filled_client()
    assert {0, 1} == set().union(*(_owners(client.sample()) for _ in range(30)))
    handles[0].down = True
    replies = [client.sample() for _ in range(40)]  # never raises
    # The first replies may be requests that shard 0 answered before it died.
    batches = [b for b in replies[client.prefetch:] if b is not None]
    assert len(batches) >= 30 and all(_owners(b) == {1} for b in batches)
    for batch in batches[:3]:
        assert_batch_matches(batch, expected)
    stats = client.stats()
    assert stats["shard_failures"] == 1 and stats["shards_unavailable"] == 1
    assert stats["failed_samples"] <= client.prefetch  # only requests sent before it was known down
    assert handles[0].calls_while_down <= client.prefetch + 1 + 2  # those, a size call, probes
    handles[0].restart(handles[0].shard)
    time.sleep(BACKOFF * 1.5)
    owners = set().union(*(_owners(b) for b in (client.sample() for _ in range(40)) if b is not None))
    assert owners == {0, 1}
    assert client.stats()["shard_rejoins"] == 1 and client.stats()["shards_unavailable"] == 0


def test_every_shard_down_gives_none_without_calls_until_the_back_off_passes():
    client, handles, _ = _filled_client(prefetch=2)
    for h in handles:
        h.down = True
    assert all(client.sample() is None for _ in range(10))
    calls = sum(h.calls_while_down for h in handles)
    assert all(client.sample() is None for _ in range(100))
    assert sum(h.calls_while_down for h in handles) == calls  # no probe before the back-off


def test_priorities_for_a_dead_shard_are_dropped_and_counted():
    client, handles, _ = _filled_client(sampler=SamplerKind.PRIORITIZED)
    batch = client.sample()
    keys = np.concatenate([batch.key, np.arange(5, dtype=np.int64)])  # plus 5 keys of shard 0
    handles[0].down = True
    client.sizes()  # learns that shard 0 is down
    client.update_priorities(keys, np.ones(keys.size))
    assert client.stats()["dropped_priority_keys"] == int(np.count_nonzero(keys >> KEY_SHARD_SHIFT == 0))


def test_a_shard_error_is_not_a_dead_shard():
    shard = small_shard()
    writer = ShardWriter(LocalShard(shard), SMALL_SPEC, window=1)
    src = make_streams(SMALL_SPEC, 1)[0]
    data = encode_chunk(src.next_chunk(), SMALL_SPEC)
    writer.send(data[: len(data) // 2])
    writer.send(data)  # the rejected chunk was dropped: no wedge, no error
    writer.flush()
    assert writer.health.up and writer.lost_chunks == 0 and writer.rejected["wire"] == 1
    assert shard.streams[src.stream_id].last_seq == 0


def test_writer_counts_losses_without_blocking_and_resumes_into_the_restored_shard(tmp_path):
    handle = FlakyShard(small_shard(capacity=400))
    writer = ShardWriter(handle, SMALL_SPEC, window=2, down_backoff_s=BACKOFF)
    src = make_streams(SMALL_SPEC, 1, chunk_length=6, max_episode=9)[0]
    for _ in range(5):
        writer.send_chunk(src.next_chunk())
    writer.flush()
    handle.shard.save(tmp_path)
    saved_seq = src.seq - 1
    for _ in range(3):
        writer.send_chunk(src.next_chunk())
    handle.down = True
    t0 = time.perf_counter()
    for _ in range(20):
        writer.send_chunk(src.next_chunk())
    assert time.perf_counter() - t0 < 0.5, "sends to a dead shard blocked the env loop"
    assert writer.lost_chunks >= 20 - writer.window and writer.health.failures == 1
    restored = small_shard(capacity=400)
    restored.restore(tmp_path)  # what RestoringShard does when Ray restarts it
    assert restored.streams[src.stream_id].last_seq == saved_seq
    handle.restart(restored)
    time.sleep(BACKOFF * 1.5)
    for _ in range(6):
        writer.send_chunk(src.next_chunk())
    writer.flush()
    assert writer.health.rejoins == 1 and writer.lost_chunks == 20
    assert writer.health.up and writer.health.failures == 1  # old incarnation's late failures
    state = restored.streams[src.stream_id]
    assert state.last_seq == src.seq - 1
    assert restored.counts["dropped_records"] > 0  # the seq gap restarted the stream at a first record
    batch = restored.sample(64)
    assert_batch_matches(batch, src.expected)  # restored and resumed transitions are byte-exact


def test_restore_forgets_a_refused_seq_so_the_stream_is_not_refused_forever(tmp_path):
    shard = small_shard(capacity=300, samples_per_insert=1.0, error_buffer=12.0, min_size_to_sample=4)
    src = make_streams(SMALL_SPEC, 1, chunk_length=5, max_episode=50)[0]
    acks = [shard.insert_chunk(src.next_chunk()) for _ in range(6)]
    assert acks[-1].rate_limited and shard.streams[src.stream_id].refused_seq >= 0
    shard.save(tmp_path)
    restored = small_shard(capacity=300, samples_per_insert=1.0, error_buffer=12.0, min_size_to_sample=4)
    restored.restore(tmp_path)
    while restored.limiter.can_sample(restored.size()):
        restored.sample(4)
    later = restored.insert_chunk(src.next_chunk())  # the refused chunks died with the old shard
    assert not later.rate_limited and not later.duplicate


def test_health_probes_after_a_doubling_back_off():
    now = [0.0]
    handle = FlakyShard(small_shard())
    handle.down = True
    health = ShardHealth(handle, 0, "test", backoff_s=1.0, max_backoff_s=3.0, clock=lambda: now[0])
    health.failed(ShardUnavailable("dead"), health.epoch)
    probes = []
    for t in np.arange(0.0, 10.0, 0.25):
        now[0] = float(t)
        before = handle.calls_while_down
        assert not health.available()
        if handle.calls_while_down > before:
            probes.append(float(t))
    assert probes == [1.0, 3.0, 6.0, 9.0]  # waits 1, 2, then capped at 3
    handle.restart(handle.shard)
    now[0] = 12.0
    assert health.available() and health.rejoins == 1 and health.down_seconds == 12.0
