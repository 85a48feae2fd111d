"""Shard checkpoints: exact restore, atomic writes, clear errors on corruption.

Every damage here must raise CheckpointError (nothing else) and leave the shard as it was.
"""
import copy
import hashlib
import io
import json
import os
import random

import numpy as np
import pytest

from common.config import SamplerKind
from common.errors import CheckpointError
from replay.checkpoint import MANIFEST, shard_path
from tests.unit.replay_support import SMALL_SPEC, fingerprint, make_streams, small_shard

_TRAILER = b"\nsha256:"


def _filled(sampler=SamplerKind.UNIFORM):
    shard = small_shard(capacity=90, sampler=sampler)
    streams = make_streams(SMALL_SPEC, 2, chunk_length=7, max_episode=9)
    for _ in range(20):
        for s in streams:
            shard.insert_chunk(s.next_chunk())
    shard.sample(16)
    return shard, streams


@pytest.mark.parametrize("sampler", [SamplerKind.UNIFORM, SamplerKind.PRIORITIZED])
def test_restore_is_exact_and_continues_the_same(sampler, tmp_path):
    shard, streams = _filled(sampler)
    path = shard.save(tmp_path)
    assert path == str(shard_path(tmp_path, 0))
    clone = small_shard(capacity=90, sampler=sampler)
    clone.restore(tmp_path)
    assert fingerprint(clone) == fingerprint(shard)
    chunk = streams[0].next_chunk()
    assert shard.insert_chunk(chunk) == clone.insert_chunk(chunk)  # stream state restored
    a, b = shard.sample(32), clone.sample(32)  # rng restored
    for name in a._fields:
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name


def test_save_replaces_atomically_and_leaves_no_temporaries(tmp_path):
    shard, streams = _filled()
    shard.save(tmp_path)
    shard.insert_chunk(streams[1].next_chunk())
    shard.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["replay_shard_0"]
    clone = small_shard(capacity=90)
    clone.restore(tmp_path)
    assert fingerprint(clone) == fingerprint(shard)


def _truncate(path):
    target = path / "ring.frame.npy"
    target.write_bytes(target.read_bytes()[:-100])


def _flip(path):
    target = path / "ring.stack.npy"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF
    target.write_bytes(bytes(data))


def _bad_manifest(path):
    (path / MANIFEST).write_text("{not json")


def _drop_file(path):
    (path / "stream.slots.npy").unlink()


def _read_body(path):
    data = (path / MANIFEST).read_bytes()
    return json.loads(data[:data.rindex(_TRAILER)] if _TRAILER in data else data)


def _write_body(path, body):
    """Rewrites the manifest as the code under test writes it: sealed (JSON + a SHA-256
    trailer of those bytes) when it was sealed, else bare JSON, so each damage reaches the
    manifest's parser."""
    was_sealed = _TRAILER in (path / MANIFEST).read_bytes()
    data = json.dumps(body).encode()
    if was_sealed:
        data += _TRAILER + hashlib.sha256(data).hexdigest().encode() + b"\n"
    (path / MANIFEST).write_bytes(data)


def _other_capacity(path):
    manifest = _read_body(path)
    manifest["capacity"] = 91
    _write_body(path, manifest)


@pytest.mark.parametrize("damage,match", [
    pytest.param(_truncate, "truncated", id="truncated_array"),
    pytest.param(_flip, "checksum mismatch", id="flipped_byte"),
    pytest.param(_bad_manifest, "corrupt manifest", id="bad_manifest"),
    pytest.param(_drop_file, "unreadable", id="missing_array"),
    pytest.param(_other_capacity, r"capacity \(91\)", id="other_capacity"),
])
def test_damaged_checkpoint_raises_and_changes_nothing(damage, match, tmp_path):
    shard, _ = _filled()
    damage(shard_path(tmp_path, 0) if shard.save(tmp_path) else None)
    _restore_refuses(tmp_path, match)


def test_missing_checkpoint_is_an_error_not_an_empty_buffer(tmp_path):
    shard = small_shard()
    with pytest.raises(CheckpointError, match="no replay checkpoint"):
        shard.restore(tmp_path)
    assert shard.size() == 0 and np.all(shard.ring.stamp == -1)


def _restore_refuses(tmp_path, match=None):
    """A filled shard that is not the checkpoint's raises CheckpointError and stays as it was."""
    target, _ = _filled()
    target.insert_chunk(make_streams(SMALL_SPEC, 1, chunk_length=7, seed=9)[0].next_chunk())
    before = fingerprint(target)
    with pytest.raises(CheckpointError, match=match):
        target.restore(tmp_path)
    assert fingerprint(target) == before


