"""Starts and stops ``carla-td3 fake-server`` processes (for tests, benchmarks and a fake
backend that runs its own servers), and the faults done to them from outside: kill, stop,
continue, restart on the same port."""
from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Mapping

from common.errors import SimulatorError

LISTENING = re.compile(r"event=fake_server_listening host=\S+ port=(\d+)")
READY = "event=fake_server_ready"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
LOG_LINES_KEPT = 200


class FakeServerProcess:
    """One fake server process on ``host:port``; ``port`` 0 takes a free one (see ``.port``)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", overrides: Mapping[str, object] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        """Starts the process and waits until it listens.

        Args:
            port: TCP port; 0 lets the server pick one.
            host: address it listens on.
            overrides: ``env.fake.*`` keys (``{"env.fake.boot_s": 2}``), passed as ``--set``.
            env: extra environment variables for the process.

        Raises:
            SimulatorError: if the process exits or does not listen within START_TIMEOUT_S,
                with the end of its log.
        """
        self.host = host
        self.overrides = dict(overrides or {})
        # INFO at least: the parent waits for the server's "listening" line, which a quieter
        # CARLA_TD3_LOG (e.g. WARNING, inherited from the trainer) would hide.
        self._env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "CARLA_TD3_LOG": "INFO"}
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)
        self._cond = threading.Condition()
        self.port = port
        self._start()

    def _start(self) -> None:
        command = [sys.executable, "-m", "deploy.cli", "fake-server", "--host", self.host, "--port", str(self.port)]
        for key, value in self.overrides.items():
            command += ["--set", f"{key}={value}"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=self._env, start_new_session=True)  # not hit by Ctrl+C
        self._drainer = threading.Thread(target=self._drain, args=(self.proc,), name="fake-server-log", daemon=True)
        self._drainer.start()
        line = self._wait_for(LISTENING.pattern, START_TIMEOUT_S)
        match = LISTENING.search(line)
        assert match is not None
        self.port = int(match.group(1))

    def _drain(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _wait_for(self, pattern: str, timeout_s: float, after: int = 0) -> str:
        """The first log line from index ``after`` on that matches ``pattern``.

        Raises:
            SimulatorError: if the process exits or no such line comes within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for line in list(self.lines)[after:]:
                    if re.search(pattern, line):
                        return line
                remaining = deadline - time.monotonic()
                if self.proc.poll() is not None or remaining <= 0:
                    tail = "\n".join(list(self.lines)[-20:])
                    raise SimulatorError(f"fake server (pid {self.proc.pid}, exit {self.proc.poll()}) logged no "
                                         f"{pattern!r} within {timeout_s} s; its log ends:\n{tail}")
                self._cond.wait(min(remaining, 0.5))

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Waits until the server serves its world (after ``boot_s``)."""
        self._wait_for(READY, timeout_s)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def kill(self) -> None:
        """SIGKILL, as a crash: connections drop, the port refuses."""
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)

    def pause(self) -> None:
        """SIGSTOP: a hung server (connections stay open, nothing answers). Returns once the
        process is stopped (signals are delivered asynchronously)."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _state(self.proc.pid) not in ("T", "t", "") and time.monotonic() < deadline:
            time.sleep(0.005)

    def resume(self) -> None:
        """SIGCONT: a stopped server runs again."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self, overrides: Mapping[str, object] | None = None) -> None:
        """Kills the process (if alive) and starts a fresh one on the same port."""
        if self.proc.poll() is None:
            self.resume()
            self.kill()
        self._drainer.join(STOP_TIMEOUT_S)  # the old log ends before the new one starts
        if overrides is not None:
            self.overrides = dict(overrides)
        self.lines.clear()
        self._start()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S; safe to call twice."""
        if self.proc.poll() is not None:
            return
        self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> FakeServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _state(pid: int) -> str:
    """The process state letter from /proc ("T": stopped; "" where /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
