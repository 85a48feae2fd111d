"""Node-local weight broadcast through shared-memory files that rollout workers run on in place
(Sample Factory shares its policy weights between processes in shared memory the same way):
the slot format and the learner's writer here, the rollout side in deploy/weights_shm_reader.py
(the reader) and deploy/weights_shm_source.py (the WeightSource over it).

The learner writes each published snapshot into one of a few slot files under /dev/shm. A
rollout worker on the same machine maps them read-only, reads their version numbers at each
step (memory reads) and, when one is newer than what it runs, points its policy's parameters at
that slot's arrays: no copy, no Ray call, no object-store fetch between publish and use, so the
broadcast latency is the time until each actor's next env step, and all actors share one copy
of the weights in memory and in the CPU's caches. The Ray weight board stays the source of
truth (deploy/weights_ray.py): it carries the channel's descriptor, and an actor on another
machine, or one that cannot open or trust the files, fetches from the object store
(deploy/weights_source.py composes the two).

Privacy: the files live in ``/dev/shm/carla-td3-<uid>/<hash of the run path>/``, both
directories made 0700 and checked (owner, mode, not a symlink) by the writer and by every reader
before use (deploy/private_dir.py); files are opened with ``O_NOFOLLOW`` and must be regular
files of this user. A directory another user made first is refused, and the run publishes
through the object store only.

Integrity: a reader checks each slot's size (``fstat``) before it reads the slot's version,
and each version's crc32 (in the header, over the version, layout and arrays) once, when it
first takes it; it ignores versions above a ceiling (``MAX_VERSION``, or the caller's bound from
the board), so a corrupted or pinned version cannot hold it on one slot. A mismatch raises
CheckpointError, and the rollout side then fetches from the object store.

Consistency: a reader holds a shared ``flock`` on the newest slot while its policy runs one
inference on it, and offers its policy that slot's arrays at that moment if they are newer
than what it ran before. The writer writes a slot only under an exclusive lock that it takes
without waiting: it writes the oldest slot that no reader holds and never the newest one (by
its own record of what it wrote, not by the versions in the files), and skips a publish
(``publish`` returns None) when readers hold every older slot. So a reader never sees half a
snapshot, the learner never waits for an actor, and an actor stalled between two inferences (a
simulator timeout, a full replay) holds nothing. The kernel drops the locks of a process that
dies. A writer killed mid-write leaves that slot's version at WRITING, which no reader takes.
With ``SLOTS`` = 3, a publish is skipped only while two actors are in the middle of inferences
on two different older versions.

Lifetime: the driver deletes the run's directory at shutdown and a restarted learner deletes
its predecessor's files. A learner holds a shared ``flock`` on its directory's ``alive`` file
while it lives, and a starting learner deletes the other run directories in its user's root
whose lock nobody holds: what a run whose driver was killed left behind.

Slot file layout: a fixed header (magic, token, version, publish time, layout length, file
size, crc32), the layout (msgpack: name, shape, dtype per array, in order), then the arrays back
to back, each 64-byte aligned. A 4-d array (a convolution's weight, [out, in, h, w]) is stored
channels-last, in [out, h, w, in] order, the layout the CPU convolutions run on, so a policy can
use it in place; ``_views`` gives every array in its logical shape.
"""
from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import secrets
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Mapping, NamedTuple

import msgpack
import numpy as np

from common.errors import CheckpointError
from common.weights import PolicySnapshot
from deploy.private_dir import (check_private, is_user_root, make_private, open_regular,
                                user_root)

MAGIC = b"CTD3WTS3"
# magic, token, version, published_at, layout bytes, file bytes, crc32 (``_checksum``)
_HEADER = struct.Struct("<8s16sqdQQI")
_VERSION_AT = 24  # byte offset of the version, followed by the publish time
_VERSION = struct.Struct("<q")
_STAMP = struct.Struct("<qd")  # version, published_at
_CRC_AT = 56
_CRC = struct.Struct("<I")
HEADER_BYTES = 64
WRITING = -2  # the version while a write is in progress (or was cut off by a crash)
# Versions are update counts: one above this is damage, never read (2**53: still exact as the
# float a metric carries).
MAX_VERSION = 2**53 - 1
_ALIGN = 64
SLOTS = 3  # slot files per learner (see the module docstring)


class ShmChannel(NamedTuple):
    """Where a rollout worker finds the learner's weight files (travels through the board).

    Attributes:
        path: the slot files' common prefix; slot k is ``slot_path(k)``.
        token: random hex naming this learner incarnation's files; each header must carry it.
        node_id: the Ray node the files live on; actors on other nodes cannot open them.
        slots: how many slot files there are.
    """

    path: str
    token: str
    node_id: str
    slots: int = SLOTS

    def slot_path(self, k: int) -> str:
        return f"{self.path}.{k}"


