"""The CLI as a user runs it: a subprocess with the smoke preset, and bad input failing fast."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.smoke
CLI = [sys.executable, "-m", "deploy.cli"]
ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "CARLA_TD3_LOG": "WARNING"}
    return subprocess.run(CLI + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_smoke_preset_trains_and_writes_summary(tmp_path):
    proc = _run(["train", "--preset", "smoke", "--steps", "500", "--no-dashboard",
                 "--runs", str(tmp_path), "--name", "smoke"], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "smoke" / "summary.json").read_text())
    for key in ("env_steps", "updates", "episodes", "policy_version", "wall_seconds",
                "mean_return", "success_rate"):
        assert key in summary, key
    assert summary["env_steps"] >= 500 and summary["updates"] > 0
    config = json.loads((tmp_path / "smoke" / "config.json").read_text())
    assert config["train"]["env_steps"] == 500


@pytest.mark.parametrize("args,message", [
    (["train", "--set", "replay.shardz=3"], "unknown config key 'replay.shardz'"),
    (["train", "--set", "replay.num_shards=none"], "expected an integer, got 'none'"),
    (["train", "--preset", "smoke", "--carla", "localhost:2000,localhost:2001"],
     "ports 2000 and 2001 overlap"),
    (["train", "--carla", "localhost"], "must look like HOST:PORT"),
    (["train", "--preset", "smoke", "--steps", "100"], "learning_starts (200) must be < train.env_steps (100)"),
    (["train", "--preset", "smoke", "--set", "learner.td3.gamma=nan"],
     "learner.td3.gamma (nan) must be in (0, 1]"),
    (["train", "--resume", "/nonexistent/run"], "is not a run directory"),
    (["evaluate", "/nonexistent/run"], "is neither a run directory, a checkpoint directory in one, nor a policy directory"),
    (["evaluate", "/nonexistent/run", "--split", "test"], "invalid choice: 'test'"),
])
def test_bad_input_fails_at_once_with_a_clear_message(args, message):
    proc = _run(args, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--config", "{tmp}/list.json"], "must hold a JSON object of config keys, got [1, 2]"),
    (["--name", "../escaped"], "--name ('../escaped') must be one directory name"),
    (["--set", "metrics.ray_export_port=70000"], "metrics.ray_export_port (70000) must be in [0, 65535]"),
])
def test_bad_files_names_and_ports_fail_before_the_run_directory(tmp_path, args, message):
    (tmp_path / "list.json").write_text("[1, 2]")
    runs = tmp_path / "runs"
    proc = _run(["train", "--preset", "smoke", "--runs", str(runs)]
                + [a.format(tmp=tmp_path) for a in args], timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not runs.exists() and not (tmp_path / "escaped").exists()


def test_unknown_flag_is_rejected_by_argparse():
    proc = _run(["train", "--stepz", "3"], timeout=60)
    assert proc.returncode == 2 and "unrecognized arguments: --stepz" in proc.stderr


def test_ctrl_c_checkpoints_and_leaves_no_process_behind(tmp_path):
    import signal
    import time

    import psutil

    run = tmp_path / "interrupted"
    proc = subprocess.Popen(
        CLI + ["train", "--preset", "smoke", "--steps", "100000", "--no-dashboard",
               "--runs", str(tmp_path), "--name", "interrupted"],
        cwd=ROOT, env={**os.environ, "CARLA_TD3_LOG": "INFO"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        # A shell without job control starts background commands with SIGINT ignored, and
        # Python then keeps ignoring it: the CLI is started as a terminal would start it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not list((run / "checkpoints").glob("ckpt-*")):
            time.sleep(0.5)
        assert list((run / "checkpoints").glob("ckpt-*")), "no checkpoint before the interrupt"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "expected Ray's processes under the CLI"
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # show where the shutdown stopped
            for child in [proc, *children]:  # Ray's processes hold the output pipe open too
                with contextlib.suppress(psutil.NoSuchProcess):
                    psutil.Process(child.pid).kill()
            out, _ = proc.communicate(timeout=30)
            raise AssertionError(f"no exit 120 s after SIGINT:\n{out[-5000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "progress env_steps=" in out, out[-3000:]  # off a terminal: key=value lines, no bar
    assert list((run / "tb").glob("events.out.tfevents.*")), "no TensorBoard event file"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is True
    counters = json.loads((run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()
                           / "counters.json").read_text())
    assert counters["env_steps"] == summary["env_steps"]
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left behind: {[p.pid for p in alive]}"
