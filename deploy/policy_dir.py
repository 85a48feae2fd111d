"""A policy directory: a trained policy on its own, small enough to commit and ship.

``carla-td3 export RUN OUT`` writes, from a run's latest checkpoint (or one checkpoint):

- ``policy.npz``: the policy network's arrays (no critic, no optimizer: a fraction of a
  learner checkpoint), loaded with ``allow_pickle=False``;
- ``config.json`` and ``run.json``: the run's config (spec, network, env) as a run directory
  holds them, so ``evaluate`` and ``drive --checkpoint`` read a policy directory as they read
  a run;
- ``policy.json``: where it came from (checkpoint, updates, env steps);
- ``manifest.json``: the sealed sizes and SHA-256 of the files above, checked on every load.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from common import durable
from common.errors import CheckpointError
from common.weights import PolicySnapshot
from deploy.rundir import RunDir

log = logging.getLogger(__name__)

POLICY_FILE = "policy.npz"
FILES = ("config.json", "run.json", "policy.json", POLICY_FILE)


def is_policy_dir(path: Path) -> bool:
    return (Path(path) / POLICY_FILE).exists()


def export_policy(source: Path, out: Path) -> dict[str, Any]:
    """Writes the policy directory ``out`` from ``source`` (a run directory or a checkpoint).

    Raises:
        CheckpointError: for a bad source, or ``out`` that exists and is not empty.
    """
    from deploy import evaluate  # the learner-checkpoint loading lives there

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not empty; export into a new directory")
    run_dir, checkpoint = evaluate.resolve_checkpoint(source)
    cfg, options = run_dir.read_config()
    policy, state = evaluate.load_learner_policy(cfg, checkpoint)
    counters = RunDir.read_counters(checkpoint) if (checkpoint / "counters.json").exists() else {}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    durable.atomic_write_bytes(tmp / POLICY_FILE, buffer.getvalue())
    RunDir(tmp).write_config(cfg, {**options, "exported_from": str(checkpoint)})
    meta = {"version": int(policy.version), "checkpoint": str(checkpoint),
            "env_steps": counters.get("env_steps"), "updates": counters.get("updates")}
    durable.atomic_write_text(tmp / "policy.json", json.dumps(meta, indent=2, sort_keys=True))
    durable.write_sealed(tmp / durable.MANIFEST, {"files": durable.manifest_for(tmp, list(FILES))})
    tmp.rename(out)
    log.info("event=policy_exported out=%s version=%d bytes=%d", out, policy.version,
             sum((out / f).stat().st_size for f in FILES))
    return meta


def load_snapshot(path: Path) -> PolicySnapshot:
    """The policy of the directory ``path``, after checking its manifest.

    Raises:
        CheckpointError: naming the file that is missing, damaged or not a policy.
    """
    path = Path(path)
    durable.verify_manifest(path, durable.Check.CONTENT)
    meta = json.loads((path / "policy.json").read_text())
    try:
        with np.load(path / POLICY_FILE, allow_pickle=False) as data:
            state = {name: np.array(data[name]) for name in data.files}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / POLICY_FILE}: not a policy file ({exc})") from None
    return PolicySnapshot(int(meta["version"]), state)
