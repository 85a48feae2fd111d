"""Runs that cannot go on stop at once, say why, and exit non-zero; SIGTERM stops a run the
way Ctrl+C does (issue 29)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

pytestmark = pytest.mark.smoke
CLI = [sys.executable, "-m", "deploy.cli"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_learner_that_cannot_start_fails_the_run_within_60_s_naming_the_cause(tmp_path):
    t0 = time.monotonic()
    proc = subprocess.run(
        CLI + ["train", "--preset", "smoke", "--set", "learner.execution.device=cuda", "--steps", "100000",
               "--no-dashboard", "--runs", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "CARLA_TD3_LOG": "WARNING"}, capture_output=True, text=True,
        timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert "the learner is dead and will not restart" in proc.stderr, proc.stderr[-3000:]
    assert "asks for CUDA but torch sees no CUDA device" in proc.stderr


@pytest.fixture
def servers():
    """Two fake servers the run is pointed at with --carla, as it would be at real ones."""
    from rollout.fakecarla.remote_process import FakeServerProcess

    started = [FakeServerProcess(), FakeServerProcess()]
    yield started
    for server in started:
        server.stop()


def _synchronous(port: int) -> bool:
    from rollout.fakecarla.remote_client import make_remote_module

    client = make_remote_module().Client("127.0.0.1", port)
    client.set_timeout(10.0)
    return bool(client.get_world().get_settings().synchronous_mode)


def test_sigterm_checkpoints_leaves_the_servers_asynchronous_and_resume_continues(tmp_path, servers):
    run = tmp_path / "terminated"
    endpoints = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    proc = subprocess.Popen(
        CLI + ["train", "--preset", "smoke", "--steps", "100000", "--no-dashboard",
               "--carla", endpoints, "--set", "env.backend=fake",
               "--set", "learner.checkpoint_every=5", "--runs", str(tmp_path), "--name", "terminated"],
        cwd=ROOT, env={**os.environ, "CARLA_TD3_LOG": "INFO"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not list((run / "checkpoints").glob("ckpt-*")):
            time.sleep(0.5)
        assert list((run / "checkpoints").glob("ckpt-*")), "no checkpoint before SIGTERM"
        assert all(_synchronous(s.port) for s in servers)  # the run drives them in sync mode
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for child in [proc, *children]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    psutil.Process(child.pid).kill()
            out, _ = proc.communicate(timeout=30)
            raise AssertionError(f"no exit 120 s after SIGTERM:\n{out[-5000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "event=sigterm action=checkpoint_and_shutdown" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is True
    latest = (run / "checkpoints" / "LATEST").read_text().strip()
    counters = json.loads((run / "checkpoints" / latest / "counters.json").read_text())
    assert counters["env_steps"] == summary["env_steps"]  # the final checkpoint is the stop's
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left behind: {[p.pid for p in alive]}"
    assert not any(_synchronous(s.port) for s in servers)  # back as the run found them
    more = summary["env_steps"] + 200
    resumed = subprocess.run(CLI + ["train", "--resume", str(run), "--steps", str(more), "--no-dashboard"],
                             cwd=ROOT, env={**os.environ, "CARLA_TD3_LOG": "WARNING"},
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["env_steps"] >= more
