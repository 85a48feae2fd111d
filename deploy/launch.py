"""The composition root's entry points: start (or join) Ray, make or reopen the run directory,
and hand over to the Driver."""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray

from common import config as C
from common.errors import CheckpointError, ConfigError
from deploy import build
from deploy.driver import Driver
from deploy.progress import RunCounters
from deploy.rundir import RunDir
from replay.client import ray_system_config

log = logging.getLogger(__name__)


def _metrics_export_port(metrics: C.MetricsConfig) -> int | None:
    """The local Ray node's metrics export port, or None when nothing records through Ray."""
    if metrics.backend in (C.MetricsBackend.NONE, C.MetricsBackend.PROMETHEUS):
        return None
    if not 0 <= metrics.ray_export_port <= 65535:
        raise ConfigError(f"metrics.ray_export_port ({metrics.ray_export_port}) must be in 0..65535")
    if metrics.ray_export_port:
        return metrics.ray_export_port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dashboard_auth_line(auth_mode: str | None, ray_cli: str) -> str:
    """The log line after the dashboard URL: how to get the token it asks for, or that it asks none.

    Args:
        auth_mode: ``RAY_AUTH_MODE`` after ``ray.init`` (a new local Ray sets it to ``token``
            unless the user set it).
        ray_cli: the ``ray`` command of this environment.

    Returns:
        A key=value line: ``mode=token`` with the command that prints the token, or
        ``mode=disabled``.
    """
    if (auth_mode or "").strip().lower() == "token":
        return f'event=ray_dashboard_auth mode=token token_command="{ray_cli} get-auth-token"'
    return "event=ray_dashboard_auth mode=disabled"


def _ray_cli() -> str:
    """The ``ray`` command next to this interpreter (the virtualenv's), else ``ray``."""
    import sys

    path = Path(sys.executable).with_name("ray")
    return str(path) if path.exists() else "ray"


def _init_ray(cfg: C.RunConfig, ray_address: str | None, dashboard: bool) -> bool:
    """Starts local Ray (sized for the fleet) or joins ``ray_address``. Returns True if started.

    A local node exports the Ray metrics on ``metrics.ray_export_port`` (the dashboard's
    agent runs with or without the dashboard, so ``--no-dashboard`` keeps the export).
    """
    if ray.is_initialized():
        return False
    if ray_address:
        ray.init(address=ray_address, logging_level=logging.WARNING)
        return True
    port = _metrics_export_port(cfg.metrics)
    context = ray.init(num_cpus=max(os.cpu_count() or 1, 2), include_dashboard=dashboard,
                       logging_level=logging.WARNING, _metrics_export_port=port,
                       _system_config=ray_system_config(cfg.spec, cfg.replay.chunk_length))
    if dashboard and context.dashboard_url:
        log.info("event=ray_dashboard url=http://%s", context.dashboard_url)
        log.info(_dashboard_auth_line(os.environ.get("RAY_AUTH_MODE"), _ray_cli()))
    if port is not None:
        log.info("event=metrics_endpoint backend=ray url=http://127.0.0.1:%d/metrics", port)
    return True


def _run(cfg: C.RunConfig, run_dir: RunDir, counters: RunCounters | None, ray_address: str | None,
         dashboard: bool) -> dict[str, Any]:
    started = _init_ray(cfg, ray_address, dashboard)
    try:
        return Driver(cfg, run_dir, counters).run()
    finally:
        if started:
            ray.shutdown()


def train(cfg: C.RunConfig, runs_root: Path, name: str | None = None, ray_address: str | None = None,
          dashboard: bool = True, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A new run: validates the config, writes the run directory, trains."""
    build.validate(cfg)
    run_dir = RunDir.create(runs_root, name)
    run_dir.write_config(cfg, {**(options or {}), "ray_address": ray_address})
    log.info("event=run_start run_dir=%s actors=%d shards=%d env_steps=%d", run_dir.path,
             cfg.rollout.num_actors, cfg.replay.num_shards, cfg.train.env_steps)
    out = _run(cfg, run_dir, None, ray_address, dashboard)
    out["run_dir"] = str(run_dir.path)
    return out


def resume(path: Path, steps: int | None = None, ray_address: str | None = None,
           dashboard: bool = True) -> dict[str, Any]:
    """Continues a run: counters, learner state, replay contents and weight version."""
    run_dir = RunDir(path)
    cfg, _options = run_dir.read_config()
    latest = run_dir.latest_checkpoint()
    if latest is None:
        raise CheckpointError(f"{path} has no checkpoint to resume from")
    counters = RunCounters.from_json(run_dir.read_counters(latest))
    if steps is not None:
        if steps <= counters.env_steps:
            raise ConfigError(f"--steps ({steps}) must exceed the env steps already done ({counters.env_steps})")
        cfg = replace(cfg, train=replace(cfg.train, env_steps=steps))
        run_dir.write_config(cfg, {**_options, "resumed": True})
    log.info("event=resume run_dir=%s checkpoint=%s env_steps=%d updates=%d", path, latest.name,
             counters.env_steps, counters.updates)
    out = _run(cfg, run_dir, counters, ray_address, dashboard)
    out["run_dir"] = str(run_dir.path)
    return out
