"""How ``td3_update`` runs on the learner's device: compiled, on side streams, from CUDA graphs.

``UpdateRunner`` hands ``td3_update`` (learner/update.py) wrappers of its pieces with the
same signatures and results:

- compiled: with ``learner.compile``, the forward passes and losses (``COMPILED``) go through
  ``torch.compile``; on CUDA the frames' conversion too (one tiled Triton kernel).
- placed: on CUDA, the pieces that depend on nothing the main stream is computing run on side
  streams beside it (``PLACES``, ``learner.streams``); the TD target's two target-encoder
  passes run on one stream each. On a CPU every piece runs inline, in ``td3_update``'s order.
- graphed: with ``learner.cuda_graphs``, whole updates are captured and replayed
  (``learner.graphs``).

It then packs the update's stats into one tensor and starts its copy to the host
(``learner.stats``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from common.config import PolicyCritic
from learner import update
from learner.device import DeviceBatch
from learner.graphs import executor_for
from learner.pixels import prepare_image
from learner.stats import PendingUpdate, pack
from learner.streams import SideStreams
from learner.update import NoiseDraws, Steps, TD3State, td3_update

STREAMS = ("target_critic", "target_policy", "policy", "diagnostics")
COMPILED = ("target_critic_features", "target_policy_encoding", "td_target_from",
            "critic_values", "policy_encoding", "policy_loss")


@dataclass(frozen=True)
class Place:
    """Where a piece of the update runs: on side stream ``stream`` (None: the main stream),
    after the main stream has joined the side streams ``joins``."""

    stream: str | None = None
    joins: tuple[str, ...] = ()


def places(policy_first: bool) -> dict[str, Place]:
    """Where each piece of ``td3_update`` runs on CUDA (a piece not named: the main stream).

    Each side stream first waits for everything queued on the main stream, so a piece placed
    there reads what the pieces before it wrote. It must write nothing that the main stream
    reads before the end of the update, where the main stream joins the side streams.

    Args:
        policy_first: the policy step reads the critic before its step
            (``PolicyCritic.PRE_STEP``), and then runs beside it on the "policy" stream.
    """
    policy_side = Place("policy") if policy_first else Place()
    return {
        "policy_encoding": Place("policy"),
        # The critic step reads y. Under PRE_STEP the join comes before the policy stream
        # forks, so the policy target's Polyak step follows the TD target's reads of it.
        "q1_before_step": Place(joins=("target_critic",)),
        "critic_step": Place(joins=("target_critic",)),
        "critic_encoder_change": Place("diagnostics"),
        "update_critic_target": Place("diagnostics"),
        "policy_loss": policy_side if policy_first else Place(joins=("policy",)),  # reads encoding
        "policy_step": policy_side,
        "update_policy_target": policy_side,
        "policy_encoder_change": Place("policy"),
    }


class UpdateRunner:
    """Runs ``td3_update`` on ``state`` for the learner (see the module docstring).

    Args:
        state: the update's state; its networks' device is where the update runs.
        compile: torch.compile the forward passes and losses.
        cuda_graphs: capture and replay whole updates (CUDA only).
        streams: the side streams (``SideStreams(device, STREAMS)`` if None).

    Raises:
        ConfigError: CUDA graphs asked for on a device that is not CUDA.
    """

    def __init__(self, state: TD3State, compile: bool, cuda_graphs: bool,
                 streams: SideStreams | None = None) -> None:
        self.state, self.device, self._cuda_graphs = state, state.device, cuda_graphs
        self.streams = streams if streams is not None else SideStreams(state.device, STREAMS)
        self._fn: dict[str, Callable[..., Any]] = {name: getattr(update, name) for name in COMPILED}
        convert = prepare_image
        if compile:
            self._fn = {k: torch.compile(f, dynamic=False) for k, f in self._fn.items()}
            # On a CPU the conversion stays eager, where OpenCV interleaves the frames
            # (common.pixel_layout.interleave_frames).
            if self.device.type == "cuda":
                convert = torch.compile(prepare_image, dynamic=False)
        self._convert = convert
        self.steps = self._placed_steps(places(state.policy_critic is PolicyCritic.PRE_STEP))
        self.executor = executor_for(self._step, self.device, cuda_graphs)
        self._stats_slots: list[PendingUpdate | None] = [None, None]
        self._stats_buffers: list[torch.Tensor | None] = [None, None]

    def _placed_steps(self, where: dict[str, Place]) -> Steps:
        pieces = {name: self._fn.get(name, getattr(update, name)) for name in Steps._fields}
        pieces["prepare"], pieces["td_target"] = self._prepare, self._td_target
        return Steps(**{name: self._placed(fn, where.get(name, Place()))
                        for name, fn in pieces.items()})

    def _placed(self, fn: Callable[..., Any], place: Place) -> Callable[..., Any]:
        streams = self.streams
        if place.stream is None and not place.joins:
            return fn

        def placed(*args: Any) -> Any:
            streams.join(*place.joins)
            return fn(*args) if place.stream is None else streams.run(place.stream, fn, *args)
        placed.__name__ = getattr(fn, "__name__", "placed")
        return placed

    def _prepare(self, s: TD3State, image: torch.Tensor,
                 shifts: torch.Tensor | None) -> torch.Tensor:
        """``update.prepare``, compiled on CUDA."""
        return self._convert(image, shifts, s.hp.image_shift, s.pixel_dtype, s.pixel_blocks)

    def _td_target(self, s: TD3State, b: DeviceBatch, next_pixels: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
        """``update.td_target`` with each target encoder on a side stream of its own; y is
        left on the "target_critic" stream (the critic step joins it)."""
        streams, fn = self.streams, self._fn
        features = streams.run("target_critic", fn["target_critic_features"], s, b, next_pixels)
        encoding = streams.run("target_policy", fn["target_policy_encoding"], s, b, next_pixels)
        streams.after("target_critic", "target_policy")
        return streams.run("target_critic", fn["td_target_from"], s, b, features, encoding, noise)

    def _step(self, b: DeviceBatch, draws: NoiseDraws, policy_due: bool) -> torch.Tensor:
        """One update on device tensors; returns its packed stats (``learner.stats.pack``)."""
        stats = td3_update(self.state, b, draws, policy_due, self.steps)
        self.streams.join("policy", "diagnostics")
        return pack(stats)

    def launch(self, b: DeviceBatch, draws: NoiseDraws, policy_due: bool,
               updates: int) -> PendingUpdate:
        """Queues update number ``updates`` and starts its stats' copy to the host. The stats
        of the two latest launches are buffered; launching a third waits for the oldest."""
        packed = self.executor(b, draws, policy_due)
        slot = updates % len(self._stats_slots)
        previous = self._stats_slots[slot]
        if previous is not None:
            previous.result()  # its host buffer is about to be reused
        pending = PendingUpdate(updates, policy_due, packed, self._stats_host(slot, packed))
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

    def recapture(self) -> None:
        """Drops captured CUDA graphs (they point at optimizer state a load replaced)."""
        self.executor = executor_for(self._step, self.device, self._cuda_graphs)
