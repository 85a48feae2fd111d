"""The learner's numeric precision: plain fp32, or bf16 autocast where it is faster.

"auto" means bf16 on CUDA. On a CPU it is measured, because the CPU's flags do not say which
is faster: bf16 doubles the convolutions' and matrix products' rate where oneDNN has bf16
dot-product kernels for the CPU (AMX on Intel Xeons; AVX-512 bf16 on AMD EPYC Zen 5: 0.076
against 0.121 s per update at batch 256 on two cores), and was several times slower than fp32
on an Intel Xeon with the same AVX-512 bf16 flag but no AMX. So the learner times its own
image encoder (the update's convolutions and largest product), forward and backward at its
batch size, both ways, and keeps bf16 only if it is clearly faster (``BF16_MARGIN``).

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
from common.networks import ImageEncoder, to_channels_last
from common.specs import EnvSpec

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
# bf16 is kept only below this share of fp32's time: a near tie is not worth bf16's rounding.
BF16_MARGIN = 0.9


@dataclass(frozen=True)
class PrecisionProbe:
    """Median seconds of one encoder forward and backward pass in each precision."""

    fp32_s: float
    bf16_s: float

    @property
    def choice(self) -> str:
        return "bf16" if self.bf16_s < BF16_MARGIN * self.fp32_s else "fp32"


ProbeFn = Callable[[EnvSpec, int, int], PrecisionProbe]


def probe_cpu_precision(spec: EnvSpec, features: int, batch_size: int,
                        rounds: int = 3) -> PrecisionProbe:
    """Times the learner's image encoder, forward and backward on a random batch, in fp32 and
    in bf16 autocast, alternating after one warm-up pass each (oneDNN builds its kernels for a
    shape on the first call). About 0.3 s at batch 256 on two cores; the global RNG is left
    as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = to_channels_last(ImageEncoder(spec, features))
        image = torch.randint(0, 256, (batch_size, spec.frames, spec.image_size, spec.image_size),
                              dtype=torch.uint8)
        vector = torch.randn(batch_size, spec.vector_dim)

    def seconds(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = encoder(image, vector)
        out.float().square().mean().backward()
        encoder.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    seconds(False), seconds(True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(max(1, rounds)):
        for bf16 in (False, True):
            times[bf16].append(seconds(bf16))
    return PrecisionProbe(statistics.median(times[False]), statistics.median(times[True]))


_PROBES: dict[tuple[int, ...], PrecisionProbe] = {}


def resolve_precision(precision: str, device: torch.device, spec: EnvSpec, features: int,
                      batch_size: int, probe: ProbeFn | None = None) -> str:
    """"fp32" or "bf16" for a configured ``precision`` ("auto" is measured on a CPU, once per
    process and shape, by ``probe``, ``probe_cpu_precision`` if None); raises ConfigError for
    any other value."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision ({precision!r}) must be one of {list(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    key = (spec.frames, spec.image_size, spec.vector_dim, features, batch_size,
           torch.get_num_threads())
    if key not in _PROBES:
        try:
            _PROBES[key] = (probe or probe_cpu_precision)(spec, features, batch_size)
        except RuntimeError as exc:  # e.g. a torch build without CPU bf16 kernels
            log.warning("event=precision_probe_failed error=%r choice=fp32", exc)
            _PROBES[key] = PrecisionProbe(1.0, float("inf"))
    result = _PROBES[key]
    log.info("event=precision_probe device=cpu batch=%d fp32_ms=%.1f bf16_ms=%.1f choice=%s",
             batch_size, result.fp32_s * 1e3, result.bf16_s * 1e3, result.choice)
    return result.choice


def autocast_for(device: torch.device, precision: str) -> Callable[[], ContextManager[object]]:
    """The context the forward passes run in for a resolved precision ("fp32" or "bf16")."""
    if precision == "fp32":
        return contextlib.nullcontext
    if precision != "bf16":
        raise ConfigError(f"resolved precision ({precision!r}) must be 'fp32' or 'bf16'")
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
