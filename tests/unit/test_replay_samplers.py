"""Sum tree, prioritized and uniform samplers, and priority updates through the shard."""
import numpy as np
import pytest

from common.config import SamplerKind
from common.errors import ConfigError
from replay.samplers import PrioritizedSampler, SumTree, UniformSampler
from replay.shard import KEY_SHARD_SHIFT
from tests.unit.replay_support import SMALL_SPEC, make_streams, small_shard


def test_sum_tree_total_and_prefix_lookup():
    tree = SumTree(10)
    values = np.arange(10, dtype=np.float64)
    tree.set(np.arange(10), values)
    assert tree.total == values.sum()
    cum = np.cumsum(values)
    mass = np.array([0.0, 0.5, 1.0, 2.99, 3.0, 44.9])
    assert tree.find(mass).tolist() == np.searchsorted(cum, mass, side="right").tolist()
    tree.set(np.array([9, 3]), np.array([0.0, 7.0]))
    assert tree.total == values.sum() - 9 - 3 + 7


def test_sum_tree_never_returns_zero_leaves_at_the_edges():
    tree = SumTree(8)
    tree.set(np.array([2, 5]), np.array([1.0, 2.0]))
    found = tree.find(np.array([0.0, 0.999999, 1.0, 2.9999999, np.nextafter(3.0, 0)]))
    assert set(found.tolist()) <= {2, 5}


def test_prioritized_draws_in_proportion_and_weights_correct():
    valid = np.zeros(4, bool)
    sampler = PrioritizedSampler(4, alpha=1.0, beta=1.0, eps=1e-6, num_valid=lambda: 3)
    slots = np.array([0, 1, 3])
    sampler.add(slots)
    sampler.update(slots, np.array([1.0, 3.0, 6.0]) - 1e-6)
    rng = np.random.default_rng(0)
    drawn, weight = sampler.sample(rng, 100_000)
    freq = np.bincount(drawn, minlength=4) / drawn.size
    np.testing.assert_allclose(freq, [0.1, 0.3, 0.0, 0.6], atol=0.01)
    by_slot = {int(s): float(w) for s, w in zip(drawn, weight)}
    np.testing.assert_allclose([by_slot[0], by_slot[1], by_slot[3]], [1.0, 1 / 3, 1 / 6], rtol=1e-5)
    sampler.remove(np.array([3]))
    drawn, _ = sampler.sample(rng, 1000)
    assert 3 not in drawn and valid.size == 4


@pytest.mark.parametrize("name,kwargs", [
    ("priority_alpha", dict(alpha=1.5, beta=0.4, eps=1e-6)),
    ("priority_beta", dict(alpha=0.6, beta=-0.1, eps=1e-6)),
    ("priority_eps", dict(alpha=0.6, beta=0.4, eps=0.0)),
])
def test_prioritized_rejects_bad_settings(name, kwargs):
    with pytest.raises(ConfigError, match=name):
        PrioritizedSampler(8, num_valid=lambda: 0, **kwargs)


def test_uniform_draws_only_valid_slots_uniformly():
    valid = np.zeros(100, bool)
    valid[::3] = True
    sampler = UniformSampler(valid, lambda: 100, lambda: int(valid.sum()))
    drawn, weight = sampler.sample(np.random.default_rng(1), 34_000)
    assert valid[drawn].all() and (weight == 1).all()
    counts = np.bincount(drawn, minlength=100)[valid]
    assert counts.min() > 700 and counts.max() < 1300


def _filled_prioritized_shard(index=0):
    shard = small_shard(capacity=80, shard_index=index, sampler=SamplerKind.PRIORITIZED,
                        priority_alpha=1.0, priority_beta=1.0)
    src = make_streams(SMALL_SPEC, 1, chunk_length=10, max_episode=30)[0]
    for _ in range(5):
        shard.insert_chunk(src.next_chunk())
    return shard, src


def test_priority_updates_focus_sampling_and_carry_shard_index():
    shard, _ = _filled_prioritized_shard(index=3)
    batch = shard.sample(32)
    assert ((batch.key >> KEY_SHARD_SHIFT) == 3).all()
    target = batch.key[0]
    others = np.unique(batch.key[batch.key != target])
    applied = shard.update_priorities(np.r_[target, others], np.r_[1000.0, np.full(others.size, 1e-3)])
    assert applied == 1 + others.size
    again = shard.sample(256)
    assert np.mean(again.key == target) > 0.9


def test_stale_and_foreign_priority_keys_are_ignored():
    shard, src = _filled_prioritized_shard(index=1)
    batch = shard.sample(8)
    foreign = (np.int64(2) << KEY_SHARD_SHIFT) | (batch.key[0] & ((1 << KEY_SHARD_SHIFT) - 1))
    for _ in range(10):  # overwrite the whole ring
        shard.insert_chunk(src.next_chunk())
    assert shard.update_priorities(np.r_[batch.key, foreign], np.ones(9)) == 0
    assert shard.stats()["stale_priority_updates"] == 9
