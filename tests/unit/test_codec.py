"""The msgpack wire codec: round trips, named rejections, and a fuzz test against a shard."""
import msgpack
import numpy as np
import pytest

from common.codec import (WireLimits, decode_batch, decode_chunk, encode_batch, encode_chunk,
                          validate_chunk)
from common.errors import SpecError, WireError
from tests.unit.replay_support import SMALL_SPEC, fingerprint, make_streams, small_shard

SPEC = SMALL_SPEC


def _chunk(seed=0, n=6):
    return make_streams(SPEC, 1, chunk_length=n, max_episode=3, seed=seed)[0].next_chunk()


def _msg(chunk=None) -> dict:
    return msgpack.unpackb(encode_chunk(chunk or _chunk(), SPEC), raw=False)


def _pack(msg) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def test_chunk_round_trip_is_exact():
    chunk = _chunk()
    back = decode_chunk(encode_chunk(chunk, SPEC), SPEC)
    assert (back.stream_id, back.seq) == (chunk.stream_id, chunk.seq)
    for name in chunk._fields[2:]:
        a, b = getattr(chunk, name), getattr(back, name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name


def test_batch_round_trip_is_exact():
    shard = small_shard()
    for _ in range(4):
        shard.insert_chunk(make_streams(SPEC, 1, chunk_length=8)[0].next_chunk())
    src = make_streams(SPEC, 1, chunk_length=8, seed=5)[0]
    for _ in range(4):
        shard.insert_chunk(src.next_chunk())
    batch = shard.sample(16)
    back = decode_batch(encode_batch(batch), SPEC)
    for name in batch._fields:
        assert getattr(batch, name).tobytes() == getattr(back, name).tobytes(), name


def _edit(field, value):
    def apply(msg):
        msg[field] = value
        return msg
    return apply


def _edit_array(field, index, value):
    def apply(msg):
        msg[field][index] = value
        return msg
    return apply


def _values(field, dtype, fill):
    def apply(msg):
        arr = np.frombuffer(msg[field][2], dtype).copy()
        arr[...] = fill
        msg[field][2] = arr.tobytes()
        return msg
    return apply


@pytest.mark.parametrize("mutate,error,match", [
    pytest.param(_edit("v", 2), WireError, r"wire version \(2\)", id="version"),
    pytest.param(_edit("kind", "batch"), WireError, "message kind", id="kind"),
    pytest.param(lambda m: {**m, "extra": 1}, WireError, "message keys", id="extra_key"),
    pytest.param(lambda m: {k: v for k, v in m.items() if k != "reward"}, WireError,
                 "message keys", id="missing_key"),
    pytest.param(_edit("seq", -1), WireError, r"seq \(-1\)", id="negative_seq"),
    pytest.param(_edit("stream_id", "x"), WireError, "stream_id", id="string_stream_id"),
    pytest.param(_edit_array("frame", 0, "float64"), WireError, "dtype 'float64' not in allowed",
                 id="dtype_not_allowed"),
    pytest.param(_edit_array("vector", 0, "uint8"), SpecError, "vector: dtype uint8", id="wrong_dtype"),
    pytest.param(_edit_array("frame", 1, [6, 36, 35]), SpecError, "frame: shape", id="frame_shape"),
    pytest.param(_edit_array("frame", 1, [6, 36, True]), WireError, "list of integers", id="bool_dim"),
    pytest.param(_edit_array("reward", 1, [5]), SpecError, "reward: shape", id="length_mismatch"),
    pytest.param(_edit_array("frame", 2, b"\x00" * 10), WireError, "data bytes", id="short_data"),
    pytest.param(_edit_array("frame", 2, "text"), WireError, "raw bytes", id="data_not_bytes"),
    pytest.param(_values("vector", np.float32, np.nan), SpecError, "non-finite", id="nan_vector"),
    pytest.param(_values("action", np.float32, 1.5), SpecError, "above maximum", id="action_range"),
    pytest.param(_values("reward", np.float32, np.inf), SpecError, "non-finite", id="inf_reward"),
    pytest.param(_values("first", np.uint8, 2), WireError, "0 or 1", id="bool_byte"),
    pytest.param(_values("policy_version", np.int64, -2), WireError, "policy_version", id="version_lt_-1"),
    pytest.param(lambda m: _values("truncated", np.uint8, 1)(_values("terminated", np.uint8, 1)(m)),
                 WireError, "both set", id="both_terminal"),
    pytest.param(_values("first", np.uint8, 1), WireError, "first record carries", id="first_with_action"),
])
def test_malformed_chunk_is_rejected_by_name(mutate, error, match):
    with pytest.raises(error, match=match):
        decode_chunk(_pack(mutate(_msg())), SPEC)


@pytest.mark.parametrize("data,match", [
    pytest.param(b"", "malformed", id="empty"),
    pytest.param(b"\xc1", "malformed", id="reserved_byte"),
    pytest.param(msgpack.packb([1, 2, 3]), "must be a map", id="not_a_map"),
    pytest.param(msgpack.packb({1: 2}), "malformed", id="int_map_key"),
    pytest.param(msgpack.packb({"v": msgpack.ExtType(3, b"abcd")}), "malformed", id="ext_type"),
    pytest.param(msgpack.packb({"v": "x" * 1000}), "malformed", id="long_string"),
    pytest.param(msgpack.packb({"v": list(range(100))}), "malformed", id="long_array"),
    pytest.param(msgpack.packb({str(i): i for i in range(100)}), "malformed", id="big_map"),
    pytest.param("not bytes", "must be bytes", id="not_bytes"),
])
def test_malformed_msgpack_is_rejected(data, match):
    with pytest.raises(WireError, match=match):
        decode_chunk(data, SPEC)


def test_size_limits_apply_before_decoding():
    data = encode_chunk(_chunk(n=6), SPEC)
    with pytest.raises(WireError, match="exceeds max_bytes"):
        decode_chunk(data, SPEC, WireLimits(max_bytes=len(data) - 1))
    with pytest.raises(WireError, match=r"record count \(6\)"):
        decode_chunk(data, SPEC, WireLimits(max_records=5))
    with pytest.raises(WireError, match="malformed"):
        decode_chunk(data, SPEC, WireLimits(max_bin_len=100))


def test_truncated_messages_are_rejected():
    data = encode_chunk(_chunk(), SPEC)
    for cut in range(0, len(data), max(1, len(data) // 97)):
        with pytest.raises((WireError, SpecError)):
            decode_chunk(data[:cut], SPEC)


def test_episode_cannot_continue_after_terminal_inside_a_chunk():
    chunk = _chunk()
    first = chunk.first.copy()
    terminal = np.zeros_like(first)
    i = int(np.flatnonzero(~first)[0])
    terminal[i] = True
    first[i + 1:] = False
    bad = chunk._replace(first=first, terminated=terminal, truncated=np.zeros_like(first))
    with pytest.raises(WireError, match="continues an episode that ended"):
        validate_chunk(bad._replace(action=np.where(first[:, None], 0, bad.action).astype(np.float32),
                                    reward=np.where(first, 0, bad.reward).astype(np.float32)), SPEC)


JUNK = [None, -1, "x", 1.5, [], {}, b"zz", True, ["float64", [1], b"\x00" * 8],
        ["uint8", [-1], b""], ["uint8", [2**40, 36, 36], b""], [1, 2, 3, 4]]


def test_fuzz_random_and_mutated_messages_leave_shard_unchanged():
    rng = np.random.default_rng(1234)
    shard = small_shard(capacity=120)
    src = make_streams(SPEC, 1, chunk_length=6, max_episode=5)[0]
    good = [encode_chunk(src.next_chunk(), SPEC) for _ in range(40)]
    for data in good[:10]:
        shard.insert(data)
    before = fingerprint(shard)
    rejected = [0, 0, 0, 0]
    for trial in range(600):
        base = bytearray(good[10 + trial % 30])
        kind = trial % 4
        if kind == 0:
            data = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        elif kind == 1:
            data = bytes(base[: int(rng.integers(0, len(base)))])
        elif kind == 2:  # replace one field of the decoded message with junk
            msg = msgpack.unpackb(bytes(base), raw=False)
            key = sorted(msg)[int(rng.integers(len(msg)))]
            msg[key] = JUNK[int(rng.integers(len(JUNK)))]
            data = _pack(msg)
        else:  # flip bytes anywhere
            for pos in rng.integers(0, len(base), int(rng.integers(1, 4))):
                base[pos] = int(rng.integers(0, 256))
            data = bytes(base)
        snapshot = fingerprint(shard)
        try:
            shard.insert(data)
        except (WireError, SpecError):
            rejected[kind] += 1
            assert fingerprint(shard) == snapshot, f"trial {trial} changed the shard"
        else:  # a mutation that kept a valid message is stored as one; restore the baseline
            shard = small_shard(capacity=120)
            for data in good[:10]:
                shard.insert(data)
            assert fingerprint(shard) == before
    assert rejected[0] == 150 and rejected[1] == 150  # random bytes, truncations
    assert rejected[2] == 150  # every junk field is caught
