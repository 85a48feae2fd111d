"""Building per-actor settings and rejecting impossible run configurations."""
from dataclasses import replace

import pytest

from common import config as C
from common.errors import ConfigError
from deploy import build, presets
from deploy.rundir import RunDir


def _carla(cfg: C.RunConfig, endpoints: tuple[str, ...]) -> C.RunConfig:
    return replace(cfg, env=replace(cfg.env, backend=C.SimulatorBackend.CARLA),
                   train=replace(cfg.train, endpoints=endpoints),
                   rollout=replace(cfg.rollout, num_workers=len(endpoints)))


def test_each_actor_gets_its_own_server_and_traffic_manager_port():
    cfg = replace(presets.local(), rollout=replace(presets.local().rollout, num_workers=3))
    envs = [build.actor_env_config(cfg, i) for i in range(3)]
    assert [e.port for e in envs] == [2000, 2003, 2006]
    assert len({e.tm_port for e in envs}) == 3
    carla = _carla(cfg, ("10.0.0.1:2000", "10.0.0.2:2000"))
    assert [(e.host, e.port) for e in (build.actor_env_config(carla, i) for i in range(2))] == \
        [("10.0.0.1", 2000), ("10.0.0.2", 2000)]


@pytest.mark.parametrize("endpoints,message", [
    (("h:2000", "h:2002"), "ports 2000 and 2002 overlap"),
    (("h:2000", "h:notaport"), "must look like HOST:PORT"),
    (("h:8000",), r"tm_port \(8000\) collides with the server.s ports 8000..8002"),
])
def test_bad_endpoint_sets_are_rejected(endpoints, message):
    with pytest.raises(ConfigError, match=message):
        build.validate(_carla(presets.local(), endpoints))


def test_endpoint_count_must_match_actor_count():
    cfg = _carla(presets.local(), ("h:2000", "h:2003"))
    cfg = replace(cfg, rollout=replace(cfg.rollout, num_workers=3))
    with pytest.raises(ConfigError, match=r"2 CARLA endpoint\(s\).*num_workers is 3"):
        build.validate(cfg)


@pytest.mark.parametrize("override,message", [
    ({"replay.min_size_to_sample": 10},
     r"replay.min_size_to_sample \(10\) must be >= learner.td3.batch_size \(64\)"),
    ({"rollout.learning_starts": 10**9}, "the policy never acts"),
    ({"rollout.num_workers": 0}, r"num_workers \(0\) must be >= 1"),
    ({"rollout.noise_spread": 1.0, "rollout.exploration_noise": 1.5}, "must be < 1 when noise_spread"),
    ({"train.updates_per_env_step": 0.5, "replay.samples_per_insert": 3.0}, "contradicts"),
    ({"learner.execution.precision": "fp16"},
     r"learner.execution.precision: 'fp16' is not one of \['auto', 'fp32', 'bf16'\]"),
    ({"learner.execution.first_conv": "s2d"},
     r"learner.execution.first_conv: 's2d' is not one of"),
    ({"learner.execution.frame_cache": "gpu"},
     r"learner.execution.frame_cache: 'gpu' is not one of"),
    # each shard's limiter needs min_size_to_sample below its own capacity, not the total's
    ({"replay.capacity": 500, "replay.num_shards": 4},
     r"replay.min_size_to_sample \(1000\) must be < replay.capacity \(500\)"),
    ({"replay.chunk_length": 5000}, r"replay.chunk_length \(5000\) must be <= 4096"),
    ({"train.updates_per_env_step": 0.5, "replay.error_buffer": 1.0},
     r"replay.error_buffer \(1.0\) must be >= max\(1, samples_per_insert \(32.0\)\)"),
    ({"metrics.backend": "prometheus"}, r"metrics.backend \('prometheus'\) serves one process"),
    ({"env.fake.xodr_path": "/maps/ring.xodr", "env.town": "Town02"}, "contradicts"),
])
def test_impossible_combinations_fail_naming_the_values(override, message):
    with pytest.raises(ConfigError, match=message):
        build.validate(C.with_overrides(presets.local("cpu"), override))


def test_rate_limiter_derives_from_updates_per_env_step():
    cfg = C.with_overrides(presets.local(), {"train.updates_per_env_step": 0.5})
    replay = build.replay_config(cfg)
    assert replay.samples_per_insert == 0.5 * cfg.learner.td3.batch_size
    assert replay.error_buffer >= 2 * cfg.learner.td3.batch_size
    free = C.with_overrides(presets.local(), {"train.updates_per_env_step": 0})
    assert build.replay_config(free).samples_per_insert == 0.0


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_presets_are_valid(name):
    build.validate(presets.preset(name))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_default_preset_is_valid_for_each_device(device):
    build.validate(presets.local(device))


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match=r"unknown preset 'tiny'.*'smoke'"):
        presets.preset("tiny")


def test_run_dir_commits_checkpoints_atomically_and_keeps_the_last_two(tmp_path):
    run = RunDir.create(tmp_path, "r")
    run.write_config(presets.smoke(), {"preset": "smoke"})
    assert run.read_config()[0] == presets.smoke()
    assert run.latest_checkpoint() is None
    for updates in (10, 20, 30):
        tmp = run.new_checkpoint_dir(updates)
        run.commit_checkpoint(tmp, updates, {"env_steps": updates})
    assert run.latest_checkpoint().name == "ckpt-000000030"
    assert sorted(p.name for p in run.checkpoints.glob("ckpt-*")) == ["ckpt-000000020", "ckpt-000000030"]
    assert not list(run.checkpoints.glob(".tmp-*"))
    assert RunDir.read_counters(run.latest_checkpoint())["env_steps"] == 30
