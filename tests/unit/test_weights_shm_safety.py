"""The shared-memory weight files against a hostile neighbour and damaged files (issue 30,
finding 2): a directory that is not private is refused, files are opened without following links
or blocking on a FIFO, absurd versions are ignored, and a truncated or damaged slot is refused
(the rollout side then uses the object store) instead of killing the reader or feeding it."""
import multiprocessing
import os
import re
import stat
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from common.errors import CheckpointError
from common.weights import PolicySnapshot
from deploy.weights_shm import HEADER_BYTES, MAX_VERSION, WRITING, ShmWeightWriter, channel_dir
from deploy.weights_shm_reader import ShmWeightReader

UID = os.geteuid()
OTHER_UID = 65534  # nobody
as_root = pytest.mark.skipif(UID != 0, reason="making another user's directory needs root")


def _state(value: float = 0.0) -> dict[str, np.ndarray]:
    return {"encoder.cnn.0.weight": np.full((32, 4, 8, 8), value, np.float32),
            "head.0.weight": np.full((7, 3), value, np.float32)}


def _version(reader: ShmWeightReader) -> int | None:
    """The newest version a reader takes (None before the first publish), as an actor does."""
    with reader.newest() as held:
        return None if held is None else held.snapshot.version


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


def _finishes(call, fifo: Path, timeout_s: float = 10.0):
    """(whether ``call`` returned within the timeout, what it returned or raised). A call
    blocked opening ``fifo`` is then released by opening the FIFO's other end."""
    outcome = []

    def run():
        try:
            outcome.append(call())
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer: the blocked open returns
        thread.join(10)
        os.close(fd)
        return False, None
    return True, outcome[0]


# Directories


def _world_writable_run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    os.chmod(run, 0o777)  # what another user who made it first would leave
    return run


def _group_readable_run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    os.chmod(run, 0o750)
    return run


def _world_writable_user_root(tmp_path: Path) -> Path:
    root = tmp_path / f"carla-td3-{UID}"
    root.mkdir()
    os.chmod(root, 0o777)
    return channel_dir(tmp_path / "runs" / "x", base=tmp_path)


def _symlinked_run_dir(tmp_path: Path) -> Path:
    elsewhere = _private_dir(tmp_path / "elsewhere")  # private and ours, but reached by a link
    (tmp_path / "run").symlink_to(elsewhere)
    return tmp_path / "run"


def _symlinked_user_root(tmp_path: Path) -> Path:
    elsewhere = _private_dir(tmp_path / "elsewhere")
    (tmp_path / f"carla-td3-{UID}").symlink_to(elsewhere)
    return channel_dir(tmp_path / "runs" / "x", base=tmp_path)


def _a_file(tmp_path: Path) -> Path:
    (tmp_path / "run").write_bytes(b"")
    return tmp_path / "run"


UNSAFE_DIRS = {
    "world_writable_run_dir": (_world_writable_run_dir, "mode 0777"),
    "group_readable_run_dir": (_group_readable_run_dir, "mode 0750"),
    "world_writable_user_root": (_world_writable_user_root, "mode 0777"),
    "symlinked_run_dir": (_symlinked_run_dir, "symlink"),
    "symlinked_user_root": (_symlinked_user_root, "symlink"),
    "a_file": (_a_file, "not a directory"),
}


@pytest.mark.parametrize("case", list(UNSAFE_DIRS))
def test_a_directory_that_is_not_private_is_refused_and_left_as_it_was(tmp_path, case):
    make, problem = UNSAFE_DIRS[case]
    directory = make(tmp_path)
    refused = directory if case.endswith("run_dir") or case == "a_file" else directory.parent
    mode = _mode(refused)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(refused))}.*{problem}"):
        ShmWeightWriter(directory, _state(), "node-a")
    assert _mode(refused) == mode  # not repaired: someone else's to undo
    assert not list(tmp_path.rglob("weights-*")) and not list(tmp_path.rglob("alive"))


@as_root
@pytest.mark.parametrize("whose", ["run_dir", "user_root"])
def test_another_users_directory_is_refused(tmp_path, whose):
    directory = channel_dir(tmp_path / "runs" / "x", base=tmp_path)
    _private_dir(directory.parent)
    _private_dir(directory)
    os.chown(directory if whose == "run_dir" else directory.parent, OTHER_UID, OTHER_UID)
    with pytest.raises(CheckpointError, match=f"owned by uid {OTHER_UID}"):
        ShmWeightWriter(directory, _state(), "node-a")
    assert not list(directory.iterdir())


def test_the_writer_makes_its_directories_private(tmp_path):
    old = os.umask(0)  # even with no umask, nothing is made open to others
    try:
        directory = channel_dir(tmp_path / "runs" / "x", base=tmp_path)
        writer = ShmWeightWriter(directory, _state(), "node-a")
    finally:
        os.umask(old)
    assert _mode(directory) == 0o700 and _mode(directory.parent) == 0o700
    for k in range(3):
        assert _mode(Path(writer.channel.slot_path(k))) == 0o600
    writer.close()


