"""How an update step runs: eagerly, or replayed from CUDA graphs.

A TD3 update at batch 256 launches a few hundred small kernels; on a fast GPU launching them
from Python takes longer than running them. ``CudaGraphStep`` captures the two kinds of
update (critic only; critic + policy + targets) and then replays them, so an update costs one
graph launch.

The step function must keep all state in tensors it updates in place and never synchronise
with the host (``learner.update.td3_update`` is written that way); random numbers are drawn
outside and passed in (``NoiseDraws``), so replays see fresh noise.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from common.errors import ConfigError
from learner.device import DeviceBatch
from learner.update import NoiseDraws

log = logging.getLogger(__name__)

Step = Callable[[DeviceBatch, NoiseDraws, bool], torch.Tensor]


def _layout(b: DeviceBatch) -> tuple:
    """Where and how a batch's tensors lie: a graph captured on them reads exactly that."""
    return tuple((t.data_ptr(), tuple(t.shape), t.stride(), t.dtype) for t in b)


class CudaGraphStep:
    """Runs ``step(batch, draws, policy)`` from captured CUDA graphs.

    The first ``warmup`` calls of each kind (``policy`` False or True) run eagerly on a side
    stream (they are real updates; they also create the optimizer state and let cuDNN choose
    its algorithms). After that, a graph is captured for each kind and each set of batch
    buffers it is called with, reading those buffers in place: the learner's host-to-device
    copies alternate between two slots (``learner.device.CudaTransfer``), so an update from
    either slot replays its own graph and copies nothing. Batches in more than
    ``max_layouts`` other places are first copied into one static batch that has graphs of
    its own. Each graph has its own memory pool because they replay in any order. Learning
    rates and other hyper-parameters are baked in at capture: change them only before the
    first update.

    Args:
        step: the update step (see the module docstring).
        warmup: eager calls of each kind before its capture.
        max_layouts: batch buffer sets that get graphs reading them in place.
    """

    def __init__(self, step: Step, warmup: int = 3, max_layouts: int = 2) -> None:
        if warmup < 1:
            raise ConfigError(f"warmup ({warmup}) must be >= 1 before a CUDA graph capture")
        self._step = step
        self._warmup = warmup
        self._max_layouts = max_layouts
        self._eager_calls = {False: 0, True: 0}
        # (policy, layout or None for the static batch) -> graph, its output, its inputs
        self._graphs: dict[tuple[bool, tuple | None], tuple[torch.cuda.CUDAGraph, torch.Tensor, DeviceBatch]] = {}
        self._layouts: set[tuple] = set()
        self._static: DeviceBatch | None = None
        self._draws: NoiseDraws | None = None
        self._side = torch.cuda.Stream()

    def _eager(self, b: DeviceBatch, draws: NoiseDraws, policy: bool) -> torch.Tensor:
        self._eager_calls[policy] += 1
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            out = self._step(b, draws, policy)
        torch.cuda.current_stream().wait_stream(self._side)
        return out

    def _capture(self, b: DeviceBatch, policy: bool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, DeviceBatch]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._step(b, self._draws, policy)
        log.info("cuda_graph_captured policy_step=%s graphs=%d", policy, len(self._graphs) + 1)
        return graph, out, b  # b is kept so its buffers outlive the graph that reads them

    def _graph_for(self, b: DeviceBatch, policy: bool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, DeviceBatch]:
        layout = _layout(b)
        if layout not in self._layouts and len(self._layouts) < self._max_layouts:
            self._layouts.add(layout)
        if layout in self._layouts:
            key = (policy, layout)
            if key not in self._graphs:
                self._graphs[key] = self._capture(b, policy)
            return self._graphs[key]
        if self._static is None:
            self._static = DeviceBatch(*(t.clone() for t in b))
        for dst, src in zip(self._static, b):
            dst.copy_(src, non_blocking=True)
        key = (policy, None)
        if key not in self._graphs:
            self._graphs[key] = self._capture(self._static, policy)
        return self._graphs[key]

    @property
    def captured(self) -> list[tuple[bool, bool]]:
        """(policy step, in place) of each captured graph: in place graphs read the batch
        buffers they were captured on; the others read the static batch copy."""
        return [(policy, layout is not None) for policy, layout in self._graphs]

    @property
    def in_place_layouts(self) -> int:
        """Batch buffer sets that have graphs reading them in place."""
        return len(self._layouts)

    def __call__(self, b: DeviceBatch, draws: NoiseDraws, policy: bool) -> torch.Tensor:
        if self._eager_calls[policy] < self._warmup:
            return self._eager(b, draws, policy)
        if self._draws is None:
            self._draws = NoiseDraws(*(t.clone() for t in draws))
        for dst, src in zip(self._draws, draws):
            dst.copy_(src)
        graph, out, _ = self._graph_for(b, policy)
        graph.replay()
        return out


def executor_for(step: Step, device: torch.device, cuda_graphs: bool) -> Step:
    """``step`` itself, or a CudaGraphStep around it when CUDA graphs are asked for.

    Raises:
        ConfigError: if CUDA graphs are asked for on a device that is not CUDA.
    """
    if not cuda_graphs:
        return step
    if device.type != "cuda":
        raise ConfigError(f"cuda_graphs needs a CUDA device, the learner runs on {device}")
    return CudaGraphStep(step)
