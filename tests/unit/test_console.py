"""The progress display: key=value lines off a terminal, a tqdm bar on one; the closing text."""
from __future__ import annotations

import io
import logging
import shlex
import sys
from pathlib import Path

import pytest

from deploy import cli
from deploy.console import ProgressBar, ProgressLines, make_progress_display, next_steps
from deploy.progress import Progress, RunCounters

LINE_KEYS = ["env_steps", "env_steps_per_s", "updates", "updates_per_s", "replay_size",
             "policy_version", "policy_lag", "episodes", "mean_return", "success_rate"]


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _row(env_steps: int = 600) -> dict:
    counters = RunCounters(env_steps=env_steps, updates=40, policy_version=3, episodes=2)
    counters.recent_returns.extend([10.0, 14.6])
    counters.recent_success.extend([0.0, 1.0])
    counters.recent_completion.extend([0.4, 1.0])
    progress = Progress(RunCounters())
    progress.policy_lag, progress.replay_size = 1.5, 550
    return progress.row(counters)


@pytest.mark.parametrize("tty,kind", [(False, ProgressLines), (True, ProgressBar)])
def test_the_stream_chooses_the_display(tty, kind):
    display = make_progress_display(1000, 0, FakeStream(tty))
    try:
        assert isinstance(display, kind)
    finally:
        display.close()


def test_off_a_terminal_each_update_logs_one_key_value_line(caplog):
    display = make_progress_display(1000, 0, FakeStream(tty=False))
    with caplog.at_level(logging.INFO):
        display.update(_row())
        display.close()
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("progress ")
    pairs = [token.split("=") for token in message.removeprefix("progress ").split(" ")]
    assert all(len(pair) == 2 for pair in pairs), message
    assert [key for key, _ in pairs] == LINE_KEYS
    values = {key: float(value) for key, value in pairs}
    assert values["env_steps"] == 600 and values["success_rate"] == 0.5
    assert values["mean_return"] == pytest.approx(12.3) and values["policy_lag"] == 1.5


def test_on_a_terminal_the_bar_shows_steps_success_and_return():
    stream = FakeStream(tty=True)
    display = make_progress_display(1000, 200, stream)
    display.update(_row(600))
    display.close()
    out = stream.getvalue()
    assert "200/1.00k" in out  # a resumed run starts where it was
    last = out.split("\r")[-1]
    assert "60%" in last and "600/1.00k" in last, last
    assert "success=0.50" in last and "return=12.3" in last and "upd/s=" in last, last


def test_steps_past_the_budget_fill_the_bar():
    stream = FakeStream(tty=True)
    display = make_progress_display(500, 0, stream)
    display.update(_row(525))
    display.close()
    assert "100%" in stream.getvalue().split("\r")[-1] and "525/525" in stream.getvalue()


def test_log_records_and_printed_lines_go_above_the_bar(monkeypatch):
    stream = FakeStream(tty=True)
    monkeypatch.setattr(sys, "stderr", stream)  # as logging.basicConfig in cli.main sets it up
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        display = make_progress_display(1000, 0, stream)
        display.update(_row(300))
        logging.getLogger("deploy.driver").warning("event=checkpoint updates=40")
        print("(RolloutActor pid=7) event=episode", file=sys.stderr)
        display.update(_row(600))
        display.close()
        assert sys.stderr is stream and handler in root.handlers  # both put back
    finally:
        root.removeHandler(handler)
    lines = [line.split("\r")[-1] for line in stream.getvalue().split("\n")]
    assert "event=checkpoint updates=40" in lines
    assert "(RolloutActor pid=7) event=episode" in lines
    assert "success=0.50" in lines[-2], lines  # the bar, redrawn below them, then closed


def test_next_steps_names_the_run_and_valid_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv is not on PATH, as after make train
    run = tmp_path / "20261207-221500"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.csv").write_text("env_steps\n")
    text = next_steps(run, env_steps=500)
    first, *commands = text.splitlines()
    assert first == f"run: {run}  (metrics.csv, checkpoints/)"
    commands = [shlex.split(c.removeprefix("next:").strip()) for c in commands]
    for program, *_ in commands:  # the venv's programs, by a path that runs from here
        assert Path(program).name in ("carla-td3", "tensorboard") and Path(program).is_file()
        assert Path(program).parent.resolve() == Path(sys.executable).parent.resolve()
    assert [str(tmp_path)] == [c[2] for c in commands if Path(c[0]).name == "tensorboard"]
    ours = [args for program, *args in commands if Path(program).name == "carla-td3"]
    assert [args[0] for args in ours] == ["evaluate", "drive", "train"]
    assert ours[2] == ["train", "--resume", str(run), "--steps", "1000"]
    for args in ours:
        cli._parser().parse_args(args)  # exits on an unknown flag


def test_next_steps_calls_the_programs_bare_when_path_finds_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")
    lines = next_steps(tmp_path / "run", env_steps=10).splitlines()
    assert lines[1].startswith("next: carla-td3 evaluate ")
    assert lines[3].strip().startswith("tensorboard --logdir ")
