"""Samples-per-insert rate limiter: Reverb semantics, deadlock checks, blocked time."""
import pytest

from common.errors import RateLimiterError
from replay.rate_limiter import RateLimiter
from tests.unit.replay_support import SMALL_SPEC, make_streams, small_shard
from replay.shard import RateLimited


@pytest.mark.parametrize("kwargs,match", [
    pytest.param(dict(samples_per_insert=-1.0), r"samples_per_insert \(-1.0\)", id="negative_ratio"),
    pytest.param(dict(min_size_to_sample=0), r"min_size_to_sample \(0\)", id="zero_min_size"),
    pytest.param(dict(min_size_to_sample=100), r"min_size_to_sample \(100\) must be < capacity \(100\)",
                 id="min_size_beyond_capacity"),
    pytest.param(dict(samples_per_insert=8.0, error_buffer=4.0), r"error_buffer \(4.0\).*\(8.0\)",
                 id="buffer_below_ratio"),
    pytest.param(dict(samples_per_insert=0.5, error_buffer=0.5), r"error_buffer \(0.5\)",
                 id="buffer_below_one"),
])
def test_constructor_rejects_settings_that_would_deadlock(kwargs, match):
    args = dict(samples_per_insert=1.0, min_size_to_sample=10, error_buffer=10.0, capacity=100)
    with pytest.raises(RateLimiterError, match=match):
        RateLimiter(**{**args, **kwargs})


def test_ratio_bounds_alternate_inserts_and_samples():
    lim = RateLimiter(samples_per_insert=2.0, min_size_to_sample=5, error_buffer=4.0, capacity=100)
    assert not lim.can_sample(4) and lim.can_insert(4)  # below min size: inserts only
    lim.on_insert(5)
    assert lim.min_diff == 6.0 and lim.max_diff == 14.0 and lim.diff == 10.0
    assert lim.can_insert(5)
    lim.on_insert(2)  # diff 14
    assert not lim.can_insert(7) and lim.can_sample(7)
    lim.on_sample(7)  # diff 7
    assert lim.can_sample(7) and lim.can_insert(7)
    lim.on_sample(1)  # diff 6
    assert not lim.can_sample(7) and lim.can_insert(7)


def test_zero_ratio_only_enforces_min_size():
    lim = RateLimiter(0.0, 3, 0.0, 10)
    assert lim.can_insert(9) and not lim.can_sample(2) and lim.can_sample(3)
    lim.on_sample(10**6)
    assert lim.can_sample(3)


def test_blocked_time_is_measured_from_first_refusal_to_admission():
    now = [0.0]
    lim = RateLimiter(1.0, 1, 1.0, 10, clock=lambda: now[0])
    assert not lim.admit("sample", False)
    now[0] = 2.0
    lim.admit("sample", False)
    now[0] = 3.5
    assert lim.admit("sample", True)
    assert lim.blocked_seconds == {"insert": 0.0, "sample": 3.5}


def test_shard_refuses_then_serves_and_keeps_stream_order():
    shard = small_shard(capacity=100, samples_per_insert=1.0, error_buffer=8.0, min_size_to_sample=4)
    assert isinstance(shard.sample(4), RateLimited)
    src = make_streams(SMALL_SPEC, 1, chunk_length=5, max_episode=50)[0]
    chunks = [src.next_chunk() for _ in range(6)]
    acks = [shard.insert_chunk(c) for c in chunks[:4]]
    refused = [a.seq for a in acks if a.rate_limited]
    assert refused, "the insert side must be held back once diff exceeds max_diff"
    k = refused[0]
    later = shard.insert_chunk(chunks[k + 1])
    assert later.rate_limited  # a later seq waits for the refused one
    while not isinstance(shard.sample(4), RateLimited):
        pass
    assert not shard.insert_chunk(chunks[k]).rate_limited
    assert shard.stats()["insert_refusals"] >= 2
    assert shard.stats()["sample_blocked_seconds"] >= 0.0
