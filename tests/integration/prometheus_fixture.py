"""A real Prometheus server for integration tests (Debian package ``prometheus``).

``PrometheusServer`` writes a config scraping the given targets every ``scrape_interval_s``,
starts the ``prometheus`` binary on a free loopback port, waits until it is ready and every
target is up, answers PromQL through the HTTP API, and stops the process by its PID.

Use the ``prometheus`` fixture (import it into the test module)::

    from tests.integration.prometheus_fixture import prometheus  # noqa: F401

    def test_rate(prometheus):
        server = prometheus(["127.0.0.1:9108"])
        assert server.wait_for_value("sum(rate(carla_td3_env_steps_total[10s]))") > 0

Timing: Prometheus hands new targets to its scrape loops on a 5 s discovery tick, so the first
scrape comes 5-6 s after start; ``rate()`` needs two scrapes inside its window.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Iterator, Sequence

import pytest

from tests.system_tools import require_tool


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """One ``prometheus`` process scraping static targets, controlled by PID."""

    def __init__(self, targets: Sequence[str], workdir: pathlib.Path, scrape_interval_s: float = 1.0,
                 job: str = "carla_td3", binary: str = "prometheus") -> None:
        if not targets:
            raise ValueError("targets ([]) must name at least one host:port")
        self.targets = list(targets)
        self.workdir = workdir
        self.scrape_interval_s = scrape_interval_s
        self.job = job
        self.binary = binary
        self.port = -1
        self.pid = -1
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> pathlib.Path:
        interval = f"{int(self.scrape_interval_s * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def start(self, timeout_s: float = 30.0) -> "PrometheusServer":
        """Starts the binary and waits until ``/-/ready`` answers."""
        exe = shutil.which(self.binary)
        if exe is None:
            raise RuntimeError(f"{self.binary!r} not found on PATH; install the Debian package prometheus")
        config = self.write_config()
        self.port = free_port()
        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [exe, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        self.pid = self._proc.pid
        self._wait(lambda: self._get("/-/ready") is not None, timeout_s, "ready")
        return self

    def wait_targets_up(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Waits until every configured target has been scraped successfully."""
        def up() -> list[dict[str, Any]] | None:
            active = self.api("/api/v1/targets")["activeTargets"]
            healthy = [t for t in active if t["health"] == "up"]
            return active if len(healthy) == len(self.targets) else None
        return self._wait(up, timeout_s, f"targets {self.targets} up")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; returns the API's ``data.result`` (a vector)."""
        return self.api("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))["result"]

    def query_value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when the result is empty."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) != 1:
            raise AssertionError(f"query {expr!r} returned {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def wait_for_value(self, expr: str, predicate: Callable[[float], bool] = lambda v: v > 0,
                       timeout_s: float = 30.0) -> float:
        """Polls ``expr`` until its value satisfies ``predicate``; returns that value."""
        def check() -> float | None:
            value = self.query_value(expr)
            return value if value is not None and predicate(value) else None
        return self._wait(check, timeout_s, f"{expr} to satisfy the predicate")

    def api(self, path: str) -> Any:
        body = self._get(path)
        if body is None:
            raise AssertionError(f"prometheus {self.url}{path} did not answer; log: {self.log_tail()}")
        payload = json.loads(body)
        if payload.get("status") != "success":
            raise AssertionError(f"prometheus {path}: {payload}")
        return payload["data"]

    def _get(self, path: str) -> bytes | None:
        if self._proc is not None and self._proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self._proc.returncode}; log: {self.log_tail()}")
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.read()
        except (urllib.error.URLError, OSError):
            return None

    def _wait(self, probe: Callable[[], Any], timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = probe()
            if value is not None and value is not False:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; log: {self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to our PID, SIGKILL if it does not exit in ``timeout_s``; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout_s)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


@pytest.fixture
def prometheus(tmp_path: pathlib.Path) -> Iterator[Callable[..., PrometheusServer]]:
    """A factory: ``prometheus(targets, scrape_interval_s=1.0)`` -> a started server whose
    targets are all up (``wait_up=False``: not waited for, e.g. a target that starts later).
    Every server it started is stopped at teardown. Skips the test where the binary is
    missing (fails it under CI=true; see ``tests/system_tools.py``)."""
    require_tool("prometheus")
    servers: list[PrometheusServer] = []

    def start(targets: Sequence[str], scrape_interval_s: float = 1.0,
              timeout_s: float = 30.0, wait_up: bool = True) -> PrometheusServer:
        workdir = tmp_path / f"prometheus{len(servers)}"
        workdir.mkdir()
        server = PrometheusServer(targets, workdir, scrape_interval_s)
        servers.append(server)
        server.start(timeout_s)
        if wait_up:
            server.wait_targets_up(timeout_s)
        return server

    yield start
    for server in servers:
        server.stop()
