"""`drive` and `evaluate` on another map: --set and --config as `train` takes them, only env.*
keys for a trained run, and an unknown town failing with exit code 2 that names it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from common import config as C
from deploy import presets
from deploy.components import learner_checkpoint
from deploy.rundir import RunDir

pytestmark = pytest.mark.smoke
CLI = [sys.executable, "-m", "deploy.cli"]
ROOT = Path(__file__).resolve().parents[2]
# A 200 m straight road, one driving lane each way: the smallest map a route fits on.
LINE_XODR = """<?xml version="1.0" standalone="yes"?>
<OpenDRIVE><header revMajor="1" revMinor="4" name="line"/>
<road name="r" length="200" id="1" junction="-1"><link/><planView>
<geometry s="0" x="0" y="0" hdg="0" length="200"><line/></geometry></planView>
<lanes><laneSection s="0"><left><lane id="1" type="driving" level="false">
<width sOffset="0" a="3.5" b="0" c="0" d="0"/><roadMark sOffset="0" type="solid" color="white" width="0.15"/></lane></left>
<center><lane id="0" type="none" level="false"><roadMark sOffset="0" type="solid" color="yellow" width="0.15"/></lane></center>
<right><lane id="-1" type="driving" level="false"><width sOffset="0" a="3.5" b="0" c="0" d="0"/>
<roadMark sOffset="0" type="solid" color="white" width="0.15"/></lane></right></laneSection></lanes></road>
</OpenDRIVE>
"""
SHORT = ["--set", "env.route_length_m=50", "--set", "env.max_steps=20"]


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CARLA_TD3_LOG": "INFO"}
    return subprocess.run(CLI + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def line_map(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("maps") / "line.xodr"
    path.write_text(LINE_XODR)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory of the smoke preset with one checkpoint of an untrained learner."""
    from learner.td3 import TD3Learner

    cfg = presets.smoke()
    run = replace(cfg.learner.execution, device="cpu", precision=C.Precision.FP32)
    cfg = replace(cfg, learner=replace(cfg.learner, execution=run))
    run = RunDir.create(tmp_path_factory.mktemp("runs"), "untrained")
    run.write_config(cfg, {"preset": "smoke"})
    tmp = run.new_checkpoint_dir(0)
    TD3Learner(cfg.spec, cfg.learner, cfg.seed).save(learner_checkpoint(tmp))
    run.commit_checkpoint(tmp, 0, {"env_steps": 0, "updates": 0})
    return run.path


def test_drive_on_an_opendrive_file(tmp_path, line_map):
    out = tmp_path / "line.mp4"
    proc = _run(["drive", "--out", str(out), "--set", f"env.fake.xodr_path={line_map}", *SHORT])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "event=connected server=127.0.0.1:2000 town=line " in proc.stderr
    assert json.loads(proc.stdout)["frames"] > 0 and out.stat().st_size > 0


def test_drive_with_a_config_file_on_the_shipped_town(tmp_path):
    config = tmp_path / "short.json"
    config.write_text(json.dumps({"env": {"route_length_m": 50, "max_steps": 20, "town": "Town01"}}))
    proc = _run(["drive", "--out", str(tmp_path / "town.mp4"), "--config", str(config)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "town=Town01 " in proc.stderr and json.loads(proc.stdout)["frames"] <= 21


@pytest.mark.parametrize("key,message", [
    ("env.town=Town99", "env.town ('Town99') is not a map of the server at 127.0.0.1:2000; "
                        "available: ['Town01', 'Town02']"),
    ("env.twon=Town02", "unknown config key 'env.twon'"),
])
def test_drive_bad_town_or_key_fails_with_exit_2(tmp_path, key, message):
    proc = _run(["drive", "--out", str(tmp_path / "x.mp4"), "--set", key], timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr


def test_evaluate_with_env_overrides_runs_on_another_map(run_dir, line_map):
    proc = _run(["evaluate", str(run_dir), "--episodes", "1", "--set", "env.max_steps=50",
                 "--set", f"env.fake.xodr_path={line_map}", "--set", "env.route_length_m=50"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["episodes"] == 1 and out["mean_episode_length"] <= 50
    assert "town=line " in proc.stderr


@pytest.mark.parametrize("command,key", [("evaluate", "spec.image_size=64"),
                                         ("drive", "learner.td3.tau=0.1")])
def test_a_trained_run_takes_only_env_overrides(tmp_path, run_dir, command, key):
    args = ([command, str(run_dir)] if command == "evaluate" else
            [command, "--out", str(tmp_path / "x.mp4"), "--checkpoint", str(run_dir)])
    proc = _run(args + ["--set", "env.max_steps=50", "--set", key], timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    name = key.split("=")[0]
    assert f"config key(s) ['{name}'] cannot be overridden for a trained run" in proc.stderr


def test_evaluate_names_a_town_the_fake_lacks(run_dir):
    proc = _run(["evaluate", str(run_dir), "--episodes", "1", "--set", "env.town=Town99"], timeout=60)
    assert proc.returncode == 2 and "'Town99'" in proc.stderr and "['Town01', 'Town02']" in proc.stderr
