"""How an update step runs: eagerly, or replayed from CUDA graphs.

A TD3 update at batch 256 launches a few hundred small kernels; on a fast GPU launching them
from Python takes longer than running them. ``CudaGraphStep`` captures the two kinds of
update (critic only; critic + policy + targets) once each and then replays them, so an update
costs a handful of copies into static input buffers and one graph launch.

The step function must keep all state in tensors it updates in place and never synchronise
with the host (``TD3Learner._step`` is written that way); random numbers are drawn outside
and passed in, so replays see fresh noise.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from common.errors import ConfigError
from learner.device import DeviceBatch

log = logging.getLogger(__name__)

Step = Callable[[DeviceBatch, torch.Tensor, bool], torch.Tensor]


class CudaGraphStep:
    """Runs ``step(batch, noise, policy)`` from one captured CUDA graph per ``policy`` value.

    The first ``warmup`` calls of each kind run eagerly on a side stream (they are real
    updates; they also create the optimizer state and let cuDNN choose its algorithms), the
    next call captures that kind, and every later call replays it. Each graph has its own
    memory pool because the two kinds replay in any order. Learning rates and other
    hyper-parameters are baked in at capture: change them only before the first update.

    Args:
        step: the update step (see the module docstring).
        warmup: eager calls of each kind before its capture.
    """

    def __init__(self, step: Step, warmup: int = 3) -> None:
        if warmup < 1:
            raise ConfigError(f"warmup ({warmup}) must be >= 1 before a CUDA graph capture")
        self._step = step
        self._warmup = warmup
        self._eager_calls = {False: 0, True: 0}
        self._graphs: dict[bool, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[bool, torch.Tensor] = {}
        self._static: tuple[DeviceBatch, torch.Tensor] | None = None
        self._side = torch.cuda.Stream()

    def _eager(self, b: DeviceBatch, noise: torch.Tensor, policy: bool) -> torch.Tensor:
        self._eager_calls[policy] += 1
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            out = self._step(b, noise, policy)
        torch.cuda.current_stream().wait_stream(self._side)
        return out

    def _capture(self, b: DeviceBatch, noise: torch.Tensor, policy: bool) -> None:
        if self._static is None:
            self._static = (DeviceBatch(*(t.clone() for t in b)), noise.clone())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._outputs[policy] = self._step(*self._static, policy)
        self._graphs[policy] = graph
        log.info("cuda_graph_captured policy_step=%s", policy)

    def __call__(self, b: DeviceBatch, noise: torch.Tensor, policy: bool) -> torch.Tensor:
        if policy not in self._graphs:
            if self._eager_calls[policy] < self._warmup:
                return self._eager(b, noise, policy)
            self._capture(b, noise, policy)
        static_batch, static_noise = self._static
        for dst, src in zip(static_batch, b):
            dst.copy_(src, non_blocking=True)
        static_noise.copy_(noise)
        self._graphs[policy].replay()
        return self._outputs[policy]


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
