"""Shard checkpoints: exact restore, atomic writes, clear errors on corruption."""
import json
import os

import numpy as np
import pytest

from common.config import SamplerKind
from common.errors import CheckpointError
from replay.checkpoint import MANIFEST, shard_path
from tests.unit.replay_support import SMALL_SPEC, fingerprint, make_streams, small_shard


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


def _other_capacity(path):
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["capacity"] = 91
    (path / MANIFEST).write_text(json.dumps(manifest))


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
    target, _ = _filled()
    target.insert_chunk(make_streams(SMALL_SPEC, 1, chunk_length=7, seed=9)[0].next_chunk())
    before = fingerprint(target)
    with pytest.raises(CheckpointError, match=match):
        target.restore(tmp_path)
    assert fingerprint(target) == before


def test_missing_checkpoint_is_an_error_not_an_empty_buffer(tmp_path):
    shard = small_shard()
    with pytest.raises(CheckpointError, match="no replay checkpoint"):
        shard.restore(tmp_path)
    assert shard.size() == 0 and np.all(shard.ring.stamp == -1)
