"""TensorBoard scalars of a run: each metrics.csv row, one point per column at its env step.

The event files go to ``RUN_DIR/tb`` (``tensorboard --logdir runs`` shows every run). A resumed
run opens a new event file in the same directory with ``purge_step`` at the checkpoint's env
steps, so TensorBoard drops the points that the interrupted run logged after that checkpoint.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

STEP_COLUMN = "env_steps"
OTHER_GROUP = "run"

# metrics.csv column (deploy/progress.py Progress.row) -> TensorBoard tag.
TAGS: Mapping[str, str] = {
    "wall_seconds": "run/wall_seconds",
    "env_steps_per_s": "rollout/env_steps_per_s",
    "episodes": "rollout/episodes",
    "mean_return": "rollout/mean_return",
    "success_rate": "rollout/success_rate",
    "route_completion": "rollout/route_completion",
    "updates": "learner/updates",
    "updates_per_s": "learner/updates_per_s",
    "policy_version": "learner/policy_version",
    "policy_lag": "learner/policy_lag",
    "critic_loss": "learner/critic_loss",
    "policy_loss": "learner/policy_loss",
    "mean_q": "learner/mean_q",
    "replay_size": "replay/size",
}


def tag_for(column: str) -> str:
    """The tag of a metrics.csv column; a column missing from TAGS goes to the ``run/`` group."""
    return TAGS.get(column, f"{OTHER_GROUP}/{column}")


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of a row by tag; the step column, blanks and text are left out."""
    out: dict[str, float] = {}
    for column, value in row.items():
        if column == STEP_COLUMN or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[tag_for(column)] = float(value)
    return out


class TensorBoardLog:
    """Writes metrics rows as scalars with ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None = None) -> None:
        """Opens a new event file in ``log_dir``.

        Args:
            log_dir: the directory of the event files (created if missing).
            purge_step: on resume, the env steps of the checkpoint: TensorBoard hides the
                points at or after it that earlier event files hold.
        """
        from torch.utils.tensorboard import SummaryWriter  # a slow import, only when used

        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def write(self, row: Mapping[str, Any]) -> None:
        """Adds the row's scalars at ``row["env_steps"]`` and flushes them to disk."""
        step = int(row[STEP_COLUMN])
        for tag, value in scalars(row).items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
