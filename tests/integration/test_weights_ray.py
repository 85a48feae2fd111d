"""Weight broadcast through the real WeightBoard: the shared-memory file on the learner's node,
the object store elsewhere or when the file cannot be opened."""
import logging
import os
import struct
import time

import numpy as np
import pytest
import ray

from rollout.weights import OfferKind, WeightOffer
from common.weights import PolicySnapshot
from deploy.weights_ray import WeightBoard
from deploy.weights_source import FilesFirstSource
from deploy.weights_shm import ShmWeightWriter

pytestmark = pytest.mark.integration
FILE_VALUE, STORE_VALUE = 1.0, 9.0  # the two copies differ, so a test sees which one arrived


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _state(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((64, 32), value, np.float32), "b": np.full(32, value, np.float32)}


def _publish(board, writer: ShmWeightWriter, version: int) -> None:
    at = writer.publish(PolicySnapshot(version, _state(FILE_VALUE)))
    ray.get(board.publish.remote(version, [ray.put(_state(STORE_VALUE))], writer.channel, at))


class RecordingPolicy:
    """Stands in for the rollout worker's CpuPolicy: applies offers as it does, keeping a copy
    of each snapshot it copies or runs on in place (``bound``: on shared arrays)."""

    def __init__(self) -> None:
        self.version = self.own_version = -1
        self.loaded: list[PolicySnapshot] = []
        self.kinds: list[OfferKind] = []  # how each of ``loaded`` came
        self.net: dict[str, np.ndarray] | None = None

    @property
    def bound(self) -> bool:
        return self.net is not None

    def apply(self, offer: WeightOffer) -> None:
        if offer.kind is OfferKind.WITHDRAW:
            self.net, self.version = None, self.own_version
            return
        if offer.kind is OfferKind.SHARED:
            self.net, self.version = dict(offer.state), offer.version
        else:
            self.net, self.version = None, offer.version
            self.own_version = offer.version
        self.kinds.append(offer.kind)
        self.loaded.append(PolicySnapshot(offer.version,
                                          {k: np.array(a) for k, a in offer.state.items()}))


def _step(source: FilesFirstSource, policy: RecordingPolicy) -> bool:
    """One inference's weight step, as the rollout worker takes it; whether the policy's
    version went up."""
    before = policy.version
    try:
        offer = source.newer(policy.version, True)
        if offer is not None:
            policy.apply(offer)
    finally:
        source.release()
    return policy.version > before


def _poll_with(source: FilesFirstSource, policy: RecordingPolicy,
               timeout_s: float = 30.0) -> PolicySnapshot:
    """The newer snapshot ``source`` gives ``policy`` (polled as the env loop does)."""
    known, start = policy.version, len(policy.loaded)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _step(source, policy):
            newer = [s for s in policy.loaded[start:] if s.version > known]
            assert len(newer) == 1 and policy.version > known
            return newer[0]
        time.sleep(0.01)
    raise AssertionError(f"no version newer than {known} within {timeout_s} s")


def _poll_until(source: FilesFirstSource, known: int, timeout_s: float = 30.0) -> PolicySnapshot:
    """What ``source`` loads into a fresh policy at version ``known``."""
    policy = RecordingPolicy()
    policy.version = known
    return _poll_with(source, policy, timeout_s)


def _value(snapshot: PolicySnapshot) -> float:
    values = {float(v) for a in snapshot.state.values() for v in np.unique(a)}
    assert len(values) == 1, values
    return values.pop()


@pytest.fixture
def board(ray_local):
    handle = ray.remote(WeightBoard).options(num_cpus=0, max_concurrency=100).remote()
    yield handle
    ray.kill(handle)


@pytest.fixture
def learner_file(board, tmp_path):
    """The learner's weight file on this node (closed at the end if the test did not)."""
    writer = ShmWeightWriter(tmp_path, _state(0.0), ray.get_runtime_context().get_node_id())
    yield writer
    writer.close()


@pytest.fixture
def make_source(board):
    """Builds rollout-side sources on a given node; stops them at the end."""
    sources = []

    def make(node_id: str | None = None) -> FilesFirstSource:
        sources.append(FilesFirstSource(board, node_id or ray.get_runtime_context().get_node_id()))
        return sources[-1]

    yield make
    for source in sources:
        source.stop()


def test_an_actor_on_the_learners_node_reads_the_file(board, learner_file, make_source):
    started = time.time()
    source = make_source()
    for version in (1, 2):
        _publish(board, learner_file, version)
        snapshot = _poll_until(source, version - 1)
        assert snapshot.version == version and _value(snapshot) == FILE_VALUE
    versions, latencies, fetches, published = source.take_broadcasts()
    assert versions == [1, 2] and all(0.0 <= f <= lat < 30.0 for f, lat in zip(fetches, latencies))
    assert started <= published[0] <= published[1] <= time.time()  # the learner's stamps


def test_an_actor_on_another_node_fetches_from_the_object_store(board, learner_file, make_source):
    source = make_source("another-node")
    _publish(board, learner_file, 1)
    snapshot = _poll_until(source, -1)
    assert snapshot.version == 1 and _value(snapshot) == STORE_VALUE


def test_a_file_that_cannot_be_opened_falls_back_to_the_object_store(board, learner_file, make_source):
    source = make_source()
    _publish(board, learner_file, 1)
    learner_file.close()  # the file is gone, the board still names it
    snapshot = _poll_until(source, -1)
    assert snapshot.version == 1 and _value(snapshot) == STORE_VALUE


