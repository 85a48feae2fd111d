"""The msgpack wire codec: StepChunks from rollout workers, SampleBatches to the learner.

A message is one msgpack map with an exact key set: ``"v"`` (format version), ``"kind"``
(``"chunk"`` or ``"batch"``), scalar fields, and one entry per array, each
``[dtype name, shape list, raw bytes]`` in C order. Decoding never unpickles: it unpacks with
msgpack's own limits (total size, bin, str, array and map lengths, no ext types), then checks
every key, dtype (allow-list), shape and value against the EnvSpec before any array is used.

Chunk consistency rules (``validate_chunk``), beyond the per-array spec checks:
  * at least one record and at most ``WireLimits.max_records``;
  * ``stream_id`` in the uint64 range, ``seq`` >= 0;
  * ``policy_version`` >= -1 (-1: random actions);
  * ``terminated`` and ``truncated`` are never both set on one record;
  * a ``first`` record carries no transition: zero action, zero reward, neither terminal flag
    (its ``policy_version`` is not read);
  * a record after a terminal record (``terminated`` or ``truncated``) in the same chunk must be
    ``first``: an ended episode is never continued. A ``first`` record may follow a
    non-terminal one (the actor abandoned that episode; its stored transitions stay valid).
Values: every float must lie inside the spec's bounds (common/specs.py): the vector's
components, the action box and the reward limit; a NaN or an infinity is outside them all.
Any violation raises WireError (malformed message) or SpecError (array against the spec, naming
the field and the index of the first bad value, e.g. ``reward[3] (1e+30) above maximum 100.0``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import msgpack
import numpy as np

from common.errors import SpecError, WireError
from common.specs import ArraySpec, EnvSpec
from common.types import SampleBatch, StepChunk

WIRE_VERSION = 1
CHUNK_KIND = "chunk"
BATCH_KIND = "batch"
ALLOWED_DTYPES = frozenset({"uint8", "float32", "bool", "int64"})
_UINT64_MAX = 2**64 - 1

_CHUNK_ARRAYS = ("frame", "vector", "first", "action", "reward", "terminated", "truncated",
                 "policy_version")
_CHUNK_KEYS = frozenset(("v", "kind", "stream_id", "seq") + _CHUNK_ARRAYS)
_BATCH_KEYS = frozenset(("v", "kind") + SampleBatch._fields)


@dataclass(frozen=True)
class WireLimits:
    """Upper bounds applied while decoding, before any array is built.

    Attributes:
        max_bytes: total message size.
        max_records: records in one chunk (or transitions in one batch).
        max_bin_len: one raw byte string (one array).
        max_str_len: one string.
        max_array_len: one msgpack array (e.g. a shape list).
        max_map_len: one msgpack map.
    """

    max_bytes: int = 64 * 2**20
    max_records: int = 4096
    max_bin_len: int = 48 * 2**20
    max_str_len: int = 64
    max_array_len: int = 8
    max_map_len: int = 16


def _pack_array(value: np.ndarray) -> list[Any]:
    arr = np.ascontiguousarray(value)
    return [arr.dtype.name, list(arr.shape), arr.data if arr.size else b""]


def _reject_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack ext type {code} is not allowed")


def _unpack(data: bytes, limits: WireLimits) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"message must be bytes, got {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise WireError(f"message size ({len(data)} bytes) exceeds max_bytes ({limits.max_bytes})")
    try:
        msg = msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True,
            max_bin_len=limits.max_bin_len, max_str_len=limits.max_str_len,
            max_array_len=limits.max_array_len, max_map_len=limits.max_map_len, max_ext_len=0,
            ext_hook=_reject_ext)
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise WireError(f"malformed msgpack message ({type(exc).__name__}: {exc})") from None
    if not isinstance(msg, dict):
        raise WireError(f"message must be a map, got {type(msg).__name__}")
    return msg


def _check_header(msg: Mapping[str, Any], kind: str, keys: frozenset[str]) -> None:
    if type(msg.get("v")) is not int or msg["v"] != WIRE_VERSION:
        raise WireError(f"wire version ({msg.get('v')!r}) != supported {WIRE_VERSION}")
    if msg.get("kind") != kind:
        raise WireError(f"message kind ({msg.get('kind')!r}) != expected {kind!r}")
    if set(msg) != keys:
        raise WireError(f"message keys {sorted(map(str, msg))} != expected {sorted(keys)}")


def _int_field(msg: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = msg[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise WireError(f"{key} ({value!r}) must be an integer in [{low}, {high}]")
    return value


def _array_field(msg: Mapping[str, Any], key: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    entry = msg[key]
    if not isinstance(entry, list) or len(entry) != 3:
        raise WireError(f"{key}: expected [dtype, shape, bytes], got {type(entry).__name__}")
    name, wire_shape, raw = entry
    if not isinstance(name, str) or name not in ALLOWED_DTYPES:
        raise WireError(f"{key}: dtype {name!r} not in allowed {sorted(ALLOWED_DTYPES)}")
    if name != dtype:
        raise SpecError(f"{key}: dtype {name} != expected {dtype}")
    if not isinstance(wire_shape, list) or any(type(d) is not int for d in wire_shape):
        raise WireError(f"{key}: shape must be a list of integers, got {wire_shape!r}")
    if tuple(wire_shape) != shape:
        raise SpecError(f"{key}: shape {wire_shape!r} != expected {list(shape)}")
    if not isinstance(raw, bytes):
        raise WireError(f"{key}: data must be raw bytes, got {type(raw).__name__}")
    np_dtype = np.dtype(dtype)
    expected = math.prod(shape) * np_dtype.itemsize
    if len(raw) != expected:
        raise WireError(f"{key}: {len(raw)} data bytes != {expected} for shape {list(shape)}")
    arr = np.frombuffer(raw, dtype=np_dtype).reshape(shape)
    if dtype == "bool" and arr.size and arr.view(np.uint8).max() > 1:
        raise WireError(f"{key}: boolean bytes must be 0 or 1")
    return arr


def _record_count(msg: Mapping[str, Any], limits: WireLimits) -> int:
    entry = msg["frame"]
    if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[1], list)
            or not entry[1] or isinstance(entry[1][0], bool) or not isinstance(entry[1][0], int)):
        raise WireError("frame: expected [dtype, [n, H, W], bytes]")
    n = entry[1][0]
    if not 1 <= n <= limits.max_records:
        raise WireError(f"record count ({n}) must be in [1, {limits.max_records}]")
    return n


def validate_chunk(chunk: StepChunk, spec: EnvSpec, limits: WireLimits = WireLimits()) -> StepChunk:
    """Checks a chunk's arrays against the spec and its records against the module's rules.

    Args:
        chunk: the chunk to check.
        spec: the observation and action spec.
        limits: ``max_records`` bounds the record count.

    Returns:
        ``chunk`` unchanged.

    Raises:
        WireError: a bad id, count or record sequence.
        SpecError: an array that does not match the spec.
    """
    n = chunk.num_records if isinstance(chunk.frame, np.ndarray) and chunk.frame.ndim else 0
    if not 1 <= n <= limits.max_records:
        raise WireError(f"record count ({n}) must be in [1, {limits.max_records}]")
    for key, value in (("stream_id", chunk.stream_id), ("seq", chunk.seq)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise WireError(f"{key} ({value!r}) must be an integer")
    if not 0 <= chunk.stream_id <= _UINT64_MAX:
        raise WireError(f"stream_id ({chunk.stream_id}) must be in the uint64 range")
    if not 0 <= chunk.seq <= 2**63 - 1:
        raise WireError(f"seq ({chunk.seq}) must be in [0, 2**63 - 1]")
    spec.frame.validate(chunk.frame, 1)
    spec.vector.validate(chunk.vector, 1)
    spec.action.validate(chunk.action, 1)
    spec.reward.validate(chunk.reward, 1)
    for key, dtype in (("first", "bool"), ("terminated", "bool"), ("truncated", "bool"),
                       ("policy_version", "int64")):
        ArraySpec(key, (), dtype).validate(getattr(chunk, key), 1)
        if getattr(chunk, key).shape[0] != n:
            raise SpecError(f"{key}: length {getattr(chunk, key).shape[0]} != record count {n}")
    for key in ("vector", "action", "reward"):
        if getattr(chunk, key).shape[0] != n:
            raise SpecError(f"{key}: length {getattr(chunk, key).shape[0]} != record count {n}")
    _check_records(chunk)
    return chunk


def _check_records(chunk: StepChunk) -> None:
    first, term, trunc = chunk.first, chunk.terminated, chunk.truncated
    if chunk.policy_version.size and chunk.policy_version.min() < -1:
        raise WireError(f"policy_version ({chunk.policy_version.min()}) must be >= -1")
    both = np.flatnonzero(term & trunc)
    if both.size:
        raise WireError(f"record {both[0]}: terminated and truncated are both set")
    carries = (np.any(chunk.action != 0, axis=1) | (chunk.reward != 0) | term | trunc) & first
    if np.any(carries):
        raise WireError(f"record {np.flatnonzero(carries)[0]}: a first record carries a transition")
    continued = (term | trunc)[:-1] & ~first[1:]
    if np.any(continued):
        i = int(np.flatnonzero(continued)[0])
        raise WireError(f"record {i + 1}: continues an episode that ended at record {i}")


def encode_chunk(chunk: StepChunk, spec: EnvSpec) -> bytes:
    """Validates ``chunk`` and encodes it as one msgpack message.

    Raises:
        WireError, SpecError: as ``validate_chunk``.
    """
    validate_chunk(chunk, spec)
    msg: dict[str, Any] = {"v": WIRE_VERSION, "kind": CHUNK_KIND,
                           "stream_id": int(chunk.stream_id), "seq": int(chunk.seq)}
    for key in _CHUNK_ARRAYS:
        msg[key] = _pack_array(getattr(chunk, key))
    return msgpack.packb(msg, use_bin_type=True)


def decode_chunk(data: bytes, spec: EnvSpec, limits: WireLimits = WireLimits()) -> StepChunk:
    """Decodes and fully validates a chunk message. Arrays are read-only views of ``data``.

    Raises:
        WireError: malformed, truncated, oversized or inconsistent message.
        SpecError: an array that does not match the spec.
    """
    msg = _unpack(data, limits)
    _check_header(msg, CHUNK_KIND, _CHUNK_KEYS)
    stream_id = _int_field(msg, "stream_id", 0, _UINT64_MAX)
    seq = _int_field(msg, "seq", 0, 2**63 - 1)
    n = _record_count(msg, limits)
    size, a, v = spec.image_size, spec.action_dim, spec.vector_dim
    shapes = {"frame": (n, size, size), "vector": (n, v), "action": (n, a)}
    dtypes = {"frame": "uint8", "vector": "float32", "action": "float32", "reward": "float32",
              "first": "bool", "terminated": "bool", "truncated": "bool",
              "policy_version": "int64"}
    arrays = {k: _array_field(msg, k, dtypes[k], shapes.get(k, (n,))) for k in _CHUNK_ARRAYS}
    chunk = StepChunk(stream_id=stream_id, seq=seq, **arrays)
    # Ids, the record count, every dtype and shape, and the bools' bytes are checked above;
    # what validate_chunk adds for a decoded chunk is the float values (finite and inside the
    # spec's bounds) and the record rules.
    spec.vector.validate(chunk.vector, 1)
    spec.action.validate(chunk.action, 1)
    spec.reward.validate(chunk.reward, 1)
    _check_records(chunk)
    return chunk


def _batch_layout(spec: EnvSpec, b: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    img = (b, spec.frames, spec.image_size, spec.image_size)
    return {"obs_image": ("uint8", img), "obs_vector": ("float32", (b, spec.vector_dim)),
            "action": ("float32", (b, spec.action_dim)), "reward": ("float32", (b,)),
            "next_image": ("uint8", img), "next_vector": ("float32", (b, spec.vector_dim)),
            "terminated": ("float32", (b,)), "truncated": ("float32", (b,)),
            "policy_version": ("int64", (b,)), "weight": ("float32", (b,)), "key": ("int64", (b,))}


def encode_batch(batch: SampleBatch) -> bytes:
    """Encodes a SampleBatch as one msgpack message (arrays as raw bytes)."""
    msg: dict[str, Any] = {"v": WIRE_VERSION, "kind": BATCH_KIND}
    for key in SampleBatch._fields:
        msg[key] = _pack_array(getattr(batch, key))
    return msgpack.packb(msg, use_bin_type=True)


def decode_batch(data: bytes, spec: EnvSpec, limits: WireLimits = WireLimits()) -> SampleBatch:
    """Decodes a SampleBatch message, checking every array's dtype and shape against the spec.

    Raises:
        WireError: malformed, truncated or oversized message.
        SpecError: an array that does not match the spec.
    """
    msg = _unpack(data, limits)
    _check_header(msg, BATCH_KIND, _BATCH_KEYS)
    entry = msg["key"]
    if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[1], list)
            or len(entry[1]) != 1 or not isinstance(entry[1][0], int)
            or not 1 <= entry[1][0] <= limits.max_records):
        raise WireError(f"key: batch size must be in [1, {limits.max_records}]")
    layout = _batch_layout(spec, entry[1][0])
    return SampleBatch(**{k: _array_field(msg, k, d, s) for k, (d, s) in layout.items()})
