"""Durable, verifiable files: crash-safe writes, checksums, sealed manifests.

A durable write goes to a temporary file in the target's directory, is flushed and fsynced,
renamed over the target, and then the directory is fsynced: after a crash the target holds
the old bytes or the new ones, never a mix, and a completed write survives a power cut.

A *sealed* file is JSON followed by one trailer line, ``sha256:<hex>``, the SHA-256 of the
exact JSON bytes before it, so any change to any byte of it fails ``read_sealed``. A
*manifest* is a sealed file whose ``files`` table gives the size and SHA-256 of each file it
covers (paths relative to its directory); a listed file named ``manifest.json`` is a nested
manifest and is verified in turn. Every byte of a checkpoint is covered this way.
"""
from __future__ import annotations

import enum
import errno
import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, NamedTuple

from common.errors import CheckpointError

MANIFEST = "manifest.json"
_BLOCK = 8 << 20
_TRAILER = re.compile(rb"\nsha256:([0-9a-f]{64})\n\Z")
_HEX = re.compile(r"[0-9a-f]{64}")


class Check(enum.Enum):
    """How far ``verify_manifest`` reads: the manifests' seals and every file's size, or also
    every file's SHA-256 (reads every byte)."""

    STRUCTURE = "structure"
    CONTENT = "content"


class FileDigest(NamedTuple):
    """A file's size in bytes and the hex SHA-256 of its contents."""

    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256}


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Makes the entries of directory ``path`` (creations, renames, deletions) durable.

    A filesystem that cannot fsync a directory (EINVAL, ENOTSUP: some FUSE and network
    mounts) orders its metadata itself; there this is a no-op.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


class _HashingFile:
    """A write-only file object that hashes and counts what goes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw, self._hash, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes | memoryview) -> int:
        self._hash.update(data)
        n = self._raw.write(data)
        self.size += n
        return n

    def flush(self) -> None:
        self._raw.flush()

    def digest(self) -> FileDigest:
        return FileDigest(self.size, self._hash.hexdigest())


def write_file(path: str | os.PathLike[str], write: Callable[[Any], object]) -> FileDigest:
    """Creates ``path`` through ``write(file)``, fsyncs it and returns its digest.

    The caller owns atomicity (``path`` sits in a directory that is renamed into place, or use
    ``atomic_write_bytes``); the digest is computed on the bytes as they are written.
    """
    with open(path, "xb") as raw:
        out = _HashingFile(raw)
        write(out)
        raw.flush()
        os.fsync(raw.fileno())
    return out.digest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> FileDigest:
    """Replaces ``path`` with ``data`` durably: temp file, fsync, rename, fsync the directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        digest = write_file(tmp, lambda f: f.write(data))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return digest


def atomic_write_text(path: str | os.PathLike[str], text: str) -> FileDigest:
    """``atomic_write_bytes`` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode())


def file_digest(path: str | os.PathLike[str]) -> FileDigest:
    """Reads ``path`` once: its size and SHA-256 (OSError if it cannot be read)."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
            size += len(block)
    return FileDigest(size, h.hexdigest())


def seal(body: dict[str, Any]) -> bytes:
    """``body`` as JSON plus its checksum trailer (see the module docstring)."""
    data = json.dumps(body, indent=1, sort_keys=True, allow_nan=False).encode()
    return data + b"\nsha256:" + hashlib.sha256(data).hexdigest().encode() + b"\n"


def unseal(data: bytes, name: str) -> dict[str, Any]:
    """The JSON object of a sealed file's bytes.

    Raises:
        CheckpointError: naming ``name``, when the trailer is missing, the checksum does not
            match, or the JSON is not an object.
    """
    m = _TRAILER.search(data)
    if m is None:
        raise CheckpointError(f"{name}: no checksum trailer (not a sealed file, or truncated)")
    body = data[:m.start()]
    if hashlib.sha256(body).hexdigest() != m.group(1).decode():
        raise CheckpointError(f"{name}: checksum mismatch (corrupt)")
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # a sealed file we did not write
        raise CheckpointError(f"{name}: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: holds {type(obj).__name__}, expected an object")
    return obj


def write_sealed(path: str | os.PathLike[str], body: dict[str, Any]) -> FileDigest:
    """Writes ``seal(body)`` to ``path`` with ``atomic_write_bytes``."""
    return atomic_write_bytes(path, seal(body))


def read_sealed(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and verifies the sealed file ``path``.

    Raises:
        CheckpointError: naming the file when it is missing, unreadable or damaged.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    return unseal(data, str(path))


def parse_files(table: object, where: str) -> dict[str, FileDigest]:
    """Validates a manifest's ``files`` table: relative paths to ``{"size", "sha256"}``.

    Other keys of an entry are left to the caller. Raises CheckpointError naming ``where``.
    """
    if not isinstance(table, dict):
        raise CheckpointError(f"{where}: files table is {type(table).__name__}, expected an object")
    out = {}
    for name, entry in table.items():
        parts = PurePosixPath(name).parts
        if not name or name.startswith("/") or ".." in parts or "\\" in name:
            raise CheckpointError(f"{where}: file name {name!r} is not a relative path")
        if not isinstance(entry, dict):
            raise CheckpointError(f"{where}: entry for {name!r} is not an object")
        size, digest = entry.get("size"), entry.get("sha256")
        if type(size) is not int or size < 0:
            raise CheckpointError(f"{where}: size of {name!r} ({size!r}) is not a byte count")
        if not isinstance(digest, str) or not _HEX.fullmatch(digest):
            raise CheckpointError(f"{where}: sha256 of {name!r} ({digest!r}) is not a digest")
        out[name] = FileDigest(size, digest)
    return out


def check_file(path: Path, expected: FileDigest, check: Check) -> None:
    """Raises CheckpointError naming ``path`` when it is missing or differs from ``expected``."""
    try:
        size = path.stat().st_size
        if size != expected.size:
            raise CheckpointError(f"{path}: {size} bytes, the manifest says {expected.size} "
                                  "(truncated or corrupt)")
        if check is Check.CONTENT and file_digest(path).sha256 != expected.sha256:
            raise CheckpointError(f"{path}: checksum mismatch (corrupt)")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None


def manifest_for(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """A ``files`` table for ``names`` (relative to ``directory``), hashing each file."""
    return {name: file_digest(directory / name).to_json() for name in sorted(names)}


def verify_manifest(directory: Path, check: Check) -> dict[str, Any]:
    """Verifies ``directory/manifest.json`` and every file it lists, nested manifests included.

    Returns:
        The manifest's body.

    Raises:
        CheckpointError: naming the first manifest or file that is missing or damaged.
    """
    path = directory / MANIFEST
    body = read_sealed(path)
    for name, expected in parse_files(body.get("files"), str(path)).items():
        check_file(directory / name, expected, check)
        if PurePosixPath(name).name == MANIFEST:
            verify_manifest((directory / name).parent, check)
    return body
