"""From a RunConfig to each component's settings, and the checks that run before Ray starts:
each rollout worker's env settings (its server, its traffic-manager port), the replay settings
the rate limiter needs, and ``validate``. deploy/components.py builds the components from
these settings; deploy/driver.py places them on Ray."""
from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

from rollout.carla_session import target_town
from common import config as C
from common.codec import WireLimits
from common.errors import ConfigError

SERVER_PORT_SPACING = 3  # a CARLA server uses its RPC port N and N+1, N+2


def parse_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(f"CARLA endpoint {text!r} must look like HOST:PORT with 0 < PORT < 65536")
    return host, int(port)


def actor_env_config(cfg: C.RunConfig, index: int) -> C.EnvConfig:
    """The env settings of rollout worker ``index``: its own server and traffic-manager port."""
    env = cfg.env
    if cfg.train.endpoints:
        host, port = parse_endpoint(cfg.train.endpoints[index])
    else:
        host, port = env.host, env.port + SERVER_PORT_SPACING * index
    return replace(env, host=host, port=port, tm_port=env.tm_port + index)


def replay_config(cfg: C.RunConfig) -> C.ReplayConfig:
    """The replay settings with the rate limiter derived from updates_per_env_step.

    samples_per_insert = updates_per_env_step x batch_size. Unless set explicitly, the error
    buffer admits one sample call and one insert chunk beyond the ratio: inserts and samples
    come in batches, and a tighter buffer would serialise actors and learner step by step.
    """
    ratio = cfg.train.updates_per_env_step
    if ratio <= 0:
        return cfg.replay
    batch = cfg.learner.td3.batch_size
    spi = ratio * batch
    if cfg.replay.samples_per_insert not in (0.0, spi):
        raise ConfigError(
            f"replay.samples_per_insert ({cfg.replay.samples_per_insert}) contradicts "
            f"train.updates_per_env_step ({ratio}) x batch_size ({cfg.learner.td3.batch_size}) "
            f"= {spi}; set only train.updates_per_env_step")
    error_buffer = cfg.replay.error_buffer
    if error_buffer == C.ReplayConfig.error_buffer:
        error_buffer = max(2.0 * batch, 2.0 * spi * cfg.replay.chunk_length)
    return replace(cfg.replay, samples_per_insert=spi, error_buffer=error_buffer)


def validate(cfg: C.RunConfig) -> None:
    """The one check of a run's config, before anything starts (the run directory, Ray).

    First every value of the tree: its type, enum, range and cross-field rules
    (``C.validate``: each class's RULES and CHECKS). Then only what needs the other packages
    or the machine: each rollout worker's server and its ports (actor i's port derived from
    ``env.port``; on one host, names resolved, servers must not share or overlap ports), the
    replay's effective rate limiter (derived from ``train.updates_per_env_step``), the wire
    codec's records-per-message limit, the metrics backends a Ray run can use, and on the fake
    backend the map: ``env.town`` against ``env.fake.xodr_path``, which must be a file.

    Raises:
        ConfigError: naming the key(s) and the value(s).
    """
    C.validate(cfg)
    _check_ports(cfg)
    _check_replay(cfg)
    if cfg.metrics.backend is C.MetricsBackend.PROMETHEUS:
        raise ConfigError("metrics.backend ('prometheus') serves one process, and a run records "
                          "in every Ray actor: use auto, ray or none")
    _check_fake_map(cfg.env)


def _check_replay(cfg: C.RunConfig) -> None:
    limit = WireLimits().max_records
    if cfg.replay.chunk_length > limit:
        raise ConfigError(f"replay.chunk_length ({cfg.replay.chunk_length}) must be <= {limit}, "
                          "the records a shard accepts in one message")
    replay = replay_config(cfg)
    spi, buffer = replay.samples_per_insert, replay.error_buffer
    if spi > 0 and buffer < max(1.0, spi):  # replay/rate_limiter.py: it would deadlock
        raise ConfigError(f"replay.error_buffer ({buffer}) must be >= max(1, samples_per_insert "
                          f"({spi})): a smaller buffer lets inserts and samples block each other")


def _check_fake_map(env: C.EnvConfig) -> None:
    if env.backend is not C.SimulatorBackend.FAKE:
        return
    target_town(env)
    path = env.fake.xodr_path
    if path and not Path(path).is_file():
        raise ConfigError(f"env.fake.xodr_path ({path!r}) is not a file")


def host_address(host: str) -> str:
    """The IPv4 address ``host`` names, so that "localhost" and "127.0.0.1" compare equal; the
    name itself where it does not resolve here (a host of another network)."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def _check_ports(cfg: C.RunConfig) -> None:
    servers = [actor_env_config(cfg, i) for i in range(cfg.rollout.num_workers)]
    for i, env in enumerate(servers):
        try:
            C.validate(env, "env.")
        except ConfigError as exc:
            raise ConfigError(f"rollout worker {i}'s server: {exc}") from None
    # A fake server uses its one port; a CARLA server N, N+1 and N+2.
    spacing = SERVER_PORT_SPACING if cfg.env.backend is C.SimulatorBackend.CARLA else 1
    by_host: dict[str, list[tuple[int, str]]] = {}
    for env in servers:
        by_host.setdefault(host_address(env.host), []).append((env.port, env.host))
    for address, ports in by_host.items():
        ports = sorted(ports)
        for (a, host_a), (b, host_b) in zip(ports, ports[1:]):
            if b - a < spacing:
                what = ("are one server: give each rollout worker its own" if a == b else
                        f"overlap: a CARLA server uses N, N+1 and N+2, so space them >= "
                        f"{SERVER_PORT_SPACING} apart")
                raise ConfigError(f"servers {host_a}:{a} and {host_b}:{b} on one host "
                                  f"({address}): ports {a} and {b} {what}")
    tm_ports = {env.tm_port for env in servers}
    rpc = {p + k for env in servers for p in (env.port,) for k in range(SERVER_PORT_SPACING)}
    if cfg.env.backend is C.SimulatorBackend.CARLA and tm_ports & rpc:
        raise ConfigError(f"traffic-manager ports {sorted(tm_ports & rpc)} clash with CARLA server ports")
