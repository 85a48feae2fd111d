"""The learner loop: sample -> update -> priorities back -> publish every K updates.

A plain class over callables, so the same loop runs in-process (tests, benchmarks) and inside
the Ray learner actor, where ``sample`` is the replay client's prefetching sampler.

A batch with a NaN or an infinity in a float array never reaches the update: it is dropped,
counted (``LearnerReport.rejected_batches``) and logged naming the field, and the weights stay
as they were. The wire refuses such values (common/codec.py); this guards what it cannot see.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from common.types import FLOAT_FIELDS, CachedBatch, SampleBatch
from common.weights import PolicySnapshot, require_finite

log = logging.getLogger(__name__)


class Learner(Protocol):
    updates: int

    def update(self, batch: SampleBatch) -> Any: ...
    def policy_state(self) -> dict[str, np.ndarray]: ...
    # Optional: ``skip(batch)``, told of a batch dropped without an update (TD3Learner.skip).


@dataclass
class LearnerReport:
    """What ``run_updates`` did; crosses the process boundary to the driver."""

    updates: int = 0
    total_updates: int = 0
    policy_version: int = -1
    samples: int = 0
    stats: dict[str, float] = field(default_factory=dict)
    policy_lag: float = float("nan")
    sample_wait_seconds: float = 0.0
    update_seconds: float = 0.0
    publish_seconds: float = 0.0
    publishes: int = 0
    batch_waits: list[float] = field(default_factory=list)  # per batch, retries included
    publish_times: list[float] = field(default_factory=list)  # seconds of each publish
    rejected_batches: int = 0  # dropped for a NaN or an infinity (see first_nonfinite)


def _scalar_stats(stats: Any) -> dict[str, float]:
    if dataclasses.is_dataclass(stats):
        items = dataclasses.asdict(stats).items()
    elif hasattr(stats, "_asdict"):
        items = stats._asdict().items()
    else:
        items = dict(stats).items()
    return {k: float(v) for k, v in items if isinstance(v, (int, float, np.floating, np.integer))}


def first_nonfinite(batch: SampleBatch | CachedBatch) -> tuple[str, float] | None:
    """The first NaN or infinity in the batch's float arrays, as (``"reward[3]"``, value), or
    None when all are finite. Reads only those small arrays, never the frames."""
    for name in FLOAT_FIELDS:
        value = getattr(batch, name)
        finite = np.isfinite(value)
        if not finite.all():
            index = tuple(int(i) for i in np.argwhere(~finite)[0])
            return name + "".join(f"[{i}]" for i in index), float(value[index])
    return None


def policy_lag(version: int, batch: SampleBatch) -> float:
    """Mean of (current version - version that produced the transition), policy actions only."""
    produced = batch.policy_version[batch.policy_version >= 0]
    return float(version - produced.mean()) if produced.size else float("nan")


class LearnerLoop:
    """Runs updates from sampled batches and publishes versioned policy snapshots."""

    def __init__(self, learner: Learner, sample: Callable[[], SampleBatch | None],
                 publish: Callable[[PolicySnapshot], None], publish_every: int,
                 update_priorities: Callable[[np.ndarray, np.ndarray], None] | None = None,
                 idle_sleep_s: float = 0.002, max_idle_sleep_s: float = 0.05) -> None:
        if publish_every < 1:
            raise ValueError(f"publish_every ({publish_every}) must be >= 1")
        self.learner = learner
        self._sample = sample
        self._publish = publish
        self._update_priorities = update_priorities
        self.publish_every = publish_every
        # No batch (replay below its minimum, or the rate limiter holding the learner back):
        # sleep, doubling the pause up to the cap while it lasts: a short fixed pause made the
        # learner and the shards spend a large share of a core on refused sample requests
        # (docs/benchmarks.md, "Code choices").
        self._idle_sleep_s = idle_sleep_s
        self._max_idle_sleep_s = max(idle_sleep_s, max_idle_sleep_s)
        self.version = -1
        self.rejected_batches = 0

    def publish(self) -> float:
        """Publishes the current policy; its version is the learner's update count.

        Raises:
            SpecError: the policy holds a NaN or an infinity (the learner diverged); nothing
                is published, so the actors keep acting with the last finite version.
        """
        t0 = time.perf_counter()
        snapshot = PolicySnapshot(int(self.learner.updates), self.learner.policy_state())
        require_finite(snapshot)
        self.version = snapshot.version
        self._publish(snapshot)
        return time.perf_counter() - t0

    def run_updates(self, n: int, max_seconds: float = float("inf")) -> LearnerReport:
        """Runs up to ``n`` updates, returning early after ``max_seconds`` (e.g. while the
        replay is below its minimum size or the rate limiter holds the learner back).

        With a learner that can ``launch`` (TD3Learner), update N+1 is queued before N's
        stats are read, so on a GPU the next batch is sampled and copied while the previous
        update runs; priorities and stats then follow one update behind, and every update
        launched is finished before this returns.
        """
        report = LearnerReport()
        lags: list[float] = []
        pending: tuple[Any, SampleBatch] | None = None
        launch = getattr(self.learner, "launch", None)
        idle = self._idle_sleep_s
        start = wait_from = time.perf_counter()
        while report.updates < n and time.perf_counter() - start < max_seconds:
            t0 = time.perf_counter()
            batch = self._sample()
            report.sample_wait_seconds += time.perf_counter() - t0
            if batch is None:
                if pending is not None:  # idle: finish what is in flight first
                    self._finish(pending, report)
                    pending = None
                time.sleep(idle)
                idle = min(2.0 * idle, self._max_idle_sleep_s)
                continue
            idle = self._idle_sleep_s
            bad = first_nonfinite(batch)
            if bad is not None:
                self._reject(batch, *bad, report)
                continue
            report.batch_waits.append(time.perf_counter() - wait_from)
            t1 = time.perf_counter()
            launched = launch(batch) if launch is not None else _Done(self.learner.update(batch))
            report.update_seconds += time.perf_counter() - t1
            if pending is not None:
                self._finish(pending, report)
            pending = (launched, batch)
            report.updates += 1
            report.samples += batch.size
            lags.append(policy_lag(self.version, batch))
            if self.learner.updates % self.publish_every == 0:
                report.publish_times.append(self.publish())
                report.publish_seconds += report.publish_times[-1]
                report.publishes += 1
            wait_from = time.perf_counter()
        if pending is not None:
            self._finish(pending, report)
        finite = [x for x in lags if np.isfinite(x)]
        report.policy_lag = float(np.mean(finite)) if finite else float("nan")
        report.total_updates = int(self.learner.updates)
        report.policy_version = self.version
        return report

    def _reject(self, batch: SampleBatch | CachedBatch, where: str, value: float,
                report: LearnerReport) -> None:
        """Drops a batch holding a NaN or an infinity before it reaches the weights."""
        skip = getattr(self.learner, "skip", None)
        if skip is not None:
            skip(batch)
        self.rejected_batches += 1
        report.rejected_batches += 1
        log.warning("event=batch_rejected reason=non_finite field=%s value=%s updates=%d "
                    "rejected_total=%d", where, value, self.learner.updates,
                    self.rejected_batches)

    def _finish(self, pending: tuple[Any, SampleBatch], report: LearnerReport) -> None:
        """Waits for a launched update's stats; sends its priorities and records its stats."""
        launched, batch = pending
        t0 = time.perf_counter()
        stats = launched.result()
        report.update_seconds += time.perf_counter() - t0
        td_error = stats.get("td_error") if isinstance(stats, dict) else getattr(stats, "td_error", None)
        if self._update_priorities is not None and td_error is not None:
            self._update_priorities(batch.key, np.asarray(td_error))
        report.stats = _scalar_stats(stats)


class _Done:
    """A finished update's stats behind the ``result()`` of a launched one."""

    def __init__(self, stats: Any) -> None:
        self._stats = stats

    def result(self) -> Any:
        return self._stats
