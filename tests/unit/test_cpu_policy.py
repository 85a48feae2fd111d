"""The rollout actor's CPU policy acts as the network it loaded, after every load."""
import warnings

import numpy as np
import torch

from actors.policy import CpuPolicy
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
