"""One shard's availability as a caller sees it: up, or down until a probe answers.

A call that fails with one of its transport's ``failures`` (replay/transport.py) marks the shard down. While it
is down the caller sends it nothing; once a back-off has passed, ``available()`` sends one
``size()`` probe and, on later calls, checks it without blocking: when it answers, the shard
has rejoined (Ray restarted it, and it restored its last checkpoint); when it fails, the next
probe waits twice as long, up to ``max_backoff_s``.

Each rejoin starts a new ``epoch``. Callers note the epoch when they send a call and pass it
to ``failed``: a call sent to the shard's previous incarnation that fails after the rejoin
does not mark the new one down.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from replay.transport import LOCAL, Transport

log = logging.getLogger(__name__)


class ShardHealth:
    """Availability of one shard handle; see the module docstring.

    Args:
        handle: the shard handle (``handle.size.remote()`` is the probe).
        shard_index: for logs.
        role: who calls the shard ("learner", "writer"), for logs.
        backoff_s: wait after a failure before the first probe.
        max_backoff_s: longest wait between two probes.
        clock: monotonic seconds (injectable for tests).
        transport: how calls on ``handle`` are waited for.
    """

    def __init__(self, handle: Any, shard_index: int, role: str, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0, clock: Callable[[], float] = time.monotonic,
                 transport: Transport = LOCAL) -> None:
        self.handle, self.shard_index, self.role = handle, shard_index, role
        self.transport = transport
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._clock = clock
        self.up = True
        self.epoch = 0  # rejoins so far: calls sent before the last rejoin are stale
        self.failures = 0  # times the shard went from up to down
        self.rejoins = 0
        self.down_seconds = 0.0  # closed outages only
        self.last_size = 0  # the size the last successful probe reported
        self._delay = backoff_s
        self._down_since = 0.0
        self._retry_at = 0.0
        self._probe: Any = None

    def failed(self, exc: BaseException, epoch: int) -> None:
        """Records that a call sent in ``epoch`` failed with ``exc`` (one of the transport's ``failures``)."""
        if not self.up or epoch != self.epoch:
            return  # another call in flight when it went down, or one to a previous incarnation
        self.up = False
        self.failures += 1
        self._down_since = self._clock()
        self._delay = self.backoff_s
        self._retry_at = self._down_since + self._delay
        log.warning("event=shard_unavailable role=%s shard=%d failures=%d error=%s retry_in_s=%.2f",
                    self.role, self.shard_index, self.failures, type(exc).__name__, self._delay)

    def available(self) -> bool:
        """Whether to send the shard calls now; never blocks (see the module docstring)."""
        if self.up:
            return True
        if self._probe is None:
            if self._clock() < self._retry_at:
                return False
            self._probe = self.handle.size.remote()
        if not self.transport.ready([self._probe]):
            return False
        probe, self._probe = self._probe, None
        try:
            self.last_size = int(self.transport.result(probe))
        except self.transport.failures:
            self._delay = min(2 * self._delay, self.max_backoff_s)
            self._retry_at = self._clock() + self._delay
            return False
        self.up = True
        self.epoch += 1
        self.rejoins += 1
        outage = self._clock() - self._down_since
        self.down_seconds += outage
        log.info("event=shard_rejoined role=%s shard=%d size=%d down_s=%.2f",
                 self.role, self.shard_index, self.last_size, outage)
        return True
