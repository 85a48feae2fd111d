"""The replay service through real Ray on loopback: two shard actors and the client."""
import numpy as np
import pytest
import ray

from common.codec import encode_chunk
from common.config import ReplayConfig, SamplerKind
from common.errors import WireError
from deploy.replay_ray import RAY, ray_system_config
from replay.client import ReplayClient
from replay.shard_writer import writer_for
from replay.shard import KEY_SHARD_SHIFT, ReplayShard
from tests.unit.replay_support import SMALL_SPEC, assert_batch_matches, expected_by_id, make_streams

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _system_config=ray_system_config(SMALL_SPEC, 8))
    yield
    ray.shutdown()


def _shards(n=2):
    cfg = ReplayConfig(num_shards=n, capacity=400, min_size_to_sample=8,
                       sampler=SamplerKind.PRIORITIZED)
    remote = ray.remote(ReplayShard).options(num_cpus=0)
    return [remote.remote(SMALL_SPEC, cfg, i, 0) for i in range(cfg.num_shards)]


def test_two_shards_through_ray(ray_local):
    shards = _shards()
    client = ReplayClient(shards, SMALL_SPEC, batch_size=32, prefetch=4, transport=RAY)
    streams = make_streams(SMALL_SPEC, 4, chunk_length=8, max_episode=10)
    writers = [writer_for(shards, i, SMALL_SPEC, transport=RAY) for i in range(4)]
    for _ in range(12):
        for w, s in zip(writers, streams):
            w.send_chunk(s.next_chunk())
    for w in writers:
        w.flush()
    sizes = client.sizes()
    assert min(sizes) > 0 and sum(sizes) == sum(w.stored for w in writers)
    expected = expected_by_id(streams)
    owners = []
    for _ in range(12):
        batch = client.sample()
        assert batch is not None
        assert_batch_matches(batch, expected)
        owners.append(batch.key >> KEY_SHARD_SHIFT)
        client.update_priorities(batch.key, np.abs(batch.reward))
    assert set(np.concatenate(owners).tolist()) == {0, 1}
    stats = ray.get([s.stats.remote() for s in shards])
    assert sum(s["priority_updates"] for s in stats) > 0


def test_retry_and_bad_message_leave_shard_consistent(ray_local):
    (shard,) = _shards(1)
    src = make_streams(SMALL_SPEC, 1, chunk_length=8, max_episode=10, seed=7)[0]
    data = encode_chunk(src.next_chunk(), SMALL_SPEC)
    first = ray.get(shard.insert.remote(data))
    retry = ray.get(shard.insert.remote(data))
    assert not first.duplicate and retry.duplicate and retry.stored == 0
    size = ray.get(shard.size.remote())
    with pytest.raises(WireError):
        ray.get(shard.insert.remote(data[: len(data) // 2]))
    assert ray.get(shard.size.remote()) == size
    assert ray.get(shard.stats.remote())["rejected"] == 1


def test_cached_sampling_through_ray_while_the_rings_turn_over(ray_local):
    """Frame-cache batches from two Ray shards with four requests in flight, inserts between
    samples: every batch read from the cache equals what the env produced."""
    import torch

    from learner.frame_cache import FrameCache
    from tests.unit.test_frame_cache import _pixels

    shards = _shards()
    client = ReplayClient(shards, SMALL_SPEC, batch_size=32, prefetch=4, cache_capacity=400,
                          transport=RAY)
    cache = FrameCache(SMALL_SPEC, 800, torch.device("cpu"))
    streams = make_streams(SMALL_SPEC, 4, chunk_length=8, max_episode=10, seed=11)
    writers = [writer_for(shards, i, SMALL_SPEC, transport=RAY) for i in range(4)]
    batches = 0
    for _ in range(40):  # 1,280 records through 2 x 400 slots
        for w, s in zip(writers, streams):
            w.send_chunk(s.next_chunk())
        for w in writers:
            w.flush()
        batch = client.sample()
        if batch is not None:
            assert_batch_matches(_pixels(cache, batch), expected_by_id(streams))
            batches += 1
    stats = ray.get([s.stats.remote() for s in shards])
    assert batches >= 35 and min(s["slots_written"] for s in stats) > 400
    assert client.stats()["cache_frames_received"] < batches * 32 * (SMALL_SPEC.frames + 1)
