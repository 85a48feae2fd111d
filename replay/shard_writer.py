"""ShardWriter: a rollout worker's side of the replay: sends its chunks to one shard, in order.

The writer talks to its shard through a handle and the handle's transport
(replay/transport.py: ``handle.method.remote(*args)`` returns a reference the transport waits
for). ``writer_for`` picks a worker's shard by the one routing rule, ``shard_for``. It keeps a small window of inserts in flight; when the
shard refuses one (rate limiter), the writer waits with backoff and resends it and every later
chunk in order (the shard refuses a stream's later seqs until the refused one returns). A chunk
the shard rejects as bad data (WireError, SpecError) is dropped and counted, and the writer
goes on with the next one. A call that fails because the shard died or is restarting
(one of the transport's ``failures``) never raises: the writer counts the chunks it loses and
never resends them.
"""
from __future__ import annotations

import collections
import logging
import time
from typing import Any, Sequence

from common.codec import encode_chunk
from common.errors import ConfigError, SpecError, WireError
from common.specs import EnvSpec
from common.types import StepChunk
from replay.health import ShardHealth
from replay.shard import InsertAck
from replay.transport import LOCAL, Transport, shard_for

log = logging.getLogger(__name__)

# A rate-limited insert waits as long as the limiter holds it back (the learner decides when
# sampling lets inserts go on), as Reverb's writers do by default; every this many seconds of
# one wait the writer logs a warning naming the shard.
BLOCKED_WARN_EVERY_S = 60.0



