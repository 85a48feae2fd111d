"""The fake backend's own servers: one ``carla-td3 fake-server`` process per rollout worker,
started before the fleet when a run on ``env.backend=fake`` names no ``--carla`` endpoints,
stopped when the run ends (also on an error or Ctrl+C).

Each server listens on a free loopback port with the run's ``env.fake`` settings; the run's
config then names those endpoints, so every rollout worker reaches its server over TCP the way
it reaches a CARLA server and no fake world lives in a rollout worker's process.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import replace

from rollout.fakecarla.remote_process import FakeServerProcess
from common import config as C

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


def fake_overrides(fake: C.FakeCarlaConfig) -> dict[str, object]:
    """The ``env.fake.*`` keys of ``fake`` that differ from the defaults, as ``--set`` pairs."""
    default = C.FakeCarlaConfig()
    return {f"env.fake.{f.name}": getattr(fake, f.name) for f in dataclasses.fields(fake)
            if getattr(fake, f.name) != getattr(default, f.name)}


class FakeServers:
    """The fake-server processes of one run; ``stop`` ends them all (safe to call twice)."""

    def __init__(self, count: int, fake: C.FakeCarlaConfig) -> None:
        """Starts ``count`` servers, each on a free loopback port.

        Raises:
            SimulatorError: if one does not start (the ones already started are stopped).
        """
        self.processes: list[FakeServerProcess] = []
        overrides = fake_overrides(fake)
        try:
            for _ in range(count):
                self.processes.append(FakeServerProcess(0, LOOPBACK, overrides))
        except BaseException:
            self.stop()
            raise
        log.info("event=fake_servers_started endpoints=%s", ",".join(self.endpoints))

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(p.endpoint for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        if self.processes:
            log.info("event=fake_servers_stopped count=%d", len(self.processes))
        self.processes = []


def start_for(cfg: C.RunConfig) -> tuple[C.RunConfig, FakeServers | None]:
    """Starts the run's fake servers when it needs its own: ``env.backend=fake`` and no
    endpoints given. Returns the config naming their endpoints, and the servers (None when
    the run drives servers it was given)."""
    if cfg.env.backend is not C.SimulatorBackend.FAKE or cfg.train.endpoints:
        return cfg, None
    servers = FakeServers(cfg.rollout.num_workers, cfg.env.fake)
    return replace(cfg, train=replace(cfg.train, endpoints=servers.endpoints)), servers
