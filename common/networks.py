"""Networks: the NatureCNN image encoder, the policy and the twin-Q critic.

Images arrive as uint8 and are scaled to [-1, 1] inside ``ImageEncoder.forward``, on whatever
device the network lives on, so uint8 is what travels and what replay stores.

The twin Q heads share ONE critic encoder (as Stable-Baselines3's ``ContinuousCritic`` does).
Why: the encoder is ~97% of the critic's arithmetic, so a second CNN would nearly double the
critic's cost per update; clipped double Q needs two value estimates whose errors are not the
same, and two independently initialised heads trained on the same features already give that
(the min over two heads is what corrects the over-estimation, Fujimoto et al. 2018 sec. 4.1);
and one encoder trained by the sum of both heads' losses gets twice the gradient signal per
sample. The policy never shares the critic's encoder (see ``EncoderTopology``).
"""
from __future__ import annotations

import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config import NetworkConfig
from common.errors import SpecError
from common.pixel_layout import blocked_kernel, to_pixels
from common.specs import EnvSpec


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """Linear layers of widths ``hidden`` with ReLU between them, then a linear output."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class FlattenHWC(nn.Module):
    """Flattens [B, C, H, W] in (H, W, C) order: a free view of a channels-last tensor.

    ``nn.Flatten``'s (C, H, W) order would copy a channels-last conv output into NCHW order
    and hand its backward an NCHW gradient, which the ReLU and convolution backward then
    convert back (docs/benchmarks.md, "Code choices"). The order only permutes the columns of
    the following linear layer, so it is the same family of functions; checkpoints record it
    through ``learner.state.VERSION``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


# Below this batch the product stays a matrix product: a rollout worker's batch-1 product is a
# matrix-vector product, which beats the convolution there (docs/benchmarks.md, "Code choices").
DENSE_CONV_MIN_BATCH = 32


class DenseHWC(nn.Linear):
    """The encoder's linear layer over the last conv map, flattened by ``FlattenHWC``.

    A plain ``nn.Linear`` (same parameters, same function) that can run CPU fp32 batches of
    ``DENSE_CONV_MIN_BATCH`` or more as a convolution whose kernel covers the whole map: the
    input and the weight viewed as channels-last [B, C, H, W] and [out, C, H, W] (no copies),
    giving [B, out, 1, 1]. Torch sends fp32 matrix products to MKL and convolutions to oneDNN,
    and on some CPUs (AMD's: MKL takes slower code paths there) oneDNN's convolution runs this
    layer faster (docs/benchmarks.md, "Code choices"). Whether it is faster is timed per
    machine (``learner/precision.py``), which sets ``as_conv``; off, and for bf16, CUDA and
    compiled code, it is ``nn.Linear``.
    """

    def __init__(self, channels: int, height: int, width: int, out_features: int) -> None:
        super().__init__(channels * height * width, out_features)
        self.map_shape = (channels, height, width)
        self.as_conv = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.as_conv and x.dtype == torch.float32 and x.device.type == "cpu"
                and x.shape[0] >= DENSE_CONV_MIN_BATCH and not torch.compiler.is_compiling()):
            c, h, w = self.map_shape
            n = x.shape[0]
            kernel = self.weight.view(-1, h, w, c).permute(0, 3, 1, 2)
            return F.conv2d(x.view(n, h, w, c).permute(0, 3, 1, 2), kernel, self.bias).view(n, -1)
        return F.linear(x, self.weight, self.bias)


def run_dense_as_conv(module: nn.Module, on: bool) -> None:
    """Sets ``DenseHWC.as_conv`` on every such layer in ``module``."""
    for layer in module.modules():
        if isinstance(layer, DenseHWC):
            layer.as_conv = on


