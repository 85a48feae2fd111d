"""Weight broadcast over Ray: the learner puts a snapshot into the object store ONCE and posts
its reference on a board; each rollout actor long-polls the board from a background thread, so
its env loop only reads a field (no Ray call, no wait, per step).

Where the learner also writes shared-memory weight files (deploy/weights_shm.py), the board
posts their channel with each version; an actor on the same node then runs its policy on the
newest file's arrays in place and skips the object-store fetch (publish -> use without any Ray
call or copy in between). A file it cannot open or trust (not private, truncated, a checksum
that does not match) is given up for the object store."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

import ray

from actors.policy import CpuPolicy
from common.errors import CheckpointError, SpecError
from common.weights import PolicySnapshot
from deploy.weights_shm import ShmChannel
from deploy.weights_shm_reader import ShmWeightReader

log = logging.getLogger(__name__)

# How far a file's version may run ahead of the newest version this actor has seen on the
# board: the board's answer is at most a poll (``poll_timeout_s``) old, in which the learner
# makes far fewer updates. A version beyond it (damage) is ignored, so it cannot hold the
# actor on one slot.
MAX_VERSION_LEAD = 100_000


class WeightBoard:
    """An async Ray actor holding the newest (version, [ObjectRef]), its publish time and the
    shared-memory channel that also holds it (None when there is none).

    The reference travels inside a list so Ray hands it over without resolving it: every
    rollout actor fetches the same object from the object store.
    """

    def __init__(self) -> None:
        self._version = -1
        self._refs: list[Any] | None = None
        self._published_at = 0.0
        self._channel: ShmChannel | None = None
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def publish(self, version: int, refs: list[Any], channel: ShmChannel | None = None,
                      published_at: float | None = None) -> None:
        """Posts a version: its object reference, the channel whose file already holds it
        (written before this call, or None), and when the learner published it (None: now)."""
        cond = self._condition()
        async with cond:
            self._version, self._refs, self._channel = version, refs, channel
            self._published_at = time.time() if published_at is None else published_at
            cond.notify_all()

    async def wait_newer(self, known_version: int, timeout_s: float
                         ) -> tuple[int, list[Any] | None, float, ShmChannel | None]:
        """Returns as soon as a version newer than ``known_version`` exists, or at the timeout:
        (version, [ref] (None before the first publish), publish time, channel)."""
        return await self._wait(lambda: self._version > known_version, timeout_s)

    async def wait_channel(self, channel: ShmChannel | None, timeout_s: float
                           ) -> tuple[int, list[Any] | None, float, ShmChannel | None]:
        """Returns as soon as the posted channel is no longer ``channel`` (a restarted learner's
        new file, or a version posted without one), or at the timeout; same tuple as
        ``wait_newer``. An actor that reads the file itself waits here, so a publish does not
        wake every actor's poll thread at once."""
        return await self._wait(lambda: self._channel != channel, timeout_s)

    async def _wait(self, ready: Callable[[], bool], timeout_s: float
                    ) -> tuple[int, list[Any] | None, float, ShmChannel | None]:
        cond = self._condition()
        async with cond:
            try:
                await asyncio.wait_for(cond.wait_for(ready), timeout_s)
            except asyncio.TimeoutError:
                pass
            return self._version, self._refs, self._published_at, self._channel

    async def version(self) -> int:
        return self._version


