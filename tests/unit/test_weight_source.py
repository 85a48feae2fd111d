"""The WeightSource protocol (rollout/weights.py) through the in-process LatestSnapshot: the
rollout worker applies copied and shared offers to its real CpuPolicy, and a withdrawn shared
offer sends the policy back to the copy it loaded before."""
import numpy as np
import pytest
import torch

from rollout.exploration import GaussianExploration
from rollout.policy import CpuPolicy
from rollout.worker import RolloutWorker
from rollout.weights import LatestSnapshot, OfferKind, WeightOffer
from rollout.writer import ChunkWriter
from common.networks import PolicyNet
from common.specs import IMAGE_KEY, VECTOR_KEY
from common.weights import PolicySnapshot
from tests.unit.learner_fixtures import SMALL_SPEC, small_config


class EndlessEnv:
    """One observation for ever, never ending an episode."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.obs = {IMAGE_KEY: rng.integers(0, 255, SMALL_SPEC.image.shape, dtype=np.uint8),
                    VECTOR_KEY: rng.uniform(-1, 1, SMALL_SPEC.vector.shape).astype(np.float32)}

    def reset(self, seed=None):
        return self.obs, {}

    def step(self, action):
        return self.obs, 0.0, False, False, {}

    def close(self) -> None:
        pass


def _state(seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    net = PolicyNet.from_config(SMALL_SPEC, small_config().network)
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _acts_as(state: dict[str, np.ndarray], obs: dict) -> np.ndarray:
    reference = CpuPolicy(SMALL_SPEC, small_config().network)
    reference.load(PolicySnapshot(0, state))
    return reference.act(obs)


def _worker(source: LatestSnapshot, poll_every: int = 1) -> RolloutWorker:
    writer = ChunkWriter(SMALL_SPEC, 8, lambda chunk: None, stream_id=1)
    return RolloutWorker(EndlessEnv(), CpuPolicy(SMALL_SPEC, small_config().network), writer,
                         source, GaussianExploration(0.0, np.random.default_rng(0)),
                         actor_index=0, learning_starts=0, weight_poll_every=poll_every, seed=0)


def test_the_worker_loads_a_copied_offer_and_records_its_broadcast():
    source = LatestSnapshot()
    worker = _worker(source)
    state = _state(1)
    source.publish(PolicySnapshot(1, state), published_at=123.0)
    report = worker.run_steps(2)
    policy = worker.policy
    assert report.weight_loads == 1 and policy.version == 1 and not policy.bound
    state["encoder.cnn.0.weight"][...] = np.nan  # the publisher's arrays: not the policy's
    np.testing.assert_allclose(policy.act(worker.env.obs), _acts_as(_state(1), worker.env.obs),
                               atol=1e-6)
    versions, latencies, fetches, published = source.take_broadcasts()
    assert versions == [1] and published == [123.0] and latencies[0] > 0 and fetches == [0.0]
    assert source.take_broadcasts() == ([], [], [], [])


def test_the_worker_runs_on_a_shared_offer_in_place_keeping_one_network_per_slot():
    source = LatestSnapshot()
    worker = _worker(source)
    state = _state(2)
    source.publish(PolicySnapshot(2, state), shared=True)
    worker.run_steps(1)
    policy = worker.policy
    assert policy.bound and policy.version == 2
    for name, param in policy.net.state_dict().items():
        assert param.data_ptr() == state[name].ctypes.data  # no copy
    np.testing.assert_allclose(policy.act(worker.env.obs), _acts_as(state, worker.env.obs),
                               atol=1e-6)
    net = policy.net
    source.publish(PolicySnapshot(3, state), shared=True)  # the same arrays, a new version
    assert worker.run_steps(1).weight_loads == 1 and policy.version == 3 and policy.net is net
    source.publish(PolicySnapshot(4, _state(4)), shared=True)  # other arrays in the slot
    worker.run_steps(1)
    assert policy.version == 4 and policy.net is not net


def test_a_withdrawn_shared_offer_makes_the_policy_run_on_its_copy_at_once():
    source = LatestSnapshot()
    worker = _worker(source, poll_every=1000)  # the withdrawal must not wait for a poll
    copied, shared = _state(5), _state(6)
    source.publish(PolicySnapshot(1, copied))
    worker.run_steps(1)  # the first step polls
    source.publish(PolicySnapshot(2, shared), shared=True)
    assert worker.run_steps(1).weight_loads == 0  # not a poll: still on the copy
    worker._steps = 0  # the next step polls
    worker.run_steps(1)
    policy = worker.policy
    assert policy.bound and policy.version == 2
    source.withdraw()
    for array in shared.values():
        array[...] = np.nan  # what the publisher may now do to them
    report = worker.run_steps(1)
    assert report.weight_loads == 0 and not policy.bound and policy.version == 1
    np.testing.assert_allclose(policy.act(worker.env.obs), _acts_as(copied, worker.env.obs),
                               atol=1e-6)
    assert source.newer(1, True) is None  # nothing shared is offered after the withdrawal


def test_a_withdrawal_before_any_copy_leaves_the_policy_random():
    source = LatestSnapshot()
    worker = _worker(source)
    source.publish(PolicySnapshot(7, _state(7)), shared=True)
    worker.run_steps(1)
    source.withdraw()
    worker.run_steps(1)
    assert worker.policy.version == -1 and not worker.policy.ready and not worker.policy.bound


def test_a_withdrawal_is_owed_only_to_a_policy_on_shared_arrays():
    source = LatestSnapshot()
    source.publish(PolicySnapshot(1, _state(1)), shared=True)
    source.withdraw()  # never taken: nothing to withdraw
    assert source.newer(-1, True) is None
    source.publish(PolicySnapshot(2, _state(2)))
    offer = source.newer(-1, True)
    assert offer.kind is OfferKind.COPY and offer.version == 2
    source.withdraw()  # the policy runs on its copy
    assert source.newer(2, True) is None


def test_a_shared_offer_that_does_not_fit_the_policy_is_refused_and_changes_nothing():
    from common.errors import SpecError

    policy = CpuPolicy(SMALL_SPEC, small_config().network)
    policy.apply(WeightOffer.copy(PolicySnapshot(1, _state(1)), 0.0, 0.0))
    state = _state(2)
    name = next(iter(state))
    with pytest.raises(SpecError, match=name):
        policy.apply(WeightOffer.shared(PolicySnapshot(2, {**state, name: state[name][:1]}), 0,
                                        0.0))
    assert policy.version == 1 and not policy.bound
