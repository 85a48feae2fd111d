"""The composition root's entry points: check the config and the run name, start (or join)
Ray, make or reopen the run directory, and hand over to the Driver.

A Ray this module starts itself is one node on loopback: its node address, and with it every
server of the node (GCS, raylet, object manager, workers, the dashboard agent and the metrics
export), and the dashboard bind to 127.0.0.1 (``ray_init_kwargs``, ``_loopback_node``).
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import ray

from common import config as C
from common.errors import CheckpointError, ConfigError
from deploy import build
from deploy.driver import Driver
from deploy.progress import RunCounters
from deploy.rundir import RunDir
from deploy.replay_ray import ray_system_config

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MAX_RUN_NAME_BYTES = 200  # below NAME_MAX (255), with room for RunDir's "-N" suffix


def check_run_name(runs_root: Path, name: str | None) -> None:
    """Refuses a run name that would not make a directory directly inside ``runs_root``.

    Args:
        runs_root: the ``--runs`` directory.
        name: the ``--name``; None (a timestamp) is always fine.

    Raises:
        ConfigError: naming the value: a path ("a/b", "/abs", ".."), a hidden name (".x"),
            NUL or another control character, or a name longer than MAX_RUN_NAME_BYTES.
    """
    if name is None:
        return
    problem = None
    if not name or not name.isprintable():
        problem = "must be non-empty, with no NUL or other control character"
    elif "/" in name or (os.altsep and os.altsep in name) or name.startswith("."):
        problem = "must be one directory name: no '/', not starting with '.'"
    elif len(name.encode()) > MAX_RUN_NAME_BYTES:
        problem = f"must be at most {MAX_RUN_NAME_BYTES} bytes"
    elif (runs_root / name).resolve().parent != runs_root.resolve():
        problem = "must name a directory directly inside --runs"
    if problem:
        raise ConfigError(f"--name ({name!r}) {problem} ({runs_root})")


def _metrics_export_port(metrics: C.MetricsConfig) -> int | None:
    """The local Ray node's metrics export port, or None when nothing records through Ray."""
    if metrics.backend in (C.MetricsBackend.NONE, C.MetricsBackend.PROMETHEUS):
        return None
    if metrics.ray_export_port:
        return metrics.ray_export_port
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def ray_init_kwargs(cfg: C.RunConfig, dashboard: bool,
                    metrics_port: int | None) -> dict[str, Any]:
    """``ray.init``'s arguments for a local Ray: one node sized for the fleet, on loopback.

    ``_node_ip_address`` is the address every server of the node binds (Ray 2.60 binds its gRPC
    servers to the node address, and the dashboard agent and the metrics export to loopback
    when that address is loopback); ``dashboard_host`` is the dashboard's.
    """
    return dict(num_cpus=max(os.cpu_count() or 1, 2), include_dashboard=dashboard,
                dashboard_host=LOOPBACK, _node_ip_address=LOOPBACK,
                logging_level=logging.WARNING, _metrics_export_port=metrics_port,
                _system_config=ray_system_config(cfg.spec, cfg.replay.chunk_length))


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Lets ``ray.init`` keep a loopback node address while it starts a local node.

    On Linux, Ray replaces a loopback node address with the machine's routable one
    (``services.resolve_ip_for_localhost``) unless multi-node clusters are switched off, as
    they are on Windows and macOS (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when ray is
    imported into ``ray_constants.ENABLE_RAY_CLUSTER``). A local run is one node, so the
    switch is off while ``ray.init`` runs. The address the node got is checked afterwards
    (``_check_exposure``).
    """
    from ray._private import ray_constants

    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if saved is None:  # a Ray without the switch: _check_exposure says what it bound
        yield
        return
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def is_loopback(host: str) -> bool:
    """Whether ``host`` ("127.0.0.1", "::1", "::ffff:127.0.0.1", "localhost") reaches this
    machine only."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # gRPC's dual-stack sockets show these
    return (mapped or address).is_loopback


