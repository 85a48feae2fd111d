"""The learner's precision choice: "auto" keeps whichever of fp32 and bf16 the CPU runs faster."""
import math

import pytest
import torch

from common.errors import ConfigError
from common.networks import ImageEncoder, to_channels_last
from learner import precision as lp
from tests.unit.learner_fixtures import SMALL_SPEC

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(lp, "_PROBES", {})


@pytest.mark.parametrize("fp32_s,bf16_s,gemm_s,conv_s,precision,as_conv", [
    (1.0, 0.5, 0.3, 0.4, "bf16", False),   # AMX, or AVX-512 bf16 on Zen 5
    (1.0, 0.95, 0.3, 0.4, "fp32", False),  # a near tie is not worth bf16's rounding (BF16_MARGIN)
    (1.0, 0.86, 0.3, 0.4, "fp32", False),  # ... nor one that load can tip either way
    (1.0, 4.0, 0.3, 0.4, "fp32", False),   # a CPU where oneDNN has no fast bf16 kernels
    (1.0, 4.0, 0.3, 0.15, "fp32", True),   # oneDNN's convolution beats MKL's product (AMD)
    (1.0, 4.0, 0.3, 0.28, "fp32", False),  # ... but not by CONV_MARGIN
    (1.0, 0.8, 0.3, 0.15, "fp32", True),   # bf16 is measured against fp32 the faster way (0.85)
    (1.0, 0.6, 0.3, 0.15, "bf16", False),
])
def test_auto_on_cpu_keeps_the_clearly_faster_way(fp32_s, bf16_s, gemm_s, conv_s, precision,
                                                   as_conv):
    calls = []

    def probe(spec, features, batch, with_bf16, with_conv):
        calls.append((features, batch, with_bf16, with_conv))
        return lp.CpuProbe(fp32_s, bf16_s, gemm_s, conv_s)

    expected = lp.KernelChoices(precision, as_conv)
    assert lp.resolve_kernels("auto", CPU, SMALL_SPEC, 32, 64, probe) == expected
    assert lp.resolve_kernels("auto", CPU, SMALL_SPEC, 32, 64, probe) == expected
    assert calls == [(32, 64, True, True)]  # measured once per process and shape
    lp.resolve_kernels("auto", CPU, SMALL_SPEC, 32, 128, probe)
    assert calls == [(32, 64, True, True), (32, 128, True, True)]


def test_fp32_on_cpu_measures_only_the_linear_layers_route():
    calls = []

    def probe(spec, features, batch, with_bf16, with_conv):
        calls.append((batch, with_bf16, with_conv))
        return lp.CpuProbe(dense_gemm_s=1.0, dense_conv_s=0.5) if with_conv else lp.CpuProbe(1.0, 2.0)

    assert lp.resolve_kernels("fp32", CPU, SMALL_SPEC, 32, 64, probe) == lp.KernelChoices("fp32", True)
    assert calls == [(64, False, True)]
    # Below DenseHWC's batch threshold there is nothing to choose: no probe.
    assert lp.resolve_kernels("fp32", CPU, SMALL_SPEC, 32, 16, probe) == lp.KernelChoices("fp32", False)
    assert lp.resolve_kernels("auto", CPU, SMALL_SPEC, 32, 16, probe) == lp.KernelChoices("fp32", False)
    assert calls == [(64, False, True), (16, True, False)]


def test_a_probe_that_fails_leaves_the_learner_in_fp32(caplog):
    def probe(*_):
        raise RuntimeError("no bf16 kernel for this CPU")

    assert lp.resolve_kernels("auto", CPU, SMALL_SPEC, 32, 64, probe) == lp.KernelChoices("fp32", False)
    assert "precision_probe_failed" in caplog.text and "no bf16 kernel" in caplog.text


def test_bf16_and_cuda_are_not_measured():
    def probe(*_):
        raise AssertionError("probed")

    assert lp.resolve_kernels("bf16", CPU, SMALL_SPEC, 32, 64, probe) == lp.KernelChoices("bf16")
    assert lp.resolve_kernels("auto", CUDA, SMALL_SPEC, 32, 64, probe) == lp.KernelChoices(
        "bf16", first_conv_blocks=True)
    assert lp.resolve_kernels("fp32", CUDA, SMALL_SPEC, 32, 64, probe) == lp.KernelChoices(
        "fp32", first_conv_blocks=True)


