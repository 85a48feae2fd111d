"""Launched (pipelined) updates, packed image batches and the loop that overlaps them and
publishes."""
import numpy as np
import pytest
import torch

from common.errors import SpecError
from learner.device import CpuTransfer, packed_frames
from learner.loop import LearnerLoop
from learner.td3 import TD3Learner
from tests.unit.learner_fixtures import SMALL_SPEC, packed_batch, random_batch, small_config


def test_packed_frames_finds_the_block_behind_replay_views_only():
    batch = packed_batch(SMALL_SPEC, 4, seed=0)
    block = packed_frames(batch)
    assert block is not None and block.shape == (4, SMALL_SPEC.frames + 1, *batch.obs_image.shape[2:])
    np.testing.assert_array_equal(block[:, :-1], batch.obs_image)
    np.testing.assert_array_equal(block[:, 1:], batch.next_image)
    assert packed_frames(random_batch(SMALL_SPEC, 4, seed=0)) is None  # separate arrays
    shifted = batch._replace(next_image=batch.obs_image)  # same view twice: not a block
    assert packed_frames(shifted) is None


def test_cpu_transfer_reads_read_only_views_in_place():
    batch = packed_batch(SMALL_SPEC, 4, seed=1)
    dev = CpuTransfer()(batch)
    assert dev.image.data_ptr() == batch.obs_image.__array_interface__["data"][0]
    assert torch.equal(dev.next_image, torch.from_numpy(batch.next_image.copy()))


def test_launched_updates_give_the_stats_of_synchronous_ones():
    sync = TD3Learner(SMALL_SPEC, small_config(), seed=3)
    piped = TD3Learner(SMALL_SPEC, small_config(), seed=3)
    batches = [packed_batch(SMALL_SPEC, 16, seed=i) for i in range(5)]
    expected = [sync.update(b) for b in batches]
    handles = [piped.launch(b) for b in batches]  # the oldest are read as slots are reused
    got = [h.result() for h in handles]
    for e, g in zip(expected, got):
        assert (g.updates, g.policy_updated) == (e.updates, e.policy_updated)
        assert g.critic_loss == pytest.approx(e.critic_loss, rel=1e-5)
        np.testing.assert_allclose(g.td_error, e.td_error, rtol=1e-5, atol=1e-6)
    assert piped.updates == 5


class _RecordingLearner:
    """Launches record their batch; results come back in launch order, checked below."""

    def __init__(self) -> None:
        self.updates = 0
        self.launched: list[int] = []
        self.read: list[int] = []

    def launch(self, batch):
        self.updates += 1
        self.launched.append(int(batch.key[0]))
        number = self.updates
        learner = self

        class Handle:
            def result(self):
                learner.read.append(number)
                return {"td_error": np.full(batch.size, float(number)),
                        "critic_loss": float(number)}
        return Handle()

    def update(self, batch):
        return self.launch(batch).result()

    def policy_state(self):
        return {"w": np.zeros(1, np.float32)}


def test_loop_overlaps_one_update_and_finishes_every_launch():
    learner = _RecordingLearner()
    keys = iter(range(100))
    sent: list[tuple[int, float]] = []
    published: list[int] = []

    def sample():
        k = next(keys)
        if k == 3:  # an empty sample in the middle: the update in flight is finished first
            return None
        return random_batch(SMALL_SPEC, 2, seed=k)._replace(key=np.array([k, k], np.int64))

    loop = LearnerLoop(learner, sample, lambda s: published.append(s.version), publish_every=2,
                       update_priorities=lambda key, td: sent.append((int(key[0]), float(td[0]))),
                       idle_sleep_s=0.0)
    report = loop.run_updates(5)
    assert report.updates == 5 and learner.updates == 5
    assert learner.read == [1, 2, 3, 4, 5]  # every launched update finished, in order
    assert sent == [(0, 1.0), (1, 2.0), (2, 3.0), (4, 4.0), (5, 5.0)]  # keys match their update
    assert report.stats["critic_loss"] == 5.0 and published == [2, 4]


def test_idle_pauses_double_up_to_the_cap_and_reset_after_a_batch(monkeypatch):
    import learner.loop as loop_module
    sleeps: list[float] = []
    monkeypatch.setattr(loop_module.time, "sleep", sleeps.append)
    replies = iter([None] * 7 + [random_batch(SMALL_SPEC, 2, seed=0)] + [None] * 2
                   + [random_batch(SMALL_SPEC, 2, seed=1)])
    loop = LearnerLoop(_RecordingLearner(), lambda: next(replies), lambda s: None,
                       publish_every=100, idle_sleep_s=0.002, max_idle_sleep_s=0.05)
    assert loop.run_updates(2).updates == 2
    assert sleeps == pytest.approx([0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05, 0.002, 0.004])


def test_a_policy_holding_a_nan_is_refused_before_publishing():
    learner = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    published = []
    loop = LearnerLoop(learner, lambda: None, published.append, publish_every=1)
    loop.publish()
    with torch.no_grad():
        learner.nets.policy.head[2].bias[1] = float("nan")  # a diverged learner
    with pytest.raises(SpecError, match=r"policy version 0: 'head.2.bias' holds nan at index \(1,\)"):
        loop.publish()
    assert [s.version for s in published] == [0] and loop.version == 0  # the actors keep it
