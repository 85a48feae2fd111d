"""`carla-td3 train` refuses bad config values, bad --config files and bad run names with exit
code 2 and a message naming the key, before the run directory or Ray exists (issue 30,
finding 7). The CLI runs in this process; Ray must never start, so ``launch._run`` fails."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy import cli, launch


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """An empty --runs directory; any attempt to start Ray fails the test."""
    def no_ray(*args, **kwargs):
        raise AssertionError("a refused config reached Ray")
    monkeypatch.setattr(launch, "_run", no_ray)
    root = tmp_path / "runs"
    root.mkdir()
    return root


def _refused(runs: Path, args: list[str], capsys) -> str:
    code = cli.main(["train", "--preset", "smoke", "--no-dashboard", "--runs", str(runs), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not list(runs.iterdir()), "a run directory was created"
    return err


@pytest.mark.parametrize("key,value", [
    # issue 30, finding 7: each passed the CLI and failed inside a Ray actor
    ("learner.td3.gamma", "nan"),
    ("learner.td3.tau", "0"),
    ("learner.td3.batch_size", "0"),
    ("replay.capacity", "2"),
    ("replay.chunk_length", "0"),
    ("learner.publish_every", "0"),
    ("replay.priority_alpha", "2"),
    # a few per section
    ("seed", "-5"),
    ("spec.lookahead_m", "inf"),
    ("learner.td3.head_lr", "-1e-3"),
    ("learner.td3.noise_clip", "nan"),
    ("learner.execution.prefetch", "0"),
    ("replay.priority_beta", "-0.5"),
    ("replay.error_buffer", "nan"),
    ("replay.num_shards", "0"),
    ("rollout.noise_spread", "-1"),
    ("rollout.cpu_threads", "0"),
    ("env.fixed_delta_seconds", "0.5"),
    ("env.tm_port", "70000"),
    ("env.camera.fov", "180"),
    ("env.reward.target_speed_mps", "nan"),
    ("env.fake.tick_latency_s", "-1"),
    ("train.updates_per_env_step", "-0.5"),
    ("train.worker_steps_per_call", "0"),
    ("metrics.port", "70000"),
    ("metrics.port", "-1"),
    ("metrics.ray_export_port", "70000"),
    ("metrics.gauge_refresh_s", "inf"),
])
def test_bad_values_exit_2_naming_the_key_before_anything_exists(runs, capsys, key, value):
    err = _refused(runs, ["--set", f"{key}={value}"], capsys)
    assert f"{key} (" in err, err


@pytest.mark.parametrize("key,value,allowed", [
    ("learner.execution.precision", "fp8", "['auto', 'fp32', 'bf16']"),
    ("learner.execution.first_conv", "s2d", "['auto', 'strided', 'blocks']"),
    ("learner.execution.frame_cache", "gpu", "['auto', 'device', 'off']"),
    ("learner.execution.cpu_scheduling", "idle", "['batch', 'normal']"),
])
def test_enum_values_exit_2_naming_the_key_and_the_choices(runs, capsys, key, value, allowed):
    err = _refused(runs, ["--set", f"{key}={value}"], capsys)
    assert f"{key}: {value!r} is not one of {allowed}" in err, err


@pytest.mark.parametrize("old", ["device", "precision", "compile", "cuda_graphs", "first_conv",
                                 "frame_cache", "prefetch", "cpu_threads", "cpu_scheduling",
                                 "publish_shm"])
def test_a_moved_learner_key_exits_2_naming_its_new_place(runs, capsys, old):
    err = _refused(runs, ["--set", f"learner.{old}=1"], capsys)
    assert (f"config key 'learner.{old}' moved to 'learner.execution.{old}': "
            f"set learner.execution.{old} instead") in err, err


def test_a_moved_key_in_a_config_file_exits_2_naming_its_new_place(runs, capsys, tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"learner": {"device": "cpu"}}))
    err = _refused(runs, ["--config", str(path)], capsys)
    assert "moved to 'learner.execution.device'" in err, err


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "train.env_steps (0) must be >= 1"),
    (["--actors", "0"], "rollout.num_workers (0) must be >= 1"),
    (["--set", "metrics.backend=prometheus"], "metrics.backend ('prometheus') serves one process"),
    (["--set", "env.fake.xodr_path=/nonexistent/map.xodr", "--set", "env.town=map"],
     "env.fake.xodr_path ('/nonexistent/map.xodr') is not a file"),
    (["--set", "env.port=65531", "--actors", "2"], "rollout worker 1's server: env.port (65534)"),
])
def test_checks_that_need_the_whole_run_exit_2(runs, capsys, args, message):
    assert message in _refused(runs, args, capsys)


@pytest.mark.parametrize("text,message", [
    ("[1, 2]", "must hold a JSON object of config keys, got [1, 2]"),
    ("null", "must hold a JSON object of config keys, got null"),
    ("3", "must hold a JSON object of config keys, got 3"),
    ('"learner"', 'must hold a JSON object of config keys, got "learner"'),
    ("{", "Expecting property name"),
    ('{"learner": 5}', "learner: expected a mapping for LearnerConfig, got 5"),
    ('{"learner": {"td3": []}}', "learner.td3: expected a mapping for TD3Config, got []"),
    ('{"env": {"fake": null}}', "env.fake: expected a mapping for FakeCarlaConfig, got None"),
    ('{"replay": {"shardz": 2}}', "unknown config key 'replay.shardz'"),
    ('{"learner": {"td3": {"gamma": NaN}}}', "learner.td3.gamma (nan) must be in (0, 1]"),
])
def test_bad_config_files_exit_2_naming_the_file(runs, capsys, tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    err = _refused(runs, ["--config", str(path)], capsys)
    assert message in err, err
    if "nan" not in message:  # a range error comes from the whole config, not the file
        assert f"--config {path}" in err, err


@pytest.mark.parametrize("name", ["../x", "..", ".", "/abs", "a/b", "a\x00b", ".hidden", "",
                                  "tab\there", "x" * 201])
def test_run_names_outside_runs_exit_2_naming_the_value(runs, capsys, name):
    err = _refused(runs, ["--name", name], capsys)
    assert f"--name ({name!r})" in err, err
    assert not (runs.parent / "x").exists()


@pytest.mark.parametrize("name", ["run-1", "smoke_2026", "a.b", "x" * 200])
def test_plain_run_names_are_direct_children_of_runs(tmp_path, name):
    launch.check_run_name(tmp_path, name)


def test_a_symlink_out_of_runs_is_refused(tmp_path):
    runs, outside = tmp_path / "runs", tmp_path / "outside"
    runs.mkdir()
    outside.mkdir()
    (runs / "link").symlink_to(outside)
    with pytest.raises(Exception, match=r"--name \('link'\) must name a directory directly inside"):
        launch.check_run_name(runs, "link")


def test_a_valid_config_file_still_works(runs, tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_run(cfg, *args):
        seen["cfg"] = cfg
        return {"env_steps": 0}
    monkeypatch.setattr(launch, "_run", fake_run)
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"learner": {"td3": {"gamma": 0.9}}, "replay.chunk_length": 8}))
    code = cli.main(["train", "--preset", "smoke", "--no-dashboard", "--runs", str(runs),
                     "--name", "ok", "--config", str(path)])
    assert code == 0, capsys.readouterr().err
    assert seen["cfg"].learner.td3.gamma == 0.9 and seen["cfg"].replay.chunk_length == 8
    assert (runs / "ok" / "config.json").exists()
