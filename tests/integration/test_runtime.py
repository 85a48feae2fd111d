"""The distributed runtime on real local Ray with the fake CARLA and small images."""
from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import ray
import torch

from common import config as C
from common.errors import LearnerDiverged
from deploy import launch
from deploy.driver import Driver
from deploy.components import learner_checkpoint, shard_checkpoint
from deploy.rundir import RunDir
from deploy.weights_shm import channel_dir
from learner.td3 import TD3Learner
from replay.shard import RateLimited, ReplayShard
from tests.integration.runtime_support import local_ray, tiny_config  # noqa: F401 (local_ray: a fixture)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def first_run(local_ray, tmp_path_factory):
    # Through the learner's frame cache (a CPU learner's "auto" is off: other runs cover that).
    cfg = replace(local_ray, learner=replace(local_ray.learner, execution=replace(
        local_ray.learner.execution, frame_cache=C.FrameCacheMode.DEVICE)))
    root = tmp_path_factory.mktemp("runs")
    weight_files: set[str] = set()  # the learner's shared-memory weight files seen during the run
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            weight_files.update(p.name for p in channel_dir(root / "flow").glob("weights-*"))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = launch.train(cfg, runs_root=root, name="flow", dashboard=False)
    finally:
        done.set()
        watcher.join()
    summary["weight_files_seen"] = sorted(weight_files)
    return cfg, summary


def _encoders(learner: TD3Learner) -> dict[str, list[torch.Tensor]]:
    return {"policy": [p.detach().clone() for p in learner.nets.policy.encoder.parameters()],
            "critic": [p.detach().clone() for p in learner.nets.critic.encoder.parameters()]}


def test_transitions_flow_weights_reach_actors_and_both_encoders_learn(first_run):
    cfg, summary = first_run
    assert summary["env_steps"] >= cfg.train.env_steps
    assert summary["updates"] > 0 and summary["policy_version"] > 0
    assert summary["learner_device"] == "cpu" and summary["learner_precision"] in ("fp32", "bf16")
    assert summary["learner_frame_cache"] == "device"
    run_dir = RunDir(summary["run_dir"])
    latest = run_dir.latest_checkpoint()
    # Transitions in both shards; later ones were produced by published (non-random) versions.
    versions = []
    for index in range(cfg.replay.num_shards):
        shard = ReplayShard(cfg.spec, cfg.replay, shard_index=index)
        shard.restore(shard_checkpoint(latest, index))
        assert shard.size() > 0, f"shard {index} is empty"
        batch = shard.sample(256)
        assert not isinstance(batch, RateLimited)
        versions.append(batch.policy_version)
    versions = np.concatenate(versions)
    assert (versions == -1).any(), "the warm-up's random actions are missing"
    assert versions.max() > 0, "no transition came from a policy version the learner published"
    # Both encoders moved away from their initialisation.
    fresh = TD3Learner(cfg.spec, cfg.learner, cfg.seed)
    trained = TD3Learner(cfg.spec, cfg.learner, cfg.seed)
    trained.load(learner_checkpoint(latest))
    before, after = _encoders(fresh), _encoders(trained)
    for name in ("policy", "critic"):
        change = sum(float((a - b).abs().sum()) for a, b in zip(after[name], before[name]))
        assert change > 0, f"the {name} encoder did not change"
    assert (run_dir.path / "metrics.csv").read_text().count("\n") >= 2
    # Weights went through the shared-memory file, which the run removed at its end.
    assert summary["weight_files_seen"], "the learner wrote no weight file"
    assert not channel_dir(run_dir.path).exists(), "the run left its weight file in /dev/shm"


def test_resume_continues_counters_and_weight_version(first_run):
    cfg, summary = first_run
    more = launch.resume(summary["run_dir"], steps=summary["env_steps"] + 200, dashboard=False)
    assert more["env_steps"] >= summary["env_steps"] + 200
    assert more["updates"] > summary["updates"]
    assert more["policy_version"] >= summary["policy_version"]
    assert more["episodes"] >= summary["episodes"]
    assert more["wall_seconds"] > summary["wall_seconds"]


def test_resume_falls_back_past_a_damaged_checkpoint(first_run, tmp_path, caplog):
    """LATEST names a checkpoint with one flipped bit in a replay array: --resume warns, moves
    LATEST to the intact checkpoint before it, and the driver, the learner and every shard
    continue from that one."""
    _, summary = first_run
    copy = RunDir(shutil.copytree(summary["run_dir"], tmp_path / "copy"))
    intact = copy.latest_checkpoint()
    counters = RunDir.read_counters(intact)
    damaged = shutil.copytree(intact, copy.checkpoints / "ckpt-999999999")
    array = shard_checkpoint(damaged, 1) / "replay_shard_1" / "ring.frame.npy"
    data = bytearray(array.read_bytes())
    data[len(data) // 2] ^= 0x10
    array.write_bytes(bytes(data))
    (copy.checkpoints / "LATEST").write_text(damaged.name)
    with caplog.at_level(logging.WARNING):
        more = launch.resume(copy.path, steps=counters["env_steps"] + 100, dashboard=False)
    assert f"checkpoint={damaged}" in caplog.text and "ring.frame.npy: checksum mismatch" in caplog.text
    assert more["env_steps"] >= counters["env_steps"] + 100
    assert more["updates"] > counters["updates"]
    assert not damaged.exists()  # the abandoned checkpoint went with the first new one


def test_killed_rollout_actor_is_restarted_and_the_run_finishes(local_ray, tmp_path):
    cfg = tiny_config(env_steps=900, worker_steps_per_call=10)
    run_dir = RunDir.create(tmp_path, "kill")
    run_dir.write_config(cfg, {})
    driver = Driver(cfg, run_dir)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(driver.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while driver.counters.env_steps < 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert driver.fleet is not None and driver.counters.env_steps >= 200
    victim = driver.fleet.actors[0]
    # One thread per pool: OpenCV's default (one per core) left a worker spinning after each
    # resize, CPU the other actors lacked (bench/e2e_scaling.py).
    threads = cfg.rollout.cpu_threads
    assert ray.get(victim.threads.remote()) == {"torch": threads, "opencv": threads}
    pid_before = ray.get(victim.pid.remote())
    ray.kill(victim, no_restart=False)
    thread.join(timeout=180)
    assert not thread.is_alive(), "the run did not finish after an actor was killed"
    assert result["env_steps"] >= cfg.train.env_steps
    assert result["actor_restarts"] >= 1
    assert pid_before > 0


def test_a_diverged_learner_stops_the_run_without_a_checkpoint(local_ray, tmp_path):
    # Adam steps of 1e30 overflow the networks within two updates; the publish after them
    # finds NaNs in the policy (LearnerLoop.publish) and the driver stops the run.
    cfg = tiny_config(env_steps=5000)
    td3 = replace(cfg.learner.td3, encoder_lr=1e30, head_lr=1e30)
    cfg = replace(cfg, learner=replace(cfg.learner, td3=td3, checkpoint_every=1000))
    run_dir = RunDir.create(tmp_path, "diverge")
    run_dir.write_config(cfg, {})
    driver = Driver(cfg, run_dir)
    with pytest.raises(LearnerDiverged, match=r"holds (nan|inf|-inf) at index .*no checkpoint yet"):
        driver.run()
    assert driver.counters.env_steps < cfg.train.env_steps
    assert run_dir.latest_checkpoint() is None  # nothing holding the NaNs was written
    assert not channel_dir(run_dir.path).exists()  # the fleet was shut down
