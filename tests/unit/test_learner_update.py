"""The learner's public interface: update stats, importance weights, snapshots, errors."""
import dataclasses

import numpy as np
import pytest
import torch

from common.config import EncoderTopology, LearnerConfig, LearnerExecution, TD3Config
from common.errors import ConfigError, SpecError
from common.networks import DenseHWC, PolicyNet, load_policy_state
from learner import precision as learner_precision
from learner import losses
from learner.precision import CpuProbe
from learner.pixels import prepare_pixels
from learner.td3 import TD3Learner, UpdateStats, make_learner
from tests.unit.learner_fixtures import (SMALL_SPEC, critic_step, device_batch, params_of,
                                         random_batch, run_on, small_config)


def test_stats_are_typed_and_policy_steps_are_delayed():
    learner = make_learner(SMALL_SPEC, small_config(policy_delay=3), seed=0)
    flags = []
    for i in range(6):
        stats = learner.update(random_batch(SMALL_SPEC, 16, seed=i))
        assert isinstance(stats, UpdateStats) and stats.updates == learner.updates == i + 1
        flags.append(stats.policy_updated)
        for field in dataclasses.fields(stats):
            value = getattr(stats, field.name)
            if field.name == "td_error":
                assert value.shape == (16,) and value.dtype == np.float32 and (value >= 0).all()
            else:
                assert type(value) in (int, float, bool) and np.isfinite(value), field.name
    assert flags == [False, False, True, False, False, True]
    assert stats.critic_encoder_weight_change > 0 and stats.policy_encoder_weight_change > 0


