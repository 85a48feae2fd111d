"""Exploration: uniform random warm-up actions and Gaussian noise on the policy's action."""
from __future__ import annotations

import numpy as np

from common.errors import ConfigError


def actor_noise_scale(base: float, spread: float, index: int, count: int) -> float:
    """Ape-X style per-actor noise: ``base ** (1 + spread * index / (count - 1))``.

    With ``spread`` 0 every actor uses ``base``; a larger spread gives later actors less noise,
    so the fleet covers a range from exploratory to nearly greedy.

    Raises:
        ConfigError: if ``base`` is not in [0, 1) when ``spread`` > 0, or arguments are out of range.
    """
    if base < 0:
        raise ConfigError(f"exploration_noise ({base}) must be >= 0")
    if spread < 0:
        raise ConfigError(f"noise_spread ({spread}) must be >= 0")
    if not 0 <= index < count:
        raise ConfigError(f"actor index ({index}) must be in [0, {count})")
    if spread == 0 or count == 1:
        return base
    if base >= 1:
        raise ConfigError(f"exploration_noise ({base}) must be < 1 when noise_spread > 0")
    return float(base ** (1.0 + spread * index / (count - 1)))


class GaussianExploration:
    """Adds N(0, scale^2) to each action dimension and clips to [-1, 1]."""

    def __init__(self, scale: float, rng: np.random.Generator) -> None:
        self.scale = scale
        self._rng = rng

    def __call__(self, action: np.ndarray) -> np.ndarray:
        noisy = action + self._rng.normal(0.0, self.scale, size=action.shape)
        return np.clip(noisy, -1.0, 1.0).astype(np.float32)

    def random_action(self, action_dim: int) -> np.ndarray:
        """A uniform random action in [-1, 1], for the warm-up phase."""
        return self._rng.uniform(-1.0, 1.0, size=action_dim).astype(np.float32)
