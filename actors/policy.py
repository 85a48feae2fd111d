"""The current policy on CPU, inside a rollout actor."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from common.config import NetworkConfig
from common.networks import (ImageEncoder, PolicyNet, load_policy_state, to_channels_last,
                             view_policy_state)
from common.specs import IMAGE_KEY, VECTOR_KEY, EnvSpec
from common.weights import RANDOM_POLICY_VERSION, PolicySnapshot


class CpuPolicy:
    """A PolicyNet on CPU that acts deterministically, on weights of its own (``load`` copies
    a snapshot into them) or on weights it shares with other processes (``bind``: a network
    from ``view`` whose parameters are a shared-memory file's arrays)."""

    def __init__(self, spec: EnvSpec, network: NetworkConfig, threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        self._spec, self._network = spec, network
        # Channels-last conv weights match the channels-last pixels ImageEncoder.prepare
        # makes; with NCHW weights oneDNN converts one side every call (0.84 against 0.91 to
        # 0.98 ms of CPU per batch-1 inference, one thread).
        self._own = to_channels_last(self._build().eval())
        self.action_dim = spec.action_dim
        self.version = self._own_version = RANDOM_POLICY_VERSION
        self._use(self._own)

    def _build(self) -> PolicyNet:
        return PolicyNet(self._spec, self._network.encoder_features, self._network.hidden_sizes)

    @property
    def ready(self) -> bool:
        """True once a snapshot has been loaded."""
        return self.version != RANDOM_POLICY_VERSION

    @property
    def bound(self) -> bool:
        """Whether the policy runs on a network from ``view`` (weights it does not own)."""
        return self.net is not self._own

    def load(self, snapshot: PolicySnapshot) -> None:
        """Copies a snapshot into the policy's own weights and runs on them; raises SpecError
        if its names or shapes do not match."""
        load_policy_state(self._own, snapshot.state)
        self.version = self._own_version = snapshot.version
        self._use(self._own)

    def unbind(self) -> None:
        """Runs on its own weights again, as the version last loaded into them (random before
        any ``load``), without reading the bound arrays: for weights that can no longer be
        trusted (a damaged or truncated shared-memory file)."""
        self.version = self._own_version
        self._use(self._own)

    def view(self, state: Mapping[str, np.ndarray]) -> PolicyNet:
        """A network for ``bind`` whose parameters are ``state``'s arrays, not copies
        (``common.networks.view_policy_state``); raises SpecError if they do not match."""
        return view_policy_state(self._build, state)

    def bind(self, net: PolicyNet, version: int) -> None:
        """Runs on ``net`` (from ``view``) as ``version`` from now on: the caller keeps its
        arrays valid and unchanged until the next ``bind`` or ``load`` (which copies a snapshot,
        e.g. the shared one, into the policy's own weights before it gives the arrays up)."""
        self.version = version
        self._use(net)

    def _use(self, net: PolicyNet) -> None:
        self.net = net
        self._tail = net.encoder.tail()  # shares the network's parameters
        # The pixel scaling folded into the first convolution once per version instead of on
        # every inference (three small ops, and a weight oneDNN then had to reorder).
        with torch.no_grad():
            weight, bias = net.encoder.folded_first_conv()
            self._first_conv = (weight.contiguous(memory_format=torch.channels_last), bias)

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The deterministic action for one observation, float32 [action_dim]."""
        with torch.inference_mode():
            image = torch.from_numpy(np.ascontiguousarray(obs[IMAGE_KEY]))[None]
            vector = torch.from_numpy(np.ascontiguousarray(obs[VECTOR_KEY]))[None]
            features = self.net.encoder.encode(ImageEncoder.prepare(image), vector,
                                               self._first_conv, self._tail)
            return self.net.act(features)[0].numpy().astype(np.float32)
