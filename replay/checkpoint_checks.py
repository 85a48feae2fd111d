"""What ``replay.checkpoint.restore_shard`` checks before it changes a shard.

Every check raises CheckpointError naming the file or the value: the array layout (names,
dtypes, shapes), the ``.npy`` headers, the manifest's scalars (exact types and ranges), and
that the manifest's counters agree with the arrays (the ring's write stamps, its valid slots,
the streams' slots and stamps). Only parsed, checked values leave this module.
"""
from __future__ import annotations

import io
import math
import pathlib
import tokenize
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from common.errors import CheckpointError
from replay.storage import RING_ARRAYS

if TYPE_CHECKING:
    from replay.shard import ReplayShard

STREAM_FIELDS = ("stream_id", "last_seq", "step", "ended", "slots", "stamps", "refused_seq")
_STREAM_DTYPES = {"stream_id": "<u8", "last_seq": "<i8", "step": "<i8", "ended": "|b1",
                  "slots": "<i8", "stamps": "<i8", "refused_seq": "<i8"}
_FINITE = ("ring.vector", "ring.action", "ring.reward")
_NPY_ERRORS = (ValueError, SyntaxError, TypeError, EOFError, OverflowError, MemoryError,
               RecursionError, tokenize.TokenError)


class Scalars(NamedTuple):
    """The manifest's checked scalar state."""

    counter: int
    num_valid: int
    inserts: int
    samples: int
    counts: dict[str, int | float]
    rng: dict[str, Any]


def expected_layout(shard: ReplayShard) -> dict[str, tuple[str, tuple[int | None, ...]]]:
    """Array name -> (dtype string, shape); None stands for the number of streams."""
    out = {f"ring.{k}": (getattr(shard.ring, k).dtype.str, getattr(shard.ring, k).shape)
           for k in RING_ARRAYS}
    frames = shard.spec.frames
    out.update({f"stream.{k}": (dt, (None, frames) if k in ("slots", "stamps") else (None,))
                for k, dt in _STREAM_DTYPES.items()})
    out.update({f"sampler.{k}": (v.dtype.str, v.shape) for k, v in shard.sampler.state().items()})
    return out


def parse_npy(data: bytes, file: pathlib.Path) -> np.ndarray:
    """The array held by the ``.npy`` bytes ``data`` (a read-only view, no copy)."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"npy format version {version}")
        shape, fortran, dtype = read(f)
        if fortran or dtype.hasobject:
            raise ValueError("Fortran order or object dtype")
        count = math.prod(shape)
        if len(data) - f.tell() != count * dtype.itemsize:
            raise ValueError(f"{len(data) - f.tell()} data bytes for {count} x {dtype}")
        return np.frombuffer(data, dtype, count, f.tell()).reshape(shape)
    except _NPY_ERRORS as exc:
        raise CheckpointError(f"{file}: unreadable ({type(exc).__name__}: {exc})") from None


def match_layout(loaded: dict[str, np.ndarray], layout: dict[str, tuple[str, tuple]],
                 entries: dict[str, Any], path: pathlib.Path) -> None:
    """Each array has its layout's dtype and shape, the one its manifest entry states, and
    every stream array one row a stream."""
    streams = loaded["stream.stream_id"].shape[0] if loaded["stream.stream_id"].ndim == 1 else -1
    for name, (dtype, shape) in layout.items():
        arr, want = loaded[name], tuple(streams if d is None else d for d in shape)
        if arr.dtype.str != dtype or arr.shape != want:
            raise CheckpointError(f"{path / name}.npy: {arr.dtype.str}{list(arr.shape)} != "
                                  f"expected {dtype}{list(want)}")
        entry = entries[f"{name}.npy"]
        if entry.get("dtype") != arr.dtype.str or entry.get("shape") != list(arr.shape):
            raise CheckpointError(f"corrupt manifest {path / 'manifest.json'}: {name}.npy is "
                                  f"{arr.dtype.str}{list(arr.shape)}, the manifest says "
                                  f"{entry.get('dtype')!r}{entry.get('shape')!r}")


def _count(value: Any, name: str, where: pathlib.Path) -> int:
    if type(value) is not int or value < 0:
        raise CheckpointError(f"corrupt manifest {where}: {name} ({value!r}) is not a count")
    return value


def _counts(value: Any, current: dict[str, int | float], where: pathlib.Path) -> dict[str, int | float]:
    if not isinstance(value, dict):
        raise CheckpointError(f"corrupt manifest {where}: counts ({value!r}) is not an object")
    for key, v in value.items():
        if key not in current:
            raise CheckpointError(f"corrupt manifest {where}: unknown count {key!r}")
        if isinstance(current[key], float):
            ok = type(v) in (int, float) and math.isfinite(v) and v >= 0
        else:
            ok = type(v) is int and v >= 0
        if not ok:
            raise CheckpointError(f"corrupt manifest {where}: counts.{key} ({v!r}) is not a count")
    return dict(value)


def _rng(value: Any, shard: ReplayShard, where: pathlib.Path) -> dict[str, Any]:
    try:
        if not isinstance(value, dict):
            raise TypeError(f"{type(value).__name__}, expected an object")
        probe = type(shard.rng.bit_generator)()
        probe.state = value
        return probe.state
    except (TypeError, ValueError, KeyError, OverflowError, AttributeError) as exc:
        raise CheckpointError(f"corrupt manifest {where}: rng state: {exc!r}") from None


def manifest_scalars(manifest: dict[str, Any], shard: ReplayShard, where: pathlib.Path) -> Scalars:
    """The manifest's counters, counts and RNG state, each checked for type and range."""
    limiter = manifest.get("limiter")
    if not isinstance(limiter, dict) or set(limiter) != {"inserts", "samples"}:
        raise CheckpointError(f"corrupt manifest {where}: limiter ({limiter!r}) is not "
                              "{inserts, samples}")
    return Scalars(_count(manifest.get("counter"), "counter", where),
                   _count(manifest.get("num_valid"), "num_valid", where),
                   _count(limiter["inserts"], "limiter.inserts", where),
                   _count(limiter["samples"], "limiter.samples", where),
                   _counts(manifest.get("counts"), shard.counts, where),
                   _rng(manifest.get("rng"), shard, where))


