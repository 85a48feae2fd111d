"""The run directory: effective config, checkpoints, metrics over time, summary.json.

Layout::

    RUN_DIR/config.json            the effective RunConfig
    RUN_DIR/run.json               run options (env-step budget, mode, preset)
    RUN_DIR/metrics.csv            one row per progress report
    RUN_DIR/tb/                    the same rows as TensorBoard scalars (one event file a start)
    RUN_DIR/checkpoints/ckpt-<updates>/{learner.pt, counters.json, replay/shard-<i>/}
    RUN_DIR/checkpoints/LATEST     name of the newest complete checkpoint (atomic replace)
    RUN_DIR/summary.json           written at the end
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from common import config as C
from common.errors import CheckpointError
from deploy.tensorboard_log import TensorBoardLog

KEEP_CHECKPOINTS = 2


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDir:
    """One training run's directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.tensorboard = self.path / "tb"
        self._metrics_fields: list[str] | None = None

    @classmethod
    def create(cls, root: str | os.PathLike, name: str | None = None) -> "RunDir":
        name = name or time.strftime("%Y%m%d-%H%M%S")
        run = cls(Path(root) / name)
        suffix = 1
        while run.path.exists():
            run = cls(Path(root) / f"{name}-{suffix}")
            suffix += 1
        run.checkpoints.mkdir(parents=True)
        return run

    def write_config(self, cfg: C.RunConfig, options: dict[str, Any]) -> None:
        atomic_write_text(self.path / "config.json", C.dumps(cfg))
        atomic_write_text(self.path / "run.json", json.dumps(options, indent=2, sort_keys=True))

    def read_config(self) -> tuple[C.RunConfig, dict[str, Any]]:
        try:
            cfg = C.loads(C.RunConfig, (self.path / "config.json").read_text())
            options = json.loads((self.path / "run.json").read_text())
        except FileNotFoundError as exc:
            raise CheckpointError(f"{self.path} is not a run directory: {exc.filename} missing") from exc
        return cfg, options

    # -- checkpoints -----------------------------------------------------------------------

    def new_checkpoint_dir(self, updates: int) -> Path:
        tmp = self.checkpoints / f".tmp-ckpt-{updates}-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir(parents=True)
        (tmp / "replay").mkdir()
        return tmp

    def commit_checkpoint(self, tmp: Path, updates: int, counters: dict[str, Any]) -> Path:
        """Writes counters, renames the temporary directory into place, then moves LATEST."""
        atomic_write_text(tmp / "counters.json", json.dumps(counters, indent=2, sort_keys=True))
        final = self.checkpoints / f"ckpt-{updates:09d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(self.checkpoints / "LATEST", final.name)
        self._prune(keep=final.name)
        return final

    def _prune(self, keep: str) -> None:
        done = sorted(p for p in self.checkpoints.glob("ckpt-*") if p.is_dir())
        for old in done[:-KEEP_CHECKPOINTS]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        pointer = self.checkpoints / "LATEST"
        if not pointer.exists():
            return None
        path = self.checkpoints / pointer.read_text().strip()
        if not (path / "counters.json").exists():
            raise CheckpointError(f"LATEST names {path}, which is missing or incomplete")
        return path

    @staticmethod
    def read_counters(checkpoint: Path) -> dict[str, Any]:
        try:
            return json.loads((checkpoint / "counters.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{checkpoint}/counters.json unreadable: {exc}") from exc

    # -- metrics and summary ---------------------------------------------------------------

    def append_metrics(self, row: dict[str, Any]) -> None:
        path = self.path / "metrics.csv"
        if self._metrics_fields is None:
            if path.exists():
                with path.open() as f:
                    self._metrics_fields = next(csv.reader(f), list(row))
            else:
                self._metrics_fields = list(row)
                with path.open("w", newline="") as f:
                    csv.writer(f).writerow(self._metrics_fields)
        with path.open("a", newline="") as f:
            csv.DictWriter(f, self._metrics_fields, extrasaction="ignore").writerow(row)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2, sort_keys=True))


class MetricsLog:
    """Where each progress row goes: a metrics.csv line and TensorBoard scalars in ``tb/``."""

    def __init__(self, run_dir: RunDir, resumed_at: int = 0) -> None:
        """Opens the TensorBoard event file.

        Args:
            run_dir: the run's directory.
            resumed_at: the env steps of the checkpoint a resumed run starts from (0 for a new
                run); TensorBoard drops the later points of the earlier event files.
        """
        self._run_dir = run_dir
        self._tensorboard = TensorBoardLog(run_dir.tensorboard, purge_step=resumed_at or None)

    def write(self, row: dict[str, Any]) -> None:
        self._run_dir.append_metrics(row)
        self._tensorboard.write(row)

    def close(self) -> None:
        self._tensorboard.close()
