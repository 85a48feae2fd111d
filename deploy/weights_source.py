"""FilesFirstSource: a rollout worker's WeightSource (rollout/weights.py) over the Ray weight
board: the shared-memory weight files on this node first (deploy/weights_shm_source.py), the
object store (deploy/weights_ray.py) where the board posts no files on this node or the files
cannot be opened or trusted.

Publish -> use on the learner's node takes no Ray call and no copy: the policy runs on the
newest file's arrays in place, and the poll thread skips the object-store fetch. A file that
cannot be opened, or proves truncated or damaged, is given up for the object store, logged once:
that channel is not opened again.
"""
from __future__ import annotations

import logging
from typing import Any

from rollout.weights import BroadcastLog, OfferKind, WeightOffer
from common.errors import CheckpointError
from deploy.weights_ray import ObjectStoreSource
from deploy.weights_shm import ShmChannel
from deploy.weights_shm_source import ShmWeightSource

log = logging.getLogger(__name__)

# How far a file's version may run ahead of the newest version this actor has seen on the
# board: the board's answer is at most a poll (``poll_timeout_s``) old, in which the learner
# makes far fewer updates. A version beyond it (damage) is ignored, so it cannot hold the
# actor on one slot.
MAX_VERSION_LEAD = 100_000


class FilesFirstSource:
    """The files on this node first, the object store on failure; records each version's
    broadcast latency (publish -> the first inference on it) for ``take_broadcasts``.

    Args:
        board: the WeightBoard actor.
        node_id: this process's Ray node; channels on other nodes are not opened (None: none).
        poll_timeout_s: how long one long-poll call waits at the board.
    """

    def __init__(self, board: Any, node_id: str | None = None, poll_timeout_s: float = 2.0) -> None:
        self._node_id = node_id
        self._unusable: ShmChannel | None = None  # a channel that failed: not opened again
        self._files: ShmWeightSource | None = None  # used by the env loop's thread only
        self._consulted: list[ShmWeightSource] = []  # to release after the inference
        self._broadcasts = BroadcastLog()
        self._store = ObjectStoreSource(board, poll_timeout_s, files_cover=self._direct)

    def _direct(self, channel: ShmChannel | None) -> bool:
        """Whether the env loop reads this channel's files itself."""
        return (channel is not None and self._node_id is not None
                and channel.node_id == self._node_id and channel != self._unusable)

    def newer(self, version: int, poll: bool = True) -> WeightOffer | None:
        """The WeightSource protocol. While the board names files on this node: their newest
        slot, at every step whatever ``poll`` says (ShmWeightSource). Otherwise, if ``poll``,
        what the poll thread fetched from the object store, if newer. Leaving the files (a new
        channel, none, or a damaged file) first moves a policy running on them onto a copy,
        or back to its own weights (WITHDRAW)."""
        offer = self._offer(version, poll)
        if offer is not None and offer.kind is not OfferKind.WITHDRAW and offer.version > version:
            self._broadcasts.record(offer)
        return offer

    def _offer(self, version: int, poll: bool) -> WeightOffer | None:
        channel = self._store.channel
        files = self._files
        if files is not None and not (files.channel == channel and self._direct(channel)):
            self._files = None
            self._consulted.append(files)
            leaving = files.leave()
            if leaving is not None:
                return leaving
        if self._files is None and self._direct(channel):
            self._files = self._open(channel)
        if self._files is not None:
            files = self._files
            self._consulted.append(files)
            offer = files.newer(version, poll)
            if files.failure is None:
                return offer
            self._reject(files)
            if offer is not None:  # a WITHDRAW: the store's copy comes at a later poll
                return offer
        return self._store.newer(version, poll)

    def _open(self, channel: ShmChannel) -> ShmWeightSource | None:
        try:
            return ShmWeightSource(channel, self._ceiling)
        except CheckpointError as exc:  # e.g. another machine's /dev/shm: use the store
            log.warning("event=weight_file_unusable error=%s", exc)
            self._unusable = channel
            self._store.refetch()
            return None

    def _reject(self, files: ShmWeightSource) -> None:
        """Stops reading files that proved truncated or damaged, for the object store."""
        log.warning("event=weight_file_rejected path=%s error=%s fallback=object_store",
                    files.channel.path, files.failure)
        self._files = None
        self._unusable = files.channel
        self._store.refetch()

    def _ceiling(self) -> int:
        return self._store.board_version + MAX_VERSION_LEAD

    def release(self) -> None:
        """The WeightSource protocol: lets go of the slot locked for the inference, and closes
        files given up."""
        for files in self._consulted:
            files.release()
        self._consulted.clear()

    def take_broadcasts(self) -> tuple[list[int], list[float], list[float], list[float]]:
        """Versions the env loop took since the last call, with their broadcast latencies
        (seconds from publish until its first inference on it) and the part of it until the
        snapshot was fetched (by the poll thread from the object store; none for the weight
        files, which hold it from the publish), the rest being the env loop reaching its next
        inference; and each version's publish time."""
        return self._broadcasts.take()

    def stop(self) -> None:
        """Stops the poll thread and closes the files; call from the env loop's thread. A
        policy that ran on the files must not act after this."""
        self._store.stop()
        for files in (*self._consulted, self._files):
            if files is not None:
                files.close()
        self._consulted.clear()
        self._files = None
