"""Progress rows go to metrics.csv and, as scalars, to TensorBoard event files under tb/."""
from __future__ import annotations

import csv
import time

import pytest

from deploy.rundir import MetricsLog, RunDir
from deploy.tensorboard_log import scalars, tag_for

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _row(env_steps: int, success_rate: float | str) -> dict:
    return {"wall_seconds": env_steps / 10, "env_steps": env_steps, "updates_per_s": 2.5,
            "replay_size": env_steps, "policy_lag": "", "success_rate": success_rate,
            "critic_loss": 0.25}


def _scalars(run: RunDir, tag: str) -> list[tuple[int, float]]:
    acc = event_accumulator.EventAccumulator(str(run.tensorboard))
    acc.Reload()
    return [(e.step, pytest.approx(e.value)) for e in acc.Scalars(tag)]


@pytest.mark.parametrize("column,tag", [
    ("success_rate", "rollout/success_rate"), ("mean_return", "rollout/mean_return"),
    ("updates_per_s", "learner/updates_per_s"), ("critic_loss", "learner/critic_loss"),
    ("replay_size", "replay/size"), ("a_new_column", "run/a_new_column"),
])
def test_columns_map_to_grouped_tags(column, tag):
    assert tag_for(column) == tag


def test_blanks_text_and_the_step_are_not_scalars():
    assert scalars({"env_steps": 5, "policy_lag": "", "mode": "ray", "mean_q": 1}) == {
        "learner/mean_q": 1.0}


def test_rows_reach_metrics_csv_and_tensorboard(tmp_path):
    run = RunDir.create(tmp_path, "r")
    metrics = MetricsLog(run)
    for row in (_row(100, ""), _row(200, 0.5), _row(300, 0.75)):
        metrics.write(row)
    metrics.close()
    with (run.path / "metrics.csv").open() as f:
        assert [r["env_steps"] for r in csv.DictReader(f)] == ["100", "200", "300"]
    assert _scalars(run, "rollout/success_rate") == [(200, 0.5), (300, 0.75)]  # blank skipped
    assert _scalars(run, "replay/size") == [(100, 100), (200, 200), (300, 300)]
    assert _scalars(run, "learner/critic_loss")[0] == (100, 0.25)


def test_a_resumed_run_appends_and_drops_points_after_its_checkpoint(tmp_path):
    run = RunDir.create(tmp_path, "r")
    first = MetricsLog(run)
    for steps in (100, 200, 300):
        first.write(_row(steps, 0.5))
    first.close()
    # TensorBoard reads a directory's event files in name order, and a name starts with the
    # second it was opened in (then host, pid and a per-process counter, which does not sort
    # numerically): a resume comes seconds later at least.
    time.sleep(1.1)
    resumed = MetricsLog(RunDir(run.path), resumed_at=200)  # the checkpoint was at 200 steps
    resumed.write(_row(250, 1.0))
    resumed.close()
    assert len(list(run.tensorboard.glob("events.out.tfevents.*"))) == 2
    assert _scalars(run, "rollout/success_rate") == [(100, 0.5), (250, 1.0)]
