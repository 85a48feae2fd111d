"""Networks: the NatureCNN image encoder, the policy and the twin-Q critic.

Images arrive as uint8 and are scaled to [-1, 1] inside ``ImageEncoder.forward``, on whatever
device the network lives on, so uint8 is what travels and what replay stores.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from common.specs import EnvSpec


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class ImageEncoder(nn.Module):
    """NatureCNN (32 8x8 s4, 64 4x4 s2, 64 3x3 s1, linear to ``features``) + the vector.

    ``forward(image, vector)`` returns ``[B, features + vector_dim]``.
    """

    def __init__(self, spec: EnvSpec, features: int = 512) -> None:
        super().__init__()
        size = _conv_out(_conv_out(_conv_out(spec.image_size, 8, 4), 4, 2), 3, 1)
        self.cnn = nn.Sequential(
            nn.Conv2d(spec.frames, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * size * size, features), nn.ReLU(),
        )
        self.out_dim = features + spec.vector_dim

    def forward(self, image: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        x = image.float() * (2.0 / 255.0) - 1.0
        return torch.cat([self.cnn(x), vector], dim=1)


class PolicyNet(nn.Module):
    """Deterministic policy: its own encoder, MLP, tanh to [-1, 1]."""

    def __init__(self, spec: EnvSpec, features: int = 512, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.encoder = ImageEncoder(spec, features)
        self.head = mlp(self.encoder.out_dim, hidden, spec.action_dim)

    def forward(self, image: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.encoder(image, vector)))


class QNet(nn.Module):
    """Twin Q heads over ONE critic encoder (as Stable-Baselines3's ContinuousCritic).

    ``q_values(features, action)`` lets the policy loss score actions with features the
    critic's own encoder computed (under no_grad) instead of re-encoding.
    """

    def __init__(self, spec: EnvSpec, features: int = 512, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.encoder = ImageEncoder(spec, features)
        in_dim = self.encoder.out_dim + spec.action_dim
        self.q1 = mlp(in_dim, hidden, 1)
        self.q2 = mlp(in_dim, hidden, 1)

    def q_values(self, features: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([features, action], dim=1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def forward(self, image: torch.Tensor, vector: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_values(self.encoder(image, vector), action)
