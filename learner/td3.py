"""The TD3 learner: the update step over the networks ``learner.topology`` builds.

One ``update(batch)`` is one critic step, plus, every ``policy_delay`` updates, one policy step
and a Polyak step of all four target networks (both encoders included). The policy step
differentiates the critic after this update's critic step (the paper's order), or with
``td3.policy_critic=pre_step`` the critic before it, and then runs beside the critic step on a
GPU (``common.config.PolicyCritic``). Every update returns
an ``UpdateStats``; its scalars and the per-sample |TD error| come back to the host in ONE
device->host copy, the only host synchronisation of an update (needed anyway to hand TD errors
to prioritized replay; everything else, gradient norms and clipping included, stays on device).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from common.config import LearnerConfig, PolicyCritic
from common.errors import ConfigError
from common.networks import run_dense_as_conv
from common.specs import EnvSpec
from common.types import FLOAT_FIELDS, CachedBatch, SampleBatch
from learner import losses, state
from learner.augment import draw_shifts
from learner.device import (DeviceBatch, configure_backends, resolve_device,
                            transfer_for, validate_batch)
from learner.frame_cache import LazyFrameCache
from learner.graphs import Draws, executor_for
from learner.lanes import Lanes
from learner.pixels import prepare_image
from learner.precision import autocast_for, resolve_kernels
from learner.stats import PendingUpdate, UpdateStats
from learner.topology import Networks, build_networks

log = logging.getLogger(__name__)


def _check_config(cfg: LearnerConfig) -> None:
    td3 = cfg.td3
    checks = [
        (0.0 <= td3.gamma <= 1.0, f"gamma ({td3.gamma}) must be in [0, 1]"),
        (0.0 < td3.tau <= 1.0, f"tau ({td3.tau}) must be in (0, 1]"),
        (td3.policy_noise >= 0.0, f"policy_noise ({td3.policy_noise}) must be >= 0"),
        (td3.noise_clip >= 0.0, f"noise_clip ({td3.noise_clip}) must be >= 0"),
        (td3.policy_delay >= 1, f"policy_delay ({td3.policy_delay}) must be >= 1"),
        (td3.batch_size >= 1, f"batch_size ({td3.batch_size}) must be >= 1"),
        (td3.encoder_lr > 0.0, f"encoder_lr ({td3.encoder_lr}) must be > 0"),
        (td3.head_lr > 0.0, f"head_lr ({td3.head_lr}) must be > 0"),
        (td3.max_grad_norm >= 0.0, f"max_grad_norm ({td3.max_grad_norm}) must be >= 0"),
        (td3.preactivation_l2 >= 0.0,
         f"preactivation_l2 ({td3.preactivation_l2}) must be >= 0"),
        (isinstance(td3.image_shift, int) and td3.image_shift >= 0,
         f"image_shift ({td3.image_shift!r}) must be an int >= 0 (0: off)"),
    ]
    orders = [c.value for c in PolicyCritic]
    checks.append((td3.policy_critic in orders,
                   f"policy_critic ({td3.policy_critic!r}) must be one of {orders}"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _adam(groups: list[dict[str, Any]], device: torch.device) -> torch.optim.Adam:
    # Fused Adam: one kernel (CUDA) or one vectorised loop (CPU) per step, no host sync;
    # capturable on CUDA (step counts on device) so a CUDA graph can hold the step.
    return torch.optim.Adam(groups, fused=True, capturable=device.type == "cuda")


def _params(groups: list[dict[str, Any]], encoder: bool) -> list[torch.Tensor]:
    return [p for g in groups if (g["name"] == "encoder") == encoder for p in g["params"]]


class TD3Learner:
    """TD3 with separate (or, as an ablation, shared) image encoders.

    Args:
        spec: observation and action spec.
        cfg: the learner's config (device, precision, TD3 and network settings).
        seed: seeds network initialisation and the target-smoothing noise.

    Raises:
        ConfigError: for bad hyper-parameters, an unavailable device, or (SEPARATE topology)
            a policy and critic that share a parameter.
    """

    def __init__(self, spec: EnvSpec, cfg: LearnerConfig, seed: int) -> None:
        _check_config(cfg)
        self.spec, self.cfg, self.td3 = spec, cfg, cfg.td3
        self.device = resolve_device(cfg.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.nets: Networks = build_networks(spec, cfg.network, cfg.td3, self.device)
        configure_backends(self.device)
        self.policy_opt = _adam(self.nets.policy_groups, self.device)
        self.critic_opt = _adam(self.nets.critic_groups, self.device)
        self._grads = {"critic": (_params(self.nets.critic_groups, True),
                                  _params(self.nets.critic_groups, False)),
                       "policy": (_params(self.nets.policy_groups, True),
                                  _params(self.nets.policy_groups, False))}
        # After configure_backends: the CPU probe then runs with the learner's allocator.
        kernels = resolve_kernels(cfg.precision, self.device, spec,
                                  cfg.network.encoder_features, cfg.td3.batch_size,
                                  first_conv=cfg.first_conv)
        self.kernels = kernels
        for net in (self.nets.policy, self.nets.critic, self.nets.policy_target,
                    self.nets.critic_target):
            run_dense_as_conv(net, kernels.dense_as_conv)
        self._autocast = autocast_for(self.device, kernels.precision)
        # How the update converts its frames (ImageEncoder.prepare): dtype, blocks.
        self._pixel_form = (torch.bfloat16 if kernels.precision == "bf16" else torch.float32,
                            self.nets.critic.encoder.first_stride if kernels.first_conv_blocks
                            else 1)
        self._to_device = transfer_for(self.device)
        self._frame_cache = LazyFrameCache(spec, self.device)
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(seed)
        self._updates = 0
        self._stats_slots: list[PendingUpdate | None] = [None, None]
        self._stats_buffers: list[torch.Tensor | None] = [None, None]
        self._encoders = {"critic": list(self.nets.critic.encoder.parameters()),
                          "policy": list(self.nets.policy.encoder.parameters())}
        self._snapshots = {k: [p.detach().clone() for p in v] for k, v in self._encoders.items()}
        self._last_policy = torch.zeros(2, device=self.device)  # loss, encoder grad norm
        critic_ids = {id(p) for p in self._encoders["critic"]}
        # Under SEPARATE the policy encoder changes only in a policy step: 0 in the others.
        self._policy_encoder_own = not any(id(p) in critic_ids for p in self._encoders["policy"])
        self._zero = torch.zeros((), device=self.device)
        self._pre_step = PolicyCritic(cfg.td3.policy_critic) is PolicyCritic.PRE_STEP
        self._q1 = dict(self.nets.critic.q1.named_parameters())
        # PRE_STEP: the policy step reads a copy of the Q1 head taken before the critic's
        # Adam step, so the two steps can run at once without the policy reading weights the
        # critic step is writing. (The critic's encoder features are detached either way.)
        self._q1_before = ({k: v.detach().clone() for k, v in self._q1.items()}
                           if self._pre_step else {})
        self._critic_pairs, self._policy_pairs = self.nets.split_target_pairs()
        self._lanes = Lanes(self.device, ("target_critic", "target_policy", "policy", "diagnostics"))
        pieces = {"target_critic": self._target_critic_forward,
                  "target_policy": self._target_policy_forward,
                  "target_head": self._target_head, "critic": self._critic_forward,
                  "policy_encoder": self._policy_encoder_forward, "policy_head": self._policy_head}
        if cfg.compile:
            pieces = {k: torch.compile(f, dynamic=False) for k, f in pieces.items()}
        # The frames' conversion (a strided copy, 34 us per batch as space-to-depth on an
        # H200 through torch's generic copy kernel): compiled, one tiled Triton kernel. On a
        # CPU it stays eager, where OpenCV interleaves the frames
        # (common.pixel_layout.interleave_frames).
        self._prepare = (torch.compile(prepare_image, dynamic=False)
                         if cfg.compile and self.device.type == "cuda" else prepare_image)
        self._terms = pieces
        self._run = executor_for(self._step, self.device, cfg.cuda_graphs)
        log.info("td3_learner device=%s topology=%s precision=%s dense_as_conv=%s "
                 "first_conv_blocks=%s compile=%s cuda_graphs=%s seed=%d", self.device,
                 cfg.network.topology.value, kernels.precision, kernels.dense_as_conv,
                 kernels.first_conv_blocks, cfg.compile, cfg.cuda_graphs, seed)

    @property
    def precision(self) -> str:
        """"fp32" or "bf16", as resolved from the configured precision."""
        return self.kernels.precision

    @property
    def updates(self) -> int:
        """Updates done so far (the policy version the learner publishes)."""
        return self._updates

    # ---------------------------------------------------------------- the step, in pieces

    def _target_critic_forward(self, b: DeviceBatch, pixels: torch.Tensor) -> torch.Tensor:
        """The target critic encoder's features of the next observation's ``pixels``."""
        with torch.no_grad(), self._autocast():
            return self.nets.critic_target.encoder.encode(pixels, b.next_vector)

    def _target_policy_forward(self, b: DeviceBatch,
                               pixels: torch.Tensor) -> torch.Tensor | None:
        """The target policy encoder's features of the next observation's ``pixels`` (None
        under SHARED)."""
        with torch.no_grad(), self._autocast():
            return self.nets.target_policy_encoding(pixels, b.next_vector)

    def _target_head(self, b: DeviceBatch, target_features: torch.Tensor,
                     target_encoding: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """The TD target y: target policy (smoothed) and target critic heads."""
        nets, td3 = self.nets, self.td3
        with torch.no_grad(), self._autocast():
            policy_features = nets.target_policy_features(target_encoding, target_features)
            next_action = losses.smoothed_target_action(
                nets.policy_target.act(policy_features).float(), noise, td3.noise_clip)
            next_q1, next_q2 = nets.critic_target.q_values(target_features, next_action)
            return losses.td_target(b.reward, b.terminated, next_q1.float(), next_q2.float(),
                                    td3.gamma)

    def _critic_forward(self, b: DeviceBatch, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The online critic's Q values of the batch (observation ``pixels``), and its
        encoder features."""
        nets = self.nets
        with self._autocast():
            features = nets.critic.encoder.encode(pixels, b.vector)
            q1, q2 = nets.critic.q_values(features, b.action)
        return q1.float(), q2.float(), features

    def _policy_encoder_forward(self, b: DeviceBatch,
                                pixels: torch.Tensor) -> torch.Tensor | None:
        """The policy encoder's features of the batch (observation ``pixels``), with gradient
        (None under SHARED)."""
        with self._autocast():
            return self.nets.policy_encoding(pixels, b.vector)

    def _policy_head(self, b: DeviceBatch, encoding: torch.Tensor | None,
                     critic_features: torch.Tensor,
                     q1_params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The policy loss, from the policy's encoding, the critic step's features and the
        (detached) weights of the Q1 head that scores the policy's action."""
        nets = self.nets
        with self._autocast():
            # The critic scores the policy's action with its OWN encoder's features of this
            # batch, as the critic step computed them (detached: no gradient into the critic
            # encoder), so the policy step runs no critic convolution (DrQ-v2 does the same).
            preactivation = nets.policy.preactivation(
                nets.policy_features(encoding, critic_features))
            action = torch.tanh(preactivation)  # PolicyNet.act, keeping its input
            x = torch.cat([critic_features, action.to(critic_features.dtype)], dim=1)
            q1 = torch.func.functional_call(nets.critic.q1, q1_params, (x,)).squeeze(-1)
        loss = losses.policy_loss(q1.float())
        if self.td3.preactivation_l2 > 0.0:
            loss = loss + losses.preactivation_penalty(preactivation.float(),
                                                       self.td3.preactivation_l2)
        return loss

    def _queue_td_target(self, b: DeviceBatch, next_pixels: torch.Tensor,
                         noise: torch.Tensor) -> torch.Tensor:
        """Queues the TD target y on the GPU's side lanes (``Lanes``: the target critic and
        target policy encoders each on a lane of their own); the main stream must join lane
        "target_critic" before it reads y."""
        lanes, terms = self._lanes, self._terms
        target_features = lanes.run("target_critic", terms["target_critic"], b, next_pixels)
        target_encoding = lanes.run("target_policy", terms["target_policy"], b, next_pixels)
        lanes.after("target_critic", "target_policy")
        return lanes.run("target_critic", terms["target_head"], b, target_features,
                         target_encoding, noise)

    def _critic_step(self, b: DeviceBatch, q1: torch.Tensor, q2: torch.Tensor, y: torch.Tensor,
                     features: torch.Tensor) -> list[torch.Tensor]:
        """The critic's loss, backward pass and Adam step."""
        loss, td = losses.critic_loss(q1, q2, y, b.weight)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        encoder_grad = losses.clip_grads(*self._grads["critic"], self.td3.max_grad_norm,
                                         self.device)
        self.critic_opt.step()
        return [loss.detach(), q1.detach().mean(), q2.detach().mean(), y.mean(), encoder_grad,
                td, features.detach()]

    def _policy_step(self, b: DeviceBatch, encoding: torch.Tensor | None,
                     critic_features: torch.Tensor, q1_params: dict[str, torch.Tensor],
                     targets: tuple[list[torch.Tensor], list[torch.Tensor]]) -> None:
        """The policy's loss, backward pass and Adam step, then Polyak averaging of
        ``targets``."""
        loss = self._terms["policy_head"](b, encoding, critic_features, q1_params)
        self.policy_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._lanes.join("policy")  # the encoder's backward ran on its forward's lane
        encoder_grad = losses.clip_grads(*self._grads["policy"], self.td3.max_grad_norm,
                                         self.device)
        self.policy_opt.step()
        self._last_policy.copy_(torch.stack([loss.detach(), encoder_grad]))
        losses.soft_update(*targets, self.td3.tau)

    def update(self, batch: SampleBatch | CachedBatch) -> UpdateStats:
        """One TD3 update from a numpy batch (copied to the device here).

        ``batch.weight`` (importance weights) multiplies each sample's critic loss.

        Raises:
            SpecError: if the batch does not match the spec.
        """
        return self.launch(batch).result()

    def launch(self, batch: SampleBatch | CachedBatch) -> "PendingUpdate":
        """Queues one update from a numpy batch and returns at once (on CUDA, before the GPU
        has run it); ``result()`` of the returned handle waits for its stats.

        A loop that launches update N+1 before reading N's stats keeps the GPU busy while the
        host reads stats, samples and copies the next batch (``learner.loop.LearnerLoop``).
        The stats of the two latest launches are buffered; launching a third reads the oldest.

        Raises:
            SpecError: if the batch does not match the spec.
        """
        pending = self._launch(self.to_device(batch))
        self._to_device.release()  # the copy of a later batch may reuse its buffers after this
        return pending

    def skip(self, batch: SampleBatch | CachedBatch) -> None:
        """Drops ``batch`` without an update (``learner.loop`` refuses a non-finite one): the
        weights, optimizers and update count stay as they were. A CachedBatch's new frames
        are still stored, since the replay client counts on the frame cache holding them;
        its float fields, which nothing reads then, are zeroed so that they pass the spec.

        Raises:
            SpecError: if the batch's rows or frames do not match the frame cache.
        """
        if isinstance(batch, CachedBatch):
            zeros = {name: np.zeros_like(getattr(batch, name)) for name in FLOAT_FIELDS}
            self.to_device(batch._replace(**zeros))
            self._to_device.release()

    def to_device(self, batch: SampleBatch | CachedBatch) -> DeviceBatch:
        """Validates ``batch`` and copies it to the learner's device (pinned, non-blocking on
        CUDA: the copy may still be in flight when this returns; the update waits for it). A
        CachedBatch's stacks come from the learner's frame cache (``learner.frame_cache``)."""
        if isinstance(batch, CachedBatch):
            return self._to_device.cached(batch, self._frame_cache.checked(batch))
        validate_batch(self.spec, batch)
        return self._to_device(batch)

    def drop_frame_cache(self) -> None:
        """Forgets the frame cache: the next CachedBatch starts an empty one. For when a batch
        may have been lost before its frames were stored (its client must then start over:
        ``replay.client.ReplayClient.reset_cache``)."""
        self._frame_cache.cache = None

    def update_on_device(self, b: DeviceBatch) -> UpdateStats:
        """``update`` from a batch already on the learner's device (e.g. from a device-resident
        replay cache); the caller guarantees the spec's shapes and dtypes."""
        return self._launch(b).result()

    def _launch(self, b: DeviceBatch) -> "PendingUpdate":
        self._updates += 1
        policy_updated = self._updates % self.td3.policy_delay == 0
        # Drawn outside the step so that a captured CUDA graph replays with fresh noise.
        noise = torch.randn(b.action.shape, generator=self.generator, device=self.device)
        shifts = draw_shifts(self.td3.image_shift, b.action.shape[0], self.generator,
                             self.device)
        packed = self._run(b, Draws(noise * self.td3.policy_noise, shifts), policy_updated)
        slot = self._updates % len(self._stats_slots)
        previous = self._stats_slots[slot]
        if previous is not None:
            previous.result()  # its host buffer is about to be reused
        pending = PendingUpdate(self._updates, policy_updated, packed, self._stats_host(slot, packed))
        self._stats_slots[slot] = pending
        return pending

    def _stats_host(self, slot: int, packed: torch.Tensor) -> torch.Tensor | None:
        if self.device.type != "cuda":
            return None
        buf = self._stats_buffers[slot]
        if buf is None or buf.shape != packed.shape:
            buf = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            self._stats_buffers[slot] = buf
        return buf

    def _step(self, b: DeviceBatch, draws: Draws, policy: bool) -> torch.Tensor:
        """One update on device tensors; returns the packed stats (scalars, then |TD error|).

        No host synchronisation and no Python-side state change, so a CUDA graph can
        capture it (``learner.graphs``).
        """
        lanes, pad = self._lanes, self.td3.image_shift
        obs_shifts, next_shifts = draws.shifts if pad > 0 else (None, None)
        # The next observation first: the TD target's lanes start while the main stream
        # converts the observation.
        y = self._queue_td_target(b, self._prepare(b.next_image, next_shifts, pad,
                                                   *self._pixel_form), draws.noise)
        pixels = self._prepare(b.image, obs_shifts, pad, *self._pixel_form)
        # The policy encoder's forward pass needs nothing from the critic step: it runs on
        # its lane beside the critic's passes, backward pass and Adam step.
        encoding = (lanes.run("policy", self._terms["policy_encoder"], b, pixels) if policy
                    else None)
        q1, q2, features = self._terms["critic"](b, pixels)
        lanes.join("target_critic")
        if policy and self._pre_step:
            # The whole policy step on its lane, beside the critic's backward pass and Adam
            # step.
            torch._foreach_copy_(list(self._q1_before.values()),
                                 [v.detach() for v in self._q1.values()])
            lanes.run("policy", self._policy_step, b, encoding, features.detach(),
                      self._q1_before, self._policy_pairs)
        critic_loss, q1_mean, q2_mean, y_mean, critic_grad, td, features = \
            self._critic_step(b, q1, q2, y, features)
        # The critic is final for this update: measure its encoder, and (in a policy update)
        # Polyak-average its target, beside the policy step.
        critic_change = lanes.run("diagnostics", losses.weight_change,
                                  self._encoders["critic"], self._snapshots["critic"])
        if policy:
            lanes.run("diagnostics", losses.soft_update, *self._critic_pairs,
                      self.td3.tau)
        if policy and not self._pre_step:
            lanes.join("policy")
            self._policy_step(b, encoding, features,
                              {k: v.detach() for k, v in self._q1.items()},
                              self._policy_pairs)
        if policy or not self._policy_encoder_own:
            policy_change = lanes.run("policy", losses.weight_change,
                                      self._encoders["policy"], self._snapshots["policy"])
        else:
            policy_change = self._zero
        lanes.join("policy", "diagnostics")
        scalars = torch.stack([critic_loss, self._last_policy[0], q1_mean, q2_mean, y_mean,
                               critic_grad, self._last_policy[1], critic_change, policy_change])
        return torch.cat([scalars.float(), td.float()])

    # ---------------------------------------------------------------- weights and state

    def policy_state(self) -> dict[str, np.ndarray]:
        """The online policy's weights (encoder + head) as CPU numpy arrays, for rollout
        actors' ``common.networks.load_policy_state``."""
        return {k: v.detach().contiguous().cpu().numpy().copy()
                 for k, v in self.nets.policy.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """Full learner state: networks, targets, optimizers, counter, RNG, stats snapshots."""
        return {
            "modules": {k: m.state_dict() for k, m in self.nets.modules().items()},
            "optimizers": {"policy": self.policy_opt.state_dict(),
                           "critic": self.critic_opt.state_dict()},
            "updates": self._updates,
            "rng": self.generator.get_state(),
            "rng_device": self.device.type,
            "snapshots": {k: list(v) for k, v in self._snapshots.items()},
            "last_policy": self._last_policy,
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Restores ``state_dict()`` output (validated by ``learner.state``)."""
        for name, module in self.nets.modules().items():
            module.load_state_dict(data["modules"][name])
        self.policy_opt.load_state_dict(data["optimizers"]["policy"])
        self.critic_opt.load_state_dict(data["optimizers"]["critic"])
        for opt, groups in ((self.policy_opt, self.nets.policy_groups),
                            (self.critic_opt, self.nets.critic_groups)):
            for group, configured in zip(opt.param_groups, groups):
                group["lr"] = configured["lr"]  # the config in force wins over the saved lr
                group["capturable"] = self.device.type == "cuda"
        self._updates = int(data["updates"])
        if data["rng_device"] == self.device.type:
            self.generator.set_state(data["rng"].cpu())
        else:  # a CPU and a CUDA generator state do not convert; only the noise stream differs
            log.warning("rng_not_restored saved_device=%s device=%s", data["rng_device"],
                        self.device.type)
        with torch.no_grad():
            for key, saved in data["snapshots"].items():
                torch._foreach_copy_(self._snapshots[key], [t.to(self.device) for t in saved])
        self._last_policy.copy_(data["last_policy"])
        # Captured CUDA graphs point at the replaced optimizer state: capture afresh.
        self._run = executor_for(self._step, self.device, self.cfg.cuda_graphs)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the full state to ``path`` atomically (temporary file, then rename)."""
        state.save(path, self.spec, self.cfg.network, self.state_dict())

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restores the full state from ``path``.

        Raises:
            CheckpointError: if the file is missing, corrupt, or made for another spec or
                network configuration.
        """
        state.load(path, self.spec, self.cfg.network, self.device, self.load_state_dict)


def make_learner(spec: EnvSpec, cfg: LearnerConfig, seed: int) -> TD3Learner:
    """Builds the learner for ``cfg`` (the runtime's entry point)."""
    return TD3Learner(spec, cfg, seed)
