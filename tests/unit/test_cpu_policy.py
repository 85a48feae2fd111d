"""The rollout worker's CPU policy acts as the network it loaded, after every load."""
import warnings

import numpy as np
import torch

from rollout.policy import CpuPolicy
from rollout.weights import WeightOffer
from common.networks import PolicyNet
from common.weights import PolicySnapshot
from tests.unit.learner_fixtures import SMALL_SPEC, random_batch, small_config


def _state(seed: int) -> tuple[PolicyNet, dict[str, np.ndarray]]:
    torch.manual_seed(seed)
    net = PolicyNet.from_config(SMALL_SPEC, small_config().network).eval()
    return net, {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def test_acts_as_the_loaded_network_after_each_load():
    policy = CpuPolicy(SMALL_SPEC, small_config().network)
    batch = random_batch(SMALL_SPEC, 4, seed=0)
    for version, seed in ((1, 0), (2, 1)):  # the second load must replace the folded conv too
        net, state = _state(seed)
        policy.load(PolicySnapshot(version, state))
        for i in range(4):
            obs = {"image": batch.obs_image[i], "vector": batch.obs_vector[i]}
            with torch.no_grad():
                expected = net(torch.from_numpy(obs["image"])[None],
                               torch.from_numpy(obs["vector"])[None])[0].numpy()
            got = policy.act(obs)
            assert got.dtype == np.float32 and got.shape == (SMALL_SPEC.action_dim,)
            np.testing.assert_allclose(got, expected, atol=1e-5)


def test_loads_read_only_views_exactly_and_without_warnings():
    # The weight file hands the policy read-only views of its mapping.
    policy = CpuPolicy(SMALL_SPEC, small_config().network)
    _, state = _state(2)
    for array in state.values():
        array.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy.load(PolicySnapshot(5, state))
    loaded = policy.net.state_dict()
    assert policy.version == 5 and all(np.array_equal(loaded[k].numpy(), a) for k, a in state.items())


def _act_all(policy: CpuPolicy, batch) -> np.ndarray:
    return np.stack([policy.act({"image": batch.obs_image[i], "vector": batch.obs_vector[i]})
                     for i in range(len(batch.obs_image))])


def test_runs_in_place_on_a_weight_files_arrays_as_it_would_on_a_copy(tmp_path):
    # The rollout worker's path on the learner's node: the policy's parameters are the
    # read-only, channels-last mapped arrays of the file's slot, not copies of them.
    from deploy.weights_shm import ShmWeightWriter
    from deploy.weights_shm_reader import ShmWeightReader

    batch = random_batch(SMALL_SPEC, 3, seed=1)
    _, state = _state(3)
    copied = CpuPolicy(SMALL_SPEC, small_config().network)
    copied.load(PolicySnapshot(4, state))
    writer = ShmWeightWriter(tmp_path, state, "node-a")
    writer.publish(PolicySnapshot(4, state))
    reader = ShmWeightReader(writer.channel)
    policy = CpuPolicy(SMALL_SPEC, small_config().network)
    with warnings.catch_warnings(), reader.newest() as held:
        warnings.simplefilter("error")
        policy.apply(WeightOffer.shared(held.snapshot, held.slot, held.published_at))
        assert policy.bound and policy.version == 4
        file_arrays = held.snapshot.state
        for name, param in policy.net.state_dict().items():
            assert param.data_ptr() == file_arrays[name].ctypes.data  # no copy
        conv = policy.net.encoder.cnn[0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_array_equal(_act_all(policy, batch), _act_all(copied, batch))
        # Giving the file up: the slot is copied into the policy's own weights, acting the same.
        policy.apply(WeightOffer.copy(held.snapshot, held.published_at, held.published_at))
    assert not policy.bound and policy.version == 4
    reader.close()
    writer.close()
    np.testing.assert_array_equal(_act_all(policy, batch), _act_all(copied, batch))


def test_a_view_of_a_mismatching_state_is_refused_naming_the_array():
    import pytest

    from common.errors import SpecError

    policy = CpuPolicy(SMALL_SPEC, small_config().network)
    _, state = _state(0)
    name = next(iter(state))

    def shared(bad: dict) -> WeightOffer:
        return WeightOffer.shared(PolicySnapshot(3, bad), 0, 0.0)

    with pytest.raises(SpecError, match=name):
        policy.apply(shared({**state, name: state[name][:1]}))
    with pytest.raises(SpecError, match="float32"):
        policy.apply(shared({**state, name: state[name].astype(np.float64)}))
    with pytest.raises(SpecError, match="missing"):
        policy.apply(shared({k: v for k, v in state.items() if k != name}))
    assert policy.version == -1 and not policy.bound  # a refused offer changes nothing
