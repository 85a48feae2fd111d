"""A samples-per-insert rate limiter with Reverb's SampleToInsertRatio semantics.

``diff = inserts * samples_per_insert - samples`` must stay within
``[offset - error_buffer, offset + error_buffer]`` where ``offset = samples_per_insert *
min_size_to_sample``. Inserts are always admitted until the shard reaches min_size_to_sample;
samples never are before that. ``samples_per_insert == 0`` disables the ratio and keeps only
the minimum size.

Batches: a call is admitted when its first item fits (as if its items were admitted one by
one from the current state), so one insert of n or one sample of B may overshoot the bound by
at most n - 1 inserts or B - 1 samples. This keeps the deadlock check independent of batch
sizes.

The limiter never waits: a shard is a single-threaded Ray actor, so nothing could change the
state while it waited. A refused call returns at once and the caller retries. Blocked time is
measured per direction, from the first refusal to the next admission.
"""
from __future__ import annotations

import time
from typing import Callable

from common.errors import RateLimiterError


class RateLimiter:
    """See the module docstring.

    Args:
        samples_per_insert: target ratio; 0 disables it.
        min_size_to_sample: transitions needed before any sample.
        error_buffer: allowed deviation from the ratio, in samples.
        capacity: transitions the shard can hold (min_size_to_sample must fit).
        clock: seconds, for blocked-time measurement.

    Raises:
        RateLimiterError: settings out of range or that would deadlock, naming the values.
    """

    def __init__(self, samples_per_insert: float, min_size_to_sample: int, error_buffer: float,
                 capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        if samples_per_insert < 0:
            raise RateLimiterError(f"samples_per_insert ({samples_per_insert}) must be >= 0")
        if min_size_to_sample < 1:
            raise RateLimiterError(f"min_size_to_sample ({min_size_to_sample}) must be >= 1")
        if min_size_to_sample >= capacity:
            raise RateLimiterError(
                f"min_size_to_sample ({min_size_to_sample}) must be < capacity ({capacity}): "
                "the shard could never serve a sample")
        if samples_per_insert > 0 and error_buffer < max(1.0, samples_per_insert):
            raise RateLimiterError(
                f"error_buffer ({error_buffer}) must be >= max(1, samples_per_insert "
                f"({samples_per_insert})): a smaller buffer lets inserts and samples block each "
                "other forever")
        self.samples_per_insert = float(samples_per_insert)
        self.min_size_to_sample = int(min_size_to_sample)
        offset = self.samples_per_insert * self.min_size_to_sample
        self.min_diff = offset - error_buffer
        self.max_diff = offset + error_buffer
        self.inserts = 0
        self.samples = 0
        self._clock = clock
        self._blocked_since = {"insert": None, "sample": None}
        self.blocked_seconds = {"insert": 0.0, "sample": 0.0}

    @property
    def diff(self) -> float:
        return self.inserts * self.samples_per_insert - self.samples

    def can_insert(self, size: int) -> bool:
        """Whether one more insert is admitted now, ``size`` being the shard's current size."""
        if self.samples_per_insert == 0 or size < self.min_size_to_sample:
            return True
        return self.diff + self.samples_per_insert <= self.max_diff

    def can_sample(self, size: int) -> bool:
        """Whether one more sample is admitted now, ``size`` being the shard's current size."""
        if size < self.min_size_to_sample:
            return False
        return self.samples_per_insert == 0 or self.diff - 1 >= self.min_diff

    def admit(self, kind: str, ok: bool) -> bool:
        """Records the outcome of a ``can_insert``/``can_sample`` check for blocked time."""
        now = self._clock()
        since = self._blocked_since[kind]
        if ok and since is not None:
            self.blocked_seconds[kind] += now - since
            self._blocked_since[kind] = None
        elif not ok and since is None:
            self._blocked_since[kind] = now
        return ok

    def on_insert(self, n: int) -> None:
        self.inserts += int(n)

    def on_sample(self, n: int) -> None:
        self.samples += int(n)
