"""Frame-deduplicating ring storage: every camera frame is stored once, stacks are indices.

One ring of slots, one slot per observation record (common/types.py StepChunk): its newest
frame (uint8), its vector, and the transition INTO it (action, reward, terminated, truncated,
policy_version). Each slot also keeps the ring indices of its F stacked frames (computed at
insert with common.framestack.stack_offsets semantics), the slot of its predecessor, its
stream successor and a write stamp (the global insert counter). A transition is the pair
(predecessor slot, slot); its obs stack is ``frames[stack[prev]]`` and its next-obs stack
``frames[stack[slot]]``.

Eviction is FIFO. A slot written at stamp ``t`` is intact while ``t >= counter - capacity``. A
transition is valid while every slot it reads is intact; the oldest one it reads is at most F
steps back in its stream, so overwriting a slot invalidates the slot and its next F stream
successors, found through the successor links.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from common.errors import ConfigError, WireError
from common.specs import EnvSpec
from common.types import StepChunk

log = logging.getLogger(__name__)

SlotCallback = Callable[[np.ndarray], None]
RING_ARRAYS = ("frame", "vector", "action", "reward", "terminated", "truncated",
               "policy_version", "stack", "prev", "next", "stamp", "valid")


def _commit_pages(arr: np.ndarray) -> None:
    """Writes one element per page so the ring's memory is committed at construction."""
    flat = arr.reshape(-1)
    flat[:: max(1, 4096 // arr.itemsize)] = flat[0]


@dataclass
class StreamState:
    """What the storage remembers about one actor stream between its chunks.

    Attributes:
        last_seq: seq of the last chunk accepted (or recognised as a gap).
        step: step in episode of the stream's last stored record; -1 when the stream must
            restart with a ``first`` record (unknown, after a gap, or after a terminal record).
        ended: the last record ended its episode (the next record must be ``first``).
        slots: ring slots of the last F records, oldest first.
        stamps: write stamps of those slots.
        refused_seq: seq refused by the rate limiter; later seqs are refused until it returns.
    """

    last_seq: int
    step: int
    ended: bool
    slots: np.ndarray
    stamps: np.ndarray
    refused_seq: int = -1


@dataclass
class WritePlan:
    """Records of a chunk that will be stored (decided before anything is mutated)."""

    start: int
    stored_transitions: int
    dropped_records: int


class FrameRing:
    """Preallocated ring storage for one shard; see the module docstring."""

    def __init__(self, spec: EnvSpec, capacity: int) -> None:
        if capacity < spec.frames + 1:
            raise ConfigError(f"capacity ({capacity}) must be >= frames + 1 ({spec.frames + 1})")
        self.spec = spec
        self.capacity = int(capacity)
        c, f, s = self.capacity, spec.frames, spec.image_size
        self.frame = np.zeros((c, s, s), np.uint8)
        self.vector = np.zeros((c, spec.vector_dim), np.float32)
        self.action = np.zeros((c, spec.action_dim), np.float32)
        self.reward = np.zeros(c, np.float32)
        self.terminated = np.zeros(c, bool)
        self.truncated = np.zeros(c, bool)
        self.policy_version = np.zeros(c, np.int64)
        self.stack = np.zeros((c, f), np.int32)
        self.prev = np.full(c, -1, np.int32)
        self.next = np.full(c, -1, np.int32)
        self.stamp = np.full(c, -1, np.int64)
        self.valid = np.zeros(c, bool)
        for name in RING_ARRAYS:
            _commit_pages(getattr(self, name))
        self.counter = 0
        self.num_valid = 0
        self._offsets = np.array([f - 1 - j for j in range(f)], np.int64)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in RING_ARRAYS)

    @property
    def filled(self) -> int:
        return min(self.counter, self.capacity)

    def bytes_per_slot(self) -> float:
        return self.nbytes / self.capacity

    def plan(self, chunk: StepChunk, state: StreamState | None) -> WritePlan:
        """Decides which records of ``chunk`` are stored; raises if it breaks its stream.

        A stream the storage cannot continue (``state`` None or ``step`` -1) restarts at the
        chunk's first ``first`` record; earlier records are dropped.

        Raises:
            WireError: the chunk continues an episode whose last record was terminal, or the
                chunk holds more records than the ring.
        """
        n = chunk.num_records
        if n > self.capacity:
            raise WireError(f"chunk records ({n}) exceed shard capacity ({self.capacity})")
        first = chunk.first
        if state is not None and state.ended and not first[0]:
            raise WireError(f"stream {chunk.stream_id} seq {chunk.seq}: record 0 continues an "
                            f"episode that ended in seq {state.last_seq}")
        if state is None or state.step < 0:
            starts = np.flatnonzero(first)
            start = int(starts[0]) if starts.size else n
        else:
            start = 0
        kept = first[start:]
        return WritePlan(start, int(kept.size - np.count_nonzero(kept)), start)

    def write(self, chunk: StepChunk, state: StreamState | None, plan: WritePlan,
              on_invalid: SlotCallback, on_valid: SlotCallback) -> StreamState:
        """Stores ``chunk[plan.start:]`` and returns the stream's new state.

        Args:
            chunk: a validated chunk.
            state: the stream's state before the chunk, or None.
            plan: from ``plan``.
            on_invalid: called with slots whose transitions stop being valid.
            on_valid: called with slots whose transitions become valid.
        """
        m = chunk.num_records - plan.start
        if m == 0:
            f = self.spec.frames
            return StreamState(last_seq=chunk.seq, step=-1, ended=False,
                               slots=np.zeros(f, np.int64), stamps=np.full(f, -1, np.int64))
        f, c0 = self.spec.frames, self.counter
        first = chunk.first[plan.start:]
        steps = self._steps(first, state)
        stamps = c0 + np.arange(m, dtype=np.int64)
        slots = stamps % self.capacity
        if state is None:
            hist_slots = np.zeros(f, np.int64)
            hist_stamps = np.full(f, -1, np.int64)
        else:
            hist_slots, hist_stamps = state.slots.astype(np.int64), state.stamps
        all_slots = np.concatenate([hist_slots, slots])
        all_stamps = np.concatenate([hist_stamps, stamps])
        pos = f + np.arange(m)[:, None] - np.minimum(self._offsets[None, :], steps[:, None])
        self._evict(slots, on_invalid)
        self._store_records(chunk, plan.start, slots, stamps, all_slots[pos])
        has_prev = ~first
        prev_pos = f + np.arange(m) - 1
        prev_slots = np.where(has_prev, all_slots[prev_pos], -1)
        self.prev[slots] = prev_slots
        oldest_pos = prev_pos - np.minimum(f - 1, np.maximum(steps - 1, 0))
        oldest = all_stamps[oldest_pos]
        self.counter = c0 + m
        intact_from = self.counter - self.capacity
        new_valid = has_prev & (oldest >= intact_from)
        link = has_prev & (all_stamps[prev_pos] >= intact_from)
        self.next[prev_slots[link]] = slots[link]
        self.valid[slots[new_valid]] = True
        self.num_valid += int(np.count_nonzero(new_valid))
        on_valid(slots[new_valid])
        last = f + m
        ended = bool(chunk.terminated[-1] or chunk.truncated[-1])
        return StreamState(last_seq=chunk.seq, step=-1 if ended else int(steps[-1]), ended=ended,
                           slots=all_slots[last - f:last].copy(),
                           stamps=all_stamps[last - f:last].copy())

    def _steps(self, first: np.ndarray, state: StreamState | None) -> np.ndarray:
        m = first.size
        idx = np.arange(m)
        start = np.maximum.accumulate(np.where(first, idx, -1))
        base = -1 if state is None else state.step
        return np.where(start >= 0, idx - start, base + 1 + idx).astype(np.int64)

    def _evict(self, slots: np.ndarray, on_invalid: SlotCallback) -> None:
        cur = slots[self.stamp[slots] >= 0]
        for _ in range(self.spec.frames + 1):
            if cur.size == 0:
                break
            hit = cur[self.valid[cur]]
            if hit.size:
                hit = np.unique(hit)
                self.valid[hit] = False
                self.num_valid -= int(hit.size)
                on_invalid(hit)
            cur = self.next[cur]
            cur = cur[cur >= 0]

    def _store_records(self, chunk: StepChunk, start: int, slots: np.ndarray,
                       stamps: np.ndarray, stack: np.ndarray) -> None:
        lo = int(slots[0])
        contiguous = lo + slots.size <= self.capacity
        dest = slice(lo, lo + slots.size) if contiguous else slots
        self.frame[dest] = chunk.frame[start:]
        self.vector[dest] = chunk.vector[start:]
        self.action[dest] = chunk.action[start:]
        self.reward[dest] = chunk.reward[start:]
        self.terminated[dest] = chunk.terminated[start:]
        self.truncated[dest] = chunk.truncated[start:]
        self.policy_version[dest] = chunk.policy_version[start:]
        self.stack[dest] = stack
        self.next[dest] = -1
        self.stamp[dest] = stamps

    def intact(self, slots: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        """Which (slot, stamp) pairs still name the transition that was sampled."""
        return (self.stamp[slots] == stamps) & self.valid[slots]
