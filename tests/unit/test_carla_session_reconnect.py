"""Reconnect hygiene of rollout/carla_session.py on the in-process fake: owned actors tagged and
removed on (re)connect, a second client detected, a blocked ego spawn point left, the old
traffic manager shut down, clean-up on a dead server stopped after the first time-out."""
import numpy as np
import pytest

from rollout.carla_env import CarlaEnv
from rollout.carla_session import Session, owner_tag
from rollout.fakecarla import make_module
from rollout.route import spawn_points
from common.config import EnvConfig
from common.errors import SimulatorError
from common.specs import EnvSpec

SPEC = EnvSpec()
THROTTLE = np.array([0.0, 0.5], np.float32)


def _cfg(**kw) -> EnvConfig:
    return EnvConfig(route_length_m=60.0, **kw)


def _roles(world) -> list[str]:
    return sorted(a.attributes.get("role_name", "") for a in world.get_actors())


def test_spawned_vehicles_carry_the_actor_tag():
    env = CarlaEnv(_cfg(num_npcs=2), SPEC, make_module(), seed=0, tag=owner_tag(3))
    try:
        env.reset(seed=1)
        vehicles = env.world.get_actors().filter("vehicle.*")
        roles = sorted(v.attributes["role_name"] for v in vehicles)
        assert roles == ["carla-td3/3"] * (len(roles) - 1) + ["hero/carla-td3/3"]
        assert len(roles) == 3
    finally:
        env.close()


def test_a_new_connection_destroys_a_dead_clients_actors_of_its_tag_only():
    module = make_module()
    cfg = _cfg(num_npcs=2)
    dead = CarlaEnv(cfg, SPEC, module, seed=0, tag=owner_tag(0))
    dead.reset(seed=1)
    dead.step(THROTTLE)  # never closed: its vehicles and sensors stay, synchronous mode stays on
    world = dead.world
    stranger = world.get_blueprint_library().filter("vehicle.*")[0]
    stranger.set_attribute("role_name", "someone")
    points = spawn_points(world.get_map(), module)
    assert any(world.try_spawn_actor(stranger, p) is not None for p in reversed(points))
    before = len(world.get_actors())
    assert before == 3 + 3 + 1  # 3 vehicles, the ego's 3 sensors, the stranger
    env = CarlaEnv(cfg, SPEC, module, seed=0, tag=owner_tag(0))
    try:
        assert _roles(world) == ["someone"], "the dead client's vehicles and sensors are gone"
        env.reset(seed=2)
        assert len(world.get_actors().filter("vehicle.*")) == 4
    finally:
        env.close()


def test_a_server_driven_by_another_actor_is_an_error_naming_it():
    module = make_module()
    cfg = _cfg(port=2100)
    first = CarlaEnv(cfg, SPEC, module, seed=0, tag=owner_tag(0))
    try:
        first.reset(seed=1)
        with pytest.raises(SimulatorError, match=r"127.0.0.1:2100 is in synchronous mode.*"
                                                 r"'hero/carla-td3/0'.*two rollout workers"):
            CarlaEnv(cfg, SPEC, module, seed=0, tag=owner_tag(1))
    finally:
        first.close()
    CarlaEnv(cfg, SPEC, module, seed=0, tag=owner_tag(1)).close()  # closed: asynchronous again


def test_a_blocked_ego_spawn_point_moves_to_the_next_seeds_route():
    module = make_module()
    probe = CarlaEnv(_cfg(), SPEC, module, seed=0, tag=owner_tag(0))
    probe.reset(seed=7)
    ego_at = probe.world.get_actors().filter("vehicle.*")[0].get_transform()
    probe.close()
    world = probe.world
    bp = world.get_blueprint_library().filter("vehicle.*")[0]
    bp.set_attribute("role_name", "blocker")
    assert world.try_spawn_actor(bp, ego_at) is not None
    env = CarlaEnv(_cfg(), SPEC, module, seed=0, tag=owner_tag(0))
    try:
        env.reset(seed=7)
        egos = [v for v in world.get_actors().filter("vehicle.*")
                if v.attributes["role_name"].startswith("hero")]
        assert len(egos) == 1
        assert egos[0].get_location().distance(ego_at.location) > 5.0
    finally:
        env.close()


def test_reconnect_shuts_the_old_traffic_manager_down(monkeypatch):
    module = make_module()
    session = Session(_cfg(), module, seed=0)
    shut = []
    real = type(session.tm).shut_down
    monkeypatch.setattr(type(session.tm), "shut_down",
                        lambda self: (shut.append(self), real(self)))
    old = session.tm
    session.mark_broken()
    session.reconnect()
    assert shut == [old]
    session.close()


def test_cleanup_on_a_dead_server_stops_after_the_first_time_out():
    session = Session(_cfg(), make_module(), seed=0)
    calls = []

    def dead() -> None:
        calls.append("dead")
        raise RuntimeError("time-out of 500ms while waiting for the simulator")

    session.guarded("first", dead)
    session.guarded("second", dead)
    assert calls == ["dead"]
    session.reconnect()  # a new connection cleans up again
    session.guarded("third", lambda: calls.append("ran"))
    assert calls == ["dead", "ran"]
    session.close()