def exposure_warning(auth_mode: str | None, listening: Sequence[tuple[str, str]]) -> str | None:
    """The warning line when Ray's token auth is off while something listens beyond loopback.

    Args:
        auth_mode: ``RAY_AUTH_MODE`` after ``ray.init`` ("token" or "disabled").
        listening: (what, host) of each listener, e.g. ("ray_node", "10.0.0.5").

    Returns:
        A key=value line, or None when auth is on or everything is on loopback.
    """
    exposed = [f"{what}={host}" for what, host in listening if not is_loopback(host)]
    if (auth_mode or "").strip().lower() == "token" or not exposed:
        return None
    return (f"event=ray_auth_disabled auth_mode={auth_mode or 'unset'} {' '.join(exposed)} "
            'detail="whoever reaches these addresses can run code in this Ray cluster; set '
            'RAY_AUTH_MODE=token (docs/deployment.md)"')


def _check_exposure(local: bool, dashboard: bool) -> None:
    """Logs, once per Ray start, a local node that did not get loopback, and a warning when
    token auth is off while Ray listens beyond loopback."""
    node_ip = ray.util.get_node_ip_address()
    if local and not is_loopback(node_ip):
        log.warning("event=ray_not_loopback node_ip=%s detail=\"this Ray version kept a routable "
                    "node address; its ports listen beyond this machine\"", node_ip)
    listening = [("ray_node", node_ip)] + ([("ray_dashboard", LOOPBACK)] if local and dashboard
                                           else [])
    line = exposure_warning(os.environ.get("RAY_AUTH_MODE"), listening)
    if line:
        log.warning(line)


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
        _check_exposure(local=False, dashboard=False)
        return True
    port = _metrics_export_port(cfg.metrics)
    with _loopback_node():
        context = ray.init(**ray_init_kwargs(cfg, dashboard, port))
    _check_exposure(local=True, dashboard=dashboard)
    if dashboard and context.dashboard_url:
        log.info("event=ray_dashboard url=http://%s", context.dashboard_url)
        log.info(_dashboard_auth_line(os.environ.get("RAY_AUTH_MODE"), _ray_cli()))
    if port is not None:
        log.info("event=metrics_endpoint backend=ray url=http://%s:%d/metrics", LOOPBACK, port)
    return True


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``docker compose stop``, a scheduler's preemption, ``kill``) stops the run the
    way Ctrl+C does: the driver checkpoints, closes the rollout workers (servers back in
    asynchronous mode) and exits. A second SIGTERM during that shutdown is logged, not obeyed:
    the container's grace period (docker-compose.yml ``stop_grace_period``) bounds it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    received = []

    def on_sigterm(signum: int, _frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("event=sigterm action=checkpoint_and_shutdown")
            raise KeyboardInterrupt
        log.warning("event=sigterm_ignored reason=shutting_down")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(cfg: C.RunConfig, run_dir: RunDir, counters: RunCounters | None, ray_address: str | None,
         dashboard: bool) -> dict[str, Any]:
    started = _init_ray(cfg, ray_address, dashboard)
    try:
        # After ray.init: Ray's core worker sets a SIGTERM handler of its own, which exits.
        with sigterm_as_interrupt():
            return Driver(cfg, run_dir, counters).run()
    finally:
        if started:
            ray.shutdown()


def train(cfg: C.RunConfig, runs_root: Path, name: str | None = None, ray_address: str | None = None,
          dashboard: bool = True, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A new run: validates the config and the name, writes the run directory, trains.

    Raises:
        ConfigError: for a bad config value or run name, before the directory or Ray exists.
    """
    build.validate(cfg)
    check_run_name(Path(runs_root), name)
    run_dir = RunDir.create(runs_root, name)
    run_dir.write_config(cfg, {**(options or {}), "ray_address": ray_address})
    log.info("event=run_start run_dir=%s actors=%d shards=%d env_steps=%d", run_dir.path,
             cfg.rollout.num_workers, cfg.replay.num_shards, cfg.train.env_steps)
    out = _run(cfg, run_dir, None, ray_address, dashboard)
    out["run_dir"] = str(run_dir.path)
    return out


def resume(path: Path, steps: int | None = None, ray_address: str | None = None,
           dashboard: bool = True) -> dict[str, Any]:
    """Continues a run: counters, learner state, replay contents and weight version.

    Raises:
        ConfigError: for a saved config (or ``steps``) that does not validate, before Ray starts.
    """
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
    build.validate(cfg)
    if steps is not None:
        run_dir.write_config(cfg, {**_options, "resumed": True})
    log.info("event=resume run_dir=%s checkpoint=%s env_steps=%d updates=%d", path, latest.name,
             counters.env_steps, counters.updates)
    out = _run(cfg, run_dir, counters, ray_address, dashboard)
    out["run_dir"] = str(run_dir.path)
    return out
