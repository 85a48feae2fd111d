"""Bounds at the wire (issue 30, finding 1): every float of a chunk has a finite range in the
spec, and the codec refuses a value outside it (a NaN or an infinity included), naming the field
and its index. A reward of 1e30 or a vector entry of 3e38 was stored before and made the critic
non-finite at its first update."""
import math

import msgpack
import numpy as np
import pytest

from rollout import rewards as R
from rollout.carla_env import check_reward_limit
from rollout.observation import build_vector
from common.codec import decode_chunk, encode_chunk
from common.config import EnvConfig, RewardConfig
from common.errors import ConfigError, SpecError
from common.specs import EnvSpec
from deploy import presets
from tests.unit.replay_support import SMALL_SPEC, fingerprint, make_streams, small_shard

SPEC = SMALL_SPEC  # two waypoints: vector = speed, lateral, heading, x0, y0, x1, y1
COMPONENTS = ["speed", "lateral", "heading", "x0", "y0", "x1", "y1"]


def _message() -> tuple[dict, int]:
    """A valid chunk message and a record of it that carries a transition."""
    chunk = make_streams(SPEC, 1, chunk_length=8, max_episode=20, seed=3)[0].next_chunk()
    record = int(np.flatnonzero(~chunk.first)[0])
    return msgpack.unpackb(encode_chunk(chunk, SPEC), raw=False), record


def _decode_with(field: str, index: tuple[int, ...], value: float):
    """Decodes the valid message with ``field[index]`` set to the float32 ``value``."""
    msg, _ = _message()
    arr = np.frombuffer(msg[field][2], np.float32).reshape(msg[field][1]).copy()
    arr[index] = value
    msg[field][2] = arr.tobytes()
    return decode_chunk(msgpack.packb(msg, use_bin_type=True), SPEC)


def _inside(bound: float, towards: float) -> np.float32:
    """The float32 nearest ``bound`` that is not beyond it (beyond: away from ``towards``)."""
    value = np.float32(bound)
    beyond = value > bound if towards < bound else value < bound
    return np.nextafter(value, np.float32(towards)) if beyond else value


def _cases():
    """(field, index within a record, low, high) for every float of a record."""
    low, high = SPEC.vector.bounds()
    cases = [pytest.param("vector", (c,), low[c], high[c], id=f"vector_{name}")
             for c, name in enumerate(COMPONENTS)]
    a_low, a_high = SPEC.action.bounds()
    cases += [pytest.param("action", (c,), a_low[c], a_high[c], id=f"action_{c}") for c in (0, 1)]
    r_low, r_high = SPEC.reward.bounds()
    cases.append(pytest.param("reward", (), float(r_low), float(r_high), id="reward"))
    return cases


@pytest.mark.parametrize("field,item,low,high", _cases())
def test_values_just_inside_the_bounds_pass(field, item, low, high):
    _, record = _message()
    for bound, towards in ((high, low), (low, high)):
        chunk = _decode_with(field, (record, *item), _inside(bound, towards))
        assert np.all(np.isfinite(getattr(chunk, field)))


@pytest.mark.parametrize("field,item,low,high", _cases())
def test_values_just_outside_the_bounds_fail_naming_the_field(field, item, low, high):
    _, record = _message()
    where = field + "".join(f"\\[{i}\\]" for i in (record, *item))
    for bound, towards, side in ((high, low, "above maximum"), (low, high, "below minimum")):
        outside = np.nextafter(_inside(bound, towards), np.float32(2 * bound - towards))
        with pytest.raises(SpecError, match=rf"^{where} \(.*\) {side} "):
            _decode_with(field, (record, *item), outside)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("field,item,low,high", _cases())
def test_non_finite_values_fail_naming_the_field(field, item, low, high, value):
    _, record = _message()
    where = field + "".join(f"\\[{i}\\]" for i in (record, *item))
    with pytest.raises(SpecError, match=rf"^{where}: non-finite value"):
        _decode_with(field, (record, *item), value)


@pytest.mark.parametrize("field,index,value,message", [
    ("reward", (3,), 1e30, r"^reward\[3\] \(1e\+30\) above maximum 100.0$"),
    ("vector", (2, 6), 3e38, r"^vector\[2\]\[6\] \(3e\+38\) above maximum 3.0$"),
    ("vector", (0, 0), -1.0, r"^vector\[0\]\[0\] \(-1\) below minimum 0.0$"),
])
def test_the_audit_values_are_refused(field, index, value, message):
    msg, _ = _message()
    if field == "reward":  # on a record that carries a transition
        first = np.frombuffer(msg["first"][2], np.bool_)
        assert not first[index[0]]
    with pytest.raises(SpecError, match=message):
        _decode_with(field, index, value)


@pytest.mark.parametrize("field,index,value", [("reward", (3,), 1e30), ("vector", (2, 6), 3e38),
                                               ("action", (3, 0), np.nan)])
