"""Network topology: disjointness, targets, gradient isolation, encoders that learn."""
import pytest
import torch

from common.config import EncoderTopology
from common.errors import ConfigError
from learner.td3 import TD3Learner, prepare_pixels
from learner.topology import check_disjoint
from tests.unit.learner_fixtures import SMALL_SPEC, params_of, random_batch, small_config


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


def test_target_encoders_are_polyak_averaged_with_their_heads():
    learner = _learner(tau=0.25)
    nets = learner.nets
    batch = learner._to_device(random_batch(SMALL_SPEC, 16, seed=0))
    px = prepare_pixels(batch)
    features = learner._critic_step(batch, px, torch.zeros_like(batch.action))[-1]
    old_targets = [t.clone() for t in nets.target_pairs[0]]
    learner._policy_step(batch, learner._policy_encoder_forward(batch, px), features)
    assert {id(t) for t in nets.policy_target.encoder.parameters()} <= {id(t) for t in nets.target_pairs[0]}
    assert {id(t) for t in nets.critic_target.encoder.parameters()} <= {id(t) for t in nets.target_pairs[0]}
    for old, target, online in zip(old_targets, *nets.target_pairs):
        torch.testing.assert_close(target, 0.75 * old + 0.25 * online)


def test_critic_update_changes_no_policy_parameter():
    learner = _learner()
    before = params_of(learner.nets.policy)
    critic_before = params_of(learner.nets.critic)
    batch = learner._to_device(random_batch(SMALL_SPEC, 16, seed=1))
    learner._critic_step(batch, prepare_pixels(batch), torch.zeros_like(batch.action))
    assert _changed(before, learner.nets.policy) == []
    assert all(p.grad is None for p in learner.nets.policy.parameters())
    changed = _changed(critic_before, learner.nets.critic)
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("q2.") for k in changed)


@pytest.mark.parametrize("topology", list(EncoderTopology))
def test_policy_update_changes_no_critic_parameter(topology):
    learner = _learner(topology)
    batch = learner._to_device(random_batch(SMALL_SPEC, 16, seed=2))
    px = prepare_pixels(batch)
    features = learner._critic_step(batch, px, torch.zeros_like(batch.action))[-1]
    assert not features.requires_grad  # handed to the policy step detached
    learner.critic_opt.zero_grad(set_to_none=True)
    critic_before = params_of(learner.nets.critic)
    policy_before = params_of(learner.nets.policy.head)
    learner._policy_step(batch, learner._policy_encoder_forward(batch, px), features)
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
