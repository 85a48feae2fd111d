"""ShmWeightReader: a rollout worker's side of the shared-memory weight files.

It maps the learner's slot files read-only, checks their directory chain, sizes, checksums
and versions, and lends its policy the newest slot for one inference at a time under a shared
``flock``. The file format, the privacy and integrity rules and the locking protocol are
described in deploy/weights_shm.py, where the learner's writer is.
"""
from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from pathlib import Path
from typing import Iterator, NamedTuple

import msgpack
import numpy as np

from common.errors import CheckpointError
from common.weights import PolicySnapshot
from deploy.private_dir import check_private_chain, open_regular
# The slot format is the writer's module's; these are its internals, shared by the two sides.
from deploy.weights_shm import (_CRC, _CRC_AT, _HEADER, _STAMP, _VERSION, _VERSION_AT,
                                HEADER_BYTES, MAGIC, MAX_VERSION, WRITING, ShmChannel, _checksum,
                                _file_size, _views)

def _parse_layout(buffer: mmap.mmap, layout_len: int) -> list[tuple[str, tuple[int, ...], str]]:
    raw = msgpack.unpackb(buffer[HEADER_BYTES:HEADER_BYTES + layout_len])
    return [(str(n), tuple(int(d) for d in s), str(np.dtype(d).str)) for n, s, d in raw]


class _ReaderSlot:
    """One slot file, mapped read-only."""

    def __init__(self, path: str, token: str) -> None:
        self.path = path
        self.fd = open_regular(path)  # no symlink, no FIFO, this user's
        try:
            self.size = size = os.fstat(self.fd).st_size
            if size < HEADER_BYTES:
                raise CheckpointError(f"weight file {path!r}: {size} bytes, shorter than its "
                                      f"header")
            self.map = mmap.mmap(self.fd, size, prot=mmap.PROT_READ)
            magic, got, _, _, layout_len, stated, _ = _HEADER.unpack_from(self.map, 0)
            if magic != MAGIC or got.hex() != token:
                self.map.close()
                raise CheckpointError(f"weight file {path!r}: magic {magic!r} token {got.hex()} "
                                      f"!= {MAGIC!r} {token}")
            try:
                layout = _parse_layout(self.map, layout_len)
                need = _file_size(layout, HEADER_BYTES + layout_len)
                if not need == stated == size:
                    raise ValueError(f"{size} bytes, its header says {stated} and its layout "
                                     f"{need}")
                self.views = _views(self.map, layout, HEADER_BYTES + layout_len)
            except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
                # Views made before the failure live on in the traceback: the mapping goes
                # with them, not here (closing it would raise BufferError).
                raise CheckpointError(f"weight file {path!r}: malformed ({exc})") from exc
        except BaseException:
            os.close(self.fd)
            raise
        self.names = [n for n, _, _ in layout]

    def stamp(self) -> tuple[int, float]:
        """(version, publish time), read without the lock."""
        version, published_at = _STAMP.unpack_from(self.map, _VERSION_AT)
        return int(version), float(published_at)

    def verify(self) -> tuple[int, int]:
        """Raises CheckpointError unless the slot's contents match its checksum; returns
        (version, checksum). Under the slot's lock."""
        stamp = self.map[_VERSION_AT:_VERSION_AT + _STAMP.size]
        version, crc = _VERSION.unpack_from(stamp)[0], _CRC.unpack_from(self.map, _CRC_AT)[0]
        if _checksum(stamp, self.map, self.size) != crc:
            raise CheckpointError(f"weight file {self.path!r}: version {version} does not match "
                                  f"its checksum (damaged)")
        return version, crc

    def close(self) -> None:
        self.views = []
        try:
            self.map.close()
        except BufferError:  # a policy still holds views: the mapping goes with the last one
            pass
        os.close(self.fd)  # drops the lock, if held


class Held(NamedTuple):
    """A slot a reader holds: its snapshot (read-only views into the mapping, unchanged while
    held) and its publish time."""

    slot: int
    snapshot: PolicySnapshot
    published_at: float


