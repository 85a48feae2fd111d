"""What a training run shows while it runs and after: a progress bar on a terminal, key=value
progress lines anywhere else (CI, nohup, pipes), and the next commands at the end.

``make_progress_display`` chooses once, at the start of a run, from whether the stream is a
terminal.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Protocol, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from deploy.progress import Progress

log = logging.getLogger(__name__)

# row column, bar postfix name, format: beside tqdm's steps, rate and ETA, short enough for a
# 90-column terminal (metrics.csv and TensorBoard have every column).
POSTFIX = (("success_rate", "success", "{:.2f}"), ("mean_return", "return", "{:.1f}"),
           ("updates_per_s", "upd/s", "{:.1f}"))


class ProgressDisplay(Protocol):
    def update(self, row: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class ProgressLines:
    """One ``progress key=value ...`` log line per report."""

    def update(self, row: Mapping[str, Any]) -> None:
        log.info("progress %s", Progress.line(row))

    def close(self) -> None:
        pass


class _LinesAboveBar:
    """A text stream whose whole lines are printed above the bar (Ray prints its actors' logs
    to ``sys.stdout`` and ``sys.stderr``); everything else is the wrapped stream's."""

    def __init__(self, bar: tqdm, stream: TextIO) -> None:
        self._bar, self._stream, self._pending = bar, stream, ""

    def write(self, text: str) -> int:
        lines, newline, self._pending = (self._pending + text).rpartition("\n")
        if newline:
            with self._bar.get_lock():
                self._bar.clear()
                self._stream.write(lines + newline)
                self._stream.flush()
                self._bar.refresh()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def finish(self) -> None:
        """Writes a last line that has no newline yet."""
        if self._pending:
            self._stream.write(self._pending)
            self._pending = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class ProgressBar:
    """A tqdm bar over env steps (tqdm's rate and ETA) with recent-episode figures after it.

    While it is open, log records of the root logger's console handler and whatever is printed
    to a terminal's ``sys.stdout`` or ``sys.stderr`` go above the bar.
    """

    def __init__(self, total: int, initial: int, stream: TextIO) -> None:
        self._restore = contextlib.ExitStack()
        self._restore.enter_context(logging_redirect_tqdm())  # before the streams are wrapped
        self._bar = tqdm(total=total, initial=initial, file=stream, unit="step",
                         unit_scale=True, mininterval=0, miniters=1, **_size(stream))
        for name in ("stdout", "stderr"):
            original = getattr(sys, name)
            if _is_terminal(original):
                wrapper = _LinesAboveBar(self._bar, original)
                setattr(sys, name, wrapper)
                self._restore.callback(wrapper.finish)
                self._restore.callback(setattr, sys, name, original)

    def update(self, row: Mapping[str, Any]) -> None:
        env_steps = int(row["env_steps"])
        self._bar.set_postfix_str(postfix(row), refresh=False)
        if env_steps > self._bar.total:  # actors finish their calls past the budget
            self._bar.total = env_steps  # (past its total, tqdm would drop the bar and the ETA)
        steps = env_steps - self._bar.n
        if steps > 0:
            self._bar.update(steps)
        else:
            self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
        self._restore.close()


def postfix(row: Mapping[str, Any]) -> str:
    """The bar's ``success=0.62 return=153.2 ...`` text; blank figures are left out."""
    return " ".join(f"{name}={fmt.format(row[key])}" for key, name, fmt in POSTFIX
                    if isinstance(row.get(key), (int, float)))


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _size(stream: Any) -> dict[str, Any]:
    """tqdm's size arguments: follow the terminal's width, or fixed numbers where a terminal
    reports no size (a pty opened without one, as by ``script``), since tqdm then hides the bar."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):  # not a real terminal: tqdm's defaults
        return {}
    if size.columns > 0 and size.lines > 0:
        return {"dynamic_ncols": True}
    return {"ncols": size.columns or 100, "nrows": size.lines or 24}


def make_progress_display(total: int, initial: int = 0,
                          stream: TextIO | None = None) -> ProgressDisplay:
    """A bar when ``stream`` (default ``sys.stderr``, where the logs go) is a terminal, else lines.

    Args:
        total: the run's env-step budget (train.env_steps).
        initial: the env steps already done (a resumed run's counters).
        stream: where the bar is drawn.

    Returns:
        A display to ``update`` at each report and ``close`` at the end of the run.
    """
    stream = sys.stderr if stream is None else stream
    if _is_terminal(stream):
        return ProgressBar(total, initial, stream)
    return ProgressLines()


def _command(name: str) -> str:
    """How to call the virtualenv's ``name`` from here: bare when the shell finds this very
    program on PATH, else its path (``.venv/bin/carla-td3`` after ``make train``)."""
    import shutil

    here = Path(sys.executable).parent / name
    found = shutil.which(name)
    if found is not None and Path(found).resolve() == here.resolve():
        return name
    try:
        return shlex.quote(os.path.relpath(here))
    except ValueError:  # another drive (Windows)
        return shlex.quote(str(here))


def next_steps(run_path: str | Path, env_steps: int | None = None) -> str:
    """Where a finished (or interrupted) run is and the commands that usually come next.

    Args:
        run_path: the run directory.
        env_steps: the env steps done; the resume command then asks for twice as many.

    Returns:
        A few lines of text for the terminal.
    """
    path = Path(run_path)
    run = shlex.quote(str(path))
    present = [name for name in ("summary.json", "metrics.csv", "checkpoints/", "tb/")
               if (path / name.rstrip("/")).exists()]
    steps = str(2 * env_steps) if env_steps else "N"
    cli, board = _command("carla-td3"), _command("tensorboard")
    return "\n".join([
        f"run: {path}  ({', '.join(present)})",
        f"next: {cli} evaluate {run} --episodes 20 --video eval.mp4",
        f"      {cli} drive --checkpoint {run} --out drive.mp4",
        f"      {board} --logdir {shlex.quote(str(path.parent))}",
        f"      {cli} train --resume {run} --steps {steps}",
    ])
