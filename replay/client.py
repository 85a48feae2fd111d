"""ReplayClient: the learner's side of the replay: samples across shards with requests in flight.

The client talks to shards through handles and their transport (replay/transport.py:
``handle.method.remote(*args)`` returns a reference the transport waits for): Ray actor
handles with ``deploy.replay_ray.RAY``, or in-process shards (``LocalShard``) with ``LOCAL``.
Writing is the rollout side's business: ``replay.shard_writer``.

Sampling: ``sample()`` keeps ``prefetch`` requests in flight; each new request goes to a shard
drawn in proportion to the shards' last known sizes. Samples come back as PackedBatch (F + 1
frames per transition instead of 2F) through Ray's own serialisation (zero-copy numpy), which
measured faster than msgpack for this direction (bench/replay_throughput.py,
docs/benchmarks.md "Code choices"); ``sample()`` unpacks them into SampleBatch views.

Frame cache: with ``cache_capacity`` set (the shards' ring capacity), the client samples for a
learner that keeps a copy of every shard's frames on its device (``learner.execution.frame_cache``):
shards answer ``sample_cached`` with CachedBatch rows plus only the frames that copy lacks,
and the client moves shard ``i``'s rows to ``i * cache_capacity`` onward. Each shard's
replies are taken in the order they were sent (a shard runs its requests in that order), so
the learner stores every frame before a later reply that counts on it.

Faults: a call that fails because the shard died or is restarting (one of the transport's
``failures``) never raises out of the client. The shard is marked down (replay/health.py:
logged, counted in ``stats()``), gets no requests and weight 0 in the proportional choice, and
rejoins once a ``size()`` probe sent after a back-off answers. ``sample()`` takes whichever
request answers first, so a dead shard's request does not hold up the live shards, and returns
None for a failed one; priorities for a shard that is down are dropped and counted.
"""
from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any, Sequence

import numpy as np

from common.errors import ConfigError, WireError
from common.specs import EnvSpec
from common.types import CachedBatch, SampleBatch
from replay.health import ShardHealth
from replay.shard import KEY_SHARD_SHIFT, PackedBatch, RateLimited
from replay.transport import LOCAL, Transport

__all__ = ["ReplayClient"]

log = logging.getLogger(__name__)

def _new_cache_id() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1  # fits an int64 on every wire