def test_a_shard_refuses_an_absurd_chunk_unchanged(field, index, value):
    shard = small_shard()
    stream = make_streams(SPEC, 1, chunk_length=8, max_episode=20, seed=3)[0]
    good = encode_chunk(stream.next_chunk(), SPEC)
    msg = msgpack.unpackb(encode_chunk(stream.next_chunk(), SPEC), raw=False)
    shard.insert(good)
    before = fingerprint(shard)
    arr = np.frombuffer(msg[field][2], np.float32).reshape(msg[field][1]).copy()
    arr[index] = value
    msg[field][2] = arr.tobytes()
    with pytest.raises(SpecError, match=field + "".join(rf"\[{i}\]" for i in index)):
        shard.insert(msgpack.packb(msg, use_bin_type=True))
    assert fingerprint(shard) == before
    assert shard.counts["rejected"] == 1 and shard.counts["rejected_spec"] == 1


def test_encoding_refuses_what_decoding_would():
    chunk = make_streams(SPEC, 1, chunk_length=8, seed=3)[0].next_chunk()
    record = int(np.flatnonzero(~chunk.first)[0])
    reward = chunk.reward.copy()
    reward[record] = 1e30
    with pytest.raises(SpecError, match=rf"reward\[{record}\]"):
        encode_chunk(chunk._replace(reward=reward), SPEC)


def test_the_default_bounds_are_those_documented():
    low, high = EnvSpec().vector.bounds()
    assert high[:3] == pytest.approx([5.0, 100 / 3.5, 2.0]) and np.all(high[3:] == 3.0)
    assert low[0] == 0.0 and np.array_equal(low[1:], -high[1:])
    assert EnvSpec().reward.bounds()[1] == 100.0
    assert np.all(np.isfinite(low)) and np.all(np.isfinite(high))


def test_clip_rounds_inwards_so_clipped_values_validate():
    vector = SPEC.vector  # the lateral bound, 100 / 3.5, is not a float32
    for fill in (1e300, -1e300, 1e9, -1e9):
        clipped = vector.clip(np.full(SPEC.vector_dim, fill))
        assert clipped.dtype == np.float32
        vector.validate(clipped)
    assert np.isnan(vector.clip(np.full(SPEC.vector_dim, np.nan))).all()


@pytest.mark.parametrize("name", ["reward_limit", "lookahead_m", "lateral_scale_m",
                                  "heading_scale_rad"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_spec_scales_and_limits_must_be_finite_and_positive(name, value):
    with pytest.raises(SpecError, match=rf"^{name} \("):
        EnvSpec(**{name: value})


def test_the_env_clips_an_absurd_measurement_to_the_bounds():
    spec = EnvSpec(num_waypoints=2)
    far = np.array([[1e6, -1e6], [3.0, 4.0]])
    vector = build_vector(spec, 1e4, -1e5, math.pi, far)
    spec.vector.validate(vector)
    low, high = spec.vector.bounds()
    assert vector[0] == np.float32(high[0]) and vector[1] < low[1] + 1e-5
    assert vector[3] == high[3] and vector[4] == low[4]
    assert vector[5:] == pytest.approx([3.0 / 50, 4.0 / 50])  # an ordinary value is kept


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_reward_fits_the_spec(name):
    cfg = presets.local("cpu") if name == "local" else presets.preset(name)
    check_reward_limit(cfg.env, cfg.spec)


def test_reward_weights_beyond_the_limit_are_a_config_error():
    env = EnvConfig(reward=RewardConfig(goal_bonus=500.0))
    with pytest.raises(ConfigError, match=r"step reward of 1\d\d\.\d, beyond spec.reward_limit"):
        check_reward_limit(env, EnvSpec())
    check_reward_limit(env, EnvSpec(reward_limit=1000.0))


def test_step_reward_bound_holds_for_extreme_measurements():
    rng = np.random.default_rng(0)
    cfg = RewardConfig()
    for _ in range(3000):
        m = R.StepMeasurements(
            speed_mps=float(rng.uniform(0, 150)), heading_error_rad=float(rng.uniform(-4, 4)),
            lateral_m=float(rng.uniform(-100, 100)), half_lane_width_m=float(rng.uniform(0, 3)),
            progress_m=float(rng.uniform(-20, 20)), dt_s=0.05,
            waypoints_passed=int(rng.integers(0, 4)), route_completed=bool(rng.random() < 0.5),
            collided=bool(rng.random() < 0.5), collision_speed_mps=float(rng.uniform(0, 150)),
            lane_invasion=bool(rng.random() < 0.5), on_driving_lane=bool(rng.random() < 0.5),
            jerk_mps3=float(rng.uniform(0, 1e4)), vehicle_half_width_m=1.0)
        total = abs(R.reward_terms(m, cfg).total)
        assert total <= R.step_reward_bound(cfg, m.waypoints_passed) + 1e-9
