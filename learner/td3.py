"""The TD3 learner: it owns the networks, targets and optimizers and runs the update on them.

The update itself, in the paper's order, is ``learner.update.td3_update``; how it runs on the
device (compile, side streams, CUDA graphs, the stats' copy to the host) is
``learner.execution``; batches reach the device through ``learner.device`` and
``learner.frame_cache``. ``update(batch)`` returns an ``UpdateStats``; its scalars and the
per-sample |TD error| come back to the host in ONE device->host copy, the only host
synchronisation of an update (needed anyway to hand TD errors to prioritized replay).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from common.config_learner import LearnerConfig
from common.config_rules import validate
from common.networks import run_dense_as_conv
from common.specs import EnvSpec
from common.types import FLOAT_FIELDS, CachedBatch, SampleBatch
from learner import state as checkpoint
from learner.device import (DeviceBatch, configure_backends, resolve_device, transfer_for,
                            validate_batch)
from learner.execution import UpdateRunner
from learner.frame_cache import FrameCache, LazyFrameCache
from learner.precision import autocast_for, resolve_kernels
from learner.stats import PendingUpdate, UpdateStats
from learner.topology import Networks, build_networks
from learner.update import TD3State, draw_noise

__all__ = ["TD3Learner", "UpdateStats", "make_learner"]

log = logging.getLogger(__name__)


def _adam(groups: list[dict[str, Any]], device: torch.device) -> torch.optim.Adam:
    # Fused Adam: one kernel (CUDA) or one vectorised loop (CPU) per step, no host sync;
    # capturable on CUDA (step counts on device) so a CUDA graph can hold the step.
    return torch.optim.Adam(groups, fused=True, capturable=device.type == "cuda")


class TD3Learner:
    """TD3 with separate (or, as an ablation, shared) image encoders.

    Args:
        spec: observation and action spec.
        cfg: the learner's config: the algorithm (``td3``, ``network``) and how it runs
            (``execution``: device, precision, compile, CUDA graphs, first convolution).
        seed: seeds network initialisation and the target-smoothing noise.

    Raises:
        ConfigError: for a value ``validate`` refuses (named ``learner.<key>``), an
            unavailable device, or (SEPARATE topology)
            a policy and critic that share a parameter.
    """

    def __init__(self, spec: EnvSpec, cfg: LearnerConfig, seed: int) -> None:
        validate(cfg, "learner.")
        run = cfg.execution
        self.spec, self.cfg, self.td3 = spec, cfg, cfg.td3
        self.device = resolve_device(run.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nets: Networks = build_networks(spec, cfg.network, cfg.td3, self.device)
        configure_backends(self.device)
        # After configure_backends: the CPU probe then runs with the learner's allocator.
        self.kernels = resolve_kernels(run.precision, self.device, spec,
                                       cfg.network.encoder_features, cfg.td3.batch_size,
                                       first_conv=run.first_conv)
        for net in nets.modules().values():
            run_dense_as_conv(net, self.kernels.dense_as_conv)
        self.state = TD3State(
            nets, critic_opt=_adam(nets.critic_groups, self.device),
            policy_opt=_adam(nets.policy_groups, self.device), hp=cfg.td3,
            autocast=autocast_for(self.device, self.kernels.precision),
            pixel_dtype=torch.bfloat16 if self.kernels.precision == "bf16" else torch.float32,
            pixel_blocks=nets.critic.encoder.first_stride if self.kernels.first_conv_blocks else 1)
        self.runner = UpdateRunner(self.state, run.compile, run.cuda_graphs)
        self._to_device = transfer_for(self.device)
        self._frame_cache = LazyFrameCache(spec, self.device)
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(seed)
        self._updates = 0
        log.info("td3_learner device=%s topology=%s precision=%s dense_as_conv=%s "
                 "first_conv_blocks=%s compile=%s cuda_graphs=%s seed=%d", self.device,
                 cfg.network.topology.value, self.kernels.precision, self.kernels.dense_as_conv,
                 self.kernels.first_conv_blocks, run.compile, run.cuda_graphs, seed)

    @property
    def nets(self) -> Networks:
        """The online and target networks."""
        return self.state.nets

    @property
    def critic_opt(self) -> torch.optim.Optimizer:
        """The critic's Adam."""
        return self.state.critic_opt

    @property
    def policy_opt(self) -> torch.optim.Optimizer:
        """The policy's Adam."""
        return self.state.policy_opt

    @property
    def precision(self) -> str:
        """"fp32" or "bf16", as resolved from the configured precision."""
        return self.kernels.precision

    @property
    def updates(self) -> int:
        """Updates done so far (the policy version the learner publishes)."""
        return self._updates

    @property
    def frame_cache(self) -> FrameCache | None:
        """The frame cache CachedBatches are gathered from (None until the first one)."""
        return self._frame_cache.cache

    def update(self, batch: SampleBatch | CachedBatch) -> UpdateStats:
        """One TD3 update from a numpy batch (copied to the device here).

        ``batch.weight`` (importance weights) multiplies each sample's critic loss.

        Raises:
            SpecError: if the batch does not match the spec.
        """
        return self.launch(batch).result()

    def launch(self, batch: SampleBatch | CachedBatch) -> PendingUpdate:
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

    def _launch(self, b: DeviceBatch) -> PendingUpdate:
        self._updates += 1
        policy_due = self._updates % self.td3.policy_delay == 0
        draws = draw_noise(self.td3, b.action.shape, self.generator, self.device)
        return self.runner.launch(b, draws, policy_due, self._updates)

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
            "snapshots": {k: list(v) for k, v in self.state.snapshots.items()},
            "last_policy": self.state.last_policy,
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
                torch._foreach_copy_(self.state.snapshots[key],
                                     [t.to(self.device) for t in saved])
        self.state.last_policy.copy_(data["last_policy"])
        self.runner.recapture()  # captured CUDA graphs point at the replaced optimizer state

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the full state to ``path`` atomically (temporary file, then rename)."""
        checkpoint.save(path, self.spec, self.cfg.network, self.state_dict())

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restores the full state from ``path``.

        Raises:
            CheckpointError: if the file is missing, corrupt, or made for another spec or
                network configuration.
        """
        checkpoint.load(path, self.spec, self.cfg.network, self.device, self.load_state_dict)


def make_learner(spec: EnvSpec, cfg: LearnerConfig, seed: int) -> TD3Learner:
    """Builds the learner for ``cfg`` (the runtime's entry point)."""
    return TD3Learner(spec, cfg, seed)
