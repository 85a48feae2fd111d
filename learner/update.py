"""The TD3 update (Fujimoto et al. 2018, Algorithm 1), read top to bottom in ``td3_update``.

Each update is a critic step; every ``policy_delay``-th update adds a policy step and a Polyak
step of the target networks. The pieces are public functions of a ``TD3State`` (networks,
optimizers, hyper-parameters); the math inside them is ``learner.losses``. Every deviation
from the paper is commented at its line.

``td3_update`` calls its pieces through ``steps``: this module's own functions (``PAPER``),
or the same functions compiled and queued on a GPU's side streams (``learner.execution``),
which compute the same numbers. The pieces hold no host synchronisation and no Python-side
state change, so a CUDA graph can capture the whole update (``learner.graphs``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, NamedTuple

import torch

from common.config import PolicyCritic, TD3Config
from learner import losses
from learner.augment import draw_shifts
from learner.device import DeviceBatch
from learner.pixels import prepare_image
from learner.stats import UpdateTensors
from learner.topology import Networks, Pairs

Params = tuple[list[torch.Tensor], list[torch.Tensor]]  # (encoder, head) of one optimizer


class NoiseDraws(NamedTuple):
    """The random numbers of one update, drawn outside it (``draw_noise``), so that a
    captured CUDA graph replays with fresh ones.

    Attributes:
        target_noise: target policy smoothing noise eps ~ N(0, policy_noise^2) [B, action_dim].
        shifts: image shift offsets of obs and next obs (``learner.augment``); empty when off.
    """

    target_noise: torch.Tensor
    shifts: torch.Tensor


class CriticValues(NamedTuple):
    """Q1(s, a), Q2(s, a) of the batch and the critic encoder's features of s."""

    q1: torch.Tensor
    q2: torch.Tensor
    features: torch.Tensor


class CriticStats(NamedTuple):
    """What a critic step reports (device tensors); ``features`` are detached."""

    loss: torch.Tensor
    q1_mean: torch.Tensor
    q2_mean: torch.Tensor
    target_mean: torch.Tensor
    encoder_grad_norm: torch.Tensor
    td_error: torch.Tensor
    features: torch.Tensor


def _split(groups: list[dict], encoder: bool) -> list[torch.Tensor]:
    return [p for g in groups if (g["name"] == "encoder") == encoder for p in g["params"]]


@dataclass(eq=False)
class TD3State:
    """What an update reads and writes: the networks and their optimizers (owned by
    ``learner.td3.TD3Learner``), the hyper-parameters, and how the forward passes compute.

    Args:
        nets: online and target networks (``learner.topology``).
        critic_opt: Adam over ``nets.critic_groups``.
        policy_opt: Adam over ``nets.policy_groups``.
        hp: TD3 hyper-parameters.
        autocast: the context the forward passes run in (bf16 autocast or none).
        pixel_dtype: what the frames are converted to (``ImageEncoder.prepare``).
        pixel_blocks: space-to-depth block size of the converted frames (1: none).
    """

    nets: Networks
    critic_opt: torch.optim.Optimizer
    policy_opt: torch.optim.Optimizer
    hp: TD3Config
    autocast: Callable[[], ContextManager[object]] = contextlib.nullcontext
    pixel_dtype: torch.dtype = torch.float32
    pixel_blocks: int = 1
    # Derived once, so that an update builds no parameter lists.
    device: torch.device = field(init=False)
    policy_critic: PolicyCritic = field(init=False)
    critic_params: Params = field(init=False)
    policy_params: Params = field(init=False)
    critic_targets: Pairs = field(init=False)
    policy_targets: Pairs = field(init=False)
    q1: dict[str, torch.Tensor] = field(init=False)
    q1_before: dict[str, torch.Tensor] = field(init=False)
    encoders: dict[str, list[torch.Tensor]] = field(init=False)
    snapshots: dict[str, list[torch.Tensor]] = field(init=False)
    last_policy: torch.Tensor = field(init=False)
    zero: torch.Tensor = field(init=False)
    policy_owns_encoder: bool = field(init=False)

    def __post_init__(self) -> None:
        nets = self.nets
        self.device = next(nets.critic.parameters()).device
        self.policy_critic = PolicyCritic(self.hp.policy_critic)
        self.critic_params = (_split(nets.critic_groups, True), _split(nets.critic_groups, False))
        self.policy_params = (_split(nets.policy_groups, True), _split(nets.policy_groups, False))
        self.critic_targets, self.policy_targets = nets.split_target_pairs()
        self.q1 = dict(nets.critic.q1.named_parameters())
        # PRE_STEP: the policy step reads a copy of the Q1 head taken before the critic's Adam
        # step, so the two steps can run at once without the policy reading weights the
        # critic step is writing.
        self.q1_before = ({k: v.detach().clone() for k, v in self.q1.items()}
                          if self.policy_critic is PolicyCritic.PRE_STEP else {})
        self.encoders = {"critic": list(nets.critic.encoder.parameters()),
                         "policy": list(nets.policy.encoder.parameters())}
        self.snapshots = {k: [p.detach().clone() for p in v] for k, v in self.encoders.items()}
        self.last_policy = torch.zeros(2, device=self.device)  # loss, encoder grad norm
        self.zero = torch.zeros((), device=self.device)
        critic_ids = {id(p) for p in self.encoders["critic"]}
        # Under SEPARATE the policy encoder changes only in a policy step.
        self.policy_owns_encoder = not any(id(p) in critic_ids for p in self.encoders["policy"])