def test_td_error_matches_the_critic_before_its_step():
    learner = TD3Learner(SMALL_SPEC, small_config(policy_noise=0.0), seed=0)
    batch = random_batch(SMALL_SPEC, 16, seed=0)
    b = learner.to_device(batch)
    nets = learner.nets
    with torch.no_grad():
        q1, q2 = nets.critic(b.image, b.vector, b.action)
        next_action = nets.policy_target(b.next_image, b.next_vector)
        nq1, nq2 = nets.critic_target(b.next_image, b.next_vector, next_action)
        y = losses.td_target(b.reward, b.terminated, nq1, nq2, learner.td3.gamma)
    stats = learner.update(batch)
    expected = 0.5 * ((q1 - y).abs() + (q2 - y).abs())
    np.testing.assert_allclose(stats.td_error, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert stats.q1_mean == pytest.approx(q1.mean().item(), rel=1e-5)
    assert stats.target_q_mean == pytest.approx(y.mean().item(), rel=1e-5)


def test_zero_importance_weights_leave_the_critic_unchanged():
    learner = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    batch = random_batch(SMALL_SPEC, 16, seed=0)._replace(weight=np.zeros(16, np.float32))
    before = params_of(learner.nets.critic)
    stats = learner.update(batch)
    assert stats.critic_loss == 0.0 and stats.td_error.max() > 0
    assert all(torch.equal(before[k], v) for k, v in learner.nets.critic.named_parameters())


@pytest.mark.parametrize("topology", list(EncoderTopology))
def test_policy_state_loads_into_an_actor_policy(topology):
    cfg = small_config(topology)
    learner = TD3Learner(SMALL_SPEC, cfg, seed=0)
    for i in range(2):
        learner.update(random_batch(SMALL_SPEC, 16, seed=i))
    state = learner.policy_state()
    assert all(isinstance(v, np.ndarray) and v.flags.c_contiguous for v in state.values())
    actor = PolicyNet.from_config(SMALL_SPEC, cfg.network)
    load_policy_state(actor, state)
    batch = random_batch(SMALL_SPEC, 4, seed=9)
    image, vector = torch.from_numpy(batch.obs_image), torch.from_numpy(batch.obs_vector)
    with torch.no_grad():
        torch.testing.assert_close(actor(image, vector), learner.nets.policy(image, vector))
    state["head.0.weight"][:] = 0.0
    assert learner.nets.policy.head[0].weight.abs().sum() > 0, "snapshot must be a copy"


@pytest.mark.parametrize("field,value,message", [
    ("obs_image", np.zeros((16, 2, 36, 36), np.float32), "dtype float32 != expected uint8"),
    ("next_vector", np.zeros((16, 4), np.float32), r"shape \(16, 4\) does not end in"),
    ("action", np.full((16, 2), 1.5, np.float32), "above maximum 1.0"),
    ("weight", np.ones(15, np.float32), r"weight: expected float32 \[16\]"),
    ("terminated", np.zeros(16, bool), "terminated: expected float32"),
])
def test_bad_batches_are_rejected(field, value, message):
    learner = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    batch = random_batch(SMALL_SPEC, 16, seed=0)._replace(**{field: value})
    with pytest.raises(SpecError, match=message):
        learner.update(batch)
    assert learner.updates == 0


@pytest.mark.parametrize("cfg,message", [
    (LearnerConfig(td3=TD3Config(gamma=1.5)), r"learner.td3.gamma \(1.5\) must be in \(0, 1\]"),
    (LearnerConfig(td3=TD3Config(policy_delay=0)), r"learner.td3.policy_delay \(0\) must be >= 1"),
    (LearnerConfig(td3=TD3Config(tau=0.0)), r"learner.td3.tau \(0.0\) must be in \(0, 1\]"),
    (LearnerConfig(execution=LearnerExecution(device="tpu")),
     r"learner.execution.device \('tpu'\)"),
    (LearnerConfig(execution=LearnerExecution(device="cpu", precision="fp8")),
     r"learner.execution.precision \('fp8'\) must be one of \['auto', 'fp32', 'bf16'\]"),
    (LearnerConfig(execution=LearnerExecution(device="cpu", cuda_graphs=True)),
     r"learner.execution.cuda_graphs \(True\) needs a CUDA device"),
    (LearnerConfig(td3=TD3Config(preactivation_l2=-1.0)),
     r"learner.td3.preactivation_l2 \(-1.0\) must be >= 0"),
])
def test_bad_configs_name_the_value(cfg, message):
    with pytest.raises(ConfigError, match=message):
        TD3Learner(SMALL_SPEC, dataclasses.replace(cfg, network=small_config().network), seed=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="no CUDA device"):
        TD3Learner(SMALL_SPEC, run_on(small_config(), device="cuda"), seed=0)


@pytest.mark.parametrize("topology", list(EncoderTopology))
def test_preactivation_penalty_adds_the_mean_squared_pre_tanh_output(topology):
    # The first policy step sees the initial policy and the same critic in both learners, so
    # their policy losses differ by exactly the penalty of the initial policy's pre-tanh output.
    weight = 0.5
    plain = TD3Learner(SMALL_SPEC, small_config(topology, policy_delay=1), seed=0)
    penalised = TD3Learner(SMALL_SPEC, small_config(topology, policy_delay=1,
                                                    preactivation_l2=weight), seed=0)
    batch = random_batch(SMALL_SPEC, 16, seed=0)
    b = penalised.to_device(batch)
    nets = penalised.nets
    with torch.no_grad():
        critic_features = nets.critic.encoder.encode(prepare_pixels(b).obs, b.vector)
        encoding = nets.policy_encoding(prepare_pixels(b).obs, b.vector)
        pre = nets.policy.preactivation(nets.policy_features(encoding, critic_features))
    expected = weight * float(pre.square().mean())
    assert expected > 1e-3
    delta = penalised.update(batch).policy_loss - plain.update(batch).policy_loss
    assert delta == pytest.approx(expected, rel=1e-4)
    # ...and its gradient reaches the policy: the two policies differ after that step.
    assert not torch.equal(plain.nets.policy.head[-1].weight, penalised.nets.policy.head[-1].weight)


def test_gradient_clipping_bounds_each_optimizer_step():
    learner = TD3Learner(SMALL_SPEC, small_config(max_grad_norm=1e-3), seed=0)
    critic_step(learner.state, device_batch(learner, seed=0))
    grads = [p.grad for ps in learner.state.critic_params for p in ps if p.grad is not None]
    assert torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) <= 1e-3 * 1.01


def test_same_seed_same_learner():
    a = TD3Learner(SMALL_SPEC, small_config(), seed=7)
    b = TD3Learner(SMALL_SPEC, small_config(), seed=7)
    c = TD3Learner(SMALL_SPEC, small_config(), seed=8)
    for i in range(2):
        batch = random_batch(SMALL_SPEC, 16, seed=i)
        sa, sb, _ = a.update(batch), b.update(batch), c.update(batch)
        np.testing.assert_array_equal(sa.td_error, sb.td_error)
    assert all(torch.equal(x, y) for x, y in zip(a.nets.critic.parameters(), b.nets.critic.parameters()))
    assert not torch.equal(a.nets.critic.q1[0].weight, c.nets.critic.q1[0].weight)


