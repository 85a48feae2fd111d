"""A real carla client against a port where no server listens: a clear, fast error."""
import socket
import time

import pytest

from rollout.carla_env import make_env
from common.config import EnvConfig, SimulatorBackend
from common.errors import SimulatorUnreachable
from common.specs import EnvSpec


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_names_host_and_port_within_the_timeout():
    port = _free_port()
    cfg = EnvConfig(backend=SimulatorBackend.CARLA, host="127.0.0.1", port=port, timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(SimulatorUnreachable, match=f"127.0.0.1:{port}"):
        make_env(cfg, EnvSpec())
    assert time.monotonic() - t0 < 5.0
