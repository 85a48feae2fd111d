"""The compose topology as separate processes on one machine (issue 29): a Ray head, a node
advertising `learner`, a node advertising `rollout` (all three started by the image's
entrypoint script) and `carla-td3 train --ray-address` joining them. The learner must run on the learner
node, the rollout workers on the rollout node, and the workers must act on weights that came
through the object store (their node is not the learner's, so no shared-memory weight file).

Every Ray process runs under a private temp dir and private ports; the nodes are stopped by PID
(never `ray stop`, which stops every Ray on the machine). Deselect with ``-m "not smoke"``.

Token auth stays on (RAY_AUTH_MODE=token, a fresh random token in every process's
environment): it is the compose default, and it is needed here. The GCS is reached on
127.0.0.1, but on Linux `ray start` replaces a loopback node address with the machine's routable
one (a multi-node cluster cannot keep loopback), so these nodes listen beyond this machine.
"""
from __future__ import annotations

import csv
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
BIN = Path(sys.executable).parent
pytestmark = [
    pytest.mark.integration, pytest.mark.smoke,
    pytest.mark.skipif(not (BIN / "ray").exists() or not (BIN / "carla-td3").exists()
                       or shutil.which("bash") is None,
                       reason=f"needs bash and the ray and carla-td3 scripts in {BIN}"),
]

