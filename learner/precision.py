"""How a learner computes: plain fp32 or bf16 autocast, and on a CPU which kernels.

"auto" means bf16 on CUDA, where the first convolution runs on space-to-depth blocks
(``FIRST_CONVS``; the figures behind both choices: docs/benchmarks.md, "Code choices"). On a
CPU it is measured, because the CPU's flags do not say which is faster: bf16 doubles the
convolutions' and matrix products' rate where oneDNN has bf16 dot-product kernels for the CPU
(AMX on Intel Xeons; AVX-512 bf16 on AMD EPYC Zen 5), and was several times slower than fp32
on an Intel Xeon with the same AVX-512 bf16 flag but no AMX. So the
learner times its own image encoder (the update's convolutions and largest matrix product),
forward and backward at its batch size, both ways, and keeps bf16 only if it is clearly
faster (``BF16_MARGIN``).

In fp32 a second timing, of the encoder's linear layer alone, chooses how that layer runs on
a CPU: as MKL's matrix product or as oneDNN's convolution (``common.networks.DenseHWC``),
which was clearly faster on the AMD EPYC (``CONV_MARGIN``); bf16 is then
measured against fp32 the faster way. Like cuDNN's autotuner, the choices can differ between
machines; the log line says what was chosen and why. ``precision="bf16"`` skips both timings.

The rule holds on a busy machine: the ways are timed in alternation, several rounds each, and
each is scored by its fastest round. Load from other processes (rollout workers starting up
beside the learner) only ever adds time to a round, so the fastest round is the one closest to
the way's own cost; a median moved with the load and once picked fp32 on a busy machine where
bf16 was clearly faster. A run records what its learner chose and keeps it on --resume and
restarts (deploy/components.py).

Losses, targets and optimizer state stay fp32 in every case.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from common.config_learner import FirstConv, Precision
from common.errors import ConfigError
from common.networks import DENSE_CONV_MIN_BATCH, DenseHWC, ImageEncoder, to_channels_last
from common.specs import EnvSpec

log = logging.getLogger(__name__)

# bf16 is kept only below this share of fp32's time: a near tie is not worth bf16's rounding,
# and fastest rounds of a near tie (the default CPU run's small encoder) can fall either side
# of a tighter margin from one start to the next. Where bf16 kernels are fast it wins by far
# more (docs/benchmarks.md, "Code choices").
BF16_MARGIN = 0.8
# The convolution route for the linear layer is kept only below this share of the product's
# time, measured on the layer alone.
CONV_MARGIN = 0.9


@dataclass(frozen=True)
class CpuProbe:
    """Seconds of one forward and backward pass, each way the probe timed (its fastest round;
    None: not timed): the encoder in fp32 and in bf16 autocast, and its linear layer alone in fp32 as a
    matrix product and as a convolution."""

    fp32_s: float | None = None
    bf16_s: float | None = None
    dense_gemm_s: float | None = None
    dense_conv_s: float | None = None

    @property
    def dense_as_conv(self) -> bool:
        return (self.dense_gemm_s is not None and self.dense_conv_s is not None
                and self.dense_conv_s < CONV_MARGIN * self.dense_gemm_s)

    @property
    def precision(self) -> str:
        if self.bf16_s is None or self.fp32_s is None:
            return "fp32"
        fp32 = self.fp32_s
        if self.dense_as_conv:  # bf16 is measured against fp32 the faster way
            fp32 -= self.dense_gemm_s - self.dense_conv_s
        return "bf16" if self.bf16_s < BF16_MARGIN * fp32 else "fp32"


@dataclass(frozen=True)
class KernelChoices:
    """What a learner runs: ``precision`` ("fp32" or "bf16"), for fp32 on a CPU whether the
    encoders' linear layers run as convolutions, and whether their first convolution reads
    space-to-depth pixels (``FirstConv.BLOCKS``)."""

    precision: str
    dense_as_conv: bool = False
    first_conv_blocks: bool = False


ProbeFn = Callable[[EnvSpec, int, int, bool, bool], CpuProbe]


def probe_cpu(spec: EnvSpec, features: int, batch_size: int, with_bf16: bool, with_conv: bool,
              rounds: int = 5) -> CpuProbe:
    """Times, forward and backward on a random batch: the learner's image encoder in fp32 and
    in bf16 autocast (``with_bf16``), and its linear layer alone in fp32 as a matrix product
    and as a convolution (``with_conv``). Alternating after one warm-up pass each (oneDNN
    builds its kernels for a shape on the first call), each way scored by its fastest round
    (``fastest_rounds``). The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = to_channels_last(ImageEncoder(spec, features))
        image = torch.randint(0, 256, (batch_size, spec.frames, spec.image_size, spec.image_size),
                              dtype=torch.uint8)
        vector = torch.randn(batch_size, spec.vector_dim)
        dense = next(m for m in encoder.modules() if isinstance(m, DenseHWC))
        flat = torch.randn(batch_size, dense.in_features, requires_grad=True)

    def backward(out: torch.Tensor) -> None:
        out.float().square().mean().backward()
        encoder.zero_grad(set_to_none=True)
        flat.grad = None

    def encoder_pass(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = encoder(image, vector)
        backward(out)

    def dense_pass(as_conv: bool) -> None:
        dense.as_conv = as_conv
        backward(dense(flat))
        dense.as_conv = False

    ways = {**({"fp32": lambda: encoder_pass(False), "bf16": lambda: encoder_pass(True)}
               if with_bf16 else {}),
            **({"dense_gemm": lambda: dense_pass(False), "dense_conv": lambda: dense_pass(True)}
               if with_conv else {})}
    return CpuProbe(**{f"{name}_s": t for name, t in fastest_rounds(ways, rounds).items()})


def fastest_rounds(ways: dict[str, Callable[[], None]], rounds: int,
                   clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Seconds of each way's fastest round: one untimed warm-up call each, then ``rounds``
    rounds that call every way once in turn. Another process's load only adds time to a
    round, so the minimum, unlike a mean or median, stays near the way's own cost while the
    machine is busy, and interleaving gives every way the same chances of a quiet round."""
    for run in ways.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(max(1, rounds)):
        for name, run in ways.items():
            start = clock()
            run()
            times[name].append(clock() - start)
    return {name: min(t) for name, t in times.items()}


_PROBES: dict[tuple, CpuProbe] = {}


def resolve_kernels(precision: Precision, device: torch.device, spec: EnvSpec, features: int,
                    batch_size: int, probe: ProbeFn | None = None,
                    first_conv: FirstConv = FirstConv.AUTO) -> KernelChoices:
    """What a learner with the configured ``precision`` and ``first_conv`` runs on
    ``device``. On a CPU, "auto" and "fp32" are measured (once per process and shape) by
    ``probe``, ``probe_cpu`` if None.

    Raises:
        ValueError: for a ``precision`` or ``first_conv`` that is no member's value (the
            config's enums, checked before any learner starts, hold only members).
    """
    precision, first_conv = Precision(precision), FirstConv(first_conv)
    blocks = first_conv is FirstConv.BLOCKS or (first_conv is FirstConv.AUTO
                                                and device.type == "cuda")
    return dataclasses.replace(_resolve_precision(precision, device, spec, features,
                                                  batch_size, probe),
                               first_conv_blocks=blocks)


def _resolve_precision(precision: Precision, device: torch.device, spec: EnvSpec,
                       features: int, batch_size: int, probe: ProbeFn | None) -> KernelChoices:
    if device.type == "cuda":
        return KernelChoices("bf16" if precision is Precision.AUTO else precision.value)
    with_bf16 = precision is Precision.AUTO
    with_conv = batch_size >= DENSE_CONV_MIN_BATCH
    if precision is Precision.BF16 or not (with_bf16 or with_conv):
        return KernelChoices(precision.value if precision is Precision.BF16 else "fp32")
    key = (spec.frames, spec.image_size, spec.vector_dim, features, batch_size,
           torch.get_num_threads(), with_bf16)
    if key not in _PROBES:
        try:
            _PROBES[key] = (probe or probe_cpu)(spec, features, batch_size, with_bf16, with_conv)
        except RuntimeError as exc:  # e.g. a torch build without CPU bf16 kernels
            log.warning("event=precision_probe_failed error=%r choice=fp32", exc)
            _PROBES[key] = CpuProbe()
    result = _PROBES[key]
    kernels = KernelChoices(result.precision,
                      with_conv and result.precision == "fp32" and result.dense_as_conv)
    log.info("event=precision_probe device=cpu batch=%d %s precision=%s dense_as_conv=%s",
             batch_size, " ".join(f"{name}_ms={value * 1e3:.1f}" for name, value in (
                 ("fp32", result.fp32_s), ("bf16", result.bf16_s),
                 ("dense_gemm", result.dense_gemm_s), ("dense_conv", result.dense_conv_s))
                 if value is not None),
             kernels.precision, kernels.dense_as_conv)
    return kernels


def autocast_for(device: torch.device, precision: str) -> Callable[[], ContextManager[object]]:
    """The context the forward passes run in for a resolved precision ("fp32" or "bf16")."""
    if precision == "fp32":
        return contextlib.nullcontext
    if precision != "bf16":
        raise ConfigError(f"resolved precision ({precision!r}) must be 'fp32' or 'bf16'")
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
