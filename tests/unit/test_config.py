import dataclasses
import json
import re
import typing
from pathlib import Path

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
    ("learner.execution.compile", "maybe", "expected a boolean"),
    ("learner.execution.precision", "fp16", r"'fp16' is not one of \['auto', 'fp32', 'bf16'\]"),
    ("learner.execution.first_conv", "s2d", r"'s2d' is not one of \['auto', 'strided', 'blocks'\]"),
    ("learner.execution.frame_cache", "gpu", r"'gpu' is not one of \['auto', 'device', 'off'\]"),
    ("replay.sampler", "lifo", "'lifo' is not one of"),
    ("spec.frames", 0, r"frames \(0\) must be >= 1"),
    ("env.reward.overspeed_zero_ratio", 1.0, r"overspeed_zero_ratio \(1.0\) must be > 1"),
    ("env.reward.heading_error_scale_rad", 0, r"heading_error_scale_rad \(0.0\) must be > 0"),
    ("learner.td3.policy_critic", "later", "'later' is not one of"),
])
def test_bad_values_name_the_value(path, value, message):
    with pytest.raises(ConfigError, match=message):
        C.with_overrides(C.RunConfig(), {path: value})


def test_config_must_be_a_json_object():
    with pytest.raises(ConfigError, match="JSON object"):
        C.loads(C.RunConfig, "[1, 2]")
    with pytest.raises(ConfigError, match="not valid JSON"):
        C.loads(C.RunConfig, "{")


# -- validation: every value checked before anything runs (issue 30, finding 7) -------------