def draw_noise(hp: TD3Config, action_shape: torch.Size, generator: torch.Generator,
               device: torch.device) -> NoiseDraws:
    """The smoothing noise eps ~ N(0, policy_noise^2) and the image shifts of one update."""
    noise = torch.randn(action_shape, generator=generator, device=device)
    shifts = draw_shifts(hp.image_shift, action_shape[0], generator, device)
    return NoiseDraws(noise * hp.policy_noise, shifts)


def prepare(s: TD3State, image: torch.Tensor, shifts: torch.Tensor | None) -> torch.Tensor:
    """A batch's uint8 frames as the encoders read them, shifted when ``image_shift`` is on
    (deviation: DrQ's augmentation, off by default; ``learner.augment``)."""
    return prepare_image(image, shifts, s.hp.image_shift, s.pixel_dtype, s.pixel_blocks)


def target_critic_features(s: TD3State, b: DeviceBatch, next_pixels: torch.Tensor) -> torch.Tensor:
    """The target critic encoder's features of s'."""
    with torch.no_grad(), s.autocast():
        return s.nets.critic_target.encoder.encode(next_pixels, b.next_vector)


def target_policy_encoding(s: TD3State, b: DeviceBatch,
                           next_pixels: torch.Tensor) -> torch.Tensor | None:
    """The target policy encoder's features of s' (None under SHARED)."""
    with torch.no_grad(), s.autocast():
        return s.nets.target_policy_encoding(next_pixels, b.next_vector)


