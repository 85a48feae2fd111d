"""Weight broadcast through the real WeightBoard: the shared-memory file on the learner's node,
the object store elsewhere or when the file cannot be opened."""
import time

import numpy as np
import pytest
import ray

from common.weights import PolicySnapshot
from deploy.weights_ray import RayWeightSource, WeightBoard
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


def _poll_until(source: RayWeightSource, known: int, timeout_s: float = 30.0) -> PolicySnapshot:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snapshot = source.poll(known)
        if snapshot is not None:
            return snapshot
        time.sleep(0.01)
    raise AssertionError(f"no version newer than {known} within {timeout_s} s")


def _value(snapshot: PolicySnapshot) -> float:
    values = {float(v) for a in snapshot.state.values() for v in np.unique(a)}
    assert len(values) == 1, values
    return values.pop()


@pytest.fixture
def board(ray_local):
    handle = ray.remote(WeightBoard).options(num_cpus=0, max_concurrency=100).remote()
    yield handle
    ray.kill(handle)


def test_an_actor_on_the_learners_node_reads_the_file(board, tmp_path):
    node = ray.get_runtime_context().get_node_id()
    writer = ShmWeightWriter(tmp_path, _state(0.0), node)
    source = RayWeightSource(board, node)
    try:
        for version in (1, 2):
            _publish(board, writer, version)
            snapshot = _poll_until(source, version - 1)
            assert snapshot.version == version and _value(snapshot) == FILE_VALUE
        versions, latencies, fetches = source.take_broadcasts()
        assert versions == [1, 2] and all(0.0 <= f <= lat < 30.0 for f, lat in zip(fetches, latencies))
    finally:
        source.stop()
        writer.close()


def test_an_actor_on_another_node_fetches_from_the_object_store(board, tmp_path):
    writer = ShmWeightWriter(tmp_path, _state(0.0), ray.get_runtime_context().get_node_id())
    source = RayWeightSource(board, "another-node")
    try:
        _publish(board, writer, 1)
        snapshot = _poll_until(source, -1)
        assert snapshot.version == 1 and _value(snapshot) == STORE_VALUE
    finally:
        source.stop()
        writer.close()


def test_a_file_that_cannot_be_opened_falls_back_to_the_object_store(board, tmp_path):
    node = ray.get_runtime_context().get_node_id()
    writer = ShmWeightWriter(tmp_path, _state(0.0), node)
    source = RayWeightSource(board, node)
    try:
        _publish(board, writer, 1)
        writer.close()  # the file is gone, the board still names it
        snapshot = _poll_until(source, -1)
        assert snapshot.version == 1 and _value(snapshot) == STORE_VALUE
    finally:
        source.stop()


def test_a_version_published_without_a_file_is_fetched_from_the_object_store(board, tmp_path):
    node = ray.get_runtime_context().get_node_id()
    writer = ShmWeightWriter(tmp_path, _state(0.0), node)
    source = RayWeightSource(board, node)
    try:
        _publish(board, writer, 1)
        assert _value(_poll_until(source, -1)) == FILE_VALUE
        # The learner's write failed: it posts the version with no channel.
        ray.get(board.publish.remote(2, [ray.put(_state(STORE_VALUE))], None, None))
        snapshot = _poll_until(source, 1)
        assert snapshot.version == 2 and _value(snapshot) == STORE_VALUE
    finally:
        source.stop()
        writer.close()


def test_a_restarted_learners_new_file_replaces_the_old_one(board, tmp_path):
    node = ray.get_runtime_context().get_node_id()
    first = ShmWeightWriter(tmp_path, _state(0.0), node)
    source = RayWeightSource(board, node)
    try:
        _publish(board, first, 1)
        assert _value(_poll_until(source, -1)) == FILE_VALUE
        second = ShmWeightWriter(tmp_path, _state(0.0), node)  # removes the first one's file
        at = second.publish(PolicySnapshot(2, _state(2.0)))
        ray.get(board.publish.remote(2, [ray.put(_state(STORE_VALUE))], second.channel, at))
        snapshot = _poll_until(source, 1)
        assert snapshot.version == 2 and _value(snapshot) == 2.0  # read from the new file
        second.close()
    finally:
        source.stop()
