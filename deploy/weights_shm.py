"""Node-local weight broadcast through one shared-memory file (Sample Factory shares its policy
weights between processes in shared memory the same way).

The learner writes each published snapshot into a file under /dev/shm; a rollout actor on the
same machine maps it, reads the version number at each poll (a memory read) and copies a newer
snapshot straight into its policy's parameters. Between publish and use there is no Ray call
and no object-store fetch, so the broadcast latency is the time until each actor's next env
step. The Ray weight board stays the source of truth (deploy/weights_ray.py): it carries the
channel's descriptor, and an actor on another machine, or one that cannot open the file,
fetches from the object store as before.

Consistency: the writer holds an exclusive ``flock`` while it writes and a reader a shared one
while it copies, so a reader never sees half a snapshot. The kernel drops the lock of a process
that dies. A writer killed mid-write leaves the version at WRITING, which no reader loads.

Lifetime: the driver deletes the run's directory at shutdown and a restarted learner deletes
its predecessor's file. A learner holds a shared ``flock`` on its directory's ``alive`` file
while it lives, and a starting learner deletes the other runs' directories whose lock nobody
holds: what a run whose driver was killed left behind.

File layout: a fixed header (magic, token, version, publish time, layout length), the layout
(msgpack: name, shape, dtype per array, in order), then the arrays back to back.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import secrets
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple

import msgpack
import numpy as np

from common.errors import CheckpointError
from common.weights import PolicySnapshot

MAGIC = b"CTD3WTS1"
_HEADER = struct.Struct("<8s16sqdQ")  # magic, token, version, published_at, layout bytes
_VERSION_AT = 24  # byte offset of the version field
HEADER_BYTES = 64
WRITING = -2  # the version while a write is in progress (or was cut off by a crash)
_ALIGN = 64


class ShmChannel(NamedTuple):
    """Where a rollout actor finds the learner's weight file (travels through the board).

    Attributes:
        path: the file.
        token: random hex naming this file's incarnation; the header must carry it.
        node_id: the Ray node the file lives on; actors on other nodes cannot open it.
    """

    path: str
    token: str
    node_id: str


def channel_dir(run_path: str | Path) -> Path:
    """The per-run directory of weight files: in /dev/shm (memory) where it exists."""
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    digest = hashlib.blake2b(str(Path(run_path).resolve()).encode(), digest_size=6).hexdigest()
    return root / f"carla-td3-{digest}"


def _layout(state: Mapping[str, np.ndarray]) -> list[tuple[str, tuple[int, ...], str]]:
    return [(name, tuple(int(d) for d in np.shape(a)), np.asarray(a).dtype.str)
            for name, a in state.items()]


def _offsets(layout, start: int) -> list[tuple[int, int]]:
    """(offset, nbytes) of each array, each aligned to 64 bytes."""
    out, at = [], start
    for _, shape, dtype in layout:
        at = -(-at // _ALIGN) * _ALIGN
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        out.append((at, nbytes))
        at += nbytes
    return out


def _hold_alive(directory: Path) -> int:
    """A descriptor holding a shared lock on ``directory/alive`` (made under a temporary name
    and renamed, so no one sees it unlocked) for as long as this process keeps it open."""
    tmp = directory / f".alive-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.replace(tmp, directory / "alive")
    return fd


def _remove_dead_runs(own: Path) -> None:
    """Deletes the sibling run directories whose ``alive`` lock no process holds."""
    for other in own.parent.glob("carla-td3-*"):
        if other == own:
            continue
        try:
            fd = os.open(other / "alive", os.O_RDONLY)
        except OSError:  # no marker (yet): leave it
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
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
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


class ShmWeightWriter:
    """The learner's side: one file per learner incarnation, rewritten at every publish.

    Args:
        directory: where to create the file (``channel_dir`` of the run); older files there,
            left by a learner that died, are removed.
        template: a snapshot state giving the names, shapes and dtypes every publish must have.
        node_id: the Ray node this process runs on.
    """

    def __init__(self, directory: str | Path, template: Mapping[str, np.ndarray], node_id: str) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._alive = _hold_alive(directory)
        try:
            _remove_dead_runs(directory)
            for stale in directory.glob("weights-*"):
                stale.unlink(missing_ok=True)
            self._layout = _layout(template)
            layout_bytes = msgpack.packb([[n, list(s), d] for n, s, d in self._layout])
            self._slots = _offsets(self._layout, HEADER_BYTES + len(layout_bytes))
            size = max(HEADER_BYTES + len(layout_bytes), *(o + n for o, n in self._slots))
            token = secrets.token_hex(16)
            path = directory / f"weights-{token}"
            self._fd = _reserve(path, size)
        except BaseException:
            os.close(self._alive)
            raise
        self._map = mmap.mmap(self._fd, size)
        self._map[:HEADER_BYTES] = _HEADER.pack(MAGIC, bytes.fromhex(token), WRITING, 0.0,
                                                len(layout_bytes)).ljust(HEADER_BYTES, b"\0")
        self._map[HEADER_BYTES:HEADER_BYTES + len(layout_bytes)] = layout_bytes
        self._views = [np.frombuffer(self._map, np.dtype(d), int(np.prod(s, dtype=np.int64)), o)
                       .reshape(s) for (_, s, d), (o, _) in zip(self._layout, self._slots)]
        self.channel = ShmChannel(str(path), token, node_id)

    def publish(self, snapshot: PolicySnapshot, published_at: float | None = None) -> float:
        """Writes the snapshot with its publish time (``time.time()`` when not given), which
        readers measure broadcast latency from; returns that time.

        Raises:
            CheckpointError: naming the array whose name, shape or dtype differs from the
                template's (nothing is written then).
        """
        if len(snapshot.state) != len(self._layout):
            raise CheckpointError(f"snapshot has {len(snapshot.state)} arrays, the weight file "
                                  f"{len(self._layout)}")
        arrays = list(snapshot.state.items())
        for (name, array), want in zip(arrays, self._layout):
            if _layout({name: array})[0] != want:
                raise CheckpointError(f"snapshot array {_layout({name: array})[0]} does not match "
                                      f"the weight file's {want}")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            struct.pack_into("<q", self._map, _VERSION_AT, WRITING)
            for view, (_, array) in zip(self._views, arrays):
                np.copyto(view, array, casting="no")
            if published_at is None:
                published_at = time.time()
            struct.pack_into("<qd", self._map, _VERSION_AT, int(snapshot.version), published_at)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return published_at

    def close(self) -> None:
        """Unmaps and deletes the file (readers that mapped it keep their mapping); a second
        call does nothing."""
        if self._map.closed:
            return
        self._views = []
        self._map.close()
        os.close(self._fd)
        os.close(self._alive)
        Path(self.channel.path).unlink(missing_ok=True)


class ShmWeightReader:
    """A rollout actor's side: maps the learner's file read-only.

    Raises (constructor):
        CheckpointError: the file is missing, too short or malformed, or its magic or token
            differ from the channel's (another file, or a newer learner's, is at that path).
    """

    def __init__(self, channel: ShmChannel) -> None:
        try:
            self._fd = os.open(channel.path, os.O_RDONLY)
        except OSError as exc:
            raise CheckpointError(f"weight file {channel.path!r}: {exc.strerror}") from exc
        try:
            self._map = self._map_checked(channel)
            magic, token, _, _, layout_len = _HEADER.unpack_from(self._map, 0)
            raw = msgpack.unpackb(self._map[HEADER_BYTES:HEADER_BYTES + layout_len])
            layout = [(str(n), tuple(int(d) for d in s), str(d)) for n, s, d in raw]
            slots = _offsets(layout, HEADER_BYTES + layout_len)
            self._views = [np.frombuffer(self._map, np.dtype(d), int(np.prod(s, dtype=np.int64)), o)
                           .reshape(s) for (_, s, d), (o, _) in zip(layout, slots)]
        except CheckpointError:
            os.close(self._fd)
            raise
        except (ValueError, TypeError, msgpack.UnpackException) as exc:  # a damaged layout
            os.close(self._fd)
            raise CheckpointError(f"weight file {channel.path!r}: malformed ({exc})") from exc
        self._names = [n for n, _, _ in layout]
        self.channel = channel

    def _map_checked(self, channel: ShmChannel) -> mmap.mmap:
        size = os.fstat(self._fd).st_size
        if size < HEADER_BYTES:
            raise CheckpointError(f"weight file {channel.path!r}: {size} bytes, shorter than its "
                                  f"header")
        mapped = mmap.mmap(self._fd, size, prot=mmap.PROT_READ)
        magic, token = _HEADER.unpack_from(mapped, 0)[:2]
        if magic != MAGIC or token.hex() != channel.token:
            mapped.close()
            raise CheckpointError(f"weight file {channel.path!r}: magic {magic!r} token "
                                  f"{token.hex()} != {MAGIC!r} {channel.token}")
        return mapped

    def version(self) -> int:
        """The version in the file now, read without the lock (a hint: ``read`` rechecks)."""
        return struct.unpack_from("<q", self._map, _VERSION_AT)[0]

    @contextlib.contextmanager
    def snapshot_view(self, newer_than: int) -> Iterator[tuple[PolicySnapshot, float] | None]:
        """Holds the shared lock for the ``with`` block and gives the file's snapshot, as
        read-only views into the mapping, with its publish time, if its version is newer than
        ``newer_than`` (None otherwise, and while a write is in progress or was cut off).

        The views are valid only inside the block: copy them out there (a rollout actor loads
        them straight into its policy's parameters, one pass over the weights). The writer
        waits for the block to end.
        """
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        try:
            version, published_at = struct.unpack_from("<qd", self._map, _VERSION_AT)
            if version <= newer_than:
                yield None
            else:
                state = dict(zip(self._names, self._views))
                yield PolicySnapshot(int(version), state), float(published_at)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._views = []
        self._map.close()
        os.close(self._fd)
