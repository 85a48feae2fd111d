"""ReplayShard: one shard of the replay service (a plain class; deploy/ wraps it in Ray).

Inserts are msgpack StepChunks (common/codec.py) from rollout workers. A message is decoded and
fully validated, and its place in its stream checked, before anything is written: an invalid
message raises WireError/SpecError and leaves the shard exactly as it was. Every such refusal
is counted in ``rejected`` and, by reason, in ``rejected_<reason>`` (REJECT_REASONS): "wire"
(a malformed message), "spec" (an array against the spec), "stream" (a chunk that breaks its
stream, e.g. continues an episode that ended).

Idempotence: a chunk whose ``seq`` is at most DUPLICATE_WINDOW below the stream's last
accepted seq, or equal to it, is acknowledged as a duplicate and ignored, so a retried Ray task
never stores a batch twice. A seq gap or an unknown stream restarts the stream at the chunk's
next ``first`` record, and so does a seq further behind (a sender that started over). The table
of streams is bounded, and streams that hold no intact record are forgotten
(replay/streams.py); a retry of such a stream's old chunk may then be stored again.

A shard is not thread-safe: run it as a single-threaded Ray actor (Ray's default for a
synchronous actor class). Rate limiting never blocks the actor: a refused call returns at once,
``InsertAck.rate_limited`` for an insert (the writer resends the same message; later seqs of
that stream are refused until it does, so episodes stay whole and in order) and a
``RateLimited`` value for a sample.
"""
from __future__ import annotations

import contextlib
import logging
import pathlib
import time
from typing import Iterator, Mapping, NamedTuple

import numpy as np

from common.codec import WireLimits, decode_chunk, encode_batch, validate_chunk
from common.config import ReplayConfig
from common.errors import ConfigError, SpecError, WireError
from common.specs import EnvSpec
from common.types import CachedBatch, SampleBatch, StepChunk
from replay import checkpoint
from replay.rate_limiter import RateLimiter
from replay.samplers import make_sampler
from replay.storage import FrameRing, StreamState
from replay.streams import MAX_STREAMS, StreamTable, restarts

log = logging.getLogger(__name__)

KEY_SHARD_SHIFT = 48
_STAMP_MASK = (1 << KEY_SHARD_SHIFT) - 1
REJECT_REASONS = ("wire", "spec", "stream")


class InsertAck(NamedTuple):
    """The shard's answer to one insert.

    Attributes:
        stream_id: the chunk's stream.
        seq: the chunk's seq.
        stored: transitions stored from this chunk.
        dropped: leading records dropped (stream unknown or after a seq gap).
        duplicate: the chunk was seen before and ignored.
        rate_limited: refused by the rate limiter; resend the same message later.
    """

    stream_id: int
    seq: int
    stored: int
    dropped: int
    duplicate: bool
    rate_limited: bool


class RateLimited(NamedTuple):
    """A sample refused by the rate limiter or the minimum size; ask again later.

    Attributes:
        shard_index: the shard that refused.
        size: its current size in transitions.
        reason: "min_size" or "ratio".
    """

    shard_index: int
    size: int
    reason: str


class PackedBatch(NamedTuple):
    """A SampleBatch as it travels from a shard: F + 1 frames per transition, not 2F.

    ``frames[:, :F]`` is the obs stack and ``frames[:, 1:]`` the next-obs stack; ``unpack``
    gives the SampleBatch with both as views, without copying.
    """

    frames: np.ndarray
    obs_vector: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_vector: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    policy_version: np.ndarray
    weight: np.ndarray
    key: np.ndarray

    def unpack(self) -> SampleBatch:
        f = self.frames.shape[1] - 1
        return SampleBatch(
            obs_image=self.frames[:, :f], obs_vector=self.obs_vector, action=self.action,
            reward=self.reward, next_image=self.frames[:, 1:], next_vector=self.next_vector,
            terminated=self.terminated, truncated=self.truncated,
            policy_version=self.policy_version, weight=self.weight, key=self.key)