class ReplayClient:
    """Routes inserts and samples over shard handles; see the module docstring.

    Args:
        shards: shard handles, index i holding shard i.
        spec: observation and action spec.
        batch_size: transitions per sample.
        prefetch: sample requests kept in flight.
        seed: seeds the choice of shard per request.
        size_refresh_every: sample requests between two refreshes of the shard sizes.
        down_backoff_s: wait before probing a shard that died (doubles up to 16x).
        cache_capacity: 0, or each shard's ring capacity to sample for a learner's frame
            cache (see the module docstring).
        transport: how calls on the handles are waited for.
    """

    def __init__(self, shards: Sequence[Any], spec: EnvSpec, batch_size: int, prefetch: int = 4,
                 seed: int = 0, size_refresh_every: int = 16, down_backoff_s: float = 0.5,
                 cache_capacity: int = 0, transport: Transport = LOCAL) -> None:
        if not shards:
            raise ConfigError(f"num_shards ({len(shards)}) must be >= 1")
        if prefetch < 1:
            raise ConfigError(f"prefetch ({prefetch}) must be >= 1")
        if cache_capacity < 0:
            raise ConfigError(f"cache_capacity ({cache_capacity}) must be >= 0")
        self.shards, self.spec, self.transport = list(shards), spec, transport
        self.batch_size, self.prefetch = batch_size, prefetch
        self.health = [ShardHealth(h, i, "learner", down_backoff_s, 16 * down_backoff_s,
                                   transport=transport)
                       for i, h in enumerate(self.shards)]
        self._rng = np.random.default_rng(seed)
        self._sizes = np.zeros(len(self.shards), np.float64)
        self._size_refs: dict[int, tuple[Any, int]] = {}
        self._size_refresh_every = size_refresh_every
        self._requests = 0
        self._inflight: list[tuple[int, Any, int]] = []  # (shard, reference, epoch sent in)
        self._priority_refs: collections.deque[tuple[int, int, Any, int]] = collections.deque()
        self.sample_wait_seconds = 0.0
        self.rate_limited_samples = 0
        self.failed_samples = 0
        self.dropped_priority_keys = 0
        self.cache_capacity = int(cache_capacity)
        self.cache_frames_received = 0
        self.cache_resets = 0
        # Names this client's frame copy to the shards; a new client (a restarted learner,
        # with an empty cache) gets a new id, so the shards send every frame again.
        self.cache_id = _new_cache_id()

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def sizes(self) -> list[int]:
        """Asks every available shard for its size (blocking); a shard that is down counts 0."""
        for index, handle in enumerate(self.shards):
            if not self.health[index].available():
                self._sizes[index] = 0
                continue
            epoch = self.health[index].epoch
            try:
                self._sizes[index] = self.transport.result(handle.size.remote())
            except self.transport.failures as exc:
                self._failed(index, exc, epoch)
        return [int(x) for x in self._sizes]

    def _failed(self, index: int, exc: BaseException, epoch: int) -> None:
        self.health[index].failed(exc, epoch)
        if not self.health[index].up:
            self._sizes[index] = 0
            self._size_refs.pop(index, None)

    def _pick_shard(self) -> int | None:
        up = np.array([h.up for h in self.health])
        if not up.any():
            return None
        weights = self._sizes * up
        total = weights.sum()
        if total <= 0:
            return int(self._rng.choice(np.flatnonzero(up)))
        return int(self._rng.choice(self.num_shards, p=weights / total))

    def _refresh_sizes(self) -> None:
        if self._size_refs:
            done = self.transport.ready([ref for ref, _ in self._size_refs.values()])
            for index, (ref, epoch) in list(self._size_refs.items()):
                if ref in done:
                    del self._size_refs[index]
                    try:
                        self._sizes[index] = self.transport.result(ref)
                    except self.transport.failures as exc:
                        self._failed(index, exc, epoch)
        if not self._size_refs and self._requests % self._size_refresh_every == 0:
            self._size_refs = {i: (h.size.remote(), self.health[i].epoch)
                               for i, h in enumerate(self.shards) if self.health[i].up}

    def _top_up(self) -> None:
        for index, health in enumerate(self.health):
            if not health.up and health.available():  # rejoined: its probe gave its size
                self._sizes[index] = health.last_size
        while len(self._inflight) < self.prefetch:
            self._refresh_sizes()
            index = self._pick_shard()
            if index is None:
                return
            self._requests += 1
            shard = self.shards[index]
            ref = (shard.sample_cached.remote(self.batch_size, self.cache_id)
                   if self.cache_capacity else shard.sample_packed.remote(self.batch_size))
            self._inflight.append((index, ref, self.health[index].epoch))

    def sample(self) -> SampleBatch | CachedBatch | None:
        """The next batch from the shard that answers first (its oldest request); None when
        that shard refused (minimum size or rate limiter) or failed, or when no shard is
        available. A CachedBatch with ``cache_capacity`` set.

        Raises:
            WireError: a shard's ring capacity differs from ``cache_capacity``.
        """
        self._top_up()
        if not self._inflight:
            return None
        t0 = time.perf_counter()
        ref = self.transport.first_ready([r for _, r, _ in self._inflight])
        shard = next(i for i, r, _ in self._inflight if r == ref)
        index, ref, epoch = self._inflight.pop(
            next(k for k, (i, _, _) in enumerate(self._inflight) if i == shard))
        try:
            reply: PackedBatch | CachedBatch | RateLimited | None = self.transport.result(ref)
        except self.transport.failures as exc:
            self.failed_samples += 1
            self._failed(index, exc, epoch)
            reply = None
        self.sample_wait_seconds += time.perf_counter() - t0
        self._top_up()
        if reply is None:
            return None
        if isinstance(reply, RateLimited):
            self.rate_limited_samples += 1
            self._sizes[reply.shard_index] = reply.size
            return None
        if isinstance(reply, CachedBatch):
            return self._to_cache_rows(index, reply)
        return reply.unpack()

    def reset_cache(self) -> None:
        """Starts the learner's frame copy over (call it after the learner dropped its cache,
        e.g. when a batch may have been lost before its frames were stored): a new cache id,
        so each shard sends every frame again, and the requests in flight, answered for the
        old copy, dropped. A shard runs them before any request with the new id."""
        self.cache_id = _new_cache_id()
        self.cache_resets += 1
        self._inflight = []

    def _to_cache_rows(self, index: int, reply: CachedBatch) -> CachedBatch:
        """Shard ``index``'s ring slots as rows of the learner's cache of all shards."""
        if reply.cache_rows != self.cache_capacity:
            raise WireError(f"shard {index} capacity ({reply.cache_rows}) != the frame cache's "
                            f"rows per shard ({self.cache_capacity})")
        offset = index * self.cache_capacity
        self.cache_frames_received += int(reply.new_rows.size)
        return reply._replace(frame_rows=reply.frame_rows + offset,
                              new_rows=reply.new_rows + offset,
                              cache_rows=self.num_shards * self.cache_capacity)

    def update_priorities(self, keys: np.ndarray, td_errors: np.ndarray) -> None:
        """Sends |TD errors| to the shards that own ``keys`` (shard index in the top bits);
        the keys of a shard that is down are dropped (``dropped_priority_keys``)."""
        keys = np.asarray(keys, np.int64)
        td = np.asarray(td_errors, np.float64)
        owner = keys >> KEY_SHARD_SHIFT
        for index in np.unique(owner):
            if not 0 <= index < self.num_shards:
                raise WireError(f"key shard index ({index}) out of range [0, {self.num_shards})")
            mask = owner == index
            count = int(np.count_nonzero(mask))
            if not self.health[int(index)].up:
                self.dropped_priority_keys += count
                continue
            ref = self.shards[int(index)].update_priorities.remote(keys[mask], td[mask])
            self._priority_refs.append((int(index), count, ref, self.health[int(index)].epoch))
        while len(self._priority_refs) > 2 * self.num_shards:
            index, count, ref, epoch = self._priority_refs.popleft()
            try:
                self.transport.result(ref)
            except self.transport.failures as exc:
                self.dropped_priority_keys += count
                self._failed(index, exc, epoch)

    def stats(self) -> dict[str, float]:
        return {"sample_wait_seconds": self.sample_wait_seconds,
                "rate_limited_samples": self.rate_limited_samples,
                "sample_requests": self._requests,
                "failed_samples": self.failed_samples,
                "dropped_priority_keys": self.dropped_priority_keys,
                "cache_frames_received": self.cache_frames_received,
                "cache_resets": self.cache_resets,
                "shard_failures": sum(h.failures for h in self.health),
                "shard_rejoins": sum(h.rejoins for h in self.health),
                "shards_unavailable": sum(not h.up for h in self.health)}