@pytest.mark.parametrize("bf16_s,expected", [(0.5, torch.bfloat16), (2.0, torch.float32)])
def test_auto_precision_on_cpu_follows_the_probe(monkeypatch, bf16_s, expected):
    monkeypatch.setattr(learner_precision, "_PROBES", {})
    monkeypatch.setattr(learner_precision, "probe_cpu",
                        lambda spec, features, batch, with_bf16, with_conv: CpuProbe(1.0, bf16_s))
    learner = TD3Learner(SMALL_SPEC, run_on(small_config(), precision="auto"), seed=0)
    assert learner.precision == ("bf16" if expected == torch.bfloat16 else "fp32")
    b = learner.to_device(random_batch(SMALL_SPEC, 4, seed=0))
    with learner.state.autocast():
        assert learner.nets.policy(b.image, b.vector).dtype == expected
    stats = learner.update(random_batch(SMALL_SPEC, 16, seed=0))
    assert np.isfinite(stats.critic_loss) and stats.td_error.dtype == np.float32


def test_a_learner_with_its_dense_layers_as_convolutions_learns_the_same(monkeypatch):
    # Batches of 32 or more: the size at which DenseHWC may run as a convolution.
    learners = {}
    for as_conv in (False, True):
        monkeypatch.setattr(learner_precision, "_PROBES", {})
        monkeypatch.setattr(learner_precision, "probe_cpu",
                            lambda *_, c=as_conv: CpuProbe(dense_gemm_s=1.0,
                                                           dense_conv_s=0.5 if c else 2.0))
        learners[as_conv] = TD3Learner(SMALL_SPEC, small_config(batch_size=32), seed=3)
        assert learners[as_conv].kernels.dense_as_conv is as_conv
    layers = [m for m in learners[True].nets.critic.modules() if isinstance(m, DenseHWC)]
    assert layers and all(m.as_conv for m in layers)
    for i in range(4):  # two policy steps
        batch = random_batch(SMALL_SPEC, 32, seed=i)
        plain, conv = learners[False].update(batch), learners[True].update(batch)
        np.testing.assert_allclose(conv.td_error, plain.td_error, rtol=1e-4, atol=1e-5)
    for a, b in zip(learners[False].nets.policy.parameters(), learners[True].nets.policy.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("image_shift", [0, 3])
def test_a_learner_whose_first_convolution_reads_blocks_learns_the_same(image_shift):
    learners = {first_conv: TD3Learner(SMALL_SPEC, run_on(
        small_config(image_shift=image_shift), precision="fp32", first_conv=first_conv), seed=5)
        for first_conv in ("strided", "blocks")}
    assert learners["blocks"].kernels.first_conv_blocks
    assert not learners["strided"].kernels.first_conv_blocks
    for i in range(4):  # two policy steps
        batch = random_batch(SMALL_SPEC, 16, seed=i)
        plain, blocks = learners["strided"].update(batch), learners["blocks"].update(batch)
        np.testing.assert_allclose(blocks.td_error, plain.td_error, rtol=1e-4, atol=1e-5)
        assert blocks.critic_loss == pytest.approx(plain.critic_loss, rel=1e-4)
    for name in ("policy", "critic", "policy_target", "critic_target"):
        for (key, a), b in zip(getattr(learners["strided"].nets, name).named_parameters(),
                               getattr(learners["blocks"].nets, name).parameters()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")


def test_truncated_transitions_bootstrap_and_terminated_ones_do_not():
    batch = random_batch(SMALL_SPEC, 16, seed=0)
    stats = {}
    for name, change in [("base", {}), ("truncated", {"truncated": np.ones(16, np.float32)}),
                         ("terminated", {"terminated": np.ones(16, np.float32)})]:
        learner = TD3Learner(SMALL_SPEC, small_config(), seed=0)
        stats[name] = learner.update(batch._replace(**change))
    np.testing.assert_array_equal(stats["truncated"].td_error, stats["base"].td_error)
    assert stats["terminated"].target_q_mean == pytest.approx(float(batch.reward.mean()), rel=1e-5)
    assert stats["base"].target_q_mean != pytest.approx(stats["terminated"].target_q_mean)


def test_keep_freed_memory_applies_on_glibc_and_declines_elsewhere():
    import platform
    from learner.device import keep_freed_memory
    if platform.libc_ver()[0] == "glibc":
        assert keep_freed_memory() is True
    assert keep_freed_memory("libno-such-libc.so.6") is False