def td_target_from(s: TD3State, b: DeviceBatch, target_features: torch.Tensor,
                   target_encoding: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
    """y = r + gamma (1 - terminated) min_i Q'_i(s', clip(pi'(s') + clip(eps, -c, c), -1, 1)),
    from the target encoders' features of s'."""
    nets, hp = s.nets, s.hp
    with torch.no_grad(), s.autocast():
        policy_features = nets.target_policy_features(target_encoding, target_features)
        next_action = losses.smoothed_target_action(
            nets.policy_target.act(policy_features).float(), noise, hp.noise_clip)
        next_q1, next_q2 = nets.critic_target.q_values(target_features, next_action)
        return losses.td_target(b.reward, b.terminated, next_q1.float(), next_q2.float(), hp.gamma)


def td_target(s: TD3State, b: DeviceBatch, next_pixels: torch.Tensor,
              noise: torch.Tensor) -> torch.Tensor:
    """The clipped double-Q target y of the batch (``td_target_from``)."""
    return td_target_from(s, b, target_critic_features(s, b, next_pixels),
                          target_policy_encoding(s, b, next_pixels), noise)


def critic_values(s: TD3State, b: DeviceBatch, pixels: torch.Tensor) -> CriticValues:
    """The online critic's Q1, Q2 of (s, a) and its encoder's features of s."""
    with s.autocast():
        features = s.nets.critic.encoder.encode(pixels, b.vector)
        q1, q2 = s.nets.critic.q_values(features, b.action)
    return CriticValues(q1.float(), q2.float(), features)


def critic_step(s: TD3State, b: DeviceBatch, q: CriticValues, y: torch.Tensor) -> CriticStats:
    """The critic's loss sum_i w (Q_i(s, a) - y)^2, backward pass and Adam step."""
    loss, td_error = losses.critic_loss(q.q1, q.q2, y, b.weight)
    s.critic_opt.zero_grad(set_to_none=True)
    loss.backward()
    # Deviation: optional clipping of the gradient norm (td3.max_grad_norm; 0: off).
    encoder_grad = losses.clip_grads(*s.critic_params, s.hp.max_grad_norm, s.device)
    s.critic_opt.step()
    return CriticStats(loss.detach(), q.q1.detach().mean(), q.q2.detach().mean(), y.mean(),
                       encoder_grad, td_error, q.features.detach())


def policy_encoding(s: TD3State, b: DeviceBatch, pixels: torch.Tensor) -> torch.Tensor | None:
    """The policy encoder's features of s, with gradient (None under SHARED)."""
    with s.autocast():
        return s.nets.policy_encoding(pixels, b.vector)


def policy_loss(s: TD3State, b: DeviceBatch, encoding: torch.Tensor | None,
                critic_features: torch.Tensor, q1: dict[str, torch.Tensor]) -> torch.Tensor:
    """-mean Q1(s, pi(s)), with the (detached) Q1 head weights ``q1``."""
    nets = s.nets
    with s.autocast():
        # Deviation: Q1 scores the policy's action with the critic encoder's features of s as
        # the critic step computed them (detached: no gradient into the critic encoder), so
        # the policy step runs no critic convolution (DrQ-v2 does the same).
        preactivation = nets.policy.preactivation(nets.policy_features(encoding, critic_features))
        action = torch.tanh(preactivation)  # PolicyNet.act, keeping its input
        x = torch.cat([critic_features, action.to(critic_features.dtype)], dim=1)
        q1_value = torch.func.functional_call(nets.critic.q1, q1, (x,)).squeeze(-1)
    loss = losses.policy_loss(q1_value.float())
    if s.hp.preactivation_l2 > 0.0:  # Deviation, off by default: see losses.preactivation_penalty
        loss = loss + losses.preactivation_penalty(preactivation.float(), s.hp.preactivation_l2)
    return loss


def policy_step(s: TD3State, loss: torch.Tensor) -> None:
    """The policy's backward pass and Adam step; its loss and encoder gradient norm are kept
    in ``s.last_policy`` (the stats of the updates until the next policy step)."""
    s.policy_opt.zero_grad(set_to_none=True)
    loss.backward()
    encoder_grad = losses.clip_grads(*s.policy_params, s.hp.max_grad_norm, s.device)
    s.policy_opt.step()
    s.last_policy.copy_(torch.stack([loss.detach(), encoder_grad]))


def update_targets(pairs: Pairs, tau: float) -> None:
    """theta' <- tau theta + (1 - tau) theta' for each (target, online) pair in ``pairs``."""
    losses.soft_update(*pairs, tau)


def update_critic_target(s: TD3State) -> None:
    """``update_targets`` of the critic target (its encoder included)."""
    update_targets(s.critic_targets, s.hp.tau)


def update_policy_target(s: TD3State) -> None:
    """``update_targets`` of the policy target's own parameters (under SHARED its encoder is
    the critic target's, which ``update_critic_target`` moves)."""
    update_targets(s.policy_targets, s.hp.tau)


def q1_before_step(s: TD3State) -> dict[str, torch.Tensor]:
    """The Q1 head's weights, copied into ``s.q1_before`` (PRE_STEP)."""
    torch._foreach_copy_(list(s.q1_before.values()), [v.detach() for v in s.q1.values()])
    return s.q1_before


def critic_encoder_change(s: TD3State) -> torch.Tensor:
    """L2 norm of the critic encoder's change since the last call (a diagnostic)."""
    return losses.weight_change(s.encoders["critic"], s.snapshots["critic"])


def policy_encoder_change(s: TD3State) -> torch.Tensor:
    """L2 norm of the policy encoder's change since the last call (a diagnostic)."""
    return losses.weight_change(s.encoders["policy"], s.snapshots["policy"])


class Steps(NamedTuple):
    """The pieces ``td3_update`` calls: this module's functions, or wrappers of them with the
    same signatures (``learner.execution``: compiled, on side streams)."""

    prepare: Callable = prepare
    td_target: Callable = td_target
    policy_encoding: Callable = policy_encoding
    critic_values: Callable = critic_values
    q1_before_step: Callable = q1_before_step
    critic_step: Callable = critic_step
    critic_encoder_change: Callable = critic_encoder_change
    update_critic_target: Callable = update_critic_target
    policy_loss: Callable = policy_loss
    policy_step: Callable = policy_step
    update_policy_target: Callable = update_policy_target
    policy_encoder_change: Callable = policy_encoder_change


PAPER = Steps()


def td3_update(s: TD3State, b: DeviceBatch, draws: NoiseDraws, policy_due: bool,
               steps: Steps = PAPER) -> UpdateTensors:
    """One TD3 update: a critic step, and when ``policy_due`` (every ``policy_delay``-th
    update) a policy step and the targets' Polyak step. Returns its stats as device tensors.
    """
    policy_first = policy_due and s.policy_critic is PolicyCritic.PRE_STEP
    obs_shifts, next_shifts = draws.shifts if s.hp.image_shift > 0 else (None, None)
    # Critic step: regress Q1 and Q2 on the clipped double-Q target
    # y = r + gamma (1 - terminated) min_i Q'_i(s', clip(pi'(s') + clip(eps, -c, c), -1, 1)).
    y = steps.td_target(s, b, steps.prepare(s, b.next_image, next_shifts), draws.target_noise)
    pixels = steps.prepare(s, b.image, obs_shifts)
    # The policy encoder's pass needs nothing from the critic step: issued before it, so that
    # the two may run at once on a GPU.
    encoding = steps.policy_encoding(s, b, pixels) if policy_due else None
    q = steps.critic_values(s, b, pixels)
    if policy_first:
        # Deviation (td3.policy_critic=pre_step, as Acme's JAX TD3): the policy step
        # differentiates the critic as it was before this update's critic step, so that the
        # two steps may run at once.
        _policy_update(steps, s, b, encoding, q.features.detach(), steps.q1_before_step(s))
    critic = steps.critic_step(s, b, q, y)
    critic_change = steps.critic_encoder_change(s)  # a diagnostic, not TD3
    if policy_due:
        # Target update, delayed with the policy step. The paper moves both targets after the
        # policy step; the critic target reads only the critic, final here, so it moves now
        # (the same values), beside the policy step. The policy target moves after it.
        steps.update_critic_target(s)
    if policy_due and not policy_first:
        # Delayed policy step, on the critic after this update's critic step (the paper's).
        _policy_update(steps, s, b, encoding, critic.features,
                       {k: v.detach() for k, v in s.q1.items()})
    # Under SHARED the policy's encoder is the critic's, which moves in every update.
    policy_change = (steps.policy_encoder_change(s) if policy_due or not s.policy_owns_encoder
                     else s.zero)
    return UpdateTensors(
        critic_loss=critic.loss, policy_loss=s.last_policy[0], q1_mean=critic.q1_mean,
        q2_mean=critic.q2_mean, target_q_mean=critic.target_mean,
        critic_encoder_grad_norm=critic.encoder_grad_norm,
        policy_encoder_grad_norm=s.last_policy[1], critic_encoder_weight_change=critic_change,
        policy_encoder_weight_change=policy_change, td_error=critic.td_error)


def _policy_update(steps: Steps, s: TD3State, b: DeviceBatch, encoding: torch.Tensor | None,
                   critic_features: torch.Tensor, q1: dict[str, torch.Tensor]) -> None:
    """The delayed policy step (maximise Q1(s, pi(s))), then the policy target's Polyak step."""
    steps.policy_step(s, steps.policy_loss(s, b, encoding, critic_features, q1))
    steps.update_policy_target(s)
