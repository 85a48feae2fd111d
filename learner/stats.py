"""What an update reports (``UpdateStats``) and how it comes back from the device.

``td3_update`` (learner/update.py) returns ``UpdateTensors``, its stats on the device. The
machinery packs them into one tensor, the scalars in ``SCALARS`` order and then the
per-sample |TD error| (``pack``), so that they cross to the host in one copy;
``PendingUpdate`` makes that copy without blocking and waits for it only when the stats are
read (``unpack``, by name), so a loop can launch the next update first (``learner.loop``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch


class UpdateTensors(NamedTuple):
    """The stats of one update as device tensors (scalars, then |TD error| [B]); the field
    order is the packed order. See ``UpdateStats`` for their meaning."""

    critic_loss: torch.Tensor
    policy_loss: torch.Tensor
    q1_mean: torch.Tensor
    q2_mean: torch.Tensor
    target_q_mean: torch.Tensor
    critic_encoder_grad_norm: torch.Tensor
    policy_encoder_grad_norm: torch.Tensor
    critic_encoder_weight_change: torch.Tensor
    policy_encoder_weight_change: torch.Tensor
    td_error: torch.Tensor


SCALARS = UpdateTensors._fields[:-1]  # the packed vector's scalars, by position


def pack(stats: UpdateTensors) -> torch.Tensor:
    """The stats as one float32 vector: ``SCALARS`` in order, then |TD error|."""
    scalars = torch.stack([getattr(stats, name) for name in SCALARS])
    return torch.cat([scalars.float(), stats.td_error.float()])


@dataclass(frozen=True, eq=False)
class UpdateStats:
    """Diagnostics of one update, as python floats, plus |TD error| per sample.

    Policy-side values (``policy_loss``, ``policy_encoder_grad_norm``) are those of the latest
    policy step; ``policy_updated`` says whether this update made one. Weight changes are L2
    norms of the encoder's parameter change since the previous update's stats.
    """

    updates: int
    policy_updated: bool
    critic_loss: float
    policy_loss: float
    q1_mean: float
    q2_mean: float
    target_q_mean: float
    critic_encoder_grad_norm: float
    policy_encoder_grad_norm: float
    critic_encoder_weight_change: float
    policy_encoder_weight_change: float
    td_error: np.ndarray


class PendingUpdate:
    """A launched update; ``result()`` waits for it and returns its ``UpdateStats``.

    On CUDA the packed stats are copied into a pinned host buffer without blocking, and the
    wait is on an event recorded after that copy: the one host synchronisation of an update.
    """

    def __init__(self, updates: int, policy_updated: bool, packed: torch.Tensor,
                 host: torch.Tensor | None) -> None:
        self.updates, self.policy_updated = updates, policy_updated
        self._stats: UpdateStats | None = None
        self._event: torch.cuda.Event | None = None
        if host is None:
            self._host = packed
        else:
            host.copy_(packed, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
            self._host = host

    def result(self) -> UpdateStats:
        if self._stats is None:
            if self._event is not None:
                self._event.synchronize()
            self._stats = unpack(self._host.numpy(), self.updates, self.policy_updated)
            self._host = None
        return self._stats


def unpack(packed: np.ndarray, updates: int, policy_updated: bool) -> UpdateStats:
    """The ``UpdateStats`` of a ``pack``ed vector copied to the host."""
    values = {name: float(packed[i]) for i, name in enumerate(SCALARS)}
    return UpdateStats(updates=updates, policy_updated=policy_updated,
                       td_error=packed[len(SCALARS):].copy(), **values)
