"""The shared-memory weight file: round trip, bad files, torn writes, concurrent readers."""
import fcntl
import multiprocessing
import os
import struct

import numpy as np
import pytest

from common.errors import CheckpointError
from common.weights import PolicySnapshot
from deploy.weights_shm import WRITING, ShmChannel, ShmWeightWriter, channel_dir
from deploy.weights_shm_reader import ShmWeightReader


def _state(value: float = 0.0) -> dict[str, np.ndarray]:
    return {"encoder.cnn.0.weight": np.full((32, 4, 8, 8), value, np.float32),
            "encoder.cnn.0.bias": np.full(32, value, np.float32),
            "head.0.weight": np.full((7, 3), value, np.float32)}


def _read(reader: ShmWeightReader, newer_than: int) -> tuple[PolicySnapshot, float] | None:
    """A copy of the newest slot's snapshot if newer than ``newer_than``, taken while
    ``newest`` holds it, as a rollout worker's inference runs on it."""
    with reader.newest() as held:
        if held is None or held.snapshot.version <= newer_than:
            return None
        state = held.snapshot.state
        assert not any(a.flags.writeable for a in state.values())  # views of the file
        return (PolicySnapshot(held.snapshot.version, {k: a.copy() for k, a in state.items()}),
                held.published_at)


def test_round_trip_copies_every_array_and_the_version(tmp_path):
    rng = np.random.default_rng(0)
    state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in _state().items()}
    writer = ShmWeightWriter(tmp_path, state, "node-a")
    reader = ShmWeightReader(writer.channel)
    assert reader.lock_newest() == (-1, WRITING) and _read(reader, -1) is None  # none yet
    published_at = writer.publish(PolicySnapshot(7, state))
    slot, version = reader.lock_newest()
    assert version == 7
    reader.unlock(slot)
    snapshot, at = _read(reader, -1)
    assert snapshot.version == 7 and at == published_at
    assert list(snapshot.state) == list(state)
    for name, array in state.items():
        np.testing.assert_array_equal(snapshot.state[name], array)
    assert _read(reader, 7) is None  # not newer than what the caller has
    writer.publish(PolicySnapshot(8, state), published_at=123.5)  # the learner's own stamp
    assert _read(reader, 7)[1] == 123.5
    state["head.0.weight"][:] = 5.0  # the file does not alias the source
    writer.publish(PolicySnapshot(9, _state(1.0)))
    assert _read(reader, 8)[0].state["head.0.weight"].max() == 1.0
    reader.close()
    writer.close()
    assert not list(tmp_path.glob("weights-*"))


def test_conv_weights_are_stored_channels_last(tmp_path):
    # What lets a policy run on the file's arrays in place (CpuPolicy.view).
    state = _state()
    state["encoder.cnn.0.weight"] = np.arange(32 * 4 * 8 * 8, dtype=np.float32).reshape(32, 4, 8, 8)
    writer = ShmWeightWriter(tmp_path, state, "node-a")
    writer.publish(PolicySnapshot(1, state))
    reader = ShmWeightReader(writer.channel)
    with reader.newest() as held:
        conv = held.snapshot.state["encoder.cnn.0.weight"]
        np.testing.assert_array_equal(conv, state["encoder.cnn.0.weight"])
        assert conv.strides == (4 * 8 * 8 * 4, 4, 8 * 4 * 4, 4 * 4)  # [out, h, w, in] in memory
    reader.close()
    writer.close()


def test_the_writer_leaves_held_slots_alone_and_never_waits(tmp_path):
    writer = ShmWeightWriter(tmp_path, _state(), "node-a")
    first, second = ShmWeightReader(writer.channel), ShmWeightReader(writer.channel)
    writer.publish(PolicySnapshot(1, _state(1.0)))
    with first.newest() as one:  # an actor in the middle of an inference on version 1
        writer.publish(PolicySnapshot(2, _state(2.0)))
        with second.newest() as two:  # another on version 2
            assert (one.snapshot.version, two.snapshot.version) == (1, 2)
            writer.publish(PolicySnapshot(3, _state(3.0)))  # the one free slot
            # Both older slots held and the newest never rewritten: skipped, not waited for.
            assert writer.publish(PolicySnapshot(4, _state(4.0))) is None
            assert np.all(one.snapshot.state["head.0.weight"] == 1.0)
            assert np.all(two.snapshot.state["head.0.weight"] == 2.0)
        # The second inference is over: its slot is free again.
        assert writer.publish(PolicySnapshot(4, _state(4.0))) is not None
        assert np.all(one.snapshot.state["head.0.weight"] == 1.0)  # still held, intact
    with first.newest() as held:
        assert held.snapshot.version == 4 and np.all(held.snapshot.state["head.0.weight"] == 4.0)
    second.close()
    first.close()
    writer.close()