def _fields(cls, prefix=""):
    """(dotted path, type) of every leaf field of the config tree under ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp


FLOAT_FIELDS = [path for path, tp in _fields(C.RunConfig) if tp is float]


def test_the_tree_has_float_fields_in_every_section():
    sections = {path.split(".")[0] for path in FLOAT_FIELDS}
    assert {"spec", "env", "learner", "replay", "rollout", "train", "metrics"} <= sections


def _replace_path(cfg, path: str, value):
    head, _, rest = path.partition(".")
    inner = _replace_path(getattr(cfg, head), rest, value) if rest else value
    return dataclasses.replace(cfg, **{head: inner})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("path", FLOAT_FIELDS)
def test_every_float_field_refuses_non_finite_values(path, value):
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)} \({value}\) must"):
        C.with_overrides(C.RunConfig(), {path: value})
    try:  # a tree built in code: validate() refuses it, unless its class refused to build it
        cfg = _replace_path(C.RunConfig(), path, float(value))
    except ValueError:
        return
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)} \({value}\) must"):
        C.validate(cfg)


@pytest.mark.parametrize("path,value,message", [
    # the values of issue 30, finding 7
    ("learner.td3.gamma", "nan", r"learner.td3.gamma \(nan\) must be in \(0, 1\]"),
    ("learner.td3.tau", 0, r"learner.td3.tau \(0.0\) must be in \(0, 1\]"),
    ("learner.td3.batch_size", 0, r"learner.td3.batch_size \(0\) must be >= 1"),
    ("replay.capacity", 2, r"replay.min_size_to_sample \(1000\) must be < replay.capacity \(2\)"),
    ("replay.chunk_length", 0, r"replay.chunk_length \(0\) must be >= 1"),
    ("learner.publish_every", 0, r"learner.publish_every \(0\) must be >= 1"),
    ("replay.priority_alpha", 2, r"replay.priority_alpha \(2.0\) must be in \[0, 1\]"),
    # a few per section
    ("seed", -1, r"seed \(-1\) must be in \[0, 4294967295\]"),
    ("spec.frames", 0, r"spec.frames \(0\) must be >= 1"),
    ("learner.td3.gamma", 1.5, r"learner.td3.gamma \(1.5\) must be in \(0, 1\]"),
    ("learner.td3.encoder_lr", 0, r"learner.td3.encoder_lr \(0.0\) must be > 0"),
    ("learner.td3.head_lr", "inf", r"learner.td3.head_lr \(inf\) must be a finite number"),
    ("learner.td3.policy_delay", 0, r"learner.td3.policy_delay \(0\) must be >= 1"),
    ("learner.td3.image_shift", 84, r"image_shift \(84\) must be < spec.image_size \(84\)"),
    ("learner.network.hidden_sizes", "64,0", r"hidden_sizes \(\(64, 0\)\) item 1 \(0\) must be >= 1"),
    ("learner.execution.device", "tpu",
     r"learner.execution.device \('tpu'\) must be 'auto', 'cpu', 'cuda'"),
    ("learner.execution.prefetch", 0, r"learner.execution.prefetch \(0\) must be >= 1"),
    ("replay.num_shards", 0, r"replay.num_shards \(0\) must be in \[1, 16384\]"),
    ("replay.priority_eps", 0, r"replay.priority_eps \(0.0\) must be > 0"),
    ("replay.min_size_to_sample", 0, r"replay.min_size_to_sample \(0\) must be >= 1"),
    ("replay.samples_per_insert", -1, r"replay.samples_per_insert \(-1.0\) must be >= 0"),
    ("rollout.num_workers", 0, r"rollout.num_workers \(0\) must be >= 1"),
    ("rollout.exploration_noise", -0.1, r"rollout.exploration_noise \(-0.1\) must be >= 0"),
    ("rollout.weight_poll_every", 0, r"rollout.weight_poll_every \(0\) must be >= 1"),
    ("train.env_steps", 0, r"train.env_steps \(0\) must be >= 1"),
    ("train.progress_every_s", 0, r"train.progress_every_s \(0.0\) must be > 0"),
    ("train.endpoints", "carla-0", r"train.endpoints \(\('carla-0',\)\) item 0 .* HOST:PORT"),
    ("train.learner_updates_per_call", 0, r"train.learner_updates_per_call \(0\) must be >= 1"),
    ("env.port", 65534, r"env.port \(65534\) must be in \[1, 65533\]"),
    ("env.host", "bad host", r"env.host \('bad host'\) must be an IP address or a host name"),
    ("env.town", "", r"env.town \(''\) must be a non-empty printable string"),
    ("env.camera.pitch", -120, r"env.camera.pitch \(-120.0\) must be in \[-90, 90\]"),
    ("env.fake.fail_tick_at", -2, r"env.fake.fail_tick_at \(-2\) must be >= -1"),
    ("env.reward.safety", -1, r"env.reward.safety \(-1.0\) must be >= 0"),
    ("metrics.port", 70000, r"metrics.port \(70000\) must be in \[0, 65535\]"),
    ("metrics.ray_export_port", -1, r"metrics.ray_export_port \(-1\) must be in \[0, 65535\]"),
    ("metrics.address", "0.0.0.0:80", r"metrics.address \('0.0.0.0:80'\) must be an IP address"),
    ("metrics.gauge_refresh_s", 0, r"metrics.gauge_refresh_s \(0.0\) must be > 0"),
])
def test_out_of_range_values_name_the_key_and_the_value(path, value, message):
    with pytest.raises(ConfigError, match=message):
        C.with_overrides(C.RunConfig(), {path: value})


def test_validate_checks_configs_built_in_code():
    cfg = dataclasses.replace(C.RunConfig(), replay=C.ReplayConfig(chunk_length=0))
    with pytest.raises(ConfigError, match=r"replay.chunk_length \(0\) must be >= 1"):
        C.validate(cfg)
    wrong_type = dataclasses.replace(C.RunConfig(), replay=C.ReplayConfig(sampler="uniform"))
    with pytest.raises(ConfigError, match=r"replay.sampler \('uniform'\) must be one of"):
        C.validate(wrong_type)
    with pytest.raises(ConfigError, match=r"replay \(5\) must be a ReplayConfig section"):
        C.validate(dataclasses.replace(C.RunConfig(), replay=5))
    graphs_on_cpu = C.LearnerConfig(execution=C.LearnerExecution(device="cpu", cuda_graphs=True))
    with pytest.raises(ConfigError,
                       match=r"learner.execution.cuda_graphs \(True\) needs a CUDA device"):
        C.validate(dataclasses.replace(C.RunConfig(), learner=graphs_on_cpu))
    assert C.validate(C.RunConfig()) == C.RunConfig()


def test_loading_a_saved_config_validates_it():
    data = C.to_dict(C.RunConfig())
    data["learner"]["td3"]["tau"] = 0.0
    with pytest.raises(ConfigError, match=r"learner.td3.tau \(0.0\)"):
        C.loads(C.RunConfig, json.dumps(data))


def test_every_rule_names_a_field_of_its_class():
    classes = [obj for obj in vars(C).values()
               if dataclasses.is_dataclass(obj) and obj.__module__.startswith(C.__name__)]
    assert C.LearnerExecution in classes and C.RunConfig in classes
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(getattr(cls, "RULES", {})) <= names, cls.__name__


@pytest.mark.parametrize("overrides,message", [
    ({"learner": 5}, r"learner: expected a mapping for LearnerConfig, got 5"),
    ({"learner.td3": []}, r"learner.td3: expected a mapping for TD3Config, got \[\]"),
    ({"env.fake": None}, r"env.fake: expected a mapping for FakeCarlaConfig, got None"),
    ({"replay.shardz": 1}, r"unknown config key 'replay.shardz'"),
    ({"replay.num_shards.x": 1}, r"unknown config key 'replay.num_shards.x'"),
    ({"learner.td3.gamma": "high"}, r"learner.td3.gamma: expected a number, got 'high'"),
])
def test_check_overrides_names_the_key_without_validating_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        C.check_overrides(C.RunConfig, overrides)
    C.check_overrides(C.RunConfig, {"train.env_steps": 1, "learner.td3.gamma": "0.5"})


def _old_flat(cfg: C.RunConfig) -> dict:
    """``cfg`` as a run saved it before the learner's execution section existed."""
    data = C.to_dict(cfg)
    data["learner"].update(data["learner"].pop("execution"))
    return data


