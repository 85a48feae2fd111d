"""The current policy on CPU, inside a rollout actor."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from common.config import NetworkConfig
from common.networks import ImageEncoder, PolicyNet, load_policy_state, to_channels_last
from common.specs import IMAGE_KEY, VECTOR_KEY, EnvSpec
from common.weights import RANDOM_POLICY_VERSION, PolicySnapshot


class CpuPolicy:
    """A PolicyNet on CPU that loads published snapshots and acts deterministically."""

    def __init__(self, spec: EnvSpec, network: NetworkConfig, threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        # Channels-last conv weights match the channels-last pixels ImageEncoder.prepare
        # makes; with NCHW weights oneDNN converts one side every call (0.84 against 0.91 to
        # 0.98 ms of CPU per batch-1 inference, one thread).
        self.net = to_channels_last(
            PolicyNet(spec, network.encoder_features, network.hidden_sizes).eval())
        self.action_dim = spec.action_dim
        self.version = RANDOM_POLICY_VERSION
        self._tail = self.net.encoder.tail()  # shares the parameters that load() fills
        self._fold()

    @property
    def ready(self) -> bool:
        """True once a snapshot has been loaded."""
        return self.version != RANDOM_POLICY_VERSION

    def load(self, snapshot: PolicySnapshot) -> None:
        """Loads a snapshot; raises CheckpointError if its names or shapes do not match."""
        load_policy_state(self.net, snapshot.state)
        self.version = snapshot.version
        self._fold()

    def _fold(self) -> None:
        # The pixel scaling folded into the first convolution once per load instead of on
        # every inference (three small ops, and a weight oneDNN then had to reorder).
        with torch.no_grad():
            weight, bias = self.net.encoder.folded_first_conv()
            self._first_conv = (weight.contiguous(memory_format=torch.channels_last), bias)

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The deterministic action for one observation, float32 [action_dim]."""
        with torch.inference_mode():
            image = torch.from_numpy(np.ascontiguousarray(obs[IMAGE_KEY]))[None]
            vector = torch.from_numpy(np.ascontiguousarray(obs[VECTOR_KEY]))[None]
            features = self.net.encoder.encode(ImageEncoder.prepare(image), vector,
                                               self._first_conv, self._tail)
            return self.net.act(features)[0].numpy().astype(np.float32)
