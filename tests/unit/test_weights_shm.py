"""The shared-memory weight file: round trip, bad files, torn writes, concurrent readers."""
import fcntl
import multiprocessing
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from common.errors import CheckpointError
from common.weights import PolicySnapshot
from deploy.weights_shm import (WRITING, ShmChannel, ShmWeightReader, ShmWeightWriter,
                                channel_dir)


def _state(value: float = 0.0) -> dict[str, np.ndarray]:
    return {"encoder.cnn.0.weight": np.full((32, 4, 8, 8), value, np.float32),
            "encoder.cnn.0.bias": np.full(32, value, np.float32),
            "head.0.weight": np.full((7, 3), value, np.float32)}


def _read(reader: ShmWeightReader, newer_than: int) -> tuple[PolicySnapshot, float] | None:
    """A copy of the file's snapshot, taken inside ``snapshot_view`` as a rollout actor's load
    does."""
    with reader.snapshot_view(newer_than) as got:
        if got is None:
            return None
        snapshot, at = got
        assert not any(a.flags.writeable for a in snapshot.state.values())  # views of the file
        return PolicySnapshot(snapshot.version, {k: a.copy() for k, a in snapshot.state.items()}), at


def test_round_trip_copies_every_array_and_the_version(tmp_path):
    rng = np.random.default_rng(0)
    state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in _state().items()}
    writer = ShmWeightWriter(tmp_path, state, "node-a")
    reader = ShmWeightReader(writer.channel)
    assert reader.version() == WRITING and _read(reader, -1) is None  # nothing published yet
    published_at = writer.publish(PolicySnapshot(7, state))
    assert reader.version() == 7
    snapshot, at = _read(reader, -1)
    assert snapshot.version == 7 and at == published_at
    assert list(snapshot.state) == list(state)
    for name, array in state.items():
        np.testing.assert_array_equal(snapshot.state[name], array)
    assert _read(reader, 7) is None  # not newer than what the caller has
    writer.publish(PolicySnapshot(8, state), published_at=123.5)  # the learner's own stamp
    assert _read(reader, 7)[1] == 123.5
    state["head.0.weight"][:] = 5.0  # the file does not alias the source
    assert _read(reader, -1)[0].state["head.0.weight"].max() < 5.0
    reader.close()
    writer.close()
    assert not Path(writer.channel.path).exists()


@pytest.mark.parametrize("bad", ["shape", "dtype", "missing"])
def test_a_mismatching_snapshot_is_refused_and_the_stored_one_kept(tmp_path, bad):
    writer = ShmWeightWriter(tmp_path, _state(), "node-a")
    writer.publish(PolicySnapshot(1, _state(1.0)))
    state = _state(2.0)
    if bad == "shape":
        state["head.0.weight"] = np.zeros((7, 4), np.float32)
    elif bad == "dtype":
        state["head.0.weight"] = state["head.0.weight"].astype(np.float64)
    else:
        del state["encoder.cnn.0.bias"]
    with pytest.raises(CheckpointError, match="head.0.weight|arrays"):
        writer.publish(PolicySnapshot(2, state))
    snapshot, _ = _read(ShmWeightReader(writer.channel), -1)
    assert snapshot.version == 1 and all(np.all(a == 1.0) for a in snapshot.state.values())
    writer.close()


def test_a_wrong_token_or_a_missing_file_is_a_clear_error(tmp_path):
    writer = ShmWeightWriter(tmp_path, _state(), "node-a")
    with pytest.raises(CheckpointError, match="token"):
        ShmWeightReader(writer.channel._replace(token="00" * 16))
    writer.close()
    with pytest.raises(CheckpointError, match=writer.channel.path):
        ShmWeightReader(writer.channel)
    short = tmp_path / "weights-short"
    short.write_bytes(b"CTD3")
    with pytest.raises(CheckpointError, match="shorter than its header"):
        ShmWeightReader(ShmChannel(str(short), "00" * 16, "node-a"))


def test_a_truncated_file_is_a_clear_error(tmp_path):
    writer = ShmWeightWriter(tmp_path, _state(), "node-a")
    os.truncate(writer.channel.path, 200)  # the header and layout stay, the arrays are gone
    with pytest.raises(CheckpointError, match="malformed"):
        ShmWeightReader(writer.channel)
    writer.close()


def test_a_write_cut_off_by_a_crash_is_never_read(tmp_path):
    writer = ShmWeightWriter(tmp_path, _state(), "node-a")
    writer.publish(PolicySnapshot(3, _state(3.0)))
    # What a learner killed in the middle of publish leaves: the version marked WRITING.
    with open(writer.channel.path, "r+b") as f:
        f.seek(24)
        f.write(struct.pack("<q", WRITING))
    reader = ShmWeightReader(writer.channel)
    assert _read(reader, -1) is None
    writer.publish(PolicySnapshot(4, _state(4.0)))
    assert _read(reader, -1)[0].version == 4
    writer.close()