def test_a_version_published_without_a_file_is_fetched_from_the_object_store(board, learner_file,
                                                                               make_source):
    source = make_source()
    _publish(board, learner_file, 1)
    assert _value(_poll_until(source, -1)) == FILE_VALUE
    # The learner's write failed: it posts the version with no channel.
    ray.get(board.publish.remote(2, [ray.put(_state(STORE_VALUE))], None, None))
    snapshot = _poll_until(source, 1)
    assert snapshot.version == 2 and _value(snapshot) == STORE_VALUE


def test_a_restarted_learners_new_file_replaces_the_old_one(board, learner_file, make_source, tmp_path):
    source = make_source()
    _publish(board, learner_file, 1)
    first = RecordingPolicy()
    _poll_with(source, first)
    assert first.bound and _value(first.loaded[0]) == FILE_VALUE  # runs on the file's arrays
    second = ShmWeightWriter(tmp_path, _state(0.0), ray.get_runtime_context().get_node_id())
    at = second.publish(PolicySnapshot(2, _state(2.0)))  # the first file is removed
    ray.get(board.publish.remote(2, [ray.put(_state(STORE_VALUE))], second.channel, at))
    snapshot = _poll_with(source, first)
    assert snapshot.version == 2 and _value(snapshot) == 2.0  # read from the new file
    # The old files given up: the policy bound to them was first moved onto a copy.
    copied = first.loaded[1]
    assert first.kinds == [OfferKind.SHARED, OfferKind.COPY, OfferKind.SHARED]
    assert copied.version == 1 and _value(copied) == FILE_VALUE and first.bound  # on the new
    second.close()


def test_the_board_wakes_a_file_reader_only_when_the_channel_changes(board, learner_file):
    _publish(board, learner_file, 1)
    channel = learner_file.channel
    waiting = board.wait_channel.remote(channel, 1.0)
    _publish(board, learner_file, 2)  # a new version in the same file: no wake-up
    started = time.monotonic()
    version, _, _, got = ray.get(waiting)
    assert time.monotonic() - started > 0.5 and (version, got) == (2, channel)  # the timeout
    waiting = board.wait_channel.remote(channel, 30.0)
    ray.get(board.publish.remote(3, [ray.put(_state(STORE_VALUE))], None, None))  # no file
    version, refs, _, got = ray.get(waiting, timeout=10)
    assert (version, got) == (3, None) and len(refs) == 1


def test_an_actor_between_two_inferences_holds_no_slot(board, learner_file, make_source):
    # A stalled actor (a simulator timeout, a full replay) must not keep the learner from
    # writing: it locks a slot only inside an inference.
    source = make_source()
    policy = RecordingPolicy()
    _publish(board, learner_file, 1)
    _poll_with(source, policy)  # bound to version 1's slot
    for version in (2, 3, 4, 5):  # every slot is rewritten while the actor waits
        assert learner_file.publish(PolicySnapshot(version, _state(FILE_VALUE))) is not None
    assert _step(source, policy) and policy.version == 5


# A file that cannot be trusted (issue 30, finding 2): the actor uses the object store.


def _rejections(caplog) -> int:
    return sum("event=weight_file_rejected" in r.getMessage() for r in caplog.records)


def test_a_directory_opened_to_others_falls_back_to_the_object_store(board, learner_file,
                                                                     make_source, tmp_path):
    source = make_source()
    os.chmod(tmp_path, 0o777)  # another user could have replaced the files
    _publish(board, learner_file, 1)
    snapshot = _poll_until(source, -1)
    assert snapshot.version == 1 and _value(snapshot) == STORE_VALUE


def test_a_damaged_slot_falls_back_to_the_object_store_logged_once(board, learner_file,
                                                                   make_source, caplog):
    caplog.set_level(logging.WARNING, logger="deploy.weights_source")
    source = make_source()
    _publish(board, learner_file, 1)  # slot 0
    with open(learner_file.channel.slot_path(0), "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x7f")  # one byte of the arrays: the checksum no longer matches
    policy = RecordingPolicy()
    snapshot = _poll_with(source, policy)
    assert snapshot.version == 1 and _value(snapshot) == STORE_VALUE and not policy.bound
    _publish(board, learner_file, 2)  # intact, but the file is given up for this learner
    assert _value(_poll_until(source, 1)) == STORE_VALUE
    assert _rejections(caplog) == 1


def test_a_slot_truncated_under_a_bound_policy_falls_back_without_sigbus(board, learner_file,
                                                                          make_source):
    source = make_source()
    _publish(board, learner_file, 1)  # slot 0
    policy = RecordingPolicy()
    _poll_with(source, policy)
    assert policy.bound and policy.version == 1
    os.truncate(learner_file.channel.slot_path(0), 0)  # reading its mapping now: SIGBUS
    policy.loaded.clear()
    ray.get(board.publish.remote(2, [ray.put(_state(STORE_VALUE))], learner_file.channel, None))
    snapshot = _poll_with(source, policy)
    assert snapshot.version == 2 and _value(snapshot) == STORE_VALUE and not policy.bound


def test_a_file_version_far_ahead_of_the_board_is_ignored(board, learner_file, make_source):
    source = make_source()
    _publish(board, learner_file, 1)  # slot 0
    policy = RecordingPolicy()
    _poll_with(source, policy)
    with open(learner_file.channel.slot_path(1), "r+b") as f:  # a slot not yet written
        f.seek(24)  # the version field
        f.write(struct.pack("<q", 10**12))  # damage: the board says 1
    assert source.newer(policy.version, True) is None and policy.version == 1
    source.release()
    _publish(board, learner_file, 2)  # written over the damaged slot, in its turn
    snapshot = _poll_until(source, 1)
    assert snapshot.version == 2 and _value(snapshot) == FILE_VALUE
