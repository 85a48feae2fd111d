"""What an update reports (``UpdateStats``) and how it comes back from the device.

The update step packs its scalars and the per-sample |TD error| into one tensor;
``PendingUpdate`` copies that tensor to the host without blocking and waits for it only when
the stats are read, so a loop can launch the next update first (``learner.loop``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Positions in the packed stats vector (the |TD error| follows them).
SCALARS = ("critic_loss", "policy_loss", "q1_mean", "q2_mean", "target_q_mean",
           "critic_encoder_grad_norm", "policy_encoder_grad_norm",
           "critic_encoder_weight_change", "policy_encoder_weight_change")


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
            packed = self._host.numpy()
            values = dict(zip(SCALARS, (float(v) for v in packed[: len(SCALARS)])))
            self._stats = UpdateStats(updates=self.updates, policy_updated=self.policy_updated,
                                      td_error=packed[len(SCALARS):].copy(), **values)
            self._host = None
        return self._stats