def _fail_if(bad: bool | np.bool_, where: str, what: str) -> None:
    if bad:
        raise CheckpointError(f"{where}: {what}")


def consistent(loaded: dict[str, np.ndarray], s: Scalars, shard: ReplayShard, where: str) -> None:
    """The manifest's counters agree with the arrays, and the arrays with each other."""
    cap, counter = shard.ring.capacity, s.counter
    stamp, valid = loaded["ring.stamp"], loaded["ring.valid"]
    written = stamp >= 0
    n_written = int(np.count_nonzero(written))
    _fail_if(n_written != min(counter, cap), where,
             f"counter ({counter}) disagrees with the ring ({n_written} slots written)")
    _fail_if(np.any(stamp < -1) or np.any(written & (stamp >= counter))
             or np.any(written & (stamp < counter - cap))
             or np.any(written & (stamp % cap != np.arange(cap))), where,
             f"ring write stamps disagree with counter ({counter})")
    _fail_if(np.any(valid & ~written), where, "a valid slot was never written")
    _fail_if(s.num_valid != int(np.count_nonzero(valid)), where, f"num_valid ({s.num_valid}) != valid slots")
    _fail_if(s.inserts > counter or s.counts.get("inserts", 0) > counter, where,
             f"inserts ({s.inserts}) exceed the records stored ({counter})")
    for name in ("ring.prev", "ring.next"):
        _fail_if(np.any((loaded[name] < -1) | (loaded[name] >= cap)), where, f"{name} outside [-1, {cap})")
    _fail_if(np.any((loaded["ring.stack"] < 0) | (loaded["ring.stack"] >= cap)), where,
             f"ring.stack outside [0, {cap})")
    for name in _FINITE:
        _fail_if(not np.all(np.isfinite(loaded[name])), where, f"{name} holds non-finite values")
    for name, arr in loaded.items():
        if name.startswith("sampler.") and arr.dtype.kind == "f":
            _fail_if(not np.all(np.isfinite(arr) & (arr >= 0)), where,
                     f"{name} holds negative or non-finite values")
    _streams_consistent(loaded, counter, cap, where)


def _streams_consistent(loaded: dict[str, np.ndarray], counter: int, cap: int, where: str) -> None:
    ids, slots, stamps = loaded["stream.stream_id"], loaded["stream.slots"], loaded["stream.stamps"]
    _fail_if(np.unique(ids).size != ids.size, where, "stream ids repeat")
    _fail_if(np.any((slots < 0) | (slots >= cap)), where, f"stream slots outside [0, {cap})")
    _fail_if(np.any((stamps < -1) | (stamps >= counter)), where,
             f"stream stamps outside [-1, counter ({counter}))")
    _fail_if(np.any((stamps >= 0) & (slots != stamps % cap)), where,
             "stream slots disagree with their stamps")
    _fail_if(np.any(loaded["stream.step"] < -1) or np.any(loaded["stream.refused_seq"] < -1), where,
             "stream step or refused_seq below -1")
