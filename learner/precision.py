"""How a learner computes: plain fp32 or bf16 autocast, and on a CPU which kernels.

"auto" means bf16 on CUDA. On a CPU it is measured, because the CPU's flags do not say which
is faster: bf16 doubles the convolutions' and matrix products' rate where oneDNN has bf16
dot-product kernels for the CPU (AMX on Intel Xeons; AVX-512 bf16 on AMD EPYC Zen 5: 0.065
against 0.120 s per update at batch 256 on two cores), and was several times slower than fp32
on an Intel Xeon with the same AVX-512 bf16 flag but no AMX. So the learner times its own
image encoder (the update's convolutions and largest matrix product), forward and backward
at its batch size, both ways, and keeps bf16 only if it is clearly faster (``BF16_MARGIN``).

In fp32 the same timing chooses how the encoder's linear layer runs on a CPU: as MKL's matrix
product or as oneDNN's convolution (``common.networks.DenseHWC``), which was twice as fast on
the AMD EPYC. Like cuDNN's autotuner, the choice can differ between machines and, near a tie,
between runs; the log line says what was chosen and why.

Losses, targets and optimizer state stay fp32 in every case.
"""
from __future__ import annotations

import contextlib
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from common.errors import ConfigError
from common.networks import DENSE_CONV_MIN_BATCH, ImageEncoder, run_dense_as_conv, to_channels_last
from common.specs import EnvSpec

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
# bf16 is kept only below this share of fp32's time: a near tie is not worth bf16's rounding.
BF16_MARGIN = 0.9
# The convolution route for the linear layer is kept only below this share of the product's.
CONV_MARGIN = 0.95


@dataclass(frozen=True)
class CpuProbe:
    """Median seconds of one encoder forward and backward pass, each way it was timed (None:
    not timed)."""

    fp32_gemm_s: float
    fp32_conv_s: float | None = None
    bf16_s: float | None = None

    @property
    def dense_as_conv(self) -> bool:
        return self.fp32_conv_s is not None and self.fp32_conv_s < CONV_MARGIN * self.fp32_gemm_s

    @property
    def fp32_s(self) -> float:
        return self.fp32_conv_s if self.dense_as_conv else self.fp32_gemm_s

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16_s is not None and self.bf16_s < BF16_MARGIN * self.fp32_s else "fp32"


@dataclass(frozen=True)
class Kernels:
    """What a learner runs: ``precision`` ("fp32" or "bf16") and, for fp32 on a CPU, whether
    the encoders' linear layers run as convolutions."""

    precision: str
    dense_as_conv: bool = False


ProbeFn = Callable[[EnvSpec, int, int, bool, bool], CpuProbe]


def probe_cpu(spec: EnvSpec, features: int, batch_size: int, with_bf16: bool, with_conv: bool,
              rounds: int = 3) -> CpuProbe:
    """Times the learner's image encoder, forward and backward on a random batch: in fp32 with
    its linear layer as a matrix product, and as a convolution (``with_conv``), and in bf16
    autocast (``with_bf16``). Alternating after one warm-up pass each (oneDNN builds its
    kernels for a shape on the first call). About 0.6 s at batch 256 on two cores; the global
    RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = to_channels_last(ImageEncoder(spec, features))
        image = torch.randint(0, 256, (batch_size, spec.frames, spec.image_size, spec.image_size),
                              dtype=torch.uint8)
        vector = torch.randn(batch_size, spec.vector_dim)

    def seconds(way: str) -> float:
        run_dense_as_conv(encoder, way == "fp32_conv")
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=way == "bf16"):
            out = encoder(image, vector)
        out.float().square().mean().backward()
        encoder.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    ways = ["fp32_gemm"] + ["fp32_conv"] * with_conv + ["bf16"] * with_bf16
    for way in ways:
        seconds(way)
    times: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(max(1, rounds)):
        for way in ways:
            times[way].append(seconds(way))
    return CpuProbe(**{f"{way}_s": statistics.median(t) for way, t in times.items()})


_PROBES: dict[tuple, CpuProbe] = {}


def resolve_kernels(precision: str, device: torch.device, spec: EnvSpec, features: int,
                    batch_size: int, probe: ProbeFn | None = None) -> Kernels:
    """What a learner with the configured ``precision`` runs on ``device``. On a CPU, "auto"
    and "fp32" are measured (once per process and shape) by ``probe``, ``probe_cpu`` if None;
    raises ConfigError for a precision that is not one of ``PRECISIONS``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision ({precision!r}) must be one of {list(PRECISIONS)}")
    if device.type == "cuda":
        return Kernels("bf16" if precision == "auto" else precision)
    with_bf16, with_conv = precision == "auto", batch_size >= DENSE_CONV_MIN_BATCH
    if precision == "bf16" or not (with_bf16 or with_conv):
        return Kernels("bf16" if precision == "bf16" else "fp32")
    key = (spec.frames, spec.image_size, spec.vector_dim, features, batch_size,
           torch.get_num_threads(), with_bf16)
    if key not in _PROBES:
        try:
            _PROBES[key] = (probe or probe_cpu)(spec, features, batch_size, with_bf16, with_conv)
        except RuntimeError as exc:  # e.g. a torch build without CPU bf16 kernels
            log.warning("event=precision_probe_failed error=%r choice=fp32", exc)
            _PROBES[key] = CpuProbe(1.0)
    result = _PROBES[key]
    kernels = Kernels(result.precision,
                      with_conv and result.precision == "fp32" and result.dense_as_conv)
    log.info("event=precision_probe device=cpu batch=%d %s precision=%s dense_as_conv=%s",
             batch_size, " ".join(f"{name}_ms={value * 1e3:.1f}" for name, value in (
                 ("fp32_gemm", result.fp32_gemm_s), ("fp32_conv", result.fp32_conv_s),
                 ("bf16", result.bf16_s)) if value is not None),
             kernels.precision, kernels.dense_as_conv)
    return kernels


def autocast_for(device: torch.device, precision: str) -> Callable[[], ContextManager[object]]:
    """The context the forward passes run in for a resolved precision ("fp32" or "bf16")."""
    if precision == "fp32":
        return contextlib.nullcontext
    if precision != "bf16":
        raise ConfigError(f"resolved precision ({precision!r}) must be 'fp32' or 'bf16'")
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
