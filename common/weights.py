"""Versioned policy snapshots: what the learner publishes and rollout actors load."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class PolicySnapshot(NamedTuple):
    """The policy's weights (encoder and head) at one version.

    Attributes:
        version: the learner's update count when the snapshot was taken; -1 means "no policy
            yet" (transitions from the uniform random warm-up carry it).
        state: parameter name -> CPU numpy array.
    """

    version: int
    state: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.state.values()))


RANDOM_POLICY_VERSION = -1
