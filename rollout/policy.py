"""The current policy on CPU, inside a rollout worker."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from rollout.weights import OfferKind, WeightOffer
from common.config import NetworkConfig
from common.networks import (ImageEncoder, PolicyNet, load_policy_state, to_channels_last,
                             view_policy_state)
from common.specs import IMAGE_KEY, VECTOR_KEY, EnvSpec
from common.weights import RANDOM_POLICY_VERSION, PolicySnapshot


class CpuPolicy:
    """A PolicyNet on CPU that acts deterministically, on weights of its own (a COPY offer, or
    ``load``, copies a snapshot into them) or on arrays it shares with other processes (a
    SHARED offer: a network whose parameters are those arrays, kept per slot)."""

    def __init__(self, spec: EnvSpec, network: NetworkConfig, threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        self._spec, self._network = spec, network
        # Channels-last conv weights match the channels-last pixels ImageEncoder.prepare
        # makes; with NCHW weights oneDNN converts one side every call.
        self._own = to_channels_last(self._build().eval())
        self._views: dict[int, tuple[Mapping[str, np.ndarray], PolicyNet]] = {}
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
        """Whether the policy runs on shared arrays (weights it does not own)."""
        return self.net is not self._own

    def apply(self, offer: WeightOffer) -> None:
        """Runs on what a WeightSource offered (rollout/weights.py) from now on.

        SHARED: on the offer's arrays in place, through a network built on them the first
        time its slot brings these arrays (the source keeps them valid while the policy uses
        them, see WeightSource). COPY: copies them into the policy's own weights. WITHDRAW:
        back to its own weights, as the version last copied into them (random before any),
        without reading the shared arrays. The last two forget the networks kept per slot.

        Raises:
            SpecError: the arrays' names, shapes or dtypes do not match this policy.
        """
        if offer.kind is OfferKind.SHARED:
            net = self._view(offer.slot, offer.state)
            self.version = offer.version
            self._use(net)
            return
        self._views.clear()
        if offer.kind is OfferKind.COPY:
            self.load(PolicySnapshot(offer.version, dict(offer.state)))
        else:
            self.version = self._own_version
            self._use(self._own)

    def load(self, snapshot: PolicySnapshot) -> None:
        """Copies a snapshot (e.g. a checkpoint's) into the policy's own weights and runs on
        them; raises SpecError if its names or shapes do not match."""
        load_policy_state(self._own, snapshot.state)
        self.version = self._own_version = snapshot.version
        self._use(self._own)

    def _view(self, slot: int, state: Mapping[str, np.ndarray]) -> PolicyNet:
        """The network whose parameters are ``state``'s arrays (no copy), built once per slot
        and array set (``common.networks.view_policy_state``)."""
        kept = self._views.get(slot)
        if kept is None or kept[0] is not state:
            kept = (state, view_policy_state(self._build, state))
            self._views[slot] = kept
        return kept[1]

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
