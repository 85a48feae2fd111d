"""Network topology: disjointness, targets, gradient isolation, encoders that learn, and the
order of the critic and policy steps."""
import pytest
import torch

from common.config import EncoderTopology, PolicyCritic
from common.errors import ConfigError
from learner.td3 import TD3Learner
from learner.topology import check_disjoint
from learner.update import NoiseDraws, td3_update
from tests.unit.learner_fixtures import (SMALL_SPEC, critic_step, device_batch, params_of,
                                         policy_step, random_batch, small_config)


def _learner(topology=EncoderTopology.SEPARATE, **td3) -> TD3Learner:
    return TD3Learner(SMALL_SPEC, small_config(topology, **td3), seed=0)


def _changed(before: dict, module: torch.nn.Module) -> list[str]:
    return [k for k, v in module.named_parameters() if not torch.equal(before[k], v)]


def test_policy_and_critic_parameters_are_disjoint():
    nets = _learner().nets
    policy_ids = {id(p) for p in nets.policy.parameters()}
    assert policy_ids.isdisjoint(id(p) for p in nets.critic.parameters())
    opt_policy = {id(p) for g in nets.policy_groups for p in g["params"]}
    opt_critic = {id(p) for g in nets.critic_groups for p in g["params"]}
    assert opt_policy == policy_ids and opt_policy.isdisjoint(opt_critic)


def test_construction_check_rejects_shared_parameters():
    nets = _learner().nets
    nets.policy.encoder = nets.critic.encoder
    with pytest.raises(ConfigError, match=r"share \d+ parameter\(s\).*policy.encoder.cnn.0.weight"):
        check_disjoint(nets.policy, nets.critic)


def test_shared_topology_is_the_documented_exception():
    nets = _learner(EncoderTopology.SHARED).nets
    assert nets.policy.encoder is nets.critic.encoder
    assert nets.policy_target.encoder is nets.critic_target.encoder
    encoder_ids = {id(p) for p in nets.critic.encoder.parameters()}
    assert not encoder_ids & {id(p) for g in nets.policy_groups for p in g["params"]}
    assert len(nets.target_pairs[0]) == len({id(p) for p in nets.target_pairs[0]})


@pytest.mark.parametrize("topology", list(EncoderTopology))
def test_targets_equal_online_at_start_and_differ_after_updates(topology):
    learner = _learner(topology)
    nets = learner.nets
    for online, target in ((nets.policy, nets.policy_target), (nets.critic, nets.critic_target)):
        assert target is not online
        for (name, p), t in zip(online.named_parameters(), target.parameters()):
            assert t is not p and torch.equal(t, p), name
            assert not t.requires_grad
    for i in range(4):
        learner.update(random_batch(SMALL_SPEC, 16, seed=i))
    for online, target in ((nets.policy, nets.policy_target), (nets.critic, nets.critic_target)):
        for (name, p), t in zip(online.named_parameters(), target.parameters()):
            assert not torch.equal(t, p), f"target {name} did not move apart from online"


@pytest.mark.parametrize("topology", list(EncoderTopology))
def test_a_policy_update_polyak_averages_every_target_encoders_included(topology):
    learner = _learner(topology, tau=0.25)
    nets = learner.nets
    assert {id(t) for t in nets.policy_target.encoder.parameters()} <= {id(t) for t in nets.target_pairs[0]}
    assert {id(t) for t in nets.critic_target.encoder.parameters()} <= {id(t) for t in nets.target_pairs[0]}
    b = device_batch(learner, seed=0)
    old_targets = [t.clone() for t in nets.target_pairs[0]]
    draws = NoiseDraws(torch.zeros_like(b.action), torch.empty(0, dtype=torch.int64))
    td3_update(learner.state, b, draws, policy_due=True)
    for old, target, online in zip(old_targets, *nets.target_pairs):
        torch.testing.assert_close(target, 0.75 * old + 0.25 * online)


def test_a_critic_only_update_leaves_every_target_and_the_policy_alone():
    learner = _learner()
    nets = learner.nets
    targets = [t.clone() for t in nets.target_pairs[0]]
    policy = params_of(nets.policy)
    b = device_batch(learner, seed=0)
    draws = NoiseDraws(torch.zeros_like(b.action), torch.empty(0, dtype=torch.int64))
    td3_update(learner.state, b, draws, policy_due=False)
    assert all(torch.equal(old, t) for old, t in zip(targets, nets.target_pairs[0]))
    assert _changed(policy, nets.policy) == []


def test_critic_update_changes_no_policy_parameter():
    learner = _learner()
    before = params_of(learner.nets.policy)
    critic_before = params_of(learner.nets.critic)
    critic_step(learner.state, device_batch(learner, seed=1))
    assert _changed(before, learner.nets.policy) == []
    assert all(p.grad is None for p in learner.nets.policy.parameters())
    changed = _changed(critic_before, learner.nets.critic)
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("q2.") for k in changed)