def channel_dir(run_path: str | Path, base: str | Path | None = None) -> Path:
    """The per-run directory of weight files, in this user's root
    (``deploy.private_dir.user_root``: /dev/shm/carla-td3-<uid> where /dev/shm exists)."""
    digest = hashlib.blake2b(str(Path(run_path).resolve()).encode(), digest_size=6).hexdigest()
    return user_root(base) / digest


def _layout(state: Mapping[str, np.ndarray]) -> list[tuple[str, tuple[int, ...], str]]:
    return [(name, tuple(int(d) for d in np.shape(a)), np.asarray(a).dtype.str)
            for name, a in state.items()]


def _views(buffer: mmap.mmap, layout, start: int) -> list[np.ndarray]:
    """Each array of ``layout`` as a view into ``buffer`` in its logical shape (4-d arrays
    channels-last in memory; see the module docstring)."""
    views = []
    for (_, shape, dtype), (offset, _) in zip(layout, _offsets(layout, start)):
        flat = np.frombuffer(buffer, np.dtype(dtype), int(np.prod(shape, dtype=np.int64)), offset)
        if len(shape) == 4:
            out, inp, h, w = shape
            views.append(flat.reshape(out, h, w, inp).transpose(0, 3, 1, 2))
        else:
            views.append(flat.reshape(shape))
    return views


