"""ReplayClient: routes actor chunks to shards, samples across shards with requests in flight.

The client talks to shards through handles with Ray's calling convention
(``handle.method.remote(*args)`` returns a future). Ray actor handles work as they are;
``LocalShard`` gives an in-process ReplayShard the same convention, so the same client runs
without Ray for tests and debugging.

Routing: actor ``i`` always writes to shard ``i % num_shards``, so its episodes stay whole in
one shard. Each actor's ``ShardWriter`` keeps a small window of inserts in flight; when the
shard refuses one (rate limiter), the writer waits with backoff and resends it and every later
chunk in order (the shard refuses a stream's later seqs until the refused one returns).

Sampling: ``sample()`` keeps ``prefetch`` requests in flight; each new request goes to a shard
drawn in proportion to the shards' last known sizes. Samples come back as PackedBatch (F + 1
frames per transition instead of 2F) through Ray's own serialisation (zero-copy numpy), which
measured faster than msgpack for this direction (bench/replay_throughput.py,
docs/benchmarks.md "Replay"); ``sample()`` unpacks them into SampleBatch views.
"""
from __future__ import annotations

import collections
import logging
import time
from typing import Any, Callable, Sequence

import numpy as np
import ray

from common.codec import encode_chunk
from common.errors import ConfigError, WireError
from common.specs import EnvSpec
from common.types import SampleBatch, StepChunk
from replay.shard import KEY_SHARD_SHIFT, InsertAck, PackedBatch, RateLimited, ReplayShard

log = logging.getLogger(__name__)


def ray_system_config(spec: EnvSpec, chunk_length: int) -> dict[str, int]:
    """Ray system settings the replay service needs, for ``ray.init(_system_config=...)``.

    Ray passes a task argument above ``max_direct_call_object_size`` (100 KiB by default)
    through the object store, which costs about 2.4 ms per 226 KB insert on a 2-core machine
    against about 0.9 ms inline (bench/replay_throughput.py). This raises the limit above
    the size of one insert message, with room for chunks up to twice ``chunk_length``.
    """
    record = spec.frame.nbytes + spec.vector.nbytes + spec.action.nbytes + 4 + 1 + 1 + 1 + 8
    return {"max_direct_call_object_size": max(100 * 1024, 2 * chunk_length * record + 4096)}


