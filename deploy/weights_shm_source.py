"""ShmWeightSource: the WeightSource (rollout/weights.py) over one channel's shared-memory weight
files (deploy/weights_shm.py): the policy runs on the newest slot's arrays in place.

Before each inference it locks the newest slot (a few memory reads and two ``flock`` calls, at
every step whatever ``poll`` says) and, when that slot is newer than the policy, offers its
arrays SHARED, the lock held until ``release``. No copy: each slot's arrays are the same
objects every time, so the policy keeps a network on each. A file that proves truncated or
damaged ends the source (``failure``); a policy running on it is told to WITHDRAW.
"""
from __future__ import annotations

import logging
from typing import Callable

from rollout.weights import WeightOffer
from common.errors import CheckpointError
from deploy.weights_shm import MAX_VERSION, ShmChannel
from deploy.weights_shm_reader import ShmWeightReader

log = logging.getLogger(__name__)


class ShmWeightSource:
    """A rollout worker's source over one channel's slot files.

    Args:
        channel: the files, as the learner's writer describes them.
        ceiling: the highest version to believe at this moment (higher ones are damage,
            ignored, so they cannot hold the worker on one slot).

    Raises (constructor):
        CheckpointError: the files cannot be opened or trusted (``ShmWeightReader``).
    """

    def __init__(self, channel: ShmChannel, ceiling: Callable[[], int] = lambda: MAX_VERSION
                 ) -> None:
        self._reader: ShmWeightReader | None = ShmWeightReader(channel)
        self.channel = channel
        self._ceiling = ceiling
        self._locked = -1  # the slot locked for the inference in progress
        self._lent = False  # the policy runs on this source's arrays
        self._closing = False  # the files close at the next release()
        self.failure: CheckpointError | None = None  # why the files were given up
        log.info("event=weight_file_attached path=%s slots=%d", channel.path, channel.slots)

    def newer(self, version: int, poll: bool = True) -> WeightOffer | None:
        """The WeightSource protocol: the newest slot, locked until ``release``, as a SHARED
        offer if newer than ``version`` (at every step: ``poll`` is ignored). A truncated or
        damaged file sets ``failure`` and gives the files up: a WITHDRAW for a policy running
        on them, else None."""
        if self._reader is None or self._closing:
            return None
        try:
            slot, newest = self._reader.lock_newest(self._ceiling())
            self._locked = slot
            if newest <= version:
                return None
            # The checksum is checked once per version: one pass over the slot.
            held = self._reader.held(slot)
        except CheckpointError as exc:
            self.failure = exc
            return self._leave(copy=False)
        self._lent = True
        return WeightOffer.shared(held.snapshot, slot, held.published_at)

    def leave(self) -> WeightOffer | None:
        """Gives the files up (another channel, or none, is posted). A policy running on them
        gets a COPY of the newest slot (locked until ``release``), or a WITHDRAW where no slot
        is intact; the files close at ``release`` (at once where nothing is lent)."""
        return self._leave(copy=True)

    def _leave(self, copy: bool) -> WeightOffer | None:
        self._closing = True
        if not self._lent:
            self.release()
            return None
        self._lent = False
        if copy:
            try:
                slot, _ = self._reader.lock_newest(self._ceiling())
                if slot < 0:
                    raise CheckpointError("no slot holds a version")
                self._locked = slot
                held = self._reader.held(slot)
                return WeightOffer.copy(held.snapshot, held.published_at, held.published_at)
            except CheckpointError as exc:
                log.warning("event=weight_file_copy_failed error=%s", exc)
        return WeightOffer.withdraw()

    def release(self) -> None:
        """Lets go of the slot ``newer`` locked, if any; closes the files once given up."""
        if self._locked >= 0 and self._reader is not None:
            self._reader.unlock(self._locked)
        self._locked = -1
        if self._closing:
            self.close()

    def close(self) -> None:
        """Unmaps the files (a mapping the policy still has views of goes with the last one)."""
        if self._reader is not None:
            self._reader.close()  # drops any lock
            self._reader = None
        self._locked = -1
