"""Network shapes, layouts and the policy-snapshot loader rollout workers use."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.config import NetworkConfig
from common.errors import SpecError
from common.networks import (DENSE_CONV_MIN_BATCH, DenseHWC, FlattenHWC, ImageEncoder, PolicyNet,
                             QNet, load_policy_state, mlp, run_dense_as_conv, to_channels_last,
                             twin_mlp)
from common.pixel_layout import blocked_kernel, interleave_frames, space_to_depth
from common.specs import EnvSpec

SPEC = EnvSpec(frames=4, image_size=84, num_waypoints=10)
NET = NetworkConfig(encoder_features=64, hidden_sizes=(32, 32))


def _obs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8, generator=g)
    return image, torch.randn(batch, SPEC.vector_dim, generator=g)


def test_shapes_and_action_range():
    image, vector = _obs(3)
    encoder = ImageEncoder(SPEC, 64)
    assert encoder(image, vector).shape == (3, 64 + SPEC.vector_dim) == (3, encoder.out_dim)
    action = PolicyNet.from_config(SPEC, NET)(image, vector)
    assert action.shape == (3, 2) and action.abs().max() <= 1.0
    q1, q2 = QNet.from_config(SPEC, NET)(image, vector, action)
    assert q1.shape == q2.shape == (3,) and not torch.equal(q1, q2)


def test_conv_stack_is_the_nature_cnn():
    convs = [m for m in ImageEncoder(SPEC).cnn if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (4, 32, (8, 8), (4, 4)), (32, 64, (4, 4), (2, 2)), (64, 64, (3, 3), (1, 1))]
    assert ImageEncoder(SPEC).cnn[-3].in_features == 64 * 7 * 7


def test_folded_pixel_scaling_equals_the_plain_cnn_on_scaled_pixels():
    torch.manual_seed(0)
    encoder = ImageEncoder(SPEC, 64)
    image, vector = _obs(3)
    scaled = image.float() * (2.0 / 255.0) - 1.0
    expected = torch.cat([encoder.cnn(scaled), vector], dim=1)
    torch.testing.assert_close(encoder(image, vector), expected, rtol=1e-4, atol=1e-5)
    prepared = ImageEncoder.prepare(image)
    assert prepared.dtype == torch.float32 and prepared.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(prepared, image.float())


def test_space_to_depth_puts_each_block_of_pixels_in_the_channels():
    image = torch.arange(2 * 3 * 9 * 10).reshape(2, 3, 9, 10).to(torch.int32)
    blocks = space_to_depth(image, 4, torch.float64)
    assert blocks.shape == (2, 3 * 16, 2, 2) and blocks.dtype == torch.float64
    assert blocks.is_contiguous(memory_format=torch.channels_last)
    for f, a, c, y, x in [(0, 0, 0, 0, 0), (2, 3, 1, 1, 0), (1, 2, 3, 1, 1), (2, 3, 3, 1, 1)]:
        assert blocks[1, f * 16 + a * 4 + c, y, x] == image[1, f, 4 * y + a, 4 * x + c]


@pytest.mark.parametrize("size", [84, 48, 50, 37])
def test_an_encoder_on_blocks_of_pixels_computes_the_strided_encoder(size):
    """The 8x8 stride-4 first convolution as a 2x2 stride-1 one over space-to-depth pixels:
    the same features and gradients, for image sizes that are and are not multiples of 4."""
    spec = EnvSpec(frames=4, image_size=size, num_waypoints=10)
    torch.manual_seed(0)
    encoder = to_channels_last(ImageEncoder(spec, 64))
    g = torch.Generator().manual_seed(1)
    block = torch.randint(0, 256, (3, 5, size, size), dtype=torch.uint8, generator=g)
    image, vector = block[:, 1:], torch.randn(3, spec.vector_dim, generator=g)  # a view
    results = []
    for blocks in (1, 4):
        pixels = encoder.prepare(image, blocks=blocks)
        assert pixels.shape[1] == 4 * blocks * blocks
        out = encoder.encode(pixels, vector)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in encoder.parameters()]))
        encoder.zero_grad(set_to_none=True)
    (strided, strided_grads), (blocked, blocked_grads) = results
    torch.testing.assert_close(blocked, strided, rtol=1e-5, atol=1e-5)
    for a, b in zip(strided_grads, blocked_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_a_kernel_that_is_not_a_multiple_of_its_stride_has_no_blocked_form():
    blocked_kernel(torch.zeros(2, 3, 8, 8), 4)
    with pytest.raises(SpecError, match="7x7 kernel of stride 4"):
        blocked_kernel(torch.zeros(2, 3, 7, 7), 4)


def test_channels_last_weights_compute_the_same_values():
    torch.manual_seed(0)
    net = PolicyNet.from_config(SPEC, NET)
    image, vector = _obs(4)
    expected = net(image, vector)
    to_channels_last(net)
    assert net.encoder.cnn[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(net(image, vector), expected, rtol=1e-4, atol=1e-5)


def test_flatten_is_hwc_ordered_and_a_view_of_channels_last_features():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    flat = FlattenHWC()(x)
    assert torch.equal(flat, x.permute(0, 2, 3, 1).reshape(2, -1))
    assert flat[0, :3].tolist() == [x[0, 0, 0, 0], x[0, 1, 0, 0], x[0, 2, 0, 0]]  # channels innermost
    cl = x.contiguous(memory_format=torch.channels_last)
    assert FlattenHWC()(cl).data_ptr() == cl.data_ptr()  # no copy for a channels-last tensor
    assert torch.equal(FlattenHWC()(cl), flat)


def test_q1_value_is_the_first_twin_head():
    critic = QNet.from_config(SPEC, NET)
    image, vector = _obs(2)
    action = torch.rand(2, 2) * 2 - 1
    features = critic.encoder(image, vector)
    torch.testing.assert_close(critic.q1_value(features, action), critic(image, vector, action)[0])


@pytest.mark.parametrize("hidden", [(), (16,), (16, 8, 4)])
def test_twin_mlp_is_both_heads_and_trains_both_heads_parameters(hidden):
    torch.manual_seed(0)
    first, second = mlp(12, hidden, 1), mlp(12, hidden, 1)
    x = torch.randn(5, 12)
    q = twin_mlp(first, second, x)
    assert q.shape == (2, 5)
    torch.testing.assert_close(q, torch.stack([first(x).squeeze(-1), second(x).squeeze(-1)]))
    (q[0].sum() + 2 * q[1].sum()).backward()
    got = [p.grad.clone() for p in [*first.parameters(), *second.parameters()]]
    for p in [*first.parameters(), *second.parameters()]:
        p.grad = None
    (first(x).sum() + 2 * second(x).sum()).backward()
    for g, p in zip(got, [*first.parameters(), *second.parameters()]):
        torch.testing.assert_close(g, p.grad)


def test_load_policy_state_round_trip():
    torch.manual_seed(0)
    source = to_channels_last(PolicyNet.from_config(SPEC, NET))
    state = {k: v.detach().contiguous().numpy().copy() for k, v in source.state_dict().items()}
    torch.manual_seed(1)
    target = PolicyNet.from_config(SPEC, NET)
    image, vector = _obs(2)
    assert not torch.equal(target(image, vector), source(image, vector))
    load_policy_state(target, state)
    torch.testing.assert_close(target(image, vector), source(image, vector))


@pytest.mark.parametrize("name,mutate,message", [
    ("missing", lambda s: s.pop("head.0.bias"), r"missing \['head.0.bias'\]"),
    ("unexpected", lambda s: s.__setitem__("head.9.weight", np.zeros(1, np.float32)),
     r"unexpected \['head.9.weight'\]"),
    ("shape", lambda s: s.__setitem__("head.0.bias", np.zeros(7, np.float32)),
     r"'head.0.bias': shape \(7,\) != network's \(32,\)"),
    ("dtype", lambda s: s.__setitem__("head.0.bias", np.zeros(32, np.int32)), "not floating point"),
])
def test_load_policy_state_rejects_mismatches(name, mutate, message):
    net = PolicyNet.from_config(SPEC, NET)
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    mutate(state)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(SpecError, match=message):
        load_policy_state(net, state)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), name


@pytest.mark.parametrize("case", ["obs view", "next view", "one frame", "strided rows", "batch 1"])
def test_frames_interleaved_on_the_cpu_equal_torchs_channels_last_copy(case):
    # The learner's stacks are views of one [B, F + 1, H, W] block (B = 40 takes OpenCV's path
    # in prepare); the actor's is a batch of 1 (torch's path).
    block = torch.randint(0, 256, (40, 5, 12, 10), dtype=torch.uint8)
    image = {"obs view": block[:, :4], "next view": block[:, 1:], "one frame": block[:, :1],
             "strided rows": block[:, :4, ::2], "batch 1": block[:1, :4]}[case]
    out = interleave_frames(image)
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, image)
    prepared = ImageEncoder.prepare(image)
    assert prepared.dtype == torch.float32 and torch.equal(prepared, image.float())
    assert prepared.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("batch", [DENSE_CONV_MIN_BATCH, 40])
def test_dense_hwc_as_a_convolution_is_the_same_linear_layer(batch):
    torch.manual_seed(0)
    plain, conv = DenseHWC(8, 3, 3, 16), DenseHWC(8, 3, 3, 16)
    conv.load_state_dict(plain.state_dict())
    run_dense_as_conv(conv, True)
    assert conv.as_conv and not plain.as_conv
    assert set(conv.state_dict()) == {"weight", "bias"}  # checkpoints and weight files unchanged
    maps = torch.randn(batch, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    xs = [FlattenHWC()(maps).detach().requires_grad_() for _ in range(2)]
    outs = [layer(x) for layer, x in zip((plain, conv), xs)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for out in outs:
        out.square().sum().backward()
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(conv.bias.grad, plain.bias.grad, rtol=1e-5, atol=1e-4)


def test_dense_hwc_stays_a_matrix_product_for_small_batches_and_bf16(monkeypatch):
    layer = DenseHWC(8, 3, 3, 16)
    run_dense_as_conv(layer, True)
    calls = []
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(1))
    x = torch.randn(DENSE_CONV_MIN_BATCH - 1, 72)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(DENSE_CONV_MIN_BATCH, 72).bfloat16()).dtype == torch.bfloat16
    assert calls == []
