"""Samplers over the valid transitions of a FrameRing: uniform, and prioritized (sum tree).

Both only ever return slots whose transition is valid. The storage tells a sampler which slots
become valid (``add``) or stop being valid (``remove``) as chunks are written and old slots are
overwritten.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from common.config import ReplayConfig, SamplerKind
from common.errors import CarlaTD3Error, CheckpointError, ConfigError

_MAX_REJECTION_ROUNDS = 64


class Sampler(Protocol):
    """Chooses transition slots; see the module docstring."""

    def add(self, slots: np.ndarray) -> None: ...

    def remove(self, slots: np.ndarray) -> None: ...

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (slots int64 [B], importance weights float32 [B])."""
        ...

    def update(self, slots: np.ndarray, priorities: np.ndarray) -> None: ...

    def state(self) -> dict[str, np.ndarray]: ...

    def load(self, state: dict[str, np.ndarray]) -> None: ...


class UniformSampler:
    """Uniform over valid transitions, by vectorized rejection over the filled slots.

    Exact: accepted draws are uniform over the valid slots. The expected number of draws per
    sample is ``filled / num_valid`` (close to 1: one slot per episode holds no transition).
    """

    def __init__(self, valid: np.ndarray, filled: Callable[[], int],
                 num_valid: Callable[[], int]) -> None:
        self._valid = valid
        self._filled = filled
        self._num_valid = num_valid

    def add(self, slots: np.ndarray) -> None:
        """Nothing to do: the storage's ``valid`` array is the index."""

    def remove(self, slots: np.ndarray) -> None:
        """Nothing to do: the storage's ``valid`` array is the index."""

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        filled, valid = self._filled(), self._num_valid()
        if valid < 1:
            raise CarlaTD3Error("uniform sampler: no valid transition to sample")
        picked: list[np.ndarray] = []
        need = batch_size
        for _ in range(_MAX_REJECTION_ROUNDS):
            draw = rng.integers(0, filled, size=int(need * 1.25 * filled / valid) + 8)
            ok = draw[self._valid[draw]][:need]
            picked.append(ok)
            need -= ok.size
            if need == 0:
                slots = np.concatenate(picked)
                return slots, np.ones(batch_size, np.float32)
        raise CarlaTD3Error(f"uniform sampler: too few of {valid} valid slots found among {filled}")

    def update(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        """Uniform sampling ignores priorities."""

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load(self, state: dict[str, np.ndarray]) -> None:
        """Nothing to restore: the storage's ``valid`` array is the index."""


class SumTree:
    """A binary sum tree over ``capacity`` leaves with vectorized updates and lookups."""

    def __init__(self, capacity: int) -> None:
        self.leaves = 1 << max(0, int(capacity - 1).bit_length())
        self.tree = np.zeros(2 * self.leaves, np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def set(self, index: np.ndarray, value: np.ndarray) -> None:
        """Sets leaves (indices must be unique) and recomputes their ancestors."""
        pos = np.asarray(index, np.int64) + self.leaves
        self.tree[pos] = value
        if pos.size == 0:
            return
        pos = np.unique(pos >> 1)
        while True:
            self.tree[pos] = self.tree[2 * pos] + self.tree[2 * pos + 1]
            if pos[0] == 1:
                return
            pos = np.unique(pos >> 1)

    def get(self, index: np.ndarray) -> np.ndarray:
        return self.tree[np.asarray(index, np.int64) + self.leaves]

    def find(self, mass: np.ndarray) -> np.ndarray:
        """Leaf indices whose prefix-sum interval contains each ``mass``; never a zero leaf."""
        node = np.ones(mass.shape, np.int64)
        mass = mass.astype(np.float64).copy()
        while node[0] < self.leaves:
            left = 2 * node
            lv, rv = self.tree[left], self.tree[left + 1]
            right = ((mass >= lv) & (rv > 0)) | (lv <= 0)
            mass -= np.where(right, lv, 0.0)
            node = left + right
        return node - self.leaves


class PrioritizedSampler:
    """Proportional prioritized replay (Schaul et al. 2016) over a sum tree.

    A new transition gets the largest priority seen so far. Priorities from the learner are
    ``(|td| + eps) ** alpha``; importance weights ``(N * P(i)) ** -beta`` are divided by the
    largest weight in the batch. Invalid slots have priority 0, so they are never drawn.
    """

    def __init__(self, capacity: int, alpha: float, beta: float, eps: float,
                 num_valid: Callable[[], int]) -> None:
        for name, value in (("priority_alpha", alpha), ("priority_beta", beta)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} ({value}) must be in [0, 1]")
        if eps <= 0:
            raise ConfigError(f"priority_eps ({eps}) must be > 0")
        self._tree = SumTree(capacity)
        self._alpha, self._beta, self._eps = alpha, beta, eps
        self._num_valid = num_valid
        self.max_priority = 1.0

    def add(self, slots: np.ndarray) -> None:
        if slots.size:
            self._tree.set(slots, np.full(slots.size, self.max_priority ** self._alpha))

    def remove(self, slots: np.ndarray) -> None:
        if slots.size:
            self._tree.set(slots, np.zeros(slots.size))

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        total = self._tree.total
        if total <= 0:
            raise CarlaTD3Error("prioritized sampler: no transition has a priority above 0")
        mass = (np.arange(batch_size) + rng.random(batch_size)) * (total / batch_size)
        slots = self._tree.find(np.minimum(mass, np.nextafter(total, 0)))
        prob = self._tree.get(slots) / total
        weight = (self._num_valid() * prob) ** (-self._beta)
        return slots, (weight / weight.max()).astype(np.float32)

    def update(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        """Sets new priorities from |TD errors|; slots must be valid and unique."""
        p = np.abs(priorities).astype(np.float64) + self._eps
        if p.size:
            self.max_priority = max(self.max_priority, float(p.max()))
            self._tree.set(slots, p ** self._alpha)

    def state(self) -> dict[str, np.ndarray]:
        return {"tree": self._tree.tree, "max_priority": np.array([self.max_priority])}

    def load(self, state: dict[str, np.ndarray]) -> None:
        if state["tree"].shape != self._tree.tree.shape:
            raise CheckpointError(f"sum tree shape {state['tree'].shape} != {self._tree.tree.shape}")
        self._tree.tree[:] = state["tree"]
        self.max_priority = float(state["max_priority"][0])


def make_sampler(cfg: ReplayConfig, valid: np.ndarray, filled: Callable[[], int],
                 num_valid: Callable[[], int]) -> Sampler:
    """Builds the sampler ``cfg.sampler`` names, reading the storage through callables."""
    if cfg.sampler is SamplerKind.UNIFORM:
        return UniformSampler(valid, filled, num_valid)
    if cfg.sampler is SamplerKind.PRIORITIZED:
        return PrioritizedSampler(valid.size, cfg.priority_alpha, cfg.priority_beta,
                                  cfg.priority_eps, num_valid)
    raise ConfigError(f"sampler ({cfg.sampler!r}) is not one of {[k.value for k in SamplerKind]}")
