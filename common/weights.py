"""Versioned policy snapshots: what the learner publishes and rollout workers load."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from common.errors import SpecError


class PolicySnapshot(NamedTuple):
    """The policy's weights (encoder and head) at one version.

    Attributes:
        version: the learner's update count when the snapshot was taken; -1 means "no policy
            yet" (transitions from the uniform random warm-up carry it).
        state: parameter name -> CPU numpy array. Every published snapshot holds only finite
            values: the learner checks once, before publishing (``require_finite``), so the
            rollout workers that load it do not each check again.
    """

    version: int
    state: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.state.values()))


RANDOM_POLICY_VERSION = -1


def require_finite(snapshot: PolicySnapshot) -> None:
    """Raises SpecError naming the first array of ``snapshot`` that holds a NaN or an infinity
    (a diverged learner), with the version and the first bad value's index."""
    for name, array in snapshot.state.items():
        finite = np.isfinite(array)
        if not finite.all():
            bad = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise SpecError(f"policy version {snapshot.version}: {name!r} holds "
                            f"{np.asarray(array)[bad]} at index {bad}; non-finite weights are "
                            f"not published")