class RayWeightSource:
    """The rollout side: a daemon thread long-polls the board and fetches new snapshots.

    ``before_inference`` / ``after_inference`` (the WeightSource protocol of actors/rollout.py)
    load what the thread has already fetched or, while the board names a shared-memory channel
    on this node, bind the policy to the newest slot of those files and lock it for the
    inference (``CpuPolicy.bind``: the policy runs on the file's arrays); the thread then skips
    the object-store fetch and waits at the board only for the channel to change. Broadcast
    latency (publish -> the first inference on it) is recorded.

    Args:
        board: the WeightBoard actor.
        node_id: this process's Ray node; channels on other nodes are not opened (None: none).
        poll_timeout_s: how long one long-poll call waits at the board.
    """

    def __init__(self, board: Any, node_id: str | None = None, poll_timeout_s: float = 2.0) -> None:
        self._board = board
        self._node_id = node_id
        self._poll_timeout_s = poll_timeout_s
        self._lock = threading.Lock()
        self._latest: PolicySnapshot | None = None
        self._latest_published_at = 0.0
        self._latest_fetched_at = 0.0
        self._channel: ShmChannel | None = None  # the board's, kept by the thread
        self._board_version = -1  # the newest version the thread saw on the board
        self._unusable: ShmChannel | None = None  # a channel that failed to open
        self._refetch = threading.Event()  # the thread must fetch the newest version again
        self._reader: ShmWeightReader | None = None  # used by the env loop's thread only
        self._nets: list[Any] = []  # per slot of the reader: a network on its arrays
        self._locked = -1  # the slot locked for the inference in progress
        self._policy: CpuPolicy | None = None  # the policy bound to the reader's slots
        self._latencies: list[float] = []
        self._fetch_latencies: list[float] = []
        self._versions: list[int] = []
        self._published: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weight-poll", daemon=True)
        self._thread.start()

    def _direct(self, channel: ShmChannel | None) -> bool:
        """Whether the env loop reads this channel's file itself."""
        return (channel is not None and self._node_id is not None
                and channel.node_id == self._node_id and channel != self._unusable)

    def _run(self) -> None:
        known = -1  # the newest version fetched from the object store
        while not self._stop.is_set():
            try:
                if self._refetch.is_set():
                    self._refetch.clear()
                    known = -1
                channel = self._channel  # only this thread writes it
                if self._direct(channel):
                    # The env loop reads each version from the file: wake only when the
                    # channel changes. At 16 actors, waking every poll thread at each publish
                    # put 16 Ray calls on the CPU at the moment the actors load the file.
                    call = self._board.wait_channel.remote(channel, self._poll_timeout_s)
                else:
                    call = self._board.wait_newer.remote(known, self._poll_timeout_s)
                version, refs, published_at, channel = ray.get(call)
                with self._lock:
                    self._channel = channel
                    self._board_version = max(self._board_version, version)
                if self._direct(channel) or version <= known or not refs:
                    continue
                state = ray.get(refs[0])
                with self._lock:
                    self._latest = PolicySnapshot(version, state)
                    self._latest_published_at = published_at
                    self._latest_fetched_at = time.time()
                known = version
            except Exception as exc:  # the board or the object's owner died: retry later
                log.warning("event=weight_poll_failed error=%r", exc)
                self._stop.wait(0.5)

    def before_inference(self, policy: CpuPolicy, poll: bool = True) -> bool:
        """The WeightSource protocol (actors/rollout.py), before one inference of ``policy``.

        While the board names weight files on this node, the policy runs on the newest
        slot's arrays in place, that slot locked until ``after_inference``
        (``CpuPolicy.bind``; at every step, whatever ``poll`` says: a few memory reads and two
        ``flock`` calls). Otherwise, if ``poll``, it loads what the poll thread fetched from
        the object store if that is newer. Publish -> the first inference on a version is
        recorded as its broadcast latency. Returns whether the policy took a newer version."""
        reader = self._attached(policy)
        if reader is None:
            return poll and self._load_fetched(policy)
        try:
            return self._bind_newest(reader, policy)
        except CheckpointError as exc:  # truncated or damaged: the object store from now on
            self._give_up_file(policy, exc)
            return poll and self._load_fetched(policy)

    def _ceiling(self) -> int:
        with self._lock:
            return self._board_version + MAX_VERSION_LEAD

    def _bind_newest(self, reader: ShmWeightReader, policy: CpuPolicy) -> bool:
        slot, version = reader.lock_newest(self._ceiling())
        self._locked = slot
        if version <= policy.version:
            return False
        # No copy: where each actor copied 7.5 MB per version, 2 ms of its CPU and, on a full
        # machine, 20 to 80 ms of wall time in its step. ``held`` checks the slot's checksum
        # once per version: one pass over the slot, about what that copy cost.
        held = reader.held(slot)
        policy.bind(self._nets[slot], version)
        self._policy = policy
        with self._lock:
            # "fetched" at publish: the file held it from that moment
            self._record(version, held.published_at, held.published_at)
        return True

    def after_inference(self) -> None:
        """Lets go of the slot ``before_inference`` locked, if any."""
        if self._locked >= 0:
            self._reader.unlock(self._locked)
            self._locked = -1

    def _give_up_file(self, policy: CpuPolicy, exc: CheckpointError) -> None:
        """Stops reading a file that proved truncated or damaged: the policy runs on its own
        weights (not a copy of the file's), and the poll thread fetches the newest version
        from the object store. Logged once: the channel is not opened again."""
        channel = self._reader.channel
        log.warning("event=weight_file_rejected path=%s error=%s fallback=object_store",
                    channel.path, exc)
        if policy.bound:
            policy.unbind()
        self._policy = None
        self._close_reader()
        self._unusable = channel
        self._refetch.set()

    def _load_fetched(self, policy: CpuPolicy) -> bool:
        with self._lock:
            latest = self._latest
            if latest is None or latest.version <= policy.version:
                return False
            published_at, fetched_at = self._latest_published_at, self._latest_fetched_at
        policy.load(latest)
        with self._lock:
            self._record(latest.version, published_at, fetched_at)
        return True

    def _attached(self, policy: CpuPolicy) -> ShmWeightReader | None:
        """The reader of the weight files the board names, opened (with a network per slot)
        on first use; None where the env loop uses the object store."""
        with self._lock:
            channel = self._channel
        if not self._direct(channel):
            self._close_reader()
            return None
        if self._reader is None or self._reader.channel != channel:
            self._close_reader()
            try:
                reader = ShmWeightReader(channel)
            except CheckpointError as exc:  # e.g. another machine's /dev/shm: use the store
                log.warning("event=weight_file_unusable error=%s", exc)
                self._unusable = channel
                self._refetch.set()  # after its current long-poll (poll_timeout_s at most)
                return None
            try:  # one network per slot, its parameters the slot's arrays
                self._nets = [policy.view(state) for state in reader.states()]
            except SpecError:  # not this policy's layout: loading from the store raises too
                reader.close()
                self._unusable = channel
                self._refetch.set()
                raise
            self._reader = reader
            log.info("event=weight_file_attached path=%s slots=%d", channel.path, channel.slots)
        return self._reader

    def _record(self, version: int, published_at: float, fetched_at: float) -> None:
        self._latencies.append(max(0.0, time.time() - published_at))
        self._fetch_latencies.append(max(0.0, fetched_at - published_at))
        self._versions.append(version)
        self._published.append(published_at)

    def _close_reader(self) -> None:
        """Gives the weight files up; a policy bound to them first loads a copy of the newest
        slot (its version, or a newer one), or runs on its own weights where no slot is intact."""
        if self._reader is not None:
            policy = self._policy
            if policy is not None and policy.bound:
                try:
                    with self._reader.newest(self._ceiling()) as held:
                        if held is None:
                            raise CheckpointError("no slot holds a version")
                        policy.load(held.snapshot)
                except CheckpointError as exc:
                    log.warning("event=weight_file_copy_failed error=%s", exc)
                    policy.unbind()
            self._policy = None
            self._nets = []
            self._locked = -1  # closing drops the lock
            self._reader.close()
            self._reader = None

    def take_broadcasts(self) -> tuple[list[int], list[float], list[float], list[float]]:
        """Versions the env loop took since the last call, with their broadcast latencies
        (seconds from publish until its first inference on it) and the part of it until the
        snapshot was fetched (by the poll thread from the object store; none for the weight
        files, which hold it from the publish), the rest being the env loop reaching its next
        inference; and each version's publish time."""
        with self._lock:
            out = (self._versions, self._latencies, self._fetch_latencies, self._published)
            self._versions, self._latencies, self._fetch_latencies = [], [], []
            self._published = []
        return out

    def stop(self) -> None:
        """Stops the poll thread; call from the env loop's thread (it closes the file)."""
        self._stop.set()
        self._close_reader()
