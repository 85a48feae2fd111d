"""The town an env drives on: ``env.town`` loaded when the server runs another map (real server
or fake), ``env.fake.xodr_path`` winning on the fake, and an unknown town failing on connect with
the server's maps named."""
from dataclasses import replace
from types import SimpleNamespace

import pytest

from rollout.carla_env import make_env
from rollout.carla_session import DEFAULT_TOWN, _load_town, target_town
from common.config import EnvConfig, FakeCarlaConfig, SimulatorBackend
from common.errors import ConfigError
from common.specs import EnvSpec
from tests.unit.test_fakecarla_town import STRAIGHT_XODR

RING = "/maps/ring.xodr"


def _env_cfg(town: str = DEFAULT_TOWN, xodr_path: str = "",
             backend: SimulatorBackend = SimulatorBackend.FAKE) -> EnvConfig:
    return EnvConfig(backend=backend, town=town, fake=FakeCarlaConfig(xodr_path=xodr_path))


@pytest.mark.parametrize("cfg,town", [
    pytest.param(_env_cfg(), "Town01", id="fake_default"),
    pytest.param(_env_cfg("Town99"), "Town99", id="fake_named_town_checked_on_connect"),
    pytest.param(_env_cfg(xodr_path=RING), "ring", id="fake_file_wins_over_the_default"),
    pytest.param(_env_cfg("ring", RING), "ring", id="fake_town_names_the_stem"),
    pytest.param(_env_cfg("Town03", RING, SimulatorBackend.CARLA), "Town03",
                 id="real_server_ignores_the_fake_file"),
])
def test_target_town(cfg, town):
    assert target_town(cfg) == town


def test_a_town_contradicting_the_opendrive_file_is_an_error():
    with pytest.raises(ConfigError, match=r"env.town \('Town03'\).*'ring'"):
        target_town(_env_cfg("Town03", RING))


class _Client:
    """A real server's client as far as loading a town goes (CARLA 0.9.16 spells maps so)."""

    def __init__(self, current: str, maps: list[str]) -> None:
        self.current, self.maps, self.loaded, self.timeouts = current, maps, [], []

    def get_available_maps(self) -> list[str]:
        return self.maps

    def set_timeout(self, seconds: float) -> None:
        self.timeouts.append(seconds)

    def load_world(self, name: str) -> SimpleNamespace:
        self.loaded.append(name)
        return _world(f"Carla/Maps/{name}")


def _world(name: str) -> SimpleNamespace:
    return SimpleNamespace(get_map=lambda: SimpleNamespace(name=name))


MAPS = ["/Game/Carla/Maps/Town01", "/Game/Carla/Maps/Town10HD_Opt"]


def test_real_server_loads_the_town_only_when_another_runs():
    client = _Client("Carla/Maps/Town10HD_Opt", MAPS)
    world = _load_town(client, _world(client.current), "Town01", "h:2000", 10.0)
    assert world.get_map().name == "Carla/Maps/Town01" and client.loaded == ["Town01"]
    assert client.timeouts == [60.0, 10.0]
    same = _Client("Carla/Maps/Town01", MAPS)
    _load_town(same, _world(same.current), "Town01", "h:2000", 10.0)
    assert same.loaded == []


def test_real_server_without_the_town_names_it_and_its_maps():
    client = _Client("Carla/Maps/Town10HD_Opt", MAPS)
    with pytest.raises(ConfigError, match=r"'Town99'.*h:2000.*\['Town01', 'Town10HD_Opt'\]"):
        _load_town(client, _world(client.current), "Town99", "h:2000", 10.0)
    assert client.loaded == []


def test_fake_unknown_town_fails_before_any_episode():
    with pytest.raises(ConfigError, match=r"env.town \('Town99'\).*available: \['Town01', 'Town02'\]"):
        make_env(_env_cfg("Town99"), EnvSpec())


def test_fake_drives_on_the_opendrive_file(tmp_path):
    path = tmp_path / "straight.xodr"
    path.write_text(STRAIGHT_XODR)
    cfg = replace(_env_cfg(xodr_path=str(path)), route_length_m=50.0)
    env = make_env(cfg, EnvSpec(), seed=0)
    try:
        assert env.world.get_map().name == "straight"
        env.reset(seed=0)
        assert env.route.length >= 0.9 * 50.0
    finally:
        env.close()
