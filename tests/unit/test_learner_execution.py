"""The machinery behind td3_update: the learner computes the paper's update, and on CUDA its
pieces are queued on the side streams in an order that keeps every read after its write."""
import dataclasses

import numpy as np
import pytest
import torch

from common.config import EncoderTopology, PolicyCritic
from learner.execution import UpdateRunner, places
from learner.stats import pack, unpack
from learner.streams import SideStreams
from learner.td3 import TD3Learner
from learner.update import PAPER, Steps, draw_noise, td3_update
from tests.unit.learner_fixtures import SMALL_SPEC, device_batch, random_batch, small_config

CASES = [(topology, order) for topology in EncoderTopology for order in PolicyCritic]


@pytest.mark.parametrize("topology,order", CASES)
def test_the_learner_runs_the_papers_update_bit_for_bit(topology, order):
    cfg = small_config(topology, policy_critic=order, image_shift=2, policy_delay=2)
    learner, paper = TD3Learner(SMALL_SPEC, cfg, seed=4), TD3Learner(SMALL_SPEC, cfg, seed=4)
    for i in range(4):
        got = learner.update(random_batch(SMALL_SPEC, 16, seed=i))
        b = device_batch(paper, seed=i)
        draws = draw_noise(cfg.td3, b.action.shape, paper.generator, paper.device)
        stats = td3_update(paper.state, b, draws, policy_due=i % 2 == 1, steps=PAPER)
        want = unpack(pack(stats).numpy(), i + 1, i % 2 == 1)
        got, want = dataclasses.asdict(got), dataclasses.asdict(want)
        np.testing.assert_array_equal(got.pop("td_error"), want.pop("td_error"))
        assert got == want
    for name, module in learner.nets.modules().items():
        for a, b in zip(module.parameters(), paper.nets.modules()[name].parameters()):
            assert torch.equal(a, b), name


class RecordingStreams(SideStreams):
    """Side streams as on CUDA (pending work, joins), run inline and written to ``log``."""

    def __init__(self, names):
        super().__init__(torch.device("cpu"), names)
        self.log, self.pending, self.inside = [], set(), None

    def run(self, name, fn, *args):
        self.log.append(("run", name, fn.__name__))
        self.pending.add(name)
        outer, self.inside = self.inside, name
        try:
            return fn(*args)
        finally:
            self.inside = outer

    def after(self, name, other):
        if other in self.pending:
            self.log.append(("after", name, other))
            self.pending.add(name)

    def join(self, *names):
        for name in names:
            if name in self.pending and name != self.inside:
                self.log.append(("join", name))
                self.pending.discard(name)


TARGET = [("run", "target_critic", "target_critic_features"),
          ("run", "target_policy", "target_policy_encoding"),
          ("after", "target_critic", "target_policy"),
          ("run", "target_critic", "td_target_from")]
POLICY_STEP = [("run", "policy", "policy_loss"), ("run", "policy", "policy_step"),
               ("run", "policy", "update_policy_target")]
SCHEDULES = {
    (PolicyCritic.STEPPED, False): TARGET + [
        ("join", "target_critic"), ("run", "diagnostics", "critic_encoder_change"),
        ("join", "diagnostics")],
    # The policy step waits for its encoder's pass, then runs on the main stream.
    (PolicyCritic.STEPPED, True): TARGET + [
        ("run", "policy", "policy_encoding"), ("join", "target_critic"),
        ("run", "diagnostics", "critic_encoder_change"),
        ("run", "diagnostics", "update_critic_target"), ("join", "policy"),
        ("run", "policy", "policy_encoder_change"), ("join", "policy"), ("join", "diagnostics")],
    # The main stream joins the TD target's stream before the policy stream forks again: the
    # policy target's Polyak step must follow the TD target's reads of the policy target.
    (PolicyCritic.PRE_STEP, True): TARGET + [
        ("run", "policy", "policy_encoding"), ("join", "target_critic")] + POLICY_STEP + [
        ("run", "diagnostics", "critic_encoder_change"),
        ("run", "diagnostics", "update_critic_target"),
        ("run", "policy", "policy_encoder_change"), ("join", "policy"), ("join", "diagnostics")],
}


@pytest.mark.parametrize("order,policy_due", list(SCHEDULES))
def test_the_pieces_are_queued_on_the_side_streams_in_a_safe_order(order, policy_due):
    learner = TD3Learner(SMALL_SPEC, small_config(policy_critic=order), seed=0)
    streams = RecordingStreams(("target_critic", "target_policy", "policy", "diagnostics"))
    runner = UpdateRunner(learner.state, compile=False, cuda_graphs=False, streams=streams)
    b = device_batch(learner, seed=0)
    draws = draw_noise(learner.td3, b.action.shape, learner.generator, learner.device)
    stats = runner.launch(b, draws, policy_due, updates=1).result()
    assert streams.log == SCHEDULES[order, policy_due]
    assert stats.policy_updated is policy_due and np.isfinite(stats.critic_loss)


@pytest.mark.parametrize("policy_first", [False, True])
def test_every_placed_piece_is_a_piece_of_the_update(policy_first):
    assert set(places(policy_first)) <= set(Steps._fields)