class ShmWeightReader:
    """A rollout worker's side: maps the learner's slot files read-only; its policy runs on the
    newest slot, locked (``lock_newest``/``unlock``) for one inference at a time.

    Raises (constructor):
        CheckpointError: the directory is not private (``deploy.private_dir``), a file is
            missing, not a regular file of this user, too short or malformed, or its magic or
            token differ from the channel's (another file, or a newer learner's, is at that
            path).
    """

    def __init__(self, channel: ShmChannel) -> None:
        check_private_chain(Path(channel.path).parent)
        self._slots: list[_ReaderSlot] = []
        try:
            for k in range(channel.slots):
                self._slots.append(_ReaderSlot(channel.slot_path(k), channel.token))
        except BaseException:
            self.close()
            raise
        self._maps = [slot.map for slot in self._slots]
        self._fds = [slot.fd for slot in self._slots]
        self._sizes = [slot.size for slot in self._slots]
        self._states = [dict(zip(slot.names, slot.views)) for slot in self._slots]
        self._verified: list[tuple[int, int] | None] = [None] * len(self._slots)
        self.channel = channel

    def states(self) -> list[dict[str, np.ndarray]]:
        """Each slot's arrays as read-only views, to build networks on ahead of time: their
        contents are a snapshot only while the slot is locked."""
        return list(self._states)

    def lock_newest(self, ceiling: int = MAX_VERSION) -> tuple[int, int]:
        """Takes a shared lock on the slot with the newest version up to ``ceiling`` (higher
        ones are damage, ignored); returns (slot, version), or (-1, WRITING) with nothing
        locked before the first publish. The slot's arrays stay unchanged until
        ``unlock(slot)``. Never waits: the writer never writes the newest slot, and when the
        slot read as newest is taken by the writer in between (two publishes since the look),
        the look is taken again. Lean: it runs before every inference, cache-cold after the
        simulator's tick, where a generator context manager and per-call snapshot objects
        cost more CPU than the work itself (docs/benchmarks.md, "Code choices").

        Raises:
            CheckpointError: a slot file is no longer its size (truncated): reading its
                mapping would kill the process with SIGBUS.
        """
        maps, fds, sizes = self._maps, self._fds, self._sizes
        while True:
            best, k = WRITING, -1
            for i, mapped in enumerate(maps):
                # Truncation is checked before every look at a slot (its size by seeking to
                # its end: a sixth of an fstat's cost). A truncation by this user between this
                # check and the reads after it is still a race (SIGBUS); the private directory
                # keeps every other user out.
                size = os.lseek(fds[i], 0, os.SEEK_END)
                if size != sizes[i]:
                    raise CheckpointError(f"weight file {self._slots[i].path!r}: truncated to "
                                          f"{size} of {sizes[i]} bytes")
                version = _VERSION.unpack_from(mapped, _VERSION_AT)[0]
                if best < version <= ceiling:
                    best, k = version, i
            if k < 0:  # nothing published yet
                return -1, WRITING
            try:
                fcntl.flock(fds[k], fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # the writer took it since the look
                continue
            if _VERSION.unpack_from(maps[k], _VERSION_AT)[0] == best:
                return k, best
            fcntl.flock(fds[k], fcntl.LOCK_UN)  # rewritten between the look and the lock

    def unlock(self, slot: int) -> None:
        fcntl.flock(self._fds[slot], fcntl.LOCK_UN)

    def held(self, slot: int) -> Held:
        """A slot locked by ``lock_newest``: its snapshot (read-only views) and publish time,
        its checksum checked the first time this reader holds its version.

        Raises:
            CheckpointError: the slot's contents do not match its checksum (damaged).
        """
        version, published_at = self._slots[slot].stamp()
        crc = _CRC.unpack_from(self._maps[slot], _CRC_AT)[0]
        if self._verified[slot] != (version, crc):
            self._verified[slot] = self._slots[slot].verify()
        return Held(slot, PolicySnapshot(version, self._states[slot]), published_at)

    @contextlib.contextmanager
    def newest(self, ceiling: int = MAX_VERSION) -> Iterator[Held | None]:
        """``lock_newest`` and ``held`` for a ``with`` block: gives the newest slot (None before
        the first publish), unchanged until the block ends."""
        slot, _ = self.lock_newest(ceiling)
        if slot < 0:
            yield None
            return
        try:
            yield self.held(slot)
        finally:
            self.unlock(slot)

    def close(self) -> None:
        self._maps, self._fds, self._states = [], [], []
        for slot in self._slots:
            slot.close()
        self._slots = []
