"""The shard's table of writer streams, bounded whatever its senders do.

A stream is one writer's sequence of chunks (``StepChunk.stream_id``, ``seq`` counting from 0).
Per stream the shard keeps a StreamState (replay/storage.py): the last seq, so that a retried
chunk is acknowledged as a duplicate, and the slots of its last F records, so that the next
chunk continues its episode. Three rules keep the table small and an insert O(1) amortised,
however many streams a hostile or broken sender opens:

* **Streams that hold nothing are swept out.** A stream holds nothing when none of its last F
  slots is intact: it stored no record, or the ring has overwritten them. Forgetting it loses
  nothing but its duplicate detection: its next chunk restarts at a ``first`` record either
  way, and a retry of an old chunk may be stored again. A stream waiting for a refused seq to
  return is kept. The sweep runs once the table has taken as many puts as it holds streams,
  so its cost per insert is O(1) amortised.
* **A hard cap.** The table never holds more than ``max_streams`` streams; past that the least
  recently used one is forgotten (counted in ``evicted``).
* **Seq jumps.** A seq at most DUPLICATE_WINDOW behind the stream's last is a retry (a
  duplicate). One further behind is no retry (a writer has a few chunks in flight) but a sender
  that started over: the stream restarts, as after a seq gap. So a chunk with seq 2**63 - 1
  costs its stream at most the leading records of the next chunk, never every later chunk.
"""
from __future__ import annotations

import collections
from typing import Iterator, Mapping, MutableMapping

from common.errors import ConfigError
from replay.storage import StreamState

MAX_STREAMS = 4096
DUPLICATE_WINDOW = 1024


def restarts(state: StreamState | None, seq: int) -> bool:
    """Whether ``seq`` starts the stream over: more than DUPLICATE_WINDOW behind its last."""
    return state is not None and seq <= state.last_seq - DUPLICATE_WINDOW


def holds_nothing(state: StreamState, intact_from: int) -> bool:
    """Whether forgetting ``state`` loses no record: none of its slots is intact (written at
    or after ``intact_from``, and ever written at all) and no refused seq is pending."""
    return state.refused_seq < 0 and int(state.stamps.max()) < max(intact_from, 0)


class StreamTable(MutableMapping[int, StreamState]):
    """Stream id -> StreamState, least recently put first; see the module docstring.

    Reads (``get``, ``items``) leave the order alone; ``put`` (and ``table[sid] = state``)
    marks the stream as the most recently used.

    Args:
        max_streams: the most streams held.
    """

    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        if max_streams < 1:
            raise ConfigError(f"max_streams ({max_streams}) must be >= 1")
        self.max_streams = int(max_streams)
        self._states: collections.OrderedDict[int, StreamState] = collections.OrderedDict()
        self._puts_since_sweep = 0
        self.pruned = 0  # swept out: held nothing
        self.evicted = 0  # forgotten past max_streams

    def __getitem__(self, sid: int) -> StreamState:
        return self._states[sid]

    def __setitem__(self, sid: int, state: StreamState) -> None:
        self._states[sid] = state
        self._states.move_to_end(sid)
        while len(self._states) > self.max_streams:
            self._states.popitem(last=False)
            self.evicted += 1

    def __delitem__(self, sid: int) -> None:
        del self._states[sid]

    def __iter__(self) -> Iterator[int]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def clear(self) -> None:
        self._states.clear()

    def replace(self, states: Mapping[int, StreamState]) -> None:
        """Holds ``states`` (in their order, the last as the most recent) instead."""
        self.clear()
        self.update(states)

    def put(self, sid: int, state: StreamState, intact_from: int) -> None:
        """Sets ``sid``'s state as the most recently used, after a sweep when one is due.

        Args:
            sid: the stream id.
            state: its new state.
            intact_from: the ring's oldest intact write stamp (counter - capacity).
        """
        self._puts_since_sweep += 1
        if self._puts_since_sweep >= len(self._states):
            self.sweep(intact_from)
        self[sid] = state

    def sweep(self, intact_from: int) -> int:
        """Forgets every stream that holds nothing (``holds_nothing``); returns how many."""
        gone = [sid for sid, state in self._states.items() if holds_nothing(state, intact_from)]
        for sid in gone:
            del self._states[sid]
        self.pruned += len(gone)
        self._puts_since_sweep = 0
        return len(gone)