def _offsets(layout, start: int) -> list[tuple[int, int]]:
    """(offset, nbytes) of each array, each aligned to 64 bytes."""
    out, at = [], start
    for _, shape, dtype in layout:
        at = -(-at // _ALIGN) * _ALIGN
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        out.append((at, nbytes))
        at += nbytes
    return out


def _file_size(layout, start: int) -> int:
    return max(start, *(o + n for o, n in _offsets(layout, start)))


def _checksum(stamp: bytes, buffer: mmap.mmap, size: int) -> int:
    """crc32 of a slot's stamp (version, publish time), then of its layout and arrays: the
    fastest checksum in the standard library, one pass over the slot, which a reader makes
    once per version (not per inference)."""
    with memoryview(buffer) as view:
        return zlib.crc32(view[HEADER_BYTES:size], zlib.crc32(stamp))


def _hold_alive(directory: Path) -> int:
    """A descriptor holding a shared lock on ``directory/alive`` (made under a temporary name
    and renamed, so no one sees it unlocked) for as long as this process keeps it open."""
    tmp = directory / f".alive-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.replace(tmp, directory / "alive")
    return fd


def _remove_dead_runs(own: Path) -> None:
    """Deletes the other run directories in this user's root whose ``alive`` lock no process
    holds (nothing outside such a root: there the neighbours are not known to be runs)."""
    if not is_user_root(own.parent):
        return
    for other in own.parent.iterdir():
        if other == own:
            continue
        try:
            check_private(other)
            fd = open_regular(other / "alive")  # not a FIFO: that would block the learner
        except CheckpointError:  # no marker (yet), or not a private directory: leave it
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live learner holds it
            os.close(fd)
            continue
        shutil.rmtree(other, ignore_errors=True)
        os.close(fd)


def _reserve(path: Path, size: int) -> int:
    """Creates the file with its pages reserved: a full tmpfs then fails here with ENOSPC (an
    OSError the learner handles) instead of SIGBUS at the first write through the mapping."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:
            os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


class _WriterSlot(NamedTuple):
    fd: int
    map: mmap.mmap
    views: list[np.ndarray]


class ShmWeightWriter:
    """The learner's side: ``slots`` files per learner incarnation, written in turn.

    Args:
        directory: where to create the files (``channel_dir`` of the run), made private
            (``deploy.private_dir.make_private``); older files there, left by a learner that
            died, are removed.
        template: a snapshot state giving the names, shapes and dtypes every publish must have.
        node_id: the Ray node this process runs on.
        slots: slot files (at least 2: the newest is never rewritten).

    Raises:
        CheckpointError: the directory, or this user's root above it, is not private (another
            user's, group or world accessible, or a symlink): the learner publishes through
            the object store only.
        OSError: a directory or file could not be made (e.g. a full tmpfs).
    """

    def __init__(self, directory: str | Path, template: Mapping[str, np.ndarray], node_id: str,
                 slots: int = SLOTS) -> None:
        if slots < 2:
            raise ValueError(f"slots={slots}: the weight file needs at least 2")
        directory = Path(directory)
        make_private(directory)
        self._alive = _hold_alive(directory)
        self._slots: list[_WriterSlot] = []
        try:
            _remove_dead_runs(directory)
            for stale in directory.glob("weights-*"):
                stale.unlink(missing_ok=True)
            self._layout = _layout(template)
            layout_bytes = msgpack.packb([[n, list(s), d] for n, s, d in self._layout])
            start = HEADER_BYTES + len(layout_bytes)
            self._size = size = _file_size(self._layout, start)
            token = secrets.token_hex(16)
            self.channel = ShmChannel(str(directory / f"weights-{token}"), token, node_id, slots)
            header = _HEADER.pack(MAGIC, bytes.fromhex(token), WRITING, 0.0, len(layout_bytes),
                                  size, 0)
            for k in range(slots):
                fd = _reserve(Path(self.channel.slot_path(k)), size)
                mapped = mmap.mmap(fd, size)
                mapped[:HEADER_BYTES] = header.ljust(HEADER_BYTES, b"\0")
                mapped[HEADER_BYTES:start] = layout_bytes
                self._slots.append(_WriterSlot(fd, mapped, _views(mapped, self._layout, start)))
        except BaseException:
            self._unlink_all()
            raise
        # The writer's own record of when it wrote each slot (-1: never), and of the newest
        # version: a version changed in a file (damage, or this user's mistake) does not
        # change which slot it writes next.
        self._written = [-1] * slots
        self._publishes = 0
        self._last_version = 0

    def _check(self, snapshot: PolicySnapshot) -> list[tuple[str, np.ndarray]]:
        version = int(snapshot.version)
        if not self._last_version <= version <= MAX_VERSION:
            raise CheckpointError(f"snapshot version {version}: the weight file takes versions "
                                  f"from {self._last_version} (the newest it holds, or 0) to "
                                  f"{MAX_VERSION}")
        if len(snapshot.state) != len(self._layout):
            raise CheckpointError(f"snapshot has {len(snapshot.state)} arrays, the weight file "
                                  f"{len(self._layout)}")
        arrays = list(snapshot.state.items())
        for (name, array), want in zip(arrays, self._layout):
            if _layout({name: array})[0] != want:
                raise CheckpointError(f"snapshot array {_layout({name: array})[0]} does not match "
                                      f"the weight file's {want}")
        return arrays

    def publish(self, snapshot: PolicySnapshot, published_at: float | None = None) -> float | None:
        """Writes the snapshot with its publish time (``time.time()`` when not given), which
        readers measure broadcast latency from, into the oldest slot no reader holds; returns
        that time, or None without writing when readers hold every slot but the newest (the
        actors then run on until the next publish; the learner does not wait for them).

        Raises:
            CheckpointError: naming the array whose name, shape or dtype differs from the
                template's, or a version below the newest one written or above
                ``MAX_VERSION`` (nothing is written then).
        """
        arrays = self._check(snapshot)
        by_age = sorted(range(len(self._slots)), key=self._written.__getitem__)
        # Never the newest: readers lock it without waiting, and so the newest version in
        # the files never goes back (a policy newer than every slot runs on its own copy).
        for k in by_age[:-1]:
            slot = self._slots[k]
            try:
                fcntl.flock(slot.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # an actor still runs on this one
                continue
            try:
                _VERSION.pack_into(slot.map, _VERSION_AT, WRITING)
                for view, (_, array) in zip(slot.views, arrays):
                    np.copyto(view, array, casting="no")
                if published_at is None:
                    published_at = time.time()
                stamp = _STAMP.pack(int(snapshot.version), published_at)
                _CRC.pack_into(slot.map, _CRC_AT, _checksum(stamp, slot.map, self._size))
                slot.map[_VERSION_AT:_VERSION_AT + _STAMP.size] = stamp
            finally:
                fcntl.flock(slot.fd, fcntl.LOCK_UN)
            self._written[k], self._publishes = self._publishes, self._publishes + 1
            self._last_version = int(snapshot.version)
            return published_at
        return None

    def _unlink_all(self) -> None:
        for slot in self._slots:
            slot.views.clear()
            slot.map.close()
            os.close(slot.fd)
        self._slots = []
        if hasattr(self, "channel"):
            for k in range(self.channel.slots):
                Path(self.channel.slot_path(k)).unlink(missing_ok=True)
        os.close(self._alive)

    def close(self) -> None:
        """Unmaps and deletes the files (readers that mapped them keep their mappings); a
        second call does nothing."""
        if self._alive < 0:
            return
        self._unlink_all()
        self._alive = -1
