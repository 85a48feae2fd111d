"""`carla-td3 export`: a policy directory that evaluate and drive take as they take a run, and
that refuses to load when damaged."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.smoke.test_cli_maps import SHORT, run_dir  # noqa: F401  (a module fixture)

pytestmark = pytest.mark.smoke
CLI = [sys.executable, "-m", "deploy.cli"]
ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "CARLA_TD3_LOG": "WARNING"}
    return subprocess.run(CLI + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def policy(run_dir, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("policies") / "policy"
    proc = _run(["export", str(run_dir), str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_export_writes_the_policy_alone_and_evaluate_runs_it_recording_the_env(policy, run_dir,
                                                                            tmp_path):  # noqa: F811
    names = sorted(p.name for p in policy.iterdir())
    assert names == ["config.json", "manifest.json", "policy.json", "policy.npz", "run.json"]
    learner_bytes = sum(p.stat().st_size for p in run_dir.rglob("learner.pt"))
    assert (policy / "policy.npz").stat().st_size < learner_bytes / 3  # no critic, no optimizer
    out = tmp_path / "eval.json"
    proc = _run(["evaluate", str(policy), "--episodes", "2", "--json", str(out),
                 "--set", "env.num_npcs=2", *SHORT])
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["env"]["num_npcs"] == 2 and result["env"]["route_split"] == "eval"
    assert result["env"]["town"] == "Town01"
    assert 0.0 <= result["driving_score"] <= result["route_completion"] <= 1.0
    assert {"success_rate", "collisions_per_km"} <= result.keys()
    video = tmp_path / "drive.mp4"
    proc = _run(["drive", "--checkpoint", str(policy), "--out", str(video), *SHORT])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert video.stat().st_size > 0


def test_a_damaged_policy_file_is_refused_naming_it(policy, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in policy.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    data = bytearray((damaged / "policy.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "policy.npz").write_bytes(bytes(data))
    proc = _run(["evaluate", str(damaged), "--episodes", "1", *SHORT])
    assert proc.returncode == 2
    assert "policy.npz: checksum mismatch" in proc.stderr


def test_export_refuses_a_directory_that_is_not_empty(run_dir, tmp_path):  # noqa: F811
    (tmp_path / "keep.txt").write_text("mine")
    proc = _run(["export", str(run_dir), str(tmp_path)])
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"