def _hold_shared_lock(path: str, ready) -> None:
    import fcntl
    import os
    import time

    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    ready.set()
    time.sleep(60)


def test_a_reader_killed_while_holding_the_lock_does_not_block_the_writer(tmp_path):
    import threading

    writer = ShmWeightWriter(tmp_path, _state(), "node-a")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    reader = ctx.Process(target=_hold_shared_lock, args=(writer.channel.path, ready))
    reader.start()
    assert ready.wait(30)
    published = threading.Event()
    blocked = threading.Thread(target=lambda: (writer.publish(PolicySnapshot(1, _state(1.0))),
                                               published.set()), daemon=True)
    blocked.start()
    assert not published.wait(0.5)  # the live reader's shared lock holds the writer
    reader.kill()  # SIGKILL: the kernel drops its lock
    reader.join(10)
    assert published.wait(10)
    assert _read(ShmWeightReader(writer.channel), -1)[0].version == 1
    writer.close()


def test_a_new_writer_removes_a_dead_learners_file_and_old_readers_keep_their_copy(tmp_path):
    old = ShmWeightWriter(tmp_path, _state(), "node-a")
    old.publish(PolicySnapshot(5, _state(5.0)))
    reader = ShmWeightReader(old.channel)
    new = ShmWeightWriter(tmp_path, _state(), "node-a")  # the restarted learner
    assert sorted(p.name for p in tmp_path.glob("weights-*")) == [Path(new.channel.path).name]
    assert new.channel.token != old.channel.token
    assert _read(reader, -1)[0].version == 5  # the unlinked file stays mapped
    new.close()


def test_a_full_memory_filesystem_fails_at_creation_and_leaves_no_file(tmp_path, monkeypatch):
    import errno
    import os

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(OSError, match="No space"):  # the learner falls back to the store
        ShmWeightWriter(tmp_path, _state(), "node-a")
    assert [p.name for p in tmp_path.iterdir()] == ["alive"]
    fcntl.flock(os.open(tmp_path / "alive", os.O_RDONLY), fcntl.LOCK_EX | fcntl.LOCK_NB)  # freed


def _write_and_wait(directory: str, ready) -> None:
    import time

    ShmWeightWriter(directory, _state(), "node-a")
    ready.set()
    time.sleep(60)


def test_a_starting_learner_removes_the_files_of_runs_whose_learner_died(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    dead = ctx.Process(target=_write_and_wait, args=(str(tmp_path / "carla-td3-dead"), ready))
    dead.start()
    assert ready.wait(60)
    dead.kill()  # SIGKILL: its driver never cleans up
    dead.join(10)
    live = ShmWeightWriter(tmp_path / "carla-td3-live", _state(), "node-a")
    unrelated = tmp_path / "carla-td3-nomarker"
    unrelated.mkdir()
    new = ShmWeightWriter(tmp_path / "carla-td3-new", _state(), "node-a")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "carla-td3-live", "carla-td3-new", "carla-td3-nomarker"]
    assert ShmWeightReader(live.channel).version() == WRITING  # the live one is untouched
    live.close()
    new.close()


def test_channel_dir_is_per_run_and_stable(tmp_path):
    assert channel_dir(tmp_path / "a") == channel_dir(tmp_path / "a")
    assert channel_dir(tmp_path / "a") != channel_dir(tmp_path / "b")


def _read_many(channel: ShmChannel, reads: int, queue) -> None:
    reader = ShmWeightReader(channel)
    torn, seen, known = 0, set(), -1
    while len(seen) < reads:
        got = _read(reader, known)
        if got is None:
            continue
        snapshot, _ = got
        known = snapshot.version
        seen.add(known)
        torn += sum(int(np.any(a != float(known))) for a in snapshot.state.values())
    queue.put((torn, len(seen)))


def test_readers_in_other_processes_never_see_half_a_snapshot(tmp_path):
    big = {"a": np.zeros(2_000_000, np.float32), "b": np.zeros((64, 64), np.float32)}
    writer = ShmWeightWriter(tmp_path, big, "node-a")
    writer.publish(PolicySnapshot(0, {k: np.full_like(v, 0.0) for k, v in big.items()}))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    readers = [ctx.Process(target=_read_many, args=(writer.channel, 10, queue)) for _ in range(2)]
    for p in readers:
        p.start()
    version = 0
    while any(p.is_alive() for p in readers) and version < 100_000:
        version += 1
        writer.publish(PolicySnapshot(version, {k: np.full_like(v, float(version))
                                                for k, v in big.items()}))
    results = [queue.get(timeout=60) for _ in readers]
    for p in readers:
        p.join(timeout=30)
    writer.close()
    assert all(seen == 10 for _, seen in results)
    assert [torn for torn, _ in results] == [0, 0]