class ShardWriter:
    """One actor's writer to its shard: a window of inserts in flight, resend when refused.

    A chunk that the shard rejects as bad data (it raises WireError or SpecError: resending it
    can only fail again) is dropped and counted by reason in ``rejected`` ("wire", "spec"; a
    chunk that ``send_chunk`` cannot encode counts as "encode"), logged at the 1st, 2nd, 4th,
    ... drop, and the writer goes on with the next chunk; the shard restarts the stream at
    its next ``first`` record. A rate-limited insert is no failure: it is resent until the
    limiter admits it, with a warning every BLOCKED_WARN_EVERY_S seconds of one wait.

    When the shard dies (a call fails with one of the transport's ``failures``) the chunk is counted as lost,
    never resent: the restarted shard restored an older state of the stream, and the seq gap
    makes it drop the stream's records up to its next ``first`` record. While the shard is
    down, ``send`` drops chunks at once (counted in ``lost_chunks``) and probes the shard
    after a back-off without blocking; it resumes sending once the shard answers.

    Args:
        handle: the shard handle.
        spec: for encoding chunks.
        window: inserts in flight before ``send`` waits for the oldest ack.
        backoff_s: first wait after a refusal (doubles up to ``max_backoff_s``).
        max_backoff_s: longest wait between resends.
        shard_index: the shard's index, for logs.
        down_backoff_s: wait before probing a shard that died (doubles up to 16x).
        transport: how calls on ``handle`` are waited for.
    """

    def __init__(self, handle: Any, spec: EnvSpec, window: int = 2, backoff_s: float = 0.005,
                 max_backoff_s: float = 0.5, shard_index: int = 0, down_backoff_s: float = 0.5,
                 transport: Transport = LOCAL) -> None:
        if window < 1:
            raise ConfigError(f"window ({window}) must be >= 1")
        self.handle, self.spec, self.window = handle, spec, window
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.transport = transport
        self.health = ShardHealth(handle, shard_index, "writer", down_backoff_s, 16 * down_backoff_s,
                                  transport=transport)
        self._pending: collections.deque[tuple[bytes, Any, int]] = collections.deque()
        self.stored = 0
        self.duplicates = 0
        self.refusals = 0
        self.lost_chunks = 0
        self.rejected: dict[str, int] = {"wire": 0, "spec": 0, "encode": 0}
        self.blocked_seconds = 0.0

    @property
    def rejected_chunks(self) -> int:
        """Chunks dropped as bad data, all reasons."""
        return sum(self.rejected.values())

    def send_chunk(self, chunk: StepChunk) -> None:
        """Encodes and sends a chunk (usable as actors' ChunkWriter sink); a chunk the codec
        refuses is dropped and counted (reason "encode")."""
        try:
            data = encode_chunk(chunk, self.spec)
        except (WireError, SpecError) as exc:
            self._drop("encode", exc)
            return
        self.send(data)

    def send(self, data: bytes) -> None:
        """Sends an encoded chunk; waits only when ``window`` inserts are in flight, and
        drops it (``lost_chunks``) without waiting while the shard is down."""
        if not self.health.available():
            self.lost_chunks += 1
            return
        self._pending.append((data, self.handle.insert.remote(data), self.health.epoch))
        while len(self._pending) > self.window:
            self._settle_oldest()

    def flush(self) -> None:
        """Waits until every sent chunk is acknowledged (stored, duplicate) or lost."""
        while self._pending:
            self._settle_oldest()

    def stats(self) -> dict[str, float]:
        return {"stored": self.stored, "duplicates": self.duplicates, "refusals": self.refusals,
                "lost_chunks": self.lost_chunks, "rejected_chunks": self.rejected_chunks,
                **{f"rejected_chunks_{reason}": n for reason, n in self.rejected.items()},
                "blocked_seconds": self.blocked_seconds,
                "shard_failures": self.health.failures, "shard_rejoins": self.health.rejoins}

    def _settle_oldest(self) -> None:
        t0 = time.perf_counter()
        try:
            ack: InsertAck = self.transport.result(self._pending[0][1])
            if ack.rate_limited:
                ack = self._resend_refused(ack)
        except self.transport.failures as exc:
            _, _, epoch = self._pending.popleft()
            self.lost_chunks += 1
            self.health.failed(exc, epoch)
            self.blocked_seconds += time.perf_counter() - t0
            return
        except (WireError, SpecError) as exc:
            self._pending.popleft()
            self._drop("spec" if isinstance(exc, SpecError) else "wire", exc)
            return
        self._pending.popleft()
        self.stored += ack.stored
        self.duplicates += int(ack.duplicate)

    def _drop(self, reason: str, exc: BaseException) -> None:
        """Counts a chunk rejected as bad data; logs the 1st, 2nd, 4th, ... of a reason."""
        self.rejected[reason] += 1
        n = self.rejected[reason]
        if n & (n - 1) == 0:
            log.warning("event=writer_chunk_rejected shard=%d reason=%s rejected=%d error=%s",
                        self.health.shard_index, reason, n, exc)

    def _drain_later(self) -> None:
        """Waits for the inserts behind the refused head (the shard refused their seqs too),
        dropping those it rejected as bad data, so that only the rest is resent."""
        kept = [self._pending[0]]
        for item in list(self._pending)[1:]:
            try:
                self.transport.result(item[1])
            except (WireError, SpecError) as exc:
                self._drop("spec" if isinstance(exc, SpecError) else "wire", exc)
                continue
            kept.append(item)
        self._pending = collections.deque(kept)

    def _resend_refused(self, ack: InsertAck) -> InsertAck:
        t0, delay = time.perf_counter(), self.backoff_s
        warn_at = t0 + BLOCKED_WARN_EVERY_S
        while ack.rate_limited:
            self.refusals += 1
            self._drain_later()
            if time.perf_counter() >= warn_at:
                warn_at += BLOCKED_WARN_EVERY_S
                log.warning("event=writer_blocked shard=%d reason=rate_limited waited_s=%.0f "
                            "pending=%d", self.health.shard_index, time.perf_counter() - t0,
                            len(self._pending))
            time.sleep(delay)
            delay = min(2 * delay, self.max_backoff_s)
            epoch = self.health.epoch
            self._pending = collections.deque((d, self.handle.insert.remote(d), epoch)
                                              for d, _, _ in self._pending)
            ack = self.transport.result(self._pending[0][1])
        self.blocked_seconds += time.perf_counter() - t0
        return ack


def writer_for(shards: Sequence[Any], worker_index: int, spec: EnvSpec, window: int = 2,
               transport: Transport = LOCAL) -> ShardWriter:
    """The writer of rollout worker ``worker_index``: to its shard among ``shards``."""
    index = shard_for(worker_index, len(shards))
    return ShardWriter(shards[index], spec, window, shard_index=index, transport=transport)