class LocalRef:
    """A completed call on a LocalShard: its value or its exception."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._value, self._error = fn(*args), None
        except Exception as exc:  # re-raised by result(), as ray.get would
            self._value, self._error = None, exc

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class _LocalMethod:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> LocalRef:
        return LocalRef(self._fn, args)


class LocalShard:
    """Gives an in-process ReplayShard the ``handle.method.remote(...)`` convention."""

    def __init__(self, shard: ReplayShard) -> None:
        self.shard = shard

    def __getattr__(self, name: str) -> _LocalMethod:
        return _LocalMethod(getattr(self.shard, name))


def _get(ref: Any) -> Any:
    return ref.result() if isinstance(ref, LocalRef) else ray.get(ref)


def _ready(refs: list[Any]) -> list[Any]:
    local = [r for r in refs if isinstance(r, LocalRef)]
    remote = [r for r in refs if not isinstance(r, LocalRef)]
    if remote:
        done, _ = ray.wait(remote, num_returns=len(remote), timeout=0)
        local += done
    return local


class ShardWriter:
    """One actor's writer to its shard: a window of inserts in flight, resend when refused.

    Args:
        handle: the shard handle.
        spec: for encoding chunks.
        window: inserts in flight before ``send`` waits for the oldest ack.
        backoff_s: first wait after a refusal (doubles up to ``max_backoff_s``).
        max_backoff_s: longest wait between resends.
    """

    def __init__(self, handle: Any, spec: EnvSpec, window: int = 2, backoff_s: float = 0.005,
                 max_backoff_s: float = 0.5) -> None:
        if window < 1:
            raise ConfigError(f"window ({window}) must be >= 1")
        self.handle, self.spec, self.window = handle, spec, window
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._pending: collections.deque[tuple[bytes, Any]] = collections.deque()
        self.stored = 0
        self.duplicates = 0
        self.refusals = 0
        self.blocked_seconds = 0.0

    def send_chunk(self, chunk: StepChunk) -> None:
        """Encodes and sends a chunk (usable as actors' ChunkWriter sink)."""
        self.send(encode_chunk(chunk, self.spec))

    def send(self, data: bytes) -> None:
        """Sends an encoded chunk; waits only when ``window`` inserts are in flight."""
        self._pending.append((data, self.handle.insert.remote(data)))
        while len(self._pending) > self.window:
            self._settle_oldest()

    def flush(self) -> None:
        """Waits until every sent chunk is acknowledged as stored or duplicate."""
        while self._pending:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        ack: InsertAck = _get(self._pending[0][1])
        if not ack.rate_limited:
            self._pending.popleft()
            self.stored += ack.stored
            self.duplicates += int(ack.duplicate)
            return
        t0, delay = time.perf_counter(), self.backoff_s
        while ack.rate_limited:
            self.refusals += 1
            for _, ref in list(self._pending)[1:]:
                _get(ref)  # later seqs of this stream were refused too: drain, then resend
            time.sleep(delay)
            delay = min(2 * delay, self.max_backoff_s)
            self._pending = collections.deque((d, self.handle.insert.remote(d)) for d, _ in self._pending)
            ack = _get(self._pending[0][1])
        self.blocked_seconds += time.perf_counter() - t0
        self._pending.popleft()
        self.stored += ack.stored
        self.duplicates += int(ack.duplicate)


class ReplayClient:
    """Routes inserts and samples over shard handles; see the module docstring.

    Args:
        shards: shard handles (Ray actor handles or LocalShard), index i holding shard i.
        spec: observation and action spec.
        batch_size: transitions per sample.
        prefetch: sample requests kept in flight.
        seed: seeds the choice of shard per request.
        size_refresh_every: sample requests between two refreshes of the shard sizes.
    """

    def __init__(self, shards: Sequence[Any], spec: EnvSpec, batch_size: int, prefetch: int = 4,
                 seed: int = 0, size_refresh_every: int = 16) -> None:
        if not shards:
            raise ConfigError(f"num_shards ({len(shards)}) must be >= 1")
        if prefetch < 1:
            raise ConfigError(f"prefetch ({prefetch}) must be >= 1")
        self.shards, self.spec = list(shards), spec
        self.batch_size, self.prefetch = batch_size, prefetch
        self._rng = np.random.default_rng(seed)
        self._sizes = np.zeros(len(self.shards), np.float64)
        self._size_refs: list[Any] = []
        self._size_refresh_every = size_refresh_every
        self._requests = 0
        self._inflight: collections.deque[Any] = collections.deque()
        self._priority_refs: collections.deque[Any] = collections.deque()
        self.sample_wait_seconds = 0.0
        self.rate_limited_samples = 0

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def shard_for(self, actor_index: int) -> int:
        """The shard that actor ``actor_index`` writes to."""
        return actor_index % self.num_shards

    def writer(self, actor_index: int, window: int = 2) -> ShardWriter:
        """A writer that sends actor ``actor_index``'s chunks to its shard."""
        return ShardWriter(self.shards[self.shard_for(actor_index)], self.spec, window)

    def sizes(self) -> list[int]:
        """Asks every shard for its size (blocking) and remembers the answers."""
        sizes = [_get(h.size.remote()) for h in self.shards]
        self._sizes[:] = sizes
        return sizes

    def _pick_shard(self) -> int:
        total = self._sizes.sum()
        if total <= 0:
            return int(self._rng.integers(self.num_shards))
        return int(self._rng.choice(self.num_shards, p=self._sizes / total))

    def _refresh_sizes(self) -> None:
        if self._size_refs:
            ready = _ready([ref for _, ref in self._size_refs])
            if len(ready) == len(self._size_refs):
                for index, ref in self._size_refs:
                    self._sizes[index] = _get(ref)
                self._size_refs = []
        if not self._size_refs and self._requests % self._size_refresh_every == 0:
            self._size_refs = [(i, h.size.remote()) for i, h in enumerate(self.shards)]

    def _top_up(self) -> None:
        while len(self._inflight) < self.prefetch:
            self._refresh_sizes()
            self._requests += 1
            handle = self.shards[self._pick_shard()]
            self._inflight.append(handle.sample_packed.remote(self.batch_size))

    def sample(self) -> SampleBatch | None:
        """The next batch, or None when its shard refused (minimum size or rate limiter)."""
        self._top_up()
        t0 = time.perf_counter()
        reply: PackedBatch | RateLimited = _get(self._inflight.popleft())
        self.sample_wait_seconds += time.perf_counter() - t0
        self._top_up()
        if isinstance(reply, RateLimited):
            self.rate_limited_samples += 1
            self._sizes[reply.shard_index] = reply.size
            return None
        return reply.unpack()

    def update_priorities(self, keys: np.ndarray, td_errors: np.ndarray) -> None:
        """Sends |TD errors| to the shards that own ``keys`` (shard index in the top bits)."""
        keys = np.asarray(keys, np.int64)
        td = np.asarray(td_errors, np.float64)
        owner = keys >> KEY_SHARD_SHIFT
        for index in np.unique(owner):
            if not 0 <= index < self.num_shards:
                raise WireError(f"key shard index ({index}) out of range [0, {self.num_shards})")
            mask = owner == index
            self._priority_refs.append(
                self.shards[int(index)].update_priorities.remote(keys[mask], td[mask]))
        while len(self._priority_refs) > 2 * self.num_shards:
            _get(self._priority_refs.popleft())

    def stats(self) -> dict[str, float]:
        return {"sample_wait_seconds": self.sample_wait_seconds,
                "rate_limited_samples": self.rate_limited_samples,
                "sample_requests": self._requests}
