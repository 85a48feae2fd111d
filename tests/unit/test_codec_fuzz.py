"""The chunk decoder under generated messages (Hypothesis; issue 30): random bytes, random
msgpack structures, and valid chunks mutated field by field (wrong dtypes and shapes, huge,
tiny and non-finite floats, missing and extra keys, truncated and flipped bytes).

The contract: ``decode_chunk`` either returns a chunk that satisfies the spec (every array,
every bound, every record rule: ``validate_chunk`` accepts it) or raises WireError or
SpecError; no other exception escapes, and it never hangs. The shard half is
tests/unit/test_shard_fuzz.py.
"""
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.codec import decode_chunk, encode_chunk, validate_chunk
from common.errors import SpecError, WireError
from common.types import StepChunk
from tests.unit.replay_support import SMALL_SPEC, make_streams

SPEC = SMALL_SPEC
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
FLOAT_FIELDS = ("vector", "action", "reward")
ARRAY_FIELDS = ("frame", "vector", "first", "action", "reward", "terminated", "truncated",
                "policy_version")
DTYPES = ("uint8", "float32", "bool", "int64", "float64", "int8", "object", "", "<f4")

VALID = [encode_chunk(stream.next_chunk(), SPEC)
         for stream in make_streams(SPEC, 3, chunk_length=5, max_episode=3, seed=7)
         for _ in range(2)]

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                     st.floats(allow_nan=True), st.text(max_size=10), st.binary(max_size=40))
_structures = st.recursive(
    _scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                      st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=25)
_floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


def _decode_or_refuse(data) -> StepChunk | None:
    """Decodes ``data``; a chunk it returns must satisfy the spec, a refusal must be ours."""
    try:
        chunk = decode_chunk(data, SPEC)
    except (WireError, SpecError):
        return None
    validate_chunk(chunk, SPEC)
    for name in FLOAT_FIELDS:
        low, high = getattr(SPEC, name).bounds()
        value = getattr(chunk, name)
        assert np.all((value >= low) & (value <= high)), name
    return chunk


def _arrays(msg: dict, name: str) -> np.ndarray:
    dtype, shape, raw = msg[name]
    return np.frombuffer(raw, dtype).reshape(shape).copy()


def _intact(msg: dict, name: str) -> bool:
    """``msg[name]`` is still a well-formed array entry (an earlier mutation may have hit it)."""
    entry = msg.get(name)
    if not (isinstance(entry, list) and len(entry) == 3 and entry[0] in ("float32", "bool")
            and isinstance(entry[1], list) and all(type(d) is int and d > 0 for d in entry[1])
            and isinstance(entry[2], bytes)):
        return False
    return len(entry[2]) == np.dtype(entry[0]).itemsize * int(np.prod(entry[1]))


@st.composite
def _mutation(draw, msg: dict) -> dict:
    """One change to a decoded valid message."""
    kind = draw(st.sampled_from(["replace", "delete", "extra", "dtype", "shape", "raw",
                                 "float", "floats", "bools", "ints"]))
    array = draw(st.sampled_from(ARRAY_FIELDS))
    floats = draw(st.sampled_from(FLOAT_FIELDS))
    bools = draw(st.sampled_from(["first", "terminated", "truncated"]))
    entry = msg.get(array)
    if kind == "replace":
        msg[draw(st.sampled_from(sorted(msg)))] = draw(_structures)
    elif kind == "delete":
        del msg[draw(st.sampled_from(sorted(msg)))]
    elif kind == "extra":
        msg[draw(st.text(max_size=8))] = draw(_structures)
    elif kind == "dtype" and isinstance(entry, list) and entry:
        entry[0] = draw(st.one_of(st.sampled_from(DTYPES), _scalars))
    elif kind == "shape" and isinstance(entry, list) and len(entry) > 1:
        entry[1] = draw(st.one_of(
            st.lists(st.integers(-2, 2**40), max_size=6),
            st.lists(st.one_of(st.booleans(), st.integers(0, 40), st.floats()), max_size=3)))
    elif kind == "raw" and isinstance(entry, list) and len(entry) > 2:
        entry[2] = draw(st.binary(max_size=600))
    elif kind == "float" and _intact(msg, floats):  # one value: huge, tiny, NaN, infinite
        values = _arrays(msg, floats)
        flat = values.reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(_floats32)
        msg[floats][2] = values.tobytes()
    elif kind == "floats" and _intact(msg, floats):  # every value: random bit patterns
        msg[floats][2] = draw(st.binary(min_size=len(msg[floats][2]),
                                        max_size=len(msg[floats][2])))
    elif kind == "bools" and _intact(msg, bools):
        msg[bools][2] = draw(st.binary(min_size=len(msg[bools][2]), max_size=len(msg[bools][2])))
    elif kind == "ints":
        msg[draw(st.sampled_from(["v", "stream_id", "seq"]))] = draw(
            st.one_of(st.integers(-2**63, 2**64 - 1), _scalars))
    return msg


@st.composite
def _mutated(draw) -> bytes:
    """A valid message with one to three field changes, then perhaps cut or flipped bytes."""
    msg = msgpack.unpackb(draw(st.sampled_from(VALID)), raw=False)
    for _ in range(draw(st.integers(1, 3))):
        msg = draw(_mutation(msg))
    data = bytearray(msgpack.packb(msg, use_bin_type=True))
    tail = draw(st.sampled_from(["keep", "truncate", "flip"]))
    if tail == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif tail == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.mark.timeout(60)
@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_are_refused_or_valid(data):
    _decode_or_refuse(data)


@pytest.mark.timeout(60)
@FUZZ
@given(st.one_of(_structures, st.dictionaries(st.sampled_from(ARRAY_FIELDS + ("v", "kind")),
                                              _structures, max_size=12)))
def test_random_msgpack_is_refused_or_valid(structure):
    _decode_or_refuse(msgpack.packb(structure, use_bin_type=True))


@pytest.mark.timeout(60)
@FUZZ
@given(_mutated())
def test_mutated_chunks_are_refused_or_valid(data):
    _decode_or_refuse(data)


@pytest.mark.timeout(60)
@FUZZ
@given(st.sampled_from(VALID), st.sampled_from(FLOAT_FIELDS), st.data())
def test_a_float_is_kept_inside_its_bounds_and_refused_outside(data, name, draw):
    """The bounds cut exactly where the spec says: never more, never less."""
    msg = msgpack.unpackb(data, raw=False)
    values = _arrays(msg, name)
    first = _arrays(msg, "first")
    rows = np.flatnonzero(~first) if name != "vector" else np.arange(first.size)
    row = draw.draw(st.sampled_from(rows.tolist()))
    item = draw.draw(st.integers(0, values[row].size - 1))
    value = draw.draw(_floats32)
    values.reshape(first.size, -1)[row, item] = value
    msg[name][2] = values.tobytes()
    low, high = (b.reshape(-1)[item] for b in getattr(SPEC, name).bounds())
    inside = bool(low <= np.float32(value) <= high)
    chunk = _decode_or_refuse(msgpack.packb(msg, use_bin_type=True))
    assert (chunk is not None) == inside, (name, row, item, value)
    if inside:
        assert getattr(chunk, name).reshape(first.size, -1)[row, item] == np.float32(value)