def test_fewer_than_two_slots_are_refused(tmp_path):
    with pytest.raises(ValueError, match="slots=1"):
        ShmWeightWriter(tmp_path, _state(), "node-a", slots=1)


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
    with pytest.raises(CheckpointError, match=writer.channel.slot_path(0)):
        ShmWeightReader(writer.channel)
    for k in range(3):
        (tmp_path / f"weights-short.{k}").write_bytes(b"CTD3")
    with pytest.raises(CheckpointError, match="shorter than its header"):
        ShmWeightReader(ShmChannel(str(tmp_path / "weights-short"), "00" * 16, "node-a"))


@pytest.mark.parametrize("keep", [200, -4])
def test_a_truncated_file_is_a_clear_error(tmp_path, keep):
    writer = ShmWeightWriter(tmp_path, _state(), "node-a")
    path = writer.channel.slot_path(2)
    # 200: the header and layout stay, the arrays go; -4: only the last array is cut short
    os.truncate(path, keep if keep > 0 else os.path.getsize(path) + keep)
    with pytest.raises(CheckpointError, match="malformed"):
        ShmWeightReader(writer.channel)
    writer.close()


def test_a_write_cut_off_by_a_crash_is_never_read(tmp_path):
    writer = ShmWeightWriter(tmp_path, _state(), "node-a")
    writer.publish(PolicySnapshot(3, _state(3.0)))  # into slot 0, the first of three empty ones
    # What a learner killed in the middle of publish leaves: the version marked WRITING.
    with open(writer.channel.slot_path(0), "r+b") as f:
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


def test_a_reader_killed_while_holding_a_slot_frees_it(tmp_path):
    writer = ShmWeightWriter(tmp_path, _state(), "node-a", slots=2)
    writer.publish(PolicySnapshot(1, _state(1.0)))  # slot 0; slot 1 is the only one to write
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    reader = ctx.Process(target=_hold_shared_lock, args=(writer.channel.slot_path(1), ready))
    reader.start()
    assert ready.wait(30)
    assert writer.publish(PolicySnapshot(2, _state(2.0))) is None  # held: skipped at once
    reader.kill()  # SIGKILL: the kernel drops its lock
    reader.join(10)
    assert writer.publish(PolicySnapshot(2, _state(2.0))) is not None
    assert _read(ShmWeightReader(writer.channel), -1)[0].version == 2
    writer.close()


def test_a_new_writer_removes_a_dead_learners_file_and_old_readers_keep_their_copy(tmp_path):
    old = ShmWeightWriter(tmp_path, _state(), "node-a")
    old.publish(PolicySnapshot(5, _state(5.0)))
    reader = ShmWeightReader(old.channel)
    new = ShmWeightWriter(tmp_path, _state(), "node-a")  # the restarted learner
    assert sorted(str(p) for p in tmp_path.glob("weights-*")) == [
        new.channel.slot_path(k) for k in range(3)]
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
    root = tmp_path / f"carla-td3-{os.geteuid()}"  # this user's root, as channel_dir makes it
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    dead = ctx.Process(target=_write_and_wait, args=(str(root / "dead"), ready))
    dead.start()
    assert ready.wait(60)
    dead.kill()  # SIGKILL: its driver never cleans up
    dead.join(10)
    live = ShmWeightWriter(root / "live", _state(), "node-a")
    unrelated = root / "nomarker"
    unrelated.mkdir()
    new = ShmWeightWriter(root / "new", _state(), "node-a")
    assert sorted(p.name for p in root.iterdir()) == ["live", "new", "nomarker"]
    assert ShmWeightReader(live.channel).lock_newest() == (-1, WRITING)  # the live one is intact
    live.close()
    new.close()


def test_channel_dir_is_per_run_and_stable(tmp_path):
    assert channel_dir(tmp_path / "a") == channel_dir(tmp_path / "a")
    assert channel_dir(tmp_path / "a") != channel_dir(tmp_path / "b")
    # Per user: /dev/shm/carla-td3-<uid>/<hash of the run path>
    assert channel_dir(tmp_path / "a").parent.name == f"carla-td3-{os.geteuid()}"


def _read_many(channel: ShmChannel, reads: int, queue) -> None:
    import time

    reader = ShmWeightReader(channel)
    torn, seen, known = 0, set(), -1
    while len(seen) < reads:
        with reader.newest() as held:
            if held is None or held.snapshot.version <= known:
                continue
            known = held.snapshot.version
            seen.add(known)
            time.sleep(0.002)  # the writer publishes on meanwhile; the held slot must stay intact
            torn += sum(int(np.any(a != float(known))) for a in held.snapshot.state.values())
    queue.put((torn, len(seen)))


def test_readers_in_other_processes_never_see_half_a_snapshot(tmp_path):
    # Each reader checks a snapshot while holding its slot, as a policy runs on it.
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