def test_a_saved_config_with_flat_learner_keys_loads_them_at_their_new_place(caplog):
    run = C.LearnerExecution(device="cpu", precision=C.Precision.BF16, prefetch=7,
                             frame_cache=C.FrameCacheMode.OFF, publish_shm=False)
    cfg = dataclasses.replace(C.RunConfig(), learner=dataclasses.replace(C.LearnerConfig(),
                                                                         execution=run))
    with caplog.at_level("INFO", logger="common.config_io"):
        assert C.loads(C.RunConfig, json.dumps(_old_flat(cfg))) == cfg
    moved = [r.getMessage() for r in caplog.records if "config_keys_moved" in r.getMessage()]
    assert len(moved) == 1, moved
    assert "learner.device->learner.execution.device" in moved[0]
    assert "learner.precision->learner.execution.precision" in moved[0]


def test_a_saved_config_with_a_key_in_both_places_is_refused():
    data = _old_flat(C.RunConfig())
    data["learner"]["execution"] = {"device": "cpu"}
    with pytest.raises(ConfigError, match=r"both learner.device .* and learner.execution.device"):
        C.loads(C.RunConfig, json.dumps(data))


@pytest.mark.parametrize("path", ["docs/learning/results.json",
                                  "docs/learning/variant_bf16/results.json"])
def test_committed_configs_of_older_runs_still_load(path):
    root = Path(__file__).resolve().parents[2]
    saved = json.loads((root / path).read_text())["meta"]["config"]
    assert "precision" in saved["learner"]  # saved before the execution section
    cfg = C.loads(C.RunConfig, json.dumps(saved))
    assert cfg.learner.execution.precision.value == saved["learner"]["precision"]
    assert cfg.learner.execution.cpu_threads == saved["learner"]["cpu_threads"]


@pytest.mark.parametrize("old", sorted(C.LearnerConfig.MOVED))
def test_an_override_of_a_moved_key_names_its_new_place(old):
    message = rf"'learner.{old}' moved to 'learner.execution.{old}'"
    with pytest.raises(ConfigError, match=message):
        C.with_overrides(C.RunConfig(), {f"learner.{old}": "1"})
    with pytest.raises(ConfigError, match=message):
        C.check_overrides(C.RunConfig, {f"learner.{old}": "1"})


def test_the_learner_enums_are_typed():
    cfg = C.with_overrides(C.RunConfig(), {"learner.execution.precision": "bf16",
                                           "learner.execution.first_conv": "blocks",
                                           "learner.execution.frame_cache": "off"})
    run = cfg.learner.execution
    assert (run.precision, run.first_conv, run.frame_cache) == (
        C.Precision.BF16, C.FirstConv.BLOCKS, C.FrameCacheMode.OFF)
    assert C.to_dict(cfg)["learner"]["execution"]["precision"] == "bf16"


def test_a_saved_config_with_removed_reward_knobs_at_their_off_values_loads(caplog):
    data = C.to_dict(C.RunConfig())
    data["env"]["reward"].update(lane_invasion_ends_episode=False, curve_lateral_accel_mps2=0.0,
                                 curve_window_m=25.0, lane_keeping_corners=False)
    with caplog.at_level("INFO", logger="common.config_io"):
        assert C.loads(C.RunConfig, json.dumps(data)) == C.RunConfig()
    assert "event=config_keys_removed keys=env.reward.lane_invasion_ends_episode," in caplog.text


@pytest.mark.parametrize("key,value", [("lane_invasion_ends_episode", True),
                                       ("curve_lateral_accel_mps2", 2.0),
                                       ("lane_keeping_corners", True)])
def test_a_saved_config_that_used_a_removed_reward_knob_is_refused(key, value):
    data = C.to_dict(C.RunConfig())
    data["env"]["reward"][key] = value
    with pytest.raises(ConfigError, match=rf"env.reward.{key} \({value!r}\) was removed"):
        C.loads(C.RunConfig, json.dumps(data))
    with pytest.raises(ConfigError, match=rf"'env.reward.{key}' was removed"):
        C.with_overrides(C.RunConfig(), {f"env.reward.{key}": str(value)})
