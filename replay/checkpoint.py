"""Shard checkpoints: raw .npy arrays plus a sealed manifest that checksums every file.

``save_shard`` writes ``<dir>/replay_shard_<i>/``: one ``.npy`` file per array and
``manifest.json``, a ``common.durable`` sealed file (its own SHA-256 trailer) holding the
shard's header and counters and each array file's size, SHA-256, dtype and shape. Files are
fsynced, the directory is written under a temporary name, fsynced and renamed into place (an
existing checkpoint is renamed aside first and removed after).

``restore_shard`` verifies the manifest's seal, every file's size and checksum, every array's
dtype and shape, and that the manifest's counters agree with the arrays, all before it
changes anything. Whatever is wrong, it raises CheckpointError naming the file or value, and
the shard is left as it was.
"""
from __future__ import annotations

import hashlib
import pathlib
import shutil
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from common import durable
from common.errors import CheckpointError
from replay import checkpoint_checks as checks
from replay.storage import RING_ARRAYS, StreamState

if TYPE_CHECKING:
    from replay.shard import ReplayShard

FORMAT_VERSION = 2  # 2: sealed manifest, a SHA-256 of every file
MANIFEST = durable.MANIFEST


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


def _arrays(shard: ReplayShard) -> dict[str, np.ndarray]:
    arrays = {f"ring.{k}": getattr(shard.ring, k) for k in RING_ARRAYS}
    arrays.update({f"stream.{k}": v for k, v in _stream_arrays(shard.streams, shard.spec.frames).items()})
    arrays.update({f"sampler.{k}": v for k, v in shard.sampler.state().items()})
    return {k: np.ascontiguousarray(v) for k, v in arrays.items()}


def _write_dir(shard: ReplayShard, tmp: pathlib.Path) -> None:
    files = {}
    for name, arr in _arrays(shard).items():
        digest = durable.write_file(tmp / f"{name}.npy",
                                    lambda f, a=arr: np.save(f, a, allow_pickle=False))
        files[f"{name}.npy"] = {**digest.to_json(), "dtype": arr.dtype.str, "shape": list(arr.shape)}
    durable.write_sealed(tmp / MANIFEST, {
        **_header(shard), "counter": shard.ring.counter, "num_valid": shard.ring.num_valid,
        "limiter": {"inserts": shard.limiter.inserts, "samples": shard.limiter.samples},
        "counts": shard.counts, "rng": shard.rng.bit_generator.state, "files": files})


def save_shard(shard: ReplayShard, directory: pathlib.Path) -> pathlib.Path:
    """Writes ``shard`` atomically and durably; returns the checkpoint's path."""
    directory.mkdir(parents=True, exist_ok=True)
    final = shard_path(directory, shard.shard_index)
    tmp = directory / f".{final.name}.tmp-{uuid.uuid4().hex}"
    old = directory / f".{final.name}.old-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write_dir(shard, tmp)
        durable.fsync_dir(tmp)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        durable.fsync_dir(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _read_manifest(path: pathlib.Path) -> dict[str, Any]:
    if not (path / MANIFEST).exists():
        raise CheckpointError(f"no replay checkpoint at {path} ({MANIFEST} missing)")
    try:
        return durable.read_sealed(path / MANIFEST)
    except CheckpointError as exc:
        raise CheckpointError(f"corrupt manifest {exc}") from None


def _load_array(file: pathlib.Path, expected: durable.FileDigest) -> np.ndarray:
    """The array in ``file`` once its size and SHA-256 match ``expected`` (one read)."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{file}: unreadable (missing)") from None
    except OSError as exc:
        raise CheckpointError(f"{file}: unreadable ({exc})") from None
    if len(data) != expected.size:
        raise CheckpointError(f"{file}: {len(data)} bytes != {expected.size} in the manifest (truncated?)")
    if hashlib.sha256(data).hexdigest() != expected.sha256:
        raise CheckpointError(f"{file}: checksum mismatch (corrupt)")
    return checks.parse_npy(data, file)


def restore_shard(shard: ReplayShard, directory: pathlib.Path) -> None:
    """Restores ``shard`` from ``directory``; changes nothing unless everything checks out.

    Raises:
        CheckpointError: missing, corrupt, truncated, inconsistent, or made for another spec
            or capacity. Nothing else escapes.
    """
    path = shard_path(directory, shard.shard_index)
    manifest = _read_manifest(path)
    where = f"checkpoint {path}"
    for key, value in _header(shard).items():
        if manifest.get(key) != value:
            raise CheckpointError(f"{where}: {key} ({manifest.get(key)!r}) != this shard's ({value!r})")
    files = durable.parse_files(manifest.get("files"), f"corrupt manifest {path / MANIFEST}")
    layout = checks.expected_layout(shard)
    if set(files) != {f"{k}.npy" for k in layout}:
        raise CheckpointError(f"{where}: arrays {sorted(files)} != expected "
                              f"{sorted(f'{k}.npy' for k in layout)}")
    loaded = {name: _load_array(path / f"{name}.npy", files[f"{name}.npy"]) for name in layout}
    checks.match_layout(loaded, layout, manifest["files"], path)
    scalars = checks.manifest_scalars(manifest, shard, path / MANIFEST)
    checks.consistent(loaded, scalars, shard, where)
    _apply(shard, loaded, scalars)


def _apply(shard: ReplayShard, loaded: dict[str, np.ndarray], scalars: checks.Scalars) -> None:
    for k in RING_ARRAYS:
        getattr(shard.ring, k)[...] = loaded[f"ring.{k}"]
    shard.ring.counter, shard.ring.num_valid = scalars.counter, scalars.num_valid
    shard.sampler.load({k.split(".", 1)[1]: v for k, v in loaded.items() if k.startswith("sampler.")})
    shard.limiter.inserts, shard.limiter.samples = scalars.inserts, scalars.samples
    shard.counts.update(scalars.counts)
    shard.rng.bit_generator.state = scalars.rng
    s = {k: loaded[f"stream.{k}"] for k in checks.STREAM_FIELDS}
    shard.streams = {
        int(s["stream_id"][i]): StreamState(int(s["last_seq"][i]), int(s["step"][i]), bool(s["ended"][i]),
                                            s["slots"][i].copy(), s["stamps"][i].copy(),
                                            int(s["refused_seq"][i]))
        for i in range(s["stream_id"].size)}
