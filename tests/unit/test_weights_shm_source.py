"""ShmWeightSource (deploy/weights_shm_source.py): the weight files as a WeightSource, applied by
the rollout worker's real CpuPolicy; leaving the files, and files that prove damaged."""
import os

import numpy as np
import torch

from rollout.policy import CpuPolicy
from rollout.weights import OfferKind, WeightOffer
from common.networks import PolicyNet
from common.weights import PolicySnapshot
from deploy.weights_shm import ShmWeightWriter
from deploy.weights_shm_source import ShmWeightSource
from tests.unit.learner_fixtures import SMALL_SPEC, small_config


def _state(seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    net = PolicyNet.from_config(SMALL_SPEC, small_config().network)
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _policy() -> CpuPolicy:
    return CpuPolicy(SMALL_SPEC, small_config().network)


def _step(source: ShmWeightSource, policy: CpuPolicy) -> WeightOffer | None:
    """One inference's weight step, as the rollout worker takes it."""
    try:
        offer = source.newer(policy.version, True)
        if offer is not None:
            policy.apply(offer)
        return offer
    finally:
        source.release()


def test_the_policy_runs_on_each_slot_through_one_network_per_slot(tmp_path):
    writer = ShmWeightWriter(tmp_path / "run", _state(0), "node-a")
    source, policy = ShmWeightSource(writer.channel), _policy()
    nets = {}
    for version in range(1, 7):  # twice round the three slots
        writer.publish(PolicySnapshot(version, _state(version)))
        offer = _step(source, policy)
        assert offer.kind is OfferKind.SHARED and policy.version == version and policy.bound
        assert nets.setdefault(offer.slot, policy.net) is policy.net  # built once per slot
        for name, param in policy.net.state_dict().items():
            assert param.data_ptr() == offer.state[name].ctypes.data  # the file's arrays
    assert len(nets) == 3 and _step(source, policy) is None  # nothing newer
    source.close()
    writer.close()


def test_leaving_moves_a_policy_on_the_files_onto_a_copy_of_the_newest_slot(tmp_path):
    writer = ShmWeightWriter(tmp_path / "run", _state(0), "node-a")
    source, policy = ShmWeightSource(writer.channel), _policy()
    writer.publish(PolicySnapshot(1, _state(1)))
    _step(source, policy)
    writer.publish(PolicySnapshot(2, _state(2)))  # not yet taken
    offer = source.leave()
    assert offer.kind is OfferKind.COPY and offer.version == 2
    policy.apply(offer)
    source.release()  # the files close here
    assert not policy.bound and policy.version == 2 and source.newer(2, True) is None
    writer.close()  # the files are gone: the policy acts on its own weights
    reference = _policy()
    reference.load(PolicySnapshot(2, _state(2)))
    image = np.zeros(SMALL_SPEC.image.shape, np.uint8)
    obs = {"image": image, "vector": np.zeros(SMALL_SPEC.vector.shape, np.float32)}
    np.testing.assert_array_equal(policy.act(obs), reference.act(obs))


def test_leaving_files_the_policy_does_not_run_on_offers_nothing(tmp_path):
    writer = ShmWeightWriter(tmp_path / "run", _state(0), "node-a")
    source = ShmWeightSource(writer.channel)
    writer.publish(PolicySnapshot(1, _state(1)))
    assert source.leave() is None and source.newer(-1, True) is None  # closed at once
    writer.close()


def test_a_slot_truncated_under_the_policy_withdraws_it(tmp_path):
    writer = ShmWeightWriter(tmp_path / "run", _state(0), "node-a")
    source, policy = ShmWeightSource(writer.channel), _policy()
    policy.apply(WeightOffer.copy(PolicySnapshot(1, _state(1)), 0.0, 0.0))  # from the store
    writer.publish(PolicySnapshot(2, _state(2)))  # slot 0
    _step(source, policy)
    assert policy.bound and policy.version == 2
    os.truncate(writer.channel.slot_path(0), 0)  # reading its mapping now: SIGBUS
    offer = _step(source, policy)
    assert offer.kind is OfferKind.WITHDRAW and source.failure is not None
    assert not policy.bound and policy.version == 1  # the copy it had, the slot unread
    assert source.newer(1, True) is None  # given up
    writer.close()


def test_a_damaged_slot_never_taken_fails_the_source_without_an_offer(tmp_path):
    writer = ShmWeightWriter(tmp_path / "run", _state(0), "node-a")
    source, policy = ShmWeightSource(writer.channel), _policy()
    writer.publish(PolicySnapshot(1, _state(1)))  # slot 0
    with open(writer.channel.slot_path(0), "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x7f")  # the checksum no longer matches
    assert _step(source, policy) is None and "checksum" in str(source.failure)
    assert policy.version == -1 and not policy.bound
    writer.close()
