"""Atomic shard checkpoints: raw .npy arrays plus a JSON manifest with CRC32 checksums.

``save_shard`` writes ``<dir>/replay_shard_<i>`` under a temporary name and renames it into
place (an existing checkpoint is renamed aside first and removed after). ``restore_shard``
checks the manifest, every file's size and checksum and every array's dtype and shape against
the shard before it changes anything: a corrupt or truncated checkpoint raises CheckpointError,
never leaves a silently empty or half-restored shard.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import uuid
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from common.errors import CheckpointError
from replay.storage import RING_ARRAYS, StreamState

if TYPE_CHECKING:
    from replay.shard import ReplayShard

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_STREAM_FIELDS = ("stream_id", "last_seq", "step", "ended", "slots", "stamps", "refused_seq")


def shard_path(directory: pathlib.Path, shard_index: int) -> pathlib.Path:
    return directory / f"replay_shard_{shard_index}"


def _stream_arrays(streams: dict[int, StreamState], frames: int) -> dict[str, np.ndarray]:
    items = list(streams.items())
    return {
        "stream_id": np.array([sid for sid, _ in items], np.uint64),
        "last_seq": np.array([s.last_seq for _, s in items], np.int64),
        "step": np.array([s.step for _, s in items], np.int64),
        "ended": np.array([s.ended for _, s in items], bool),
        "slots": np.array([s.slots for _, s in items], np.int64).reshape(len(items), frames),
        "stamps": np.array([s.stamps for _, s in items], np.int64).reshape(len(items), frames),
        "refused_seq": np.array([s.refused_seq for _, s in items], np.int64),
    }


def _header(shard: ReplayShard) -> dict[str, Any]:
    spec = shard.spec
    return {"format": FORMAT_VERSION, "frames": spec.frames, "image_size": spec.image_size,
            "vector_dim": spec.vector_dim, "action_dim": spec.action_dim,
            "capacity": shard.ring.capacity, "sampler": shard.cfg.sampler.value}


def save_shard(shard: ReplayShard, directory: pathlib.Path) -> pathlib.Path:
    """Writes ``shard`` atomically; returns the checkpoint's path."""
    directory.mkdir(parents=True, exist_ok=True)
    final = shard_path(directory, shard.shard_index)
    tmp = directory / f".{final.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    arrays = {f"ring.{k}": getattr(shard.ring, k) for k in RING_ARRAYS}
    arrays.update({f"stream.{k}": v for k, v in _stream_arrays(shard.streams, shard.spec.frames).items()})
    arrays.update({f"sampler.{k}": v for k, v in shard.sampler.state().items()})
    files = {}
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        with open(tmp / f"{name}.npy", "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        files[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape),
                       "crc32": zlib.crc32(arr.data), "size": (tmp / f"{name}.npy").stat().st_size}
    manifest = {**_header(shard), "counter": shard.ring.counter, "num_valid": shard.ring.num_valid,
                "limiter": {"inserts": shard.limiter.inserts, "samples": shard.limiter.samples},
                "counts": shard.counts, "rng": shard.rng.bit_generator.state, "files": files}
    with open(tmp / MANIFEST, "w") as fh:
        json.dump(manifest, fh)
        fh.flush()
        os.fsync(fh.fileno())
    old = directory / f".{final.name}.old-{uuid.uuid4().hex}"
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _read_manifest(path: pathlib.Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no replay checkpoint at {path} ({MANIFEST} missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt manifest {path / MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"corrupt manifest {path / MANIFEST}: no file table")
    return manifest


def _load_array(path: pathlib.Path, name: str, entry: dict[str, Any]) -> np.ndarray:
    file = path / f"{name}.npy"
    try:
        size = file.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(f"{file}: {size} bytes != {entry['size']} in the manifest (truncated?)")
        arr = np.load(file, allow_pickle=False)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise CheckpointError(f"{file}: unreadable ({type(exc).__name__}: {exc})") from None
    if arr.dtype.str != entry["dtype"] or list(arr.shape) != entry["shape"]:
        raise CheckpointError(f"{file}: {arr.dtype.str}{list(arr.shape)} != manifest "
                              f"{entry['dtype']}{entry['shape']}")
    if zlib.crc32(np.ascontiguousarray(arr).data) != entry["crc32"]:
        raise CheckpointError(f"{file}: checksum mismatch (corrupt)")
    return arr


def restore_shard(shard: ReplayShard, directory: pathlib.Path) -> None:
    """Restores ``shard`` from ``directory``; changes nothing unless everything checks out.

    Raises:
        CheckpointError: missing, corrupt, truncated, or made for another spec or capacity.
    """
    path = shard_path(directory, shard.shard_index)
    manifest = _read_manifest(path)
    for key, value in _header(shard).items():
        if manifest.get(key) != value:
            raise CheckpointError(f"checkpoint {path}: {key} ({manifest.get(key)!r}) != this shard's ({value!r})")
    loaded = {name: _load_array(path, name, entry) for name, entry in manifest["files"].items()}
    expected = {f"ring.{k}" for k in RING_ARRAYS} | {f"stream.{k}" for k in _STREAM_FIELDS}
    expected |= {f"sampler.{k}" for k in shard.sampler.state()}
    if set(loaded) != expected:
        raise CheckpointError(f"checkpoint {path}: arrays {sorted(loaded)} != expected {sorted(expected)}")
    for k, v in shard.sampler.state().items():
        if loaded[f"sampler.{k}"].shape != v.shape:
            raise CheckpointError(f"checkpoint {path}: sampler.{k} shape {loaded[f'sampler.{k}'].shape} != {v.shape}")
    for k in RING_ARRAYS:
        if loaded[f"ring.{k}"].shape != getattr(shard.ring, k).shape:
            raise CheckpointError(f"checkpoint {path}: ring.{k} shape {loaded[f'ring.{k}'].shape} "
                                  f"!= {getattr(shard.ring, k).shape}")
    try:
        counter, num_valid = int(manifest["counter"]), int(manifest["num_valid"])
        inserts, samples = int(manifest["limiter"]["inserts"]), int(manifest["limiter"]["samples"])
        counts, rng_state = dict(manifest["counts"]), manifest["rng"]
        type(shard.rng.bit_generator)().state = rng_state
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"corrupt manifest {path / MANIFEST}: {exc!r}") from None
    if num_valid != int(np.count_nonzero(loaded["ring.valid"])):
        raise CheckpointError(f"checkpoint {path}: num_valid ({num_valid}) != valid slots")
    for k in RING_ARRAYS:
        getattr(shard.ring, k)[...] = loaded[f"ring.{k}"]
    shard.ring.counter, shard.ring.num_valid = counter, num_valid
    shard.sampler.load({k.split(".", 1)[1]: v for k, v in loaded.items() if k.startswith("sampler.")})
    shard.limiter.inserts, shard.limiter.samples = inserts, samples
    shard.counts.update(counts)
    shard.rng.bit_generator.state = rng_state
    s = {k: loaded[f"stream.{k}"] for k in _STREAM_FIELDS}
    shard.streams = {
        int(s["stream_id"][i]): StreamState(int(s["last_seq"][i]), int(s["step"][i]), bool(s["ended"][i]),
                                            s["slots"][i].copy(), s["stamps"][i].copy(),
                                            int(s["refused_seq"][i]))
        for i in range(s["stream_id"].size)}