@pytest.mark.parametrize("topology", list(EncoderTopology))
def test_policy_update_changes_no_critic_parameter(topology):
    learner = _learner(topology)
    batch = device_batch(learner, seed=2)
    features = critic_step(learner.state, batch).features
    assert not features.requires_grad  # handed to the policy step detached
    learner.critic_opt.zero_grad(set_to_none=True)
    critic_before = params_of(learner.nets.critic)
    policy_before = params_of(learner.nets.policy.head)
    policy_step(learner.state, batch, features)
    assert _changed(critic_before, learner.nets.critic) == []
    assert all(p.grad is None for p in learner.nets.critic.parameters())
    assert _changed(policy_before, learner.nets.policy.head) != []


@pytest.mark.parametrize("topology", list(EncoderTopology))
def test_both_encoders_learn_over_a_few_hundred_updates(topology):
    learner = _learner(topology)
    start = {"policy": params_of(learner.nets.policy.encoder),
             "critic": params_of(learner.nets.critic.encoder)}
    for i in range(300):
        stats = learner.update(random_batch(SMALL_SPEC, 16, seed=i % 20))
    for name, module in (("policy", learner.nets.policy.encoder), ("critic", learner.nets.critic.encoder)):
        changed = _changed(start[name], module)
        assert len(changed) == len(start[name]), f"{name} encoder: only {changed} changed"
        conv = module.cnn[0].weight
        assert (conv - start[name]["cnn.0.weight"]).norm() > 1e-3 * conv.norm(), name
    assert stats.critic_encoder_grad_norm > 0.0
    if topology is EncoderTopology.SEPARATE:
        assert stats.policy_encoder_grad_norm > 0.0
    else:  # the shared encoder gets no gradient from the policy loss
        assert stats.policy_encoder_grad_norm == 0.0


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("topology", list(EncoderTopology))
def test_pre_step_policy_step_reads_the_critic_before_its_step(topology):
    pre = _learner(topology, policy_critic=PolicyCritic.PRE_STEP)
    paper = _learner(topology)
    frozen = _learner(topology)  # paper order, but its critic skips the policy update's step
    for learner in (pre, paper, frozen):
        learner.update(random_batch(SMALL_SPEC, 16, seed=0))  # critic only: all three alike
    for group in frozen.critic_opt.param_groups:
        group["lr"] = 0.0
    for learner in (pre, paper, frozen):
        assert learner.update(random_batch(SMALL_SPEC, 16, seed=1)).policy_updated
    nets = pre.nets
    # The policy step saw the critic as it was before the step: the frozen critic's view.
    # (Under SHARED the policy's encoder is the critic's, which the critic step moves.)
    pick = (lambda m: m.head) if topology is EncoderTopology.SHARED else (lambda m: m)
    assert _max_diff(pick(nets.policy), pick(frozen.nets.policy)) < 1e-6
    assert _max_diff(pick(nets.policy_target), pick(frozen.nets.policy_target)) < 1e-6
    assert _max_diff(nets.policy.head, paper.nets.policy.head) > 1e-5
    # The critic step and the critic target's Polyak step are the paper's.
    assert _max_diff(nets.critic, paper.nets.critic) < 1e-6
    assert _max_diff(nets.critic_target, paper.nets.critic_target) < 1e-6
    assert _max_diff(nets.critic, frozen.nets.critic) > 1e-5
    # The copy of the Q1 head the policy step read is the pre-step head.
    for name, weight in frozen.nets.critic.q1.named_parameters():
        torch.testing.assert_close(pre.state.q1_before[name], weight.detach(), rtol=0, atol=0)


def test_policy_critic_must_be_a_known_order():
    with pytest.raises(ConfigError, match=r"policy_critic \('later'\) must be one of"):
        _learner(policy_critic="later")


@pytest.mark.parametrize("topology", list(EncoderTopology))
def test_target_pairs_split_into_the_critic_targets_and_the_policy_targets_own(topology):
    nets = _learner(topology).nets
    (critic_t, critic_o), (policy_t, policy_o) = nets.split_target_pairs()
    assert [id(t) for t in critic_t] == [id(p) for p in nets.critic_target.parameters()]
    assert [id(o) for o in critic_o] == [id(p) for p in nets.critic.parameters()]
    own = nets.policy_target.head if topology is EncoderTopology.SHARED else nets.policy_target
    assert [id(t) for t in policy_t] == [id(p) for p in own.parameters()]
    assert {id(t) for t in critic_t + policy_t} == {id(t) for t in nets.target_pairs[0]}
    assert len(critic_t) + len(policy_t) == len(nets.target_pairs[0])