class ReplayShard:
    """One replay shard. See the module docstring.

    Args:
        spec: observation and action spec.
        cfg: the replay section of the config.
        shard_index: this shard's index (stored in the top bits of sample keys).
        seed: sampling seed.
        max_streams: the most writer streams remembered (replay/streams.py).
    """

    def __init__(self, spec: EnvSpec, cfg: ReplayConfig, shard_index: int = 0, seed: int = 0,
                 max_streams: int = MAX_STREAMS) -> None:
        if not 0 <= shard_index < (1 << 14):
            raise ConfigError(f"shard_index ({shard_index}) must be in [0, 16384)")
        self.spec, self.cfg, self.shard_index = spec, cfg, int(shard_index)
        self.ring = FrameRing(spec, cfg.capacity)
        self.limits = WireLimits(max_records=min(WireLimits().max_records, cfg.capacity))
        self.limiter = RateLimiter(cfg.samples_per_insert, cfg.min_size_to_sample,
                                   cfg.error_buffer, cfg.capacity)
        self.sampler = make_sampler(cfg, self.ring.valid, lambda: self.ring.filled,
                                    lambda: self.ring.num_valid)
        self.rng = np.random.default_rng([seed, shard_index])
        self._streams = StreamTable(max_streams)
        self.counts = {"inserts": 0, "duplicates": 0, "dropped_records": 0, "rejected": 0,
                       **{f"rejected_{reason}": 0 for reason in REJECT_REASONS},
                       "stream_restarts": 0, "insert_refusals": 0, "samples": 0, "sample_refusals": 0,
                       "priority_updates": 0, "stale_priority_updates": 0,
                       "insert_busy_seconds": 0.0, "sample_busy_seconds": 0.0,
                       "cache_frames_sent": 0, "cache_resets": 0}
        # The frame copy of one learner (sample_cached): its id, and per slot the write stamp
        # of the frame last sent to it (-1: none).
        self._cache_id: int | None = None
        self._cache_stamp = np.full(self.ring.capacity, -1, np.int64)
        log.info("replay_shard index=%d capacity=%d sampler=%s bytes=%d bytes_per_slot=%.1f",
                 self.shard_index, cfg.capacity, cfg.sampler.value, self.ring.nbytes,
                 self.ring.bytes_per_slot())

    @property
    def streams(self) -> StreamTable:
        """The writer streams this shard remembers (replay/streams.py)."""
        return self._streams

    @streams.setter
    def streams(self, states: Mapping[int, StreamState]) -> None:
        # replay/checkpoint.py restores the table by assigning a plain mapping.
        self._streams.replace(states)

    def size(self) -> int:
        """Valid (sampleable) transitions held."""
        return self.ring.num_valid

    def insert(self, data: bytes) -> InsertAck:
        """Decodes, validates and stores one msgpack chunk (see the module docstring).

        Raises:
            WireError, SpecError: the message is invalid; the shard is unchanged.
        """
        t0 = time.perf_counter()
        with self._counting_rejections("wire"):
            chunk = decode_chunk(data, self.spec, self.limits)
        with self._counting_rejections("stream"):
            ack = self._insert_valid(chunk)
        self.counts["insert_busy_seconds"] += time.perf_counter() - t0
        return ack

    def insert_chunk(self, chunk: StepChunk) -> InsertAck:
        """Validates and stores a chunk built in this process (same rules as ``insert``)."""
        with self._counting_rejections("wire"):
            validate_chunk(chunk, self.spec, self.limits)
        with self._counting_rejections("stream"):
            return self._insert_valid(chunk)

    @contextlib.contextmanager
    def _counting_rejections(self, reason: str) -> Iterator[None]:
        """Counts an insert that raises as rejected, by ``reason`` ("spec" for a SpecError)."""
        try:
            yield
        except Exception as exc:
            reason = "spec" if isinstance(exc, SpecError) else reason
            self.counts["rejected"] += 1
            self.counts[f"rejected_{reason}"] += 1
            if self.counts["rejected"] & (self.counts["rejected"] - 1) == 0:  # 1, 2, 4, ...
                log.warning("event=insert_rejected shard=%d reason=%s rejected=%d error=%s",
                            self.shard_index, reason, self.counts["rejected"], exc)
            raise

    def _insert_valid(self, chunk: StepChunk) -> InsertAck:
        sid, seq = chunk.stream_id, chunk.seq
        state = self.streams.get(sid)
        restart = restarts(state, seq)
        if restart:
            state = None  # no retry: the sender started the stream over (replay/streams.py)
        if state is not None and seq <= state.last_seq:
            self.counts["duplicates"] += 1
            return InsertAck(sid, seq, 0, 0, True, False)
        if state is not None and state.refused_seq >= 0 and seq != state.refused_seq:
            return self._refuse_insert(sid, seq, state)
        # After a gap the stream restarts at its next first record.
        base = state if state is not None and seq == state.last_seq + 1 else None
        plan = self.ring.plan(chunk, base)
        if not self.limiter.admit("insert", self.limiter.can_insert(self.size())):
            return self._refuse_insert(sid, seq, state)
        new_state = self.ring.write(chunk, base, plan, self.sampler.remove, self.sampler.add)
        self.streams.put(sid, new_state, self.ring.counter - self.ring.capacity)
        self.limiter.on_insert(plan.stored_transitions)
        self.counts["inserts"] += plan.stored_transitions
        self.counts["dropped_records"] += plan.dropped_records
        self.counts["stream_restarts"] += int(restart)
        return InsertAck(sid, seq, plan.stored_transitions, plan.dropped_records, False, False)

    def _refuse_insert(self, sid: int, seq: int, state: StreamState | None) -> InsertAck:
        self.counts["insert_refusals"] += 1
        if state is None:
            f = self.spec.frames
            state = StreamState(seq - 1, -1, False, np.zeros(f, np.int64), np.full(f, -1, np.int64))
        if state.refused_seq < 0:
            state.refused_seq = seq
        self.streams.put(sid, state, self.ring.counter - self.ring.capacity)
        return InsertAck(sid, seq, 0, 0, False, True)

    def sample_packed(self, batch_size: int) -> PackedBatch | RateLimited:
        """Samples ``batch_size`` valid transitions as a PackedBatch (what travels over Ray).

        Returns:
            A PackedBatch (keys: shard index << 48 | write stamp), or RateLimited when the
            shard is below min_size_to_sample or the ratio holds sampling back.
        """
        t0 = time.perf_counter()
        drawn = self._draw(batch_size)
        if isinstance(drawn, RateLimited):
            return drawn
        packed = self._packed(*drawn)
        self.counts["sample_busy_seconds"] += time.perf_counter() - t0
        return packed

    def sample_cached(self, batch_size: int, cache_id: int) -> CachedBatch | RateLimited:
        """``sample_packed`` for a learner that keeps a copy of this shard's frames: the stacks
        as ring slots (``CachedBatch.frame_rows``, this shard's rows 0 to capacity - 1), with
        the frames of those slots that the copy ``cache_id`` does not hold yet.

        The shard remembers, per slot, the write stamp of the frame it last sent to the copy
        ``cache_id``, so a frame travels once, and again only after its slot is overwritten.
        A different ``cache_id`` (a new learner) starts from an empty copy. The copy must
        store the replies' frames in the order this shard sent them (``ReplayClient`` takes a
        shard's replies in order); nothing is marked sent unless the reply is returned.
        """
        t0 = time.perf_counter()
        if cache_id != self._cache_id:
            self._forget_cache(cache_id)
        drawn = self._draw(batch_size)
        if isinstance(drawn, RateLimited):
            return drawn
        slots, weight = drawn
        index, fields = self._gather(slots, weight)
        flat = index.ravel()
        # Deduplicate only the few slots the copy lacks, not the batch's 5 x B.
        new_slots = np.unique(flat[self._cache_stamp[flat] != self.ring.stamp[flat]])
        batch = CachedBatch(frame_rows=index.astype(np.int64),
                            new_rows=new_slots.astype(np.int64),
                            new_frames=self.ring.frame[new_slots],
                            cache_rows=self.ring.capacity, **fields)
        self._cache_stamp[new_slots] = self.ring.stamp[new_slots]
        self.counts["cache_frames_sent"] += int(new_slots.size)
        self.counts["sample_busy_seconds"] += time.perf_counter() - t0
        return batch

    def _forget_cache(self, cache_id: int | None) -> None:
        """Starts over with the copy ``cache_id``: it holds none of this shard's frames."""
        if self._cache_id is not None:
            self.counts["cache_resets"] += 1
        self._cache_id = cache_id
        self._cache_stamp.fill(-1)

    def _draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray] | RateLimited:
        """The slots and importance weights of one sample, or why the shard refuses it."""
        if batch_size < 1:
            raise WireError(f"batch_size ({batch_size}) must be >= 1")
        size = self.size()
        if not self.limiter.admit("sample", self.limiter.can_sample(size)):
            self.counts["sample_refusals"] += 1
            reason = "min_size" if size < self.limiter.min_size_to_sample else "ratio"
            return RateLimited(self.shard_index, size, reason)
        slots, weight = self.sampler.sample(self.rng, batch_size)
        self.limiter.on_sample(batch_size)
        self.counts["samples"] += batch_size
        return slots, weight

    def sample(self, batch_size: int) -> SampleBatch | RateLimited:
        """``sample_packed`` unpacked: both image stacks as [B, F, H, W] views of one gather."""
        packed = self.sample_packed(batch_size)
        return packed if isinstance(packed, RateLimited) else packed.unpack()

    def sample_bytes(self, batch_size: int) -> bytes | RateLimited:
        """``sample`` encoded with common.codec.encode_batch (the msgpack return path)."""
        batch = self.sample(batch_size)
        return batch if isinstance(batch, RateLimited) else encode_batch(batch)

    def _packed(self, slots: np.ndarray, weight: np.ndarray) -> PackedBatch:
        """The sampled transitions ``slots`` with their frames as pixels."""
        index, fields = self._gather(slots, weight)
        return PackedBatch(self.ring.frame[index], **fields)

    def _gather(self, slots: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, dict]:
        """The [B, F + 1] frame slots of the sampled transitions and their other fields."""
        r = self.ring
        prev = r.prev[slots]
        # A next-obs stack is its obs stack shifted by one plus the new frame (also at an
        # episode start, where both repeat the first frame), so F + 1 frames hold both.
        index = np.concatenate([r.stack[prev], slots[:, None].astype(np.int32)], axis=1)
        key = (np.int64(self.shard_index) << KEY_SHARD_SHIFT) | r.stamp[slots]
        return index, dict(
            obs_vector=r.vector[prev], action=r.action[slots], reward=r.reward[slots],
            next_vector=r.vector[slots], terminated=r.terminated[slots].astype(np.float32),
            truncated=r.truncated[slots].astype(np.float32),
            policy_version=r.policy_version[slots], weight=weight, key=key)

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> int:
        """Sets priorities of sampled transitions from |TD errors|.

        Keys of other shards, or of transitions overwritten since they were sampled, are
        ignored. Returns the number of priorities applied.
        """
        keys = np.asarray(keys, np.int64)
        priorities = np.asarray(priorities, np.float64)
        if keys.shape != priorities.shape or keys.ndim != 1:
            raise WireError(f"keys {keys.shape} and priorities {priorities.shape} must be equal 1-D")
        if not np.all(np.isfinite(priorities)):
            raise WireError("priorities must be finite")
        stamps = keys & _STAMP_MASK
        mine = (keys >> KEY_SHARD_SHIFT) == self.shard_index
        slots = stamps % self.ring.capacity
        ok = mine & self.ring.intact(slots, stamps)
        slots, index = np.unique(slots[ok][::-1], return_index=True)
        self.sampler.update(slots, priorities[ok][::-1][index])
        self.counts["priority_updates"] += int(slots.size)
        self.counts["stale_priority_updates"] += int(keys.size - np.count_nonzero(ok))
        return int(slots.size)

    def stats(self) -> dict[str, float]:
        """Counters and gauges: inserts, samples, size, bytes, blocked seconds, ..."""
        return {**self.counts, "shard_index": self.shard_index, "size": self.size(),
                "capacity": self.ring.capacity, "slots_written": self.ring.counter,
                "streams": len(self.streams), "streams_pruned": self.streams.pruned,
                "streams_evicted": self.streams.evicted, "bytes": self.ring.nbytes,
                "insert_blocked_seconds": self.limiter.blocked_seconds["insert"],
                "sample_blocked_seconds": self.limiter.blocked_seconds["sample"]}

    def save(self, directory: str | pathlib.Path) -> str:
        """Writes the shard atomically under ``directory``; returns the checkpoint path."""
        return str(checkpoint.save_shard(self, pathlib.Path(directory)))

    def restore(self, directory: str | pathlib.Path) -> None:
        """Restores exactly what ``save`` wrote, except pending refusals: a refused seq is
        forgotten, since the writers of the shard that saved it saw their inserts fail and
        moved on (waiting for it would refuse their streams forever); their next chunk is a
        seq gap, which restarts the stream at its next ``first`` record.

        Raises:
            CheckpointError: the checkpoint is missing, corrupt or truncated.
        """
        checkpoint.restore_shard(self, pathlib.Path(directory))
        # The restored ring reuses stamps the cache may hold with other frames: start over.
        self._forget_cache(None)
        for state in self.streams.values():
            state.refused_seq = -1