def test_a_flipped_bit_anywhere_in_a_shard_checkpoint_is_refused(tmp_path):
    shard, _ = _filled()
    path = shard_path(tmp_path, 0) if shard.save(tmp_path) else None
    files = sorted(p for p in path.iterdir())
    sizes = [p.stat().st_size for p in files]
    rng = random.Random(0)
    for _ in range(200):
        i = rng.choices(range(len(files)), weights=sizes)[0]  # each byte equally likely
        original = files[i].read_bytes()
        damaged = bytearray(original)
        pos, bit = rng.randrange(len(damaged)), rng.randrange(8)
        damaged[pos] ^= 1 << bit
        files[i].write_bytes(bytes(damaged))
        try:
            _restore_refuses(tmp_path)
        except BaseException as exc:
            raise AssertionError(f"bit {bit} of byte {pos} of {files[i].name}") from exc
        finally:
            files[i].write_bytes(original)


def _entry(body, name="ring.stamp"):
    files = body["files"]
    return files.get(f"{name}.npy", files.get(name))  # this format's key, or format 1's


def _set(key, value):
    def damage(body):
        body[key] = value
        return body
    return damage


def _set_in(key, inner, value):
    def damage(body):
        body[key][inner] = value
        return body
    return damage


def _entry_set(field, value):
    def damage(body):
        _entry(body)[field] = value
        return body
    return damage


def _drop(key):
    def damage(body):
        del body[key]
        return body
    return damage


def _shift(key, by):
    def damage(body):
        body[key] += by
        return body
    return damage


_MANIFEST_DAMAGE = {
    "not_an_object": lambda b: [b],
    "a_string": lambda b: "manifest",
    "counter_missing": _drop("counter"),
    "counter_negative": _set("counter", -1),
    "counter_a_string": _set("counter", "280"),
    "counter_a_float": _set("counter", 280.0),
    "counter_none": _set("counter", None),
    "counter_one_more": _shift("counter", 1),
    "counter_one_less": _shift("counter", -1),
    "counter_huge": _set("counter", 10 ** 30),
    "num_valid_one_more": _shift("num_valid", 1),
    "num_valid_a_string": _set("num_valid", "x"),
    "limiter_none": _set("limiter", None),
    "limiter_a_list": _set("limiter", [1, 2]),
    "limiter_missing_samples": lambda b: {**b, "limiter": {"inserts": 1}},
    "limiter_negative": _set_in("limiter", "samples", -3),
    "limiter_inserts_past_counter": _set_in("limiter", "inserts", 10 ** 9),
    "counts_none": _set("counts", None),
    "counts_a_list": _set("counts", []),
    "counts_unknown_key": _set_in("counts", "no_such_count", 1),
    "counts_negative": _set_in("counts", "inserts", -5),
    "counts_a_string": _set_in("counts", "duplicates", "many"),
    "counts_a_dict": _set_in("counts", "samples", {"a": 1}),
    "rng_none": _set("rng", None),
    "rng_empty": _set("rng", {}),
    "rng_other_generator": _set("rng", {"bit_generator": "MT19937", "state": {"key": [1], "pos": 0}}),
    "rng_state_a_string": _set_in("rng", "state", "x"),
    "rng_state_huge": _set_in("rng", "state", {"state": -1, "inc": 10 ** 60}),
    "files_none": _set("files", None),
    "files_a_list": _set("files", ["ring.stamp.npy"]),
    "files_empty": _set("files", {}),
    "file_entry_none": lambda b: {**b, "files": {**b["files"], next(iter(b["files"])): None}},
    "file_entry_a_list": lambda b: {**b, "files": {**b["files"], next(iter(b["files"])): [1, 2]}},
    "file_size_a_string": _entry_set("size", "12"),
    "file_size_negative": _entry_set("size", -1),
    "file_size_missing": lambda b: (_entry(b).pop("size"), b)[1],
    "file_dtype_other": _entry_set("dtype", "<i4"),
    "file_shape_a_string": _entry_set("shape", "90"),
    "file_shape_other": _entry_set("shape", [91]),
    "file_checksum_short": _entry_set("sha256", "abc"),
    "file_checksum_none": _entry_set("sha256", None),
    "file_outside_the_directory": lambda b: {**b, "files": {**b["files"], "../../etc/passwd": _entry(b)}},
    "file_extra": lambda b: {**b, "files": {**b["files"], "extra.npy": _entry(b)}},
    "file_absent": lambda b: {**b, "files": {k: v for k, v in b["files"].items()
                                             if not k.startswith("ring.valid")}},
    "format_other": _set("format", 99),
    "frames_none": _set("frames", None),
    "sampler_other": _set("sampler", "prioritized"),
}


@pytest.mark.parametrize("damage", list(_MANIFEST_DAMAGE.values()), ids=list(_MANIFEST_DAMAGE))
def test_a_garbage_manifest_raises_only_checkpoint_error(damage, tmp_path):
    shard, _ = _filled()
    path = shard_path(tmp_path, 0) if shard.save(tmp_path) else None
    _write_body(path, damage(copy.deepcopy(_read_body(path))))
    _restore_refuses(tmp_path)


