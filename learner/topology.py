"""Which image features the policy reads: the typed factory behind ``EncoderTopology``.

``build_networks`` returns a ``Networks`` object for the chosen topology. The update step
never asks which topology it runs: it calls ``policy_features`` / ``target_policy_features``
and uses the optimizer groups and target pairs the factory built.

SEPARATE (this system): the policy and the critic each own an encoder, an optimizer and a
target copy; construction fails if they share any parameter.
SHARED (the ablation of issue 8, the documented exception to disjointness): the policy reads
the critic's encoder, which only the critic loss trains; the policy loss trains the policy
head alone, and the policy's target reads the critic's target encoder.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from common.config import EncoderTopology, NetworkConfig, TD3Config
from common.errors import ConfigError
from common.networks import PolicyNet, QNet, to_channels_last
from common.specs import EnvSpec

ParamGroups = list[dict[str, object]]
Pairs = tuple[list[torch.Tensor], list[torch.Tensor]]  # (targets, onlines)


@dataclass
class Networks:
    """Online and target networks plus what the optimizers and Polyak averaging need.

    Attributes:
        topology: the topology these networks were built for.
        policy: the online policy (its ``encoder`` is the critic's under SHARED).
        critic: the online twin-Q critic.
        policy_target: target policy.
        critic_target: target critic.
        policy_groups: Adam parameter groups of the policy loss (encoder and head lrs).
        critic_groups: Adam parameter groups of the critic loss.
        target_pairs: (target, online) parameter pairs, each parameter once.
    """

    topology: EncoderTopology
    policy: PolicyNet
    critic: QNet
    policy_target: PolicyNet
    critic_target: QNet
    policy_groups: ParamGroups
    critic_groups: ParamGroups
    target_pairs: Pairs

    def split_target_pairs(self) -> tuple[Pairs, Pairs]:
        """``target_pairs`` split into the critic target's and the policy target's own (under
        SHARED the policy target's encoder is the critic target's, so it is in the first)."""
        critic = {id(p) for p in self.critic_target.parameters()}
        targets, onlines = self.target_pairs
        split: dict[bool, Pairs] = {True: ([], []), False: ([], [])}
        for t, o in zip(targets, onlines):
            split[id(t) in critic][0].append(t)
            split[id(t) in critic][1].append(o)
        return split[True], split[False]

    def policy_encoding(self, pixels: torch.Tensor, vector: torch.Tensor) -> torch.Tensor | None:
        """The policy encoder's own features of ``prepare``d pixels (with gradient), or None
        where the policy has no encoder of its own. Needs nothing from the critic, so the
        learner may run it beside the critic's passes."""
        return self.policy.encoder.encode(pixels, vector)

    def target_policy_encoding(self, pixels: torch.Tensor,
                               vector: torch.Tensor) -> torch.Tensor | None:
        """``policy_encoding`` of the target policy."""
        return self.policy_target.encoder.encode(pixels, vector)

    def policy_features(self, encoding: torch.Tensor | None,
                        critic_features: torch.Tensor) -> torch.Tensor:
        """Features the policy acts on in the policy loss, from its ``policy_encoding`` and
        the online critic encoder's features of the same batch."""
        return encoding

    def target_policy_features(self, encoding: torch.Tensor | None,
                               target_critic_features: torch.Tensor) -> torch.Tensor:
        """Features the target policy acts on for the TD target."""
        return encoding

    def modules(self) -> dict[str, nn.Module]:
        """The four networks by checkpoint name."""
        return {"policy": self.policy, "critic": self.critic,
                "policy_target": self.policy_target, "critic_target": self.critic_target}


class SharedNetworks(Networks):
    """SHARED: the policy's features are the critic encoder's, computed without gradient."""

    def policy_encoding(self, pixels: torch.Tensor, vector: torch.Tensor) -> None:
        return None

    def target_policy_encoding(self, pixels: torch.Tensor, vector: torch.Tensor) -> None:
        return None

    def policy_features(self, encoding: torch.Tensor | None,
                        critic_features: torch.Tensor) -> torch.Tensor:
        return critic_features.detach()

    def target_policy_features(self, encoding: torch.Tensor | None,
                               target_critic_features: torch.Tensor) -> torch.Tensor:
        return target_critic_features


def _groups(encoder: nn.Module | None, head: list[nn.Module], td3: TD3Config) -> ParamGroups:
    # Deviation: the paper's networks have no encoder; here each CNN gets its own Adam
    # learning rate (encoder_lr), lower than the heads' (head_lr), as pixel-based TD3 and SAC
    # variants (DrQ, SAC-AE) do.
    groups: ParamGroups = []
    if encoder is not None:
        groups.append({"name": "encoder", "params": list(encoder.parameters()), "lr": td3.encoder_lr})
    groups.append({"name": "head", "params": [p for m in head for p in m.parameters()],
                   "lr": td3.head_lr})
    return groups


def _target(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def _pairs(targets: list[nn.Module], onlines: list[nn.Module]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    seen: set[int] = set()
    tgt: list[torch.Tensor] = []
    src: list[torch.Tensor] = []
    for t_mod, o_mod in zip(targets, onlines):
        for t, o in zip(t_mod.parameters(), o_mod.parameters()):
            if id(t) not in seen:
                seen.add(id(t))
                tgt.append(t)
                src.append(o)
    return tgt, src


def check_disjoint(policy: nn.Module, critic: nn.Module) -> None:
    """Raises ConfigError naming the parameters the policy and the critic share."""
    critic_ids = {id(p): n for n, p in critic.named_parameters()}
    shared = [f"policy.{n} is critic.{critic_ids[id(p)]}"
              for n, p in policy.named_parameters() if id(p) in critic_ids]
    if shared:
        raise ConfigError(f"policy and critic share {len(shared)} parameter(s) under the "
                          f"separate topology: {shared[:4]}")


def _build_separate(spec: EnvSpec, net: NetworkConfig, td3: TD3Config) -> Networks:
    policy = to_channels_last(PolicyNet.from_config(spec, net))
    critic = to_channels_last(QNet.from_config(spec, net))
    check_disjoint(policy, critic)
    policy_target, critic_target = _target(policy), _target(critic)
    return Networks(
        EncoderTopology.SEPARATE, policy, critic, policy_target, critic_target,
        policy_groups=_groups(policy.encoder, [policy.head], td3),
        critic_groups=_groups(critic.encoder, [critic.q1, critic.q2], td3),
        target_pairs=_pairs([policy_target, critic_target], [policy, critic]))


def _build_shared(spec: EnvSpec, net: NetworkConfig, td3: TD3Config) -> Networks:
    critic = to_channels_last(QNet.from_config(spec, net))
    policy = PolicyNet.from_config(spec, net)
    policy.encoder = critic.encoder  # the ablation: one CNN, trained by the critic loss only
    critic_target = _target(critic)
    policy_target = _target(policy)
    policy_target.encoder = critic_target.encoder
    return SharedNetworks(
        EncoderTopology.SHARED, policy, critic, policy_target, critic_target,
        policy_groups=_groups(None, [policy.head], td3),
        critic_groups=_groups(critic.encoder, [critic.q1, critic.q2], td3),
        target_pairs=_pairs([critic_target, policy_target], [critic, policy]))


_BUILDERS = {EncoderTopology.SEPARATE: _build_separate, EncoderTopology.SHARED: _build_shared}


def build_networks(spec: EnvSpec, net: NetworkConfig, td3: TD3Config,
                   device: torch.device) -> Networks:
    """Builds online and target networks, optimizer groups and target pairs for a topology.

    Args:
        spec: observation and action spec.
        net: network sizes and the encoder topology.
        td3: learning rates of the encoder and head groups.
        device: where the networks live.

    Returns:
        The networks on ``device``; targets start equal to their online copies.

    Raises:
        ConfigError: unknown topology, or shared parameters under SEPARATE.
    """
    builder = _BUILDERS.get(EncoderTopology(net.topology))
    if builder is None:
        raise ConfigError(f"topology ({net.topology!r}) has no network builder")
    nets = builder(spec, net, td3)
    for module in nets.modules().values():
        module.to(device)
    return nets