class ImageEncoder(nn.Module):
    """NatureCNN (32 8x8 s4, 64 4x4 s2, 64 3x3 s1, linear to ``features``) + the vector.

    ``forward(image, vector)`` returns ``[B, features + vector_dim]``. The learner, which
    feeds the same images to several encoders, converts them once with ``prepare`` and calls
    ``encode``. The [0, 255] -> [-1, 1] pixel scaling is folded into the first convolution's
    weight and bias (one pass less over the largest tensor); the parameters, and so the
    weights that travel to rollout workers, are those of the plain NatureCNN on scaled pixels.

    Deviation from the
    NatureCNN: the final linear layer is followed by LayerNorm and tanh (as in DrQ and SAC-AE)
    instead of ReLU. With ReLU the policy loss inflates the policy encoder's features until the
    tanh of the policy head saturates at +-1, where its gradient vanishes and the policy stays
    stuck past the critic's optimum (seen in tests/unit/test_td3_pixels.py); bounded features
    prevent that. The scaled image is put
    in channels-last layout, which the CPU (oneDNN) and GPU (cuDNN) convolutions run fastest;
    the learner stores the conv weights channels-last too (``to_channels_last``).
    """

    def __init__(self, spec: EnvSpec, features: int = 512) -> None:
        super().__init__()
        size = _conv_out(_conv_out(_conv_out(spec.image_size, 8, 4), 4, 2), 3, 1)
        self.cnn = nn.Sequential(
            nn.Conv2d(spec.frames, 32, 8, stride=4), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(inplace=True),
            FlattenHWC(),
            DenseHWC(64, size, size, features), nn.LayerNorm(features), nn.Tanh(),
        )
        self.out_dim = features + spec.vector_dim

    @staticmethod
    def prepare(image: torch.Tensor, dtype: torch.dtype = torch.float32,
                blocks: int = 1) -> torch.Tensor:
        """uint8 [B, F, H, W] -> float pixel values in [0, 255], channels-last, what
        ``encode`` takes (``common.pixel_layout.to_pixels``). ``dtype`` bfloat16 (exact for
        0..255) is for a bf16-autocast learner: its convolutions would otherwise cast the fp32
        pixels again on every encoder pass. ``blocks`` above 1 (the first convolution's
        stride, or 1) gives the pixels space-to-depth, which ``encode`` runs through the same
        first convolution rearranged to stride 1."""
        return to_pixels(image, dtype, blocks)

    @property
    def first_stride(self) -> int:
        """The first convolution's stride: the ``blocks`` of its space-to-depth form."""
        return self.cnn[0].stride[0]

    def folded_first_conv(self, blocks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The first convolution's weight and bias with the pixel scaling folded in; with
        ``blocks`` above 1, its weight rearranged for space-to-depth pixels
        (``blocked_kernel``)."""
        first = self.cnn[0]
        # conv(w, b)(x * 2/255 - 1) == conv(w * 2/255, b - sum(w))(x)
        scale = 2.0 / 255.0
        weight = (blocked_kernel(first.weight, blocks, scale) if blocks > 1
                  else first.weight * scale)
        return weight, first.bias - first.weight.sum(dim=(1, 2, 3))

    def encode(self, pixels: torch.Tensor, vector: torch.Tensor,
               first_conv: tuple[torch.Tensor, torch.Tensor] | None = None,
               tail: nn.Module | None = None) -> torch.Tensor:
        """Features of ``prepare``d pixels (either form), concatenated with the vector. For
        inference with fixed weights, ``first_conv`` is ``folded_first_conv()`` computed ahead
        and ``tail`` is ``tail()`` built ahead (plain pixels only)."""
        first = self.cnn[0]
        blocks = self.first_stride if pixels.shape[1] != first.in_channels else 1
        weight, bias = (first_conv if first_conv is not None and blocks == 1
                        else self.folded_first_conv(blocks))
        h = F.conv2d(pixels, weight, bias, stride=1 if blocks > 1 else first.stride)
        return torch.cat([(tail if tail is not None else self.cnn[1:])(h), vector.to(h.dtype)],
                         dim=1)

    def tail(self) -> nn.Module:
        """The layers after the first convolution, sharing its parameters: slicing the
        Sequential builds a new module on every call, a cost a batch-1 inference notices."""
        return nn.Sequential(*list(self.cnn)[1:])

    def forward(self, image: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return self.encode(self.prepare(image), vector)


class PolicyNet(nn.Module):
    """Deterministic policy: its own encoder, MLP, tanh to [-1, 1]."""

    def __init__(self, spec: EnvSpec, features: int = 512, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.encoder = ImageEncoder(spec, features)
        self.head = mlp(self.encoder.out_dim, hidden, spec.action_dim)

    @classmethod
    def from_config(cls, spec: EnvSpec, cfg: NetworkConfig) -> "PolicyNet":
        """The policy a rollout worker builds to load ``policy_state`` snapshots into."""
        return cls(spec, cfg.encoder_features, cfg.hidden_sizes)

    def act(self, features: torch.Tensor) -> torch.Tensor:
        """The action from encoder features (lets the learner supply the features)."""
        return torch.tanh(self.preactivation(features))

    def preactivation(self, features: torch.Tensor) -> torch.Tensor:
        """The head's output before the tanh (``act`` is its tanh)."""
        return self.head(features)

    def forward(self, image: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return self.act(self.encoder(image, vector))


def twin_mlp(first: nn.Sequential, second: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``[first(x), second(x)]`` squeezed to ``[2, B]``, for two ``mlp``s of the same shape,
    as one matrix product per layer: the input layer as one product with the two weights
    stacked on the output axis, the later layers as one batched product (``baddbmm``).

    Same parameters, same function: the two heads stay two modules (checkpoints and the
    policy step's Q1 read them as before). Why: the twin heads run in series after the critic
    encoder, on the critical path of every update; on a GPU at batch 256 each small product
    costs its launch latency more than its arithmetic, so a layer's two products become one
    (the stacking copies the small weights, about 1.6 MB at 256-256 heads, in the same pass).

    Args:
        first, second: ``mlp(in_dim, hidden, 1)`` heads of the same ``in_dim`` and ``hidden``.
        x: float [B, in_dim], the input both heads read.

    Returns:
        float [2, B]: row 0 the first head's values, row 1 the second's.
    """
    first_linears = [m for m in first if isinstance(m, nn.Linear)]
    second_linears = [m for m in second if isinstance(m, nn.Linear)]
    head, *rest = zip(first_linears, second_linears)
    h = F.linear(x, torch.cat([head[0].weight, head[1].weight]),
                 torch.cat([head[0].bias, head[1].bias]))
    h = h.view(x.shape[0], 2, -1).transpose(0, 1)  # [2, B, width]
    for a, b in rest:
        h = torch.relu(h)
        weight = torch.stack([a.weight, b.weight]).transpose(1, 2)  # [2, in, out]
        h = torch.baddbmm(torch.stack([a.bias, b.bias]).unsqueeze(1), h, weight)
    return h.squeeze(-1)


class QNet(nn.Module):
    """Twin Q heads over ONE critic encoder (see the module docstring for why).

    ``q_values(features, action)`` lets the policy loss score actions with features the
    critic's own encoder computed (under no_grad) instead of re-encoding; it runs the two
    heads as one product per layer (``twin_mlp``).
    """

    def __init__(self, spec: EnvSpec, features: int = 512, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.encoder = ImageEncoder(spec, features)
        in_dim = self.encoder.out_dim + spec.action_dim
        self.q1 = mlp(in_dim, hidden, 1)
        self.q2 = mlp(in_dim, hidden, 1)

    @classmethod
    def from_config(cls, spec: EnvSpec, cfg: NetworkConfig) -> "QNet":
        return cls(spec, cfg.encoder_features, cfg.hidden_sizes)

    def q_values(self, features: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads' values, computed as ONE batched product per layer (``twin_mlp``)."""
        x = torch.cat([features, action.to(features.dtype)], dim=1)
        q = twin_mlp(self.q1, self.q2, x)
        return q[0], q[1]

    def q1_value(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q1 only, as TD3's policy loss uses (Stable-Baselines3 ``q1_forward``)."""
        return self.q1(torch.cat([features, action.to(features.dtype)], dim=1)).squeeze(-1)

    def forward(self, image: torch.Tensor, vector: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_values(self.encoder(image, vector), action)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Stores every conv weight of ``module`` channels-last (in place); returns ``module``."""
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            sub.weight.data = sub.weight.data.contiguous(memory_format=torch.channels_last)
    return module


def _check_policy_state(net: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    own = net.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise SpecError(f"policy state keys do not match the network: missing {missing}, "
                        f"unexpected {unexpected}")
    for name, target in own.items():
        value = np.asarray(state[name])
        if tuple(value.shape) != tuple(target.shape):
            raise SpecError(f"policy state {name!r}: shape {tuple(value.shape)} != network's "
                            f"{tuple(target.shape)}")
        if value.dtype.kind != "f":
            raise SpecError(f"policy state {name!r}: dtype {value.dtype} is not floating point")


def load_policy_state(net: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Loads a ``policy_state()`` snapshot (CPU numpy arrays) into ``net`` (on the CPU) in place.

    The values are not checked for NaNs here: the learner refuses to publish them
    (``common.weights.require_finite``), once, instead of every rollout worker scanning every
    version again. The arrays may be read-only views (the shared-memory weight file's).

    Args:
        net: a ``PolicyNet`` built from the same spec and NetworkConfig as the learner's.
        state: parameter name -> array, exactly the keys of ``net.state_dict()``.

    Raises:
        SpecError: naming missing or unexpected keys, or the first shape or dtype mismatch.
    """
    _check_policy_state(net, state)
    with torch.no_grad():
        for name, target in net.state_dict().items():
            # One pass straight into the parameter's memory, whatever its strides
            # (channels-last conv weights); torch.from_numpy warns about read-only views.
            np.copyto(target.numpy(), state[name], casting="same_kind")


def view_policy_state(build: Callable[[], nn.Module], state: Mapping[str, np.ndarray]) -> nn.Module:
    """A network whose parameters ARE ``state``'s arrays: no copy, for weights that many
    processes share (deploy/weights_shm.py). Inference only, under ``torch.inference_mode``;
    the arrays may be read-only (a write through a parameter would then fault), and they must
    stay valid and unchanged while the network is used.

    Args:
        build: makes the network (called on the meta device: no memory, no initialisation).
        state: parameter name -> array, exactly the network's ``state_dict()`` keys, float32
            (4-d weights best channels-last, as the CPU convolutions take them).

    Raises:
        SpecError: naming missing or unexpected keys, or the first shape or dtype mismatch.
    """
    with torch.device("meta"):
        net = build()
    _check_policy_state(net, state)
    for name, value in state.items():
        if np.asarray(value).dtype != np.float32:
            raise SpecError(f"policy state {name!r}: dtype {np.asarray(value).dtype} is not "
                            f"float32, which a network cannot use in place")
    with warnings.catch_warnings():  # read-only arrays: "PyTorch does not support non-writable"
        warnings.simplefilter("ignore", UserWarning)
        tensors = {name: torch.from_numpy(np.asarray(value)) for name, value in state.items()}
    net.load_state_dict(tensors, assign=True)
    return net.requires_grad_(False).eval()