@pytest.mark.parametrize("opened", ["run_dir", "user_root"])
def test_a_reader_refuses_a_directory_opened_up_after_the_writer_checked_it(tmp_path, opened):
    directory = channel_dir(tmp_path / "runs" / "x", base=tmp_path)
    writer = ShmWeightWriter(directory, _state(), "node-a")
    writer.publish(PolicySnapshot(1, _state(1.0)))
    os.chmod(directory if opened == "run_dir" else directory.parent, 0o777)
    with pytest.raises(CheckpointError, match="mode 0777"):
        ShmWeightReader(writer.channel)
    writer.close()


# Files


def test_a_fifo_among_the_runs_does_not_hang_the_learners_first_publish(tmp_path):
    # A FIFO where a dead run's marker would be: opening it to read blocked until a writer came.
    root = _private_dir(tmp_path / f"carla-td3-{UID}")
    planted = _private_dir(root / "carla-td3-evil")
    os.mkfifo(planted / "alive")

    def first_publish():
        writer = ShmWeightWriter(root / "run", _state(), "node-a")
        return writer, writer.publish(PolicySnapshot(0, _state(1.0)))

    finished, outcome = _finishes(first_publish, planted / "alive")
    assert finished, "the learner hung on a FIFO"
    writer, published_at = outcome
    assert published_at is not None
    assert (planted / "alive").exists()  # not a run of ours: left alone
    writer.close()


def _replace_slot(writer: ShmWeightWriter, k: int, how: str) -> Path:
    path = Path(writer.channel.slot_path(k))
    if how == "symlink":
        copy = path.with_name("copy")
        copy.write_bytes(path.read_bytes())
        path.unlink()
        path.symlink_to(copy)
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    else:  # another user's
        os.chown(path, OTHER_UID, OTHER_UID)
    return path


@pytest.mark.parametrize("how, problem", [
    ("symlink", "links"),  # ELOOP: "Too many levels of symbolic links"
    ("fifo", "not a regular file"),
    pytest.param("other_user", f"owned by uid {OTHER_UID}", marks=as_root),
])
def test_a_slot_that_is_not_our_regular_file_is_refused_at_once(tmp_path, how, problem):
    writer = ShmWeightWriter(tmp_path / "run", _state(), "node-a")
    writer.publish(PolicySnapshot(1, _state(1.0)))
    path = _replace_slot(writer, 1, how)
    finished, outcome = _finishes(lambda: ShmWeightReader(writer.channel), path)
    assert finished, "the reader hung opening a FIFO"
    assert isinstance(outcome, CheckpointError) and problem in str(outcome)
    assert str(path) in str(outcome)
    writer.close()


# Versions


def _pin(path: str, version: int) -> None:
    with open(path, "r+b") as f:
        f.seek(24)  # the version field
        f.write(struct.pack("<q", version))


@pytest.mark.parametrize("pinned", [2**63 - 1, MAX_VERSION + 1])
def test_a_version_pinned_far_ahead_does_not_hold_readers_on_its_slot(tmp_path, pinned):
    writer = ShmWeightWriter(tmp_path / "run", _state(), "node-a")
    writer.publish(PolicySnapshot(1, _state(1.0)))  # slot 0
    _pin(writer.channel.slot_path(1), pinned)
    reader = ShmWeightReader(writer.channel)
    assert _version(reader) == 1  # not the pinned slot
    for version in (2, 3, 4, 5):  # the writer rewrites the pinned slot in its turn
        assert writer.publish(PolicySnapshot(version, _state(float(version)))) is not None
        assert _version(reader) == version
    writer.close()


def test_a_caller_bounds_versions_by_what_it_knows(tmp_path):
    # The rollout side passes the board's version plus a lead (deploy/weights_source.py).
    writer = ShmWeightWriter(tmp_path / "run", _state(), "node-a")
    writer.publish(PolicySnapshot(10, _state(1.0)))
    writer.publish(PolicySnapshot(10**9, _state(2.0)))
    reader = ShmWeightReader(writer.channel)
    slot, version = reader.lock_newest(ceiling=1000)
    reader.unlock(slot)
    assert version == 10 and reader.lock_newest(ceiling=5) == (-1, WRITING)
    writer.close()


@pytest.mark.parametrize("version", [-1, 4, MAX_VERSION + 1])
def test_the_writer_refuses_a_version_below_its_newest_or_absurd(tmp_path, version):
    writer = ShmWeightWriter(tmp_path / "run", _state(), "node-a")
    writer.publish(PolicySnapshot(5, _state(5.0)))
    with pytest.raises(CheckpointError, match=f"version {version}"):
        writer.publish(PolicySnapshot(version, _state(1.0)))
    assert _version(ShmWeightReader(writer.channel)) == 5
    writer.close()


# Truncated and damaged slots


