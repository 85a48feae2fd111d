"""Weight broadcast over Ray: the learner puts a snapshot into the object store ONCE and posts
its reference on a board; each rollout actor long-polls the board from a background thread, so
its env loop only reads a field (no Ray call, no wait, per step)."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import ray

from common.weights import PolicySnapshot

log = logging.getLogger(__name__)


class WeightBoard:
    """An async Ray actor holding the newest (version, [ObjectRef]) and its publish time.

    The reference travels inside a list so Ray hands it over without resolving it: every
    rollout actor fetches the same object from the object store.
    """

    def __init__(self) -> None:
        self._version = -1
        self._refs: list[Any] | None = None
        self._published_at = 0.0
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def publish(self, version: int, refs: list[Any]) -> None:
        cond = self._condition()
        async with cond:
            self._version, self._refs, self._published_at = version, refs, time.time()
            cond.notify_all()

    async def wait_newer(self, known_version: int, timeout_s: float) -> tuple[int, list[Any] | None, float]:
        """Returns as soon as a version newer than ``known_version`` exists, or at the timeout."""
        cond = self._condition()
        async with cond:
            try:
                await asyncio.wait_for(cond.wait_for(lambda: self._version > known_version), timeout_s)
            except asyncio.TimeoutError:
                pass
            return self._version, self._refs, self._published_at

    async def version(self) -> int:
        return self._version


class RayWeightSource:
    """The rollout side: a daemon thread long-polls the board and fetches new snapshots.

    ``poll`` (the WeightSource protocol of actors/rollout.py) only takes what the thread has
    already fetched. Broadcast latency (publish -> handed to the env loop) is recorded.
    """

    def __init__(self, board: Any, poll_timeout_s: float = 2.0) -> None:
        self._board = board
        self._poll_timeout_s = poll_timeout_s
        self._lock = threading.Lock()
        self._latest: PolicySnapshot | None = None
        self._latest_published_at = 0.0
        self._latest_fetched_at = 0.0
        self._latencies: list[float] = []
        self._fetch_latencies: list[float] = []
        self._versions: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weight-poll", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        known = -1
        while not self._stop.is_set():
            try:
                version, refs, published_at = ray.get(
                    self._board.wait_newer.remote(known, self._poll_timeout_s))
                if version <= known or not refs:
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

    def poll(self, known_version: int) -> PolicySnapshot | None:
        """The newest fetched snapshot if newer than ``known_version``; the caller loads it now,
        so publish -> now is recorded as that version's broadcast latency."""
        with self._lock:
            latest = self._latest
            if latest is None or latest.version <= known_version:
                return None
            self._latencies.append(max(0.0, time.time() - self._latest_published_at))
            self._fetch_latencies.append(
                max(0.0, self._latest_fetched_at - self._latest_published_at))
            self._versions.append(latest.version)
        return latest

    def take_broadcasts(self) -> tuple[list[int], list[float], list[float]]:
        """Versions handed to the env loop since the last call, with their broadcast latencies
        (seconds from publish until handed over) and the part of it until the poll thread had
        fetched the snapshot (the rest is the env loop reaching its next step)."""
        with self._lock:
            out = (self._versions, self._latencies, self._fetch_latencies)
            self._versions, self._latencies, self._fetch_latencies = [], [], []
        return out

    def stop(self) -> None:
        self._stop.set()
