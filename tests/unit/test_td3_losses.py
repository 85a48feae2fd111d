"""The TD3 math, case by case."""
import pytest
import torch

from learner import losses


@pytest.mark.parametrize("name,terminated,expected", [
    ("bootstraps_when_running", 0.0, 1.0 + 0.9 * 2.0),
    ("terminated_masks_bootstrap", 1.0, 1.0),
])
def test_td_target_masks_with_terminated_only(name, terminated, expected):
    y = losses.td_target(torch.tensor([1.0]), torch.tensor([terminated]), torch.tensor([2.0]),
                         torch.tensor([5.0]), gamma=0.9)
    assert y.item() == pytest.approx(expected), name


def test_td_target_takes_the_smaller_q():
    y = losses.td_target(torch.zeros(2), torch.zeros(2), torch.tensor([3.0, -1.0]),
                         torch.tensor([2.0, 4.0]), gamma=1.0)
    assert y.tolist() == [2.0, -1.0]


def test_target_smoothing_clips_noise_then_action():
    action = torch.tensor([[0.9, -0.2]])
    noise = torch.tensor([[0.05, -3.0]])
    out = losses.smoothed_target_action(action, noise, noise_clip=0.5)
    assert out[0].tolist() == pytest.approx([0.95, -0.7])
    out = losses.smoothed_target_action(action, torch.tensor([[0.4, 0.0]]), noise_clip=0.5)
    assert out[0, 0].item() == 1.0


def test_critic_loss_weights_each_sample_and_reports_abs_td():
    q1, q2 = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 3.0])
    target = torch.tensor([0.0, 1.0])
    loss, td = losses.critic_loss(q1, q2, target, torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)
    assert td.tolist() == pytest.approx([1.5, 2.0])
    loss, _ = losses.critic_loss(q1, q2, target, torch.ones(2))
    assert loss.item() == pytest.approx(((1 + 4) + (4 + 4)) / 2)


def test_soft_update_is_polyak_averaging():
    target, online = [torch.zeros(3)], [torch.full((3,), 2.0)]
    losses.soft_update(target, online, tau=0.25)
    assert target[0].tolist() == [0.5, 0.5, 0.5]
    assert online[0].tolist() == [2.0, 2.0, 2.0]


def test_weight_change_measures_then_refreshes_snapshot():
    params = [torch.tensor([3.0, 4.0])]
    snapshot = [torch.zeros(2)]
    assert losses.weight_change(params, snapshot).item() == pytest.approx(5.0)
    assert losses.weight_change(params, snapshot).item() == 0.0


def test_clip_grads_reports_the_encoder_norm_before_clipping_the_total():
    enc, head = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    (3 * enc[0] + 4 * enc[1] + 12 * head[0]).backward()
    cpu = torch.device("cpu")
    assert losses.clip_grads([enc], [head], 1.3, cpu).item() == pytest.approx(5.0)
    # total norm 13 -> 1.3: every gradient scaled by 0.1, as clip_grad_norm_ does
    assert enc.grad.tolist() == pytest.approx([0.3, 0.4], rel=1e-5)
    assert head.grad.tolist() == pytest.approx([1.2], rel=1e-5)
    assert losses.clip_grads([enc], [head], 0.0, cpu).item() == pytest.approx(0.5, rel=1e-5)
    assert enc.grad.tolist() == pytest.approx([0.3, 0.4], rel=1e-5)  # 0: no clipping
    assert losses.clip_grads([], [head], 100.0, cpu).item() == 0.0
    assert head.grad.tolist() == pytest.approx([1.2], rel=1e-5)  # under the bound: unchanged
    assert losses.clip_grads([torch.zeros(1, requires_grad=True)], [], 1.0, cpu).item() == 0.0
