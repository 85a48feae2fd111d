"""The learner refuses a non-finite batch before it touches its weights (issue 30, finding 1):
the loop drops it, counts it, logs the field, and every parameter, optimizer moment and the
update count stay as they were."""
import copy
import logging

import numpy as np
import pytest
import torch

from learner.loop import LearnerLoop, first_nonfinite
from learner.td3 import TD3Learner
from tests.unit.learner_fixtures import SMALL_SPEC, random_batch, small_config
from tests.unit.replay_support import SMALL_SPEC as REPLAY_SPEC
from tests.unit.replay_support import make_streams, small_shard


def _same(a, b) -> bool:
    """Deep equality of nested state dicts holding tensors."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def _sampler(*batches):
    """Hands out ``batches`` in order, then None (the replay has nothing more)."""
    queue = list(batches)
    return lambda: queue.pop(0) if queue else None


def _poisoned(batch, field: str, index: tuple[int, ...], value: float):
    array = getattr(batch, field).copy()
    array[index] = value
    return batch._replace(**{field: array})


@pytest.mark.parametrize("field,index", [
    ("obs_vector", (2, 1)), ("next_vector", (0, 4)), ("action", (5, 0)), ("reward", (3,)),
    ("terminated", (7,)), ("weight", (1,))])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_batch_is_dropped_before_the_update(field, index, value, caplog):
    learner = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    learner.update(random_batch(SMALL_SPEC, 16, seed=0))  # optimizer moments exist
    before = copy.deepcopy(learner.state_dict())
    bad = _poisoned(random_batch(SMALL_SPEC, 16, seed=1), field, index, value)
    loop = LearnerLoop(learner, _sampler(bad), lambda snapshot: None, publish_every=1)
    with caplog.at_level(logging.WARNING, logger="learner.loop"):
        report = loop.run_updates(1, max_seconds=0.2)
    assert (report.updates, report.rejected_batches, loop.rejected_batches) == (0, 1, 1)
    assert learner.updates == 1 and _same(learner.state_dict(), before)
    where = field + "".join(f"[{i}]" for i in index)
    assert f"event=batch_rejected reason=non_finite field={where} value={value}" in caplog.text


def test_the_loop_goes_on_with_the_next_finite_batch():
    learner = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    good = [random_batch(SMALL_SPEC, 16, seed=i) for i in range(3)]
    bad = _poisoned(good[0], "reward", (0,), np.nan)
    loop = LearnerLoop(learner, _sampler(good[0], bad, good[1], bad, good[2]),
                       lambda snapshot: None, publish_every=1)
    report = loop.run_updates(3, max_seconds=30.0)
    assert (report.updates, report.rejected_batches, learner.updates) == (3, 2, 3)
    assert all(np.isfinite(v) for v in report.stats.values())


def test_first_nonfinite_names_the_first_bad_field_and_reads_no_frames():
    batch = random_batch(SMALL_SPEC, 4, seed=0)
    assert first_nonfinite(batch) is None
    bad = _poisoned(_poisoned(batch, "next_vector", (1, 2), np.inf), "action", (3, 1), np.nan)
    where, value = first_nonfinite(bad)
    assert where == "action[3][1]" and np.isnan(value)
    frames = batch._replace(obs_image=None, next_image=None)  # never touched
    assert first_nonfinite(frames) is None


def test_a_dropped_cached_batch_still_stores_its_frames():
    shard = small_shard(capacity=60)
    stream = make_streams(REPLAY_SPEC, 1, chunk_length=10, max_episode=9)[0]
    for _ in range(3):
        shard.insert_chunk(stream.next_chunk())
    batch = shard.sample_cached(8, cache_id=1)
    assert batch.new_rows.size
    learner = TD3Learner(REPLAY_SPEC, small_config(), seed=0)
    before = copy.deepcopy(learner.state_dict())
    loop = LearnerLoop(learner, _sampler(_poisoned(batch, "obs_vector", (0, 0), np.nan)),
                       lambda snapshot: None, publish_every=1)
    assert loop.run_updates(1, max_seconds=0.2).rejected_batches == 1
    assert learner.updates == 0 and _same(learner.state_dict(), before)
    cache = learner.frame_cache  # the replay client counts on these frames being held
    stored = cache.frames[torch.from_numpy(batch.new_rows)]
    assert torch.equal(stored, torch.from_numpy(batch.new_frames))