@pytest.mark.parametrize("device, first_conv, blocks", [
    (CPU, "auto", False), (CPU, "strided", False), (CPU, "blocks", True),
    (CUDA, "auto", True), (CUDA, "strided", False), (CUDA, "blocks", True)])
def test_the_first_convolution_runs_as_blocks_on_cuda_unless_configured(device, first_conv,
                                                                         blocks):
    kernels = lp.resolve_kernels("bf16", device, SMALL_SPEC, 32, 64, first_conv=first_conv)
    assert kernels == lp.KernelChoices("bf16", first_conv_blocks=blocks)


@pytest.mark.parametrize("bad", ["Blocks", "", "space_to_depth"])
def test_a_bad_first_conv_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=f"{repr(bad)} is not a valid FirstConv"):
        lp.resolve_kernels("fp32", CPU, SMALL_SPEC, 32, 64, first_conv=bad)


@pytest.mark.parametrize("bad", ["fp16", "", "BF16"])
def test_a_bad_precision_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=f"{repr(bad)} is not a valid Precision"):
        lp.resolve_kernels(bad, CPU, SMALL_SPEC, 32, 64)
    with pytest.raises(ConfigError, match="resolved precision"):
        lp.autocast_for(CPU, "auto")


def test_the_real_probe_times_every_way_and_leaves_the_rng_alone():
    state = torch.random.get_rng_state()
    result = lp.probe_cpu(SMALL_SPEC, 16, 32, with_bf16=True, with_conv=True, rounds=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for seconds in (result.fp32_s, result.bf16_s, result.dense_gemm_s, result.dense_conv_s):
        assert math.isfinite(seconds) and seconds > 0
    assert result.precision in ("fp32", "bf16")
    only_dense = lp.probe_cpu(SMALL_SPEC, 16, 32, with_bf16=False, with_conv=True, rounds=1)
    assert only_dense.fp32_s is None and only_dense.bf16_s is None
    assert only_dense.dense_conv_s > 0 and only_dense.precision == "fp32"


def test_autocast_for_runs_the_forward_pass_in_the_chosen_precision():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with lp.autocast_for(CPU, "bf16")():
        assert layer(x).dtype == torch.bfloat16
    with lp.autocast_for(CPU, "fp32")():
        assert layer(x).dtype == torch.float32


def test_bf16_pixels_prepared_once_encode_exactly_as_the_cast_fp32_ones():
    # 0..255 are exact in bf16, so a bf16 learner can convert its uint8 frames to bf16 once
    # instead of its convolutions casting fp32 pixels on every encoder pass.
    encoder = to_channels_last(ImageEncoder(SMALL_SPEC, 16))
    image = torch.randint(0, 256, (40, SMALL_SPEC.frames, SMALL_SPEC.image_size,
                                   SMALL_SPEC.image_size), dtype=torch.uint8)
    vector = torch.randn(40, SMALL_SPEC.vector_dim)
    with torch.no_grad(), lp.autocast_for(CPU, "bf16")():
        once = encoder.encode(ImageEncoder.prepare(image, torch.bfloat16), vector)
        cast = encoder.encode(ImageEncoder.prepare(image), vector)
    assert once.dtype == torch.bfloat16 and torch.equal(once, cast)


def test_each_way_is_scored_by_its_fastest_round_so_load_cannot_flip_the_choice():
    # A fake clock: bf16 costs 6 and fp32 10 units of its own; "load" from another process
    # adds 20 units to most of bf16's rounds and none of fp32's. A median would call bf16
    # slower (26 > 10); the fastest rounds keep it faster.
    now, calls = [0.0], {"fp32": 0, "bf16": 0}
    loaded_rounds = {1, 2, 3, 4}  # bf16's timed rounds 1-4 of 5 (call 0 is the warm-up)

    def way(name, cost):
        def run():
            calls[name] += 1
            now[0] += cost + (20 if name == "bf16" and calls[name] - 1 in loaded_rounds else 0)
        return run

    best = lp.fastest_rounds({"fp32": way("fp32", 10), "bf16": way("bf16", 6)}, rounds=5,
                             clock=lambda: now[0])
    assert best == {"fp32": 10, "bf16": 6}
    assert calls == {"fp32": 6, "bf16": 6}  # one warm-up each, then five rounds
    assert lp.CpuProbe(fp32_s=best["fp32"], bf16_s=best["bf16"]).precision == "bf16"
