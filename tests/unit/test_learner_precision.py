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


@pytest.mark.parametrize("fp32_s,bf16_s,choice", [
    (1.0, 0.5, "bf16"),   # AMX, or AVX-512 bf16 on Zen 5
    (1.0, 0.95, "fp32"),  # a near tie is not worth bf16's rounding (BF16_MARGIN)
    (1.0, 4.0, "fp32"),   # a CPU where oneDNN has no fast bf16 kernels
])
def test_auto_on_cpu_keeps_the_clearly_faster_precision(fp32_s, bf16_s, choice):
    calls = []

    def probe(spec, features, batch):
        calls.append((features, batch))
        return lp.PrecisionProbe(fp32_s, bf16_s)

    assert lp.resolve_precision("auto", CPU, SMALL_SPEC, 32, 64, probe) == choice
    assert lp.resolve_precision("auto", CPU, SMALL_SPEC, 32, 64, probe) == choice
    assert calls == [(32, 64)]  # measured once per process and shape
    lp.resolve_precision("auto", CPU, SMALL_SPEC, 32, 128, probe)
    assert calls == [(32, 64), (32, 128)]


def test_a_probe_that_fails_leaves_the_learner_in_fp32(caplog):
    def probe(*_):
        raise RuntimeError("no bf16 kernel for this CPU")

    assert lp.resolve_precision("auto", CPU, SMALL_SPEC, 32, 64, probe) == "fp32"
    assert "precision_probe_failed" in caplog.text and "no bf16 kernel" in caplog.text


def test_explicit_precisions_and_cuda_are_not_measured():
    def probe(*_):
        raise AssertionError("probed")

    assert lp.resolve_precision("fp32", CPU, SMALL_SPEC, 32, 64, probe) == "fp32"
    assert lp.resolve_precision("bf16", CPU, SMALL_SPEC, 32, 64, probe) == "bf16"
    assert lp.resolve_precision("auto", CUDA, SMALL_SPEC, 32, 64, probe) == "bf16"


@pytest.mark.parametrize("bad", ["fp16", "", "BF16"])
def test_a_bad_precision_is_refused_by_name(bad):
    with pytest.raises(ConfigError, match=repr(bad).replace("'", ".")):
        lp.resolve_precision(bad, CPU, SMALL_SPEC, 32, 64)
    with pytest.raises(ConfigError, match="resolved precision"):
        lp.autocast_for(CPU, "auto")


def test_the_real_probe_times_both_precisions_and_leaves_the_rng_alone():
    state = torch.random.get_rng_state()
    result = lp.probe_cpu_precision(SMALL_SPEC, 16, 8, rounds=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for seconds in (result.fp32_s, result.bf16_s):
        assert math.isfinite(seconds) and seconds > 0
    assert result.choice in ("fp32", "bf16")


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
