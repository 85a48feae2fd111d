"""Weight broadcast over Ray: the learner puts a snapshot into the object store ONCE and posts
its reference on a board; each rollout worker's ``ObjectStoreSource`` long-polls the board from
a background thread, so its env loop only reads a field (no Ray call, no wait, per step).

The board also posts the shared-memory channel (deploy/weights_shm.py) that holds each version,
if any; deploy/weights_source.py composes the two: the files first, this source when they are
on another node or cannot be trusted."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

import ray

from rollout.weights import WeightOffer
from common.weights import PolicySnapshot
from deploy.weights_shm import ShmChannel

log = logging.getLogger(__name__)

class WeightBoard:
    """An async Ray actor holding the newest (version, [ObjectRef]), its publish time and the
    shared-memory channel that also holds it (None when there is none).

    The reference travels inside a list so Ray hands it over without resolving it: every
    rollout worker fetches the same object from the object store.
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


class ObjectStoreSource:
    """The WeightSource that fetches from the object store: a daemon thread long-polls the
    board and fetches each new snapshot; ``newer`` offers a COPY of what it fetched.

    While ``files_cover(channel)`` says the env loop reads the board's channel itself, the
    thread skips the fetch and waits at the board only for the channel to change.

    Args:
        board: the WeightBoard actor.
        poll_timeout_s: how long one long-poll call waits at the board.
        files_cover: whether the env loop reads a posted channel's files itself.
    """

    def __init__(self, board: Any, poll_timeout_s: float = 2.0,
                 files_cover: Callable[[ShmChannel | None], bool] = lambda channel: False) -> None:
        self._board = board
        self._poll_timeout_s = poll_timeout_s
        self._files_cover = files_cover
        self._lock = threading.Lock()
        self._latest: PolicySnapshot | None = None
        self._latest_published_at = 0.0
        self._latest_fetched_at = 0.0
        self._channel: ShmChannel | None = None  # the board's, kept by the thread
        self._board_version = -1  # the newest version the thread saw on the board
        self._refetch = threading.Event()  # the thread must fetch the newest version again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weight-poll", daemon=True)
        self._thread.start()

    @property
    def channel(self) -> ShmChannel | None:
        """The shared-memory channel the board last posted (None: none)."""
        with self._lock:
            return self._channel

    @property
    def board_version(self) -> int:
        """The newest version the thread saw on the board (-1 before any)."""
        with self._lock:
            return self._board_version

    def refetch(self) -> None:
        """Fetches the newest version again, after the current long-poll (``poll_timeout_s``
        at most): for an env loop that stopped reading the files."""
        self._refetch.set()

    def _run(self) -> None:
        known = -1  # the newest version fetched from the object store
        while not self._stop.is_set():
            try:
                if self._refetch.is_set():
                    self._refetch.clear()
                    known = -1
                channel = self._channel  # only this thread writes it
                if self._files_cover(channel):
                    # The env loop reads each version from the file: wake only when the
                    # channel changes, so a publish does not put a Ray call per actor on
                    # the CPU at the moment the actors read the file.
                    call = self._board.wait_channel.remote(channel, self._poll_timeout_s)
                else:
                    call = self._board.wait_newer.remote(known, self._poll_timeout_s)
                version, refs, published_at, channel = ray.get(call)
                with self._lock:
                    self._channel = channel
                    self._board_version = max(self._board_version, version)
                if self._files_cover(channel) or version <= known or not refs:
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

    def newer(self, version: int, poll: bool = True) -> WeightOffer | None:
        """The WeightSource protocol: if ``poll``, a COPY of what the thread fetched, if it is
        newer than ``version``."""
        if not poll:
            return None
        with self._lock:
            latest = self._latest
            if latest is None or latest.version <= version:
                return None
            return WeightOffer.copy(latest, self._latest_published_at, self._latest_fetched_at)

    def release(self) -> None:
        """Nothing to let go of: a fetched snapshot is this source's own until replaced."""

    def stop(self) -> None:
        """Stops the poll thread (after its current long-poll)."""
        self._stop.set()
