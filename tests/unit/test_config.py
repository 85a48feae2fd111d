import pytest

from common import config as C
from common.errors import ConfigError


def test_round_trip_through_json():
    cfg = C.RunConfig()
    assert C.loads(C.RunConfig, C.dumps(cfg)) == cfg


def test_unknown_key_names_the_path():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['shardz'\] in replay"):
        C.from_dict(C.RunConfig, {"replay": {"shardz": 3}})


def test_override_coerces_strings_and_rejects_unknown_paths():
    cfg = C.with_overrides(C.RunConfig(), {"replay.num_shards": "4", "learner.td3.gamma": "0.9",
                                           "learner.network.topology": "shared",
                                           "learner.network.hidden_sizes": "64,64"})
    assert cfg.replay.num_shards == 4 and cfg.learner.td3.gamma == 0.9
    assert cfg.learner.network.topology is C.EncoderTopology.SHARED
    assert cfg.learner.network.hidden_sizes == (64, 64)
    with pytest.raises(ConfigError, match="'learner.td4'"):
        C.with_overrides(C.RunConfig(), {"learner.td4.gamma": 1})


@pytest.mark.parametrize("path,value,message", [
    ("replay.num_shards", "many", "expected an integer, got 'many'"),
    ("replay.num_shards", 1.5, "expected an integer, got 1.5"),
    ("learner.compile", "maybe", "expected a boolean"),
    ("replay.sampler", "lifo", "'lifo' is not one of"),
    ("spec.frames", 0, r"frames \(0\) must be >= 1"),
    ("env.reward.overspeed_zero_ratio", 1.0, r"overspeed_zero_ratio \(1.0\) must be > 1"),
    ("env.reward.heading_error_scale_rad", 0, r"heading_error_scale_rad \(0.0\) must be > 0"),
    ("env.reward.curve_lateral_accel_mps2", -1, r"curve_lateral_accel_mps2 \(-1.0\) must be >= 0"),
    ("learner.td3.policy_critic", "later", "'later' is not one of"),
    ("env.reward.curve_window_m", -5, r"curve_window_m \(-5.0\) must be >= 0"),
])
def test_bad_values_name_the_value(path, value, message):
    with pytest.raises(ConfigError, match=message):
        C.with_overrides(C.RunConfig(), {path: value})


def test_config_must_be_a_json_object():
    with pytest.raises(ConfigError, match="JSON object"):
        C.loads(C.RunConfig, "[1, 2]")
    with pytest.raises(ConfigError, match="not valid JSON"):
        C.loads(C.RunConfig, "{")
