"""A run's learner precision, chosen once and kept.

``learner.execution.precision="auto"`` is measured on a CPU (learner/precision.py). A run
records what its first learner chose in ``<run_dir>/learner_precision.json``; a learner that Ray restarts,
and a ``--resume`` on the same kind of device, reuse the record instead of measuring again, so
a run's numerics never change halfway because the machine was busier at one start than at
another. A resume on another kind of device (a CPU run continued on a GPU) measures again and
records the new choice, with a log line saying so.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from common import config as C

log = logging.getLogger(__name__)

RECORD = "learner_precision.json"
RESOLVED = ("fp32", "bf16")


def record_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RECORD


def read_record(run_dir: str | Path) -> dict | None:
    """The run's record, or None when there is none or it is unreadable (then measured anew)."""
    path = record_path(run_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("event=precision_record_unreadable path=%s error=%r action=measure", path, exc)
        return None
    if not isinstance(data, dict) or data.get("precision") not in RESOLVED:
        log.warning("event=precision_record_invalid path=%s action=measure", path)
        return None
    return data


def pinned(cfg: C.LearnerConfig, run_dir: str | Path, device_type: str) -> C.LearnerConfig:
    """``cfg`` with an "auto" precision replaced by the run's recorded choice for
    ``device_type`` ("cpu" or "cuda"); unchanged when the precision is set explicitly or
    nothing was recorded for that kind of device."""
    if cfg.execution.precision is not C.Precision.AUTO:
        return cfg
    record = read_record(run_dir)
    if record is None:
        return cfg
    if record.get("device") != device_type:
        log.info("event=precision_record_skipped recorded_device=%s device=%s action=measure",
                 record.get("device"), device_type)
        return cfg
    log.info("event=precision_from_record precision=%s device=%s", record["precision"], device_type)
    return replace(cfg, execution=replace(cfg.execution,
                                          precision=C.Precision(record["precision"])))


def write_record(run_dir: str | Path, device_type: str, configured: str, precision: str) -> None:
    """Records the learner's resolved ``precision`` (atomically: a reader sees the old record or
    the new one)."""
    if precision not in RESOLVED:
        raise ValueError(f"resolved precision ({precision!r}) must be one of {list(RESOLVED)}")
    path = record_path(run_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"device": device_type, "configured": configured,
                               "precision": precision}, sort_keys=True))
    tmp.replace(path)