@pytest.mark.parametrize("raw", [b"", b"\xff\xfe\x00", b"{}", b"[]", b"null", b"{\"files\": {}}\nsha256:00\n",
                                 b"{\"a\": 1}\nsha256:" + b"0" * 64 + b"\n"],
                         ids=["empty", "binary", "empty_object", "list", "null", "short_checksum",
                              "wrong_checksum"])
def test_raw_manifest_garbage_raises_only_checkpoint_error(raw, tmp_path):
    shard, _ = _filled()
    path = shard_path(tmp_path, 0) if shard.save(tmp_path) else None
    (path / MANIFEST).write_bytes(raw)
    _restore_refuses(tmp_path)


def _npy(arr, **kw):
    f = io.BytesIO()
    np.save(f, arr, **kw)
    return f.getvalue()


def _replace_array(path, name, data):
    """Writes ``data`` as array file ``name`` and makes the manifest vouch for it."""
    body = _read_body(path)
    (path / f"{name}.npy").write_bytes(data)
    _entry(body, name).update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    _write_body(path, body)


def _stamps(shift):
    def damage(path):
        stamp = np.load(path / "ring.stamp.npy")
        stamp[stamp >= 0] += shift
        _replace_array(path, "ring.stamp", _npy(stamp))
    return damage


def _valid_unwritten(path):
    valid = np.load(path / "ring.valid.npy")
    stamp = np.load(path / "ring.stamp.npy")
    valid[:] = True
    stamp[-1] = -1
    _replace_array(path, "ring.valid", _npy(valid))
    _replace_array(path, "ring.stamp", _npy(stamp))


def _array(name, arr_fn, **kw):
    return lambda path: _replace_array(path, name, _npy(arr_fn(np.load(path / f"{name}.npy")), **kw))


def _raw_stamps(data):
    return lambda path: _replace_array(path, "ring.stamp", data)


_STAMPS_NPY = _npy(np.zeros(90, np.int64))
_ARRAY_DAMAGE = {
    "npy_garbage": _raw_stamps(b"not an npy file at all"),
    "npy_bad_header": _raw_stamps(b"\x93NUMPY\x01\x00\x10\x00{'descr': <i8'\n"),
    "npy_header_tokens": _raw_stamps(b"\x93NUMPY\x01\x00\x20\x00{'descr': '<i8', 'sha" + b" " * 8 + b"\n"),
    "npy_version_9": _raw_stamps(b"\x93NUMPY\x09\x00" + _STAMPS_NPY[8:]),
    "npy_short_data": _raw_stamps(_STAMPS_NPY[:-8]),
    "object_array": _array("ring.stamp", lambda a: a.astype(object), allow_pickle=True),
    "fortran_order": _array("stream.slots", np.asfortranarray),
    "other_dtype": _array("ring.stamp", lambda a: a.astype(np.int32)),
    "other_shape": _array("ring.stamp", lambda a: a[:-1]),
    "stream_rows_disagree": _array("stream.last_seq", lambda a: a[:-1]),
    "stamps_shifted": _stamps(1),
    "stamps_from_the_future": _stamps(1000),
    "stamp_below_minus_one": _array("ring.stamp", lambda a: np.concatenate([[-7], a[1:]])),
    "valid_but_never_written": _valid_unwritten,
    "prev_outside_the_ring": _array("ring.prev", lambda a: a + 1000),
    "stack_outside_the_ring": _array("ring.stack", lambda a: a - 1000),
    "reward_nan": _array("ring.reward", lambda a: np.full_like(a, np.nan)),
    "stream_slot_outside_the_ring": _array("stream.slots", lambda a: a + 1000),
    "stream_stamp_from_the_future": _array("stream.stamps", lambda a: a + 10 ** 6),
    "stream_ids_repeat": _array("stream.stream_id", lambda a: np.zeros_like(a)),
}


@pytest.mark.parametrize("damage", list(_ARRAY_DAMAGE.values()), ids=list(_ARRAY_DAMAGE))
def test_arrays_that_disagree_with_the_manifest_or_each_other_are_refused(damage, tmp_path):
    shard, _ = _filled()
    path = shard_path(tmp_path, 0) if shard.save(tmp_path) else None
    damage(path)
    _restore_refuses(tmp_path)


def test_random_edits_of_a_resealed_manifest_raise_only_checkpoint_error(tmp_path):
    """Edits that keep the seal valid (as if the checksum were recomputed) reach the parser:
    each one restores or raises CheckpointError, and nothing else."""
    shard, _ = _filled()
    path = shard_path(tmp_path, 0) if shard.save(tmp_path) else None
    text = json.dumps(_read_body(path))
    rng = random.Random(1)
    alphabet = '0123456789-.eE,:{}[]"abcnlstru '
    for _ in range(300):
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        edited = "".join(chars)
        try:
            body = json.loads(edited)
        except json.JSONDecodeError:
            continue
        _write_body(path, body)
        target = small_shard(capacity=90)
        try:
            target.restore(tmp_path)
        except CheckpointError:
            pass
