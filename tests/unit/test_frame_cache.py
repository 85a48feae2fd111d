"""The learner's frame cache: shards send each frame once, the cache gives the same batches and
the same updates as pixels, and a bad CachedBatch is refused before anything is stored."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from common.config import FrameCacheMode
from common.errors import ConfigError, SpecError, WireError
from common.types import CachedBatch, SampleBatch
from deploy import build
from deploy.presets import smoke
from learner.frame_cache import FrameCache, LazyFrameCache, use_frame_cache
from learner.td3 import TD3Learner
from replay.client import ReplayClient
from replay.transport import LocalShard
from tests.unit.learner_fixtures import params_of, small_config
from tests.unit.replay_support import (SMALL_SPEC, assert_batch_matches, expected_by_id,
                                       make_streams, small_shard)

CPU = torch.device("cpu")


def _twins(capacity=60, **cfg):
    """Two shards fed the same chunks with the same seed: one samples cached, one packed."""
    return small_shard(capacity, **cfg), small_shard(capacity, **cfg)


def _insert(shards, streams):
    for s in streams:
        chunk = s.next_chunk()
        for shard in shards:
            shard.insert_chunk(chunk)


def _pixels(cache: FrameCache, batch: CachedBatch) -> SampleBatch:
    """What the learner reads from a CachedBatch, as a numpy SampleBatch."""
    cache.store(torch.from_numpy(batch.new_rows.copy()), torch.from_numpy(batch.new_frames.copy()))
    frames = cache.gather(torch.from_numpy(batch.frame_rows)).numpy()
    f = frames.shape[1] - 1
    return SampleBatch(frames[:, :f], batch.obs_vector, batch.action, batch.reward,
                       frames[:, 1:], batch.next_vector, batch.terminated, batch.truncated,
                       batch.policy_version, batch.weight, batch.key)


def test_cached_samples_equal_packed_ones_while_the_ring_turns_over():
    cached, packed = _twins(capacity=60)
    streams = make_streams(SMALL_SPEC, 2, chunk_length=5, max_episode=9)
    cache = FrameCache(SMALL_SPEC, 60, CPU)
    sent = 0
    for _ in range(40):  # 400 records through 60 slots: every slot is overwritten
        _insert((cached, packed), streams)
        a, b = cached.sample_cached(8, cache_id=7), packed.sample_packed(8)
        got = _pixels(cache, a)
        want = b.unpack()
        for name in SampleBatch._fields:
            assert np.array_equal(getattr(got, name), getattr(want, name)), name
        sent += a.new_rows.size
    assert cached.stats()["cache_frames_sent"] == sent
    assert sent < 40 * 8 * (SMALL_SPEC.frames + 1) / 2  # far fewer than the frames sampled


def test_a_frame_travels_once_until_its_slot_is_overwritten():
    shard = small_shard(capacity=200)
    streams = make_streams(SMALL_SPEC, 1, chunk_length=10, max_episode=50)
    for _ in range(3):
        _insert([shard], streams)
    first = shard.sample_cached(64, cache_id=1)
    assert set(first.new_rows) == set(np.unique(first.frame_rows))
    for _ in range(20):  # nothing inserted: every frame is in the cache already
        assert shard.sample_cached(64, cache_id=1).new_rows.size == 0
    again = shard.sample_cached(64, cache_id=2)  # another learner: an empty copy
    assert set(again.new_rows) == set(np.unique(again.frame_rows))
    assert shard.stats()["cache_resets"] == 1


def test_a_restored_shard_sends_its_frames_again(tmp_path):
    shard = small_shard(capacity=100)
    streams = make_streams(SMALL_SPEC, 1, chunk_length=10, max_episode=50)
    for _ in range(3):
        _insert([shard], streams)
    shard.save(tmp_path)
    shard.sample_cached(32, cache_id=1)
    for _ in range(4):  # later writes reuse the stamps the checkpoint will hand out again
        _insert([shard], streams)
    while shard.sample_cached(32, cache_id=1).new_rows.size:
        pass
    shard.restore(tmp_path)
    batch = shard.sample_cached(32, cache_id=1)
    assert set(batch.new_rows) == set(np.unique(batch.frame_rows))


def test_refused_cached_sample_marks_nothing():
    shard = small_shard(capacity=100, min_size_to_sample=90)
    _insert([shard], make_streams(SMALL_SPEC, 1))
    assert shard.sample_cached(8, cache_id=1).reason == "min_size"
    assert shard.stats()["cache_frames_sent"] == 0 and (shard._cache_stamp == -1).all()


def _cached_client():
    """A client of two in-process shards of 80 slots sampling for a frame cache, and the
    streams that feed shard 0 and shard 1."""
    shards = [small_shard(capacity=80, shard_index=i) for i in range(2)]
    client = ReplayClient([LocalShard(s) for s in shards], SMALL_SPEC, batch_size=16,
                          prefetch=3, cache_capacity=80)
    return client, shards, make_streams(SMALL_SPEC, 2, chunk_length=6, max_episode=8)


def test_client_places_each_shard_in_its_own_rows_and_batches_match_the_env():
    client, shards, streams = _cached_client()
    cache = FrameCache(SMALL_SPEC, 160, CPU)
    owners = set()
    for _ in range(30):
        for i, s in enumerate(streams):
            shards[i].insert_chunk(s.next_chunk())
        batch = client.sample()
        assert isinstance(batch, CachedBatch) and batch.cache_rows == 160
        owner = batch.frame_rows // 80
        assert (owner == (batch.key >> 48)[:, None]).all()  # rows of the shard that sampled
        owners |= set(np.unique(owner))
        assert_batch_matches(_pixels(cache, batch), expected_by_id(streams))
    assert owners == {0, 1}
    in_flight = sum(ref.result().new_rows.size for _, ref, _ in client._inflight)
    assert client.stats()["cache_frames_received"] + in_flight == sum(
        s.stats()["cache_frames_sent"] for s in shards)


def test_client_refuses_a_shard_of_another_capacity():
    shard = small_shard(capacity=90)
    _insert([shard], make_streams(SMALL_SPEC, 1))
    client = ReplayClient([LocalShard(shard)], SMALL_SPEC, batch_size=4, cache_capacity=80)
    with pytest.raises(WireError, match=r"shard 0 capacity \(90\) != .* \(80\)"):
        client.sample()
    with pytest.raises(ConfigError, match=r"cache_capacity \(-1\)"):
        ReplayClient([LocalShard(shard)], SMALL_SPEC, batch_size=4, cache_capacity=-1)


def _learner_batches(count):
    """CachedBatches and the equal pixel batches, from twin shards with small learner specs."""
    from tests.unit.learner_fixtures import SMALL_SPEC as LEARNER_SPEC
    from common.config import ReplayConfig
    from replay.shard import ReplayShard
    cfg = ReplayConfig(capacity=120, min_size_to_sample=1)
    cached, packed = ReplayShard(LEARNER_SPEC, cfg), ReplayShard(LEARNER_SPEC, cfg)
    streams = make_streams(LEARNER_SPEC, 2, chunk_length=8, max_episode=20)
    out = []
    for _ in range(count):
        _insert((cached, packed), streams)
        out.append((cached.sample_cached(16, cache_id=3), packed.sample_packed(16).unpack()))
    return LEARNER_SPEC, out


def test_learner_fed_cached_batches_makes_the_updates_of_pixel_batches():
    spec, batches = _learner_batches(6)
    a, b = TD3Learner(spec, small_config(), 0), TD3Learner(spec, small_config(), 0)
    for cached, pixels in batches:
        sa, sb = a.update(cached), b.update(pixels)
        assert sa.critic_loss == pytest.approx(sb.critic_loss, rel=1e-6)
    for name, value in params_of(a.nets.critic).items():
        torch.testing.assert_close(value, params_of(b.nets.critic)[name], rtol=0, atol=0)
    assert a.frame_cache.rows == 120


@pytest.mark.parametrize("field, bad, match", [
    ("frame_rows", lambda b: b.frame_rows + 1000, r"frame_rows: rows \[\d+, \d+\] outside"),
    ("frame_rows", lambda b: b.frame_rows.astype(np.int32), r"frame_rows: expected int64"),
    ("new_rows", lambda b: np.concatenate([b.new_rows, b.new_rows[:1]]),
     r"new_rows: rows must be distinct, \[\d+\] repeat"),
    ("new_frames", lambda b: b.new_frames[:, :-1], r"new_frames: expected uint8"),
    ("cache_rows", lambda b: 999, r"cache_rows \(999\) != the learner's frame cache \(120\)"),
    ("obs_vector", lambda b: np.full_like(b.obs_vector, np.nan), r"vector"),
])
def test_a_bad_cached_batch_is_refused_and_the_cache_is_unchanged(field, bad, match):
    spec, batches = _learner_batches(2)
    learner = TD3Learner(spec, small_config(), 0)
    learner.update(batches[0][0])
    before = learner.frame_cache.frames.clone()
    broken = batches[1][0]._replace(**{field: bad(batches[1][0])})
    with pytest.raises(SpecError, match=match):
        learner.update(broken)
    assert torch.equal(learner.frame_cache.frames, before)
    learner.update(batches[1][0])  # the good batch still goes through


def test_first_cached_batch_sizes_the_cache_and_must_be_valid():
    spec, batches = _learner_batches(1)
    holder = LazyFrameCache(spec, CPU)
    with pytest.raises(SpecError, match=r"cache_rows \(0\) must be an int >= 1"):
        holder.checked(batches[0][0]._replace(cache_rows=0))
    assert holder.cache is None
    assert holder.checked(batches[0][0]).rows == 120


def test_frame_cache_choice():
    assert use_frame_cache(FrameCacheMode.DEVICE, CPU, SMALL_SPEC, 10)
    assert not use_frame_cache(FrameCacheMode.OFF, CPU, SMALL_SPEC, 10)
    # a CPU learner gathers in place
    assert not use_frame_cache(FrameCacheMode.AUTO, CPU, SMALL_SPEC, 10)
    cfg = smoke()
    bad = replace(cfg, learner=replace(cfg.learner, execution=replace(cfg.learner.execution,
                                                                      frame_cache="gpu")))
    with pytest.raises(ConfigError,
                       match=r"learner.execution.frame_cache \('gpu'\) must be one of"):
        build.validate(bad)


def _assert_cache_holds_what_shards_sent(cache: FrameCache, client, shards, capacity: int) -> None:
    """Every frame a shard counts as sent to the cache is in the cache, byte for byte, once
    the replies still in flight (LocalShard answers at once) are stored too."""
    for index, ref, _ in client._inflight:
        reply = ref.result()
        if isinstance(reply, CachedBatch):
            _pixels(cache, client._to_cache_rows(index, reply))
    client._inflight = []
    checked = 0
    for index, shard in enumerate(shards):
        sent = np.flatnonzero(shard._cache_stamp == shard.ring.stamp)
        held = cache.frames[torch.from_numpy(sent + index * capacity)].numpy()
        assert np.array_equal(held, shard.ring.frame[sent]), f"shard {index}"
        checked += sent.size
    assert checked > 0


def test_client_reset_drops_replies_for_the_old_copy_and_starts_a_new_one():
    client, shards, streams = _cached_client()
    old = FrameCache(SMALL_SPEC, 160, CPU)
    for _ in range(5):
        for i, s in enumerate(streams):
            shards[i].insert_chunk(s.next_chunk())
        _pixels(old, client.sample())
    old_id = client.cache_id
    client.reset_cache()  # e.g. the learner lost a batch and dropped its cache
    assert client.cache_id != old_id and client.stats()["cache_resets"] == 1
    fresh = FrameCache(SMALL_SPEC, 160, CPU)
    for _ in range(10):
        for i, s in enumerate(streams):
            shards[i].insert_chunk(s.next_chunk())
        assert_batch_matches(_pixels(fresh, client.sample()), expected_by_id(streams))
    _assert_cache_holds_what_shards_sent(fresh, client, shards, 80)


def test_a_learner_failing_mid_batch_restarts_its_cache_and_its_shards(monkeypatch):
    from common.metrics_sink import NullSink
    from deploy.components import LearnerService
    from learner.loop import LearnerLoop
    from tests.unit.learner_fixtures import SMALL_SPEC as LEARNER_SPEC
    from common.config import ReplayConfig
    from replay.shard import ReplayShard

    cfg = ReplayConfig(capacity=100, min_size_to_sample=16)
    shards = [ReplayShard(LEARNER_SPEC, cfg, shard_index=i) for i in range(2)]
    streams = make_streams(LEARNER_SPEC, 2, chunk_length=8, max_episode=20)
    for _ in range(4):
        for shard, stream in zip(shards, streams):
            shard.insert_chunk(stream.next_chunk())
    actor = LearnerService.__new__(LearnerService)  # its parts, without a run config or run dir
    actor.learner = TD3Learner(LEARNER_SPEC, small_config(), 0)
    actor.client = ReplayClient([LocalShard(s) for s in shards], LEARNER_SPEC, batch_size=16,
                                prefetch=2, cache_capacity=100)
    actor.loop = LearnerLoop(actor.learner, actor.client.sample, lambda snapshot: None, 1000)
    actor.metrics, actor.frame_cache_on = NullSink(), True
    actor.run_updates(3, 30.0)
    stores = {"calls": 0}
    real_store = FrameCache.store

    def store_fails_once(self, rows, frames):
        stores["calls"] += 1
        if stores["calls"] == 1:
            raise RuntimeError("CUDA error: out of memory")  # after the batch was taken
        real_store(self, rows, frames)

    monkeypatch.setattr(FrameCache, "store", store_fails_once)
    for shard, stream in zip(shards, streams):  # new frames for the next batches
        shard.insert_chunk(stream.next_chunk())
    with pytest.raises(RuntimeError, match="out of memory"):
        actor.run_updates(3, 30.0)
    assert actor.learner.frame_cache is None and actor.client.cache_resets == 1
    report = actor.run_updates(6, 30.0)
    assert report.updates == 6
    _assert_cache_holds_what_shards_sent(actor.learner.frame_cache, actor.client,
                                         shards, 100)