def _infer(reader: ShmWeightReader) -> int:
    """Reads every array of the newest slot, as an inference does; returns its version."""
    with reader.newest() as held:
        assert all(np.isfinite(a.sum()) for a in held.snapshot.state.values())
        return held.snapshot.version


def _read_around_truncation(channel, truncated, results) -> None:
    from common.errors import CheckpointError

    reader = ShmWeightReader(channel)
    results.put(_infer(reader))
    truncated.wait(30)
    try:
        results.put(f"read version {_infer(reader)}")
    except CheckpointError as exc:
        results.put(f"refused: {exc}")


@pytest.mark.parametrize("keep", [0, HEADER_BYTES + 100])
def test_a_slot_truncated_under_a_reader_is_refused_without_sigbus(tmp_path, keep):
    # The reader runs in its own process: a SIGBUS would kill it, not the test.
    writer = ShmWeightWriter(tmp_path / "run", _state(), "node-a")
    writer.publish(PolicySnapshot(1, _state(1.0)))  # slot 0
    ctx = multiprocessing.get_context("spawn")
    truncated, results = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_read_around_truncation,
                         args=(writer.channel, truncated, results))
    reader.start()
    assert results.get(timeout=60) == 1
    os.truncate(writer.channel.slot_path(0), keep)
    truncated.set()
    reader.join(60)
    assert reader.exitcode == 0, f"the reader died (exit code {reader.exitcode}; -7: SIGBUS)"
    outcome = results.get(timeout=5)
    assert outcome.startswith("refused") and "truncated" in outcome, outcome
    writer.close()


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize("where", ["array", "last_byte", "publish_time", "layout"])
def test_a_damaged_slot_fails_its_checksum(tmp_path, where):
    writer = ShmWeightWriter(tmp_path / "run", _state(), "node-a")
    writer.publish(PolicySnapshot(1, _state(1.0)))  # slot 0
    path = writer.channel.slot_path(0)
    offset = {"array": 4096, "last_byte": os.path.getsize(path) - 1, "publish_time": 32,
              "layout": HEADER_BYTES + 3}[where]
    _flip(path, offset)
    reader = ShmWeightReader(writer.channel)
    match = f"{re.escape(path)}.*version 1 does not match its checksum"
    with pytest.raises(CheckpointError, match=match):
        _version(reader)
    writer.publish(PolicySnapshot(2, _state(2.0)))  # an intact slot is read again
    assert _version(reader) == 2
    writer.close()


def test_the_checksum_is_checked_once_per_version(tmp_path, monkeypatch):
    import deploy.weights_shm_reader as shm  # the reader checks, through its own name

    writer = ShmWeightWriter(tmp_path / "run", _state(), "node-a")
    writer.publish(PolicySnapshot(1, _state(1.0)))
    reader = ShmWeightReader(writer.channel)
    calls = []
    checksum = shm._checksum
    monkeypatch.setattr(shm, "_checksum", lambda *a: calls.append(1) or checksum(*a))
    for _ in range(5):  # five inferences on one version
        assert _version(reader) == 1
    assert len(calls) == 1
    writer.close()


def test_a_policy_gives_up_a_slot_for_its_own_weights_without_reading_the_slot(tmp_path):
    # What the rollout side does when the file it is bound to proves truncated or damaged.
    from rollout.policy import CpuPolicy
    from rollout.weights import WeightOffer
    from tests.unit.learner_fixtures import SMALL_SPEC, random_batch, small_config

    def own_state(seed: int) -> dict[str, np.ndarray]:
        return {k: v.numpy().copy() for k, v in
                CpuPolicy(SMALL_SPEC, small_config().network).net.state_dict().items()}

    batch = random_batch(SMALL_SPEC, 1, seed=0)
    obs = {"image": batch.obs_image[0], "vector": batch.obs_vector[0]}
    policy = CpuPolicy(SMALL_SPEC, small_config().network)
    fresh = policy.act(obs)
    writer = ShmWeightWriter(tmp_path / "run", own_state(1), "node-a")
    writer.publish(PolicySnapshot(4, own_state(1)))
    reader = ShmWeightReader(writer.channel)
    with reader.newest() as held:
        policy.apply(WeightOffer.shared(held.snapshot, held.slot, held.published_at))
        assert policy.bound and policy.version == 4
    os.truncate(writer.channel.slot_path(0), 0)  # its arrays cannot be read any more
    policy.apply(WeightOffer.withdraw())
    assert not policy.bound and policy.version == -1 and not policy.ready  # acts at random
    np.testing.assert_array_equal(policy.act(obs), fresh)  # on its own weights
    policy.apply(WeightOffer.copy(PolicySnapshot(5, own_state(2)), 0.0, 0.0))  # object store
    policy.apply(WeightOffer.shared(PolicySnapshot(6, own_state(3)), 0, 0.0))
    policy.apply(WeightOffer.withdraw())
    assert policy.version == 5  # the version its own weights hold
    reader.close()
    writer.close()
