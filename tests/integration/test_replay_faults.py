"""A replay shard killed mid-run on real local Ray comes back from its last checkpoint while the
learner keeps sampling the live shard and the rollout workers keep running."""
from __future__ import annotations

import threading
import time

import pytest
import ray

from deploy.driver import Driver
from deploy.rundir import RunDir
from tests.integration.runtime_support import start_ray, tiny_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_ray():
    cfg = tiny_config()
    start_ray(cfg)
    yield
    ray.shutdown()


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _restarted_pid(shard, pid_before: int, seconds: float) -> int:
    """The shard's pid once Ray has restarted it (ray.kill is asynchronous, and calls fail
    while the shard restarts)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            pid = ray.get(shard.pid.remote(), timeout=10)
            if pid != pid_before:
                return pid
        except ray.exceptions.RayError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the shard (pid {pid_before}) was not restarted within {seconds} s")


def test_killed_shard_restores_its_checkpoint_while_the_learner_keeps_updating(local_ray, tmp_path):
    # Long enough that the run cannot end (and the driver kill the restarted shard) before the
    # probe below has seen the new process: at 900 env steps it sometimes ended within 2 s of
    # the restart, while the driver's calls still waited on the old process's death notice.
    # The learner samples through its frame cache: the restarted shard must send it every
    # frame again (its copy's record died with the old process).
    cfg = tiny_config(env_steps=2400, worker_steps_per_call=10, frame_cache="device")
    run_dir = RunDir.create(tmp_path, "shard-kill")
    run_dir.write_config(cfg, {})
    driver = Driver(cfg, run_dir)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(driver.run()), daemon=True)
    thread.start()
    _wait(lambda: run_dir.latest_checkpoint() is not None, 180, "the first checkpoint")
    victim = driver.fleet.shards[0]
    pid_before = ray.get(victim.pid.remote())
    updates_at_kill = driver.counters.updates
    ray.kill(victim, no_restart=False)
    pid_after = _restarted_pid(victim, pid_before, 60)
    size_after = ray.get(victim.size.remote(), timeout=30)
    thread.join(timeout=240)
    assert not thread.is_alive(), "the run did not finish after a shard was killed"
    assert pid_before > 0 and pid_after > 0
    assert size_after > 0, "the restarted shard did not restore its checkpoint"
    assert result["env_steps"] >= cfg.train.env_steps
    assert result["updates"] > updates_at_kill, "the learner stopped updating"
    assert result["actor_restarts"] == 0, "a rollout worker crashed on the dead shard"
    assert result["learner_frame_cache"] == "device"