# Joins the cluster as a second driver. "wait": until both custom resources are advertised.
# "actors": one JSON line: every node's id and resources, every actor's class, node and state.
PROBE = """
import json, sys, time, ray
from ray._private import state
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
if sys.argv[2] == "wait":
    deadline = time.monotonic() + 90
    while not {"learner", "rollout"} <= set(ray.cluster_resources()):
        if time.monotonic() > deadline:
            sys.exit(f"nodes never joined: {ray.cluster_resources()}")
        time.sleep(0.5)
else:
    nodes = [{"id": n["NodeID"], "resources": n["Resources"], "alive": n["Alive"]}
             for n in ray.nodes()]
    actors = [{"class": a["ActorClassName"], "node": a["Address"]["NodeID"], "state": a["State"]}
              for a in state.actors().values()]
    print(json.dumps({"nodes": nodes, "actors": actors}))
"""


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class Topology:
    """The head and the two worker nodes, each a process group started by the entrypoint."""

    def __init__(self, temp_dir: Path) -> None:
        self.temp_dir = temp_dir
        gcs, client, head_metrics, head_agent, l_metrics, l_agent, r_metrics, r_agent = _free_ports(8)
        self.address = f"127.0.0.1:{gcs}"
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_HEAD_ADDRESS": self.address, "CARLA_TD3_LOG": "INFO"}
        self.env.pop("RAY_ADDRESS", None)
        common = [f"--temp-dir={temp_dir}"]
        self.procs: list[subprocess.Popen] = []
        self._start("head", head_metrics, [*common, f"--port={gcs}", "--include-dashboard=false",
                                           f"--ray-client-server-port={client}",
                                           f"--dashboard-agent-listen-port={head_agent}"])
        # The compose services' arguments (docker-compose.yml ray-learner, ray-rollout), with
        # this machine's ports; a later flag wins over the entrypoint's default.
        self._start("worker", l_metrics, ["--num-gpus=0", "--num-cpus=1",
                                          '--resources={"learner": 1}', *common,
                                          f"--dashboard-agent-listen-port={l_agent}"])
        self._start("worker", r_metrics, ["--num-gpus=0", "--num-cpus=2",
                                          '--resources={"rollout": 64}', *common,
                                          f"--dashboard-agent-listen-port={r_agent}"])

    def _start(self, role: str, metrics_port: int, args: list[str]) -> None:
        """Starts one node and waits until it is up: one at a time, as `ray start` gives a
        node 30 s to register, which a loaded machine may not meet for several at once."""
        path = self.temp_dir / f"{role}-{len(self.procs)}.log"
        with path.open("wb") as log:
            env = {**self.env, "RAY_METRICS_EXPORT_PORT": str(metrics_port)}
            proc = subprocess.Popen(["bash", str(ENTRYPOINT), role, *args], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 120
        while "block forever" not in path.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, \
                f"{role} node did not start: {path.read_text(errors='replace')[-3000:]}"
            time.sleep(0.5)

    def probe(self, mode: str, timeout_s: float = 120) -> str:
        done = subprocess.run([sys.executable, "-c", PROBE, self.address, mode], env=self.env,
                              capture_output=True, text=True, timeout=timeout_s)
        assert done.returncode == 0, f"probe {mode} failed: {done.stderr[-3000:]}"
        return done.stdout

    def ours(self) -> list[psutil.Process]:
        """Every live process of the topology: the node groups' members, and anything whose
        command line names the private temp dir (a raylet's workers rename themselves)."""
        found = {}
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                in_group = any(os.getpgid(proc.pid) == p.pid for p in self.procs)
                named = str(self.temp_dir) in " ".join(proc.info["cmdline"] or [])
            except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
                continue
            if in_group or named:
                found[proc.pid] = proc
        for p in self.procs:  # a worker's parent is its raylet, in the node's group
            try:
                for child in psutil.Process(p.pid).children(recursive=True):
                    found[child.pid] = child
            except psutil.NoSuchProcess:
                pass
        return [p for p in found.values() if p.pid != os.getpid()]

    def stop(self) -> list[str]:
        """SIGTERM to each node (`ray start --block` stops its node), SIGKILL after 30 s;
        returns the processes still alive after that."""
        procs = self.ours()
        for p in reversed(self.procs):  # the workers first, the head last
            _signal_group(p.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=30)
        for p in self.procs:
            _signal_group(p.pid, signal.SIGKILL)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        for p in self.procs:
            if p.poll() is None:
                p.wait(timeout=10)
        return [f"pid={p.pid} cmd={' '.join(p.cmdline())[:120]}" for p in self.ours()
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def test_the_compose_topology_places_the_learner_and_the_workers_on_their_nodes():
    temp_dir = Path(tempfile.mkdtemp(prefix="ctd3mn-", dir="/tmp"))  # short: socket paths
    runs = temp_dir / "runs"
    topo = Topology(temp_dir)
    trainer = None
    try:
        topo.probe("wait")
        trainer = subprocess.run(
            [str(BIN / "carla-td3"), "train", "--ray-address", topo.address, "--preset", "smoke",
             "--no-dashboard", "--runs", str(runs), "--name", "multinode",
             # A rate limiter holds the workers to the learner's pace (the learner starts late
             # on a loaded machine), so they act on published policies before the budget ends.
             "--set", "replay.samples_per_insert=1.0", "--set", "replay.error_buffer=64",
             "--set", "learner.publish_every=1"],
            env=topo.env, cwd=temp_dir, capture_output=True, text=True, timeout=240,
            start_new_session=True)
        output = trainer.stdout + trainer.stderr
        assert trainer.returncode == 0, output[-4000:]
        assert "event=placement learner_resources={'learner': 1.0} " \
               "rollout_resources={'rollout': 1.0}" in output, output[-4000:]
        placed = json.loads(topo.probe("actors").strip().splitlines()[-1])
    finally:
        left = topo.stop()
    assert not left, f"processes left behind: {left}"

    node_of = {r: [n["id"] for n in placed["nodes"] if r in n["resources"]] for r in ("learner", "rollout")}
    assert len(node_of["learner"]) == len(node_of["rollout"]) == 1, placed["nodes"]
    learner_node, rollout_node = node_of["learner"][0], node_of["rollout"][0]
    by_class: dict[str, set[str]] = {}
    for actor in placed["actors"]:
        by_class.setdefault(actor["class"], set()).add(actor["node"])
    assert by_class.get("LearnerActor") == {learner_node}, placed["actors"]
    assert by_class.get("RolloutActor") == {rollout_node}, placed["actors"]

    summary = json.loads((runs / "multinode" / "summary.json").read_text())
    assert summary["env_steps"] >= 800 and summary["updates"] > 0, summary
    # A finite policy lag: the learner sampled transitions that the workers produced with a
    # published policy (version >= 0). A worker reads a weight file only on the learner's own
    # node (deploy/weights_source.py), so those weights came through the object store.
    with (runs / "multinode" / "metrics.csv").open() as f:
        lags = [float(r["policy_lag"]) for r in csv.DictReader(f) if r.get("policy_lag")]
    assert any(math.isfinite(x) for x in lags), f"no policy-produced transition sampled: {lags}"
    print(f"placement shards={sorted(by_class.get('RestoringShard', set()))} "
          f"board={sorted(by_class.get('WeightBoard', set()))} learner_node={learner_node} "
          f"rollout_node={rollout_node}")
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_placement_pins_only_where_the_cluster_advertises_the_resources():
    from common.errors import ConfigError
    from deploy.driver import placement

    local = placement(4, {"CPU": 8.0, "GPU": 1.0})
    assert (local.learner, local.rollout) == ({}, {})
    compose = placement(2, {"CPU": 12.0, "learner": 1.0, "rollout": 64.0})
    assert (compose.learner, compose.rollout) == ({"learner": 1.0}, {"rollout": 1.0})
    with pytest.raises(ConfigError, match=r"num_workers=65 .*64 worker slots"):
        placement(65, {"rollout": 64.0})
