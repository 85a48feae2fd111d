"""The env over the fake CARLA: spaces, info, determinism, faults, traffic and clean-up."""
import socket
import types

import carla
import numpy as np
import pytest

from rollout import rewards as R
from rollout.carla_env import CarlaEnv, make_env
from rollout.fakecarla import make_module
from common.config import EnvConfig, FakeCarlaConfig, RouteSplit
from common.errors import SimulatorError, SimulatorUnreachable, SpecError
from common.specs import EnvSpec

SPEC = EnvSpec()
INFO_KEYS = {"termination_reason", "route_completion", "distance_m", "collisions", "success",
             "reward_terms", "lane_invasions", "speed_mps", "lateral_m", "half_lane_width_m",
             "heading_error_rad",
             "episode_seed", "step"}
THROTTLE = np.array([0.0, 0.6], np.float32)


def _env(**kw) -> CarlaEnv:
    fake = kw.pop("fake", FakeCarlaConfig())
    return make_env(EnvConfig(route_length_m=60.0, fake=fake, **kw), SPEC, seed=0)


@pytest.fixture
def env():
    e = _env()
    yield e
    e.close()


def _vehicles(world) -> int:
    return len(world.get_actors().filter("vehicle.*"))


def test_spaces_observation_and_info(env):
    obs, info = env.reset(seed=3)
    SPEC.validate_obs(obs)
    assert env.observation_space.contains(obs)
    assert env.action_space.shape == (2,) and env.action_space.contains(THROTTLE)
    assert INFO_KEYS <= set(info) and info["termination_reason"] == ""
    assert np.array_equal(obs["image"][0], obs["image"][-1])  # reset repeats the first frame
    obs2, reward, terminated, truncated, info = env.step(THROTTLE)
    SPEC.validate_obs(obs2)
    assert isinstance(reward, float) and not terminated and not truncated
    assert set(info["reward_terms"]) == {"efficiency", "lane_keeping", "comfort", "safety",
                                         "progress"}
    assert reward == pytest.approx(sum(info["reward_terms"].values()))
    assert np.array_equal(obs2["image"][:-1], obs["image"][1:])  # the stack shifted by one


def test_same_seed_same_episode():
    runs = []
    for _ in range(2):
        e = _env()
        obs, _ = e.reset(seed=11)
        trace = [obs["vector"].copy()]
        for _ in range(5):
            obs, reward, *_ = e.step(THROTTLE)
            trace.append(np.append(obs["vector"], reward))
        trace.append(obs["image"].astype(np.float32).ravel())
        e.close()
        runs.append(np.concatenate(trace))
    assert np.array_equal(runs[0], runs[1])


def test_seeds_pick_different_routes_and_eval_is_held_out():
    starts = {}
    for split in (RouteSplit.TRAIN, RouteSplit.EVAL):
        e = _env(route_split=split)
        for seed in range(6):
            e.reset(seed=seed)
            starts.setdefault(split, set()).add(tuple(np.round(e.route.xy[0], 1)))
        e.close()
    assert len(starts[RouteSplit.TRAIN]) >= 4
    assert not starts[RouteSplit.TRAIN] & starts[RouteSplit.EVAL]


def test_route_runs_past_the_goal_for_the_observation_waypoints(env):
    env.reset(seed=3)
    route = env.route
    assert route.length == pytest.approx(env.cfg.route_length_m, abs=1.01)
    assert route.polyline_length >= route.length + env.spec.lookahead_m - 1.01


def test_driving_forward_earns_progress(env):
    env.reset(seed=2)
    for _ in range(40):
        _, reward, terminated, truncated, info = env.step(THROTTLE)
    assert info["distance_m"] > 3.0 and 0.0 < info["route_completion"] < 1.0
    assert info["reward_terms"]["progress"] > 0 and info["reward_terms"]["efficiency"] > 0
    assert not terminated and not truncated


def test_step_limit_truncates():
    e = _env(max_steps=4)
    e.reset(seed=0)
    results = [e.step(THROTTLE) for _ in range(4)]
    e.close()
    assert [r[3] for r in results] == [False, False, False, True]
    assert results[-1][4]["termination_reason"] == R.STEP_LIMIT and not results[-1][2]


def test_leaving_the_road_terminates(env):
    env.reset(seed=1)
    for _ in range(300):
        _, reward, terminated, truncated, info = env.step(np.array([1.0, 0.8], np.float32))
        if terminated or truncated:
            break
    assert terminated and info["termination_reason"] in (R.OFF_ROAD, R.COLLISION)
    assert not info["success"] and reward < -5.0


def test_a_lane_invasion_is_counted_and_the_episode_goes_on():
    """Steering out of the lane: the first step that touches a marking is counted, costs the
    success, and the episode goes on past it."""
    e = _env()
    e.reset(seed=1)
    try:
        for _ in range(300):
            _, _, terminated, truncated, info = e.step(np.array([0.3, 0.6], np.float32))
            if info["lane_invasions"] or terminated or truncated:
                break
    finally:
        e.close()
    assert not terminated and info["termination_reason"] == "" and info["lane_invasions"] == 1
    assert not info["success"]


def test_tick_timeout_truncates_then_reset_reconnects():
    e = _env(fake=FakeCarlaConfig(fail_tick_at=4))
    obs, _ = e.reset(seed=0)  # tick 1
    obs, *_ = e.step(THROTTLE)  # tick 2
    obs, *_ = e.step(THROTTLE)  # tick 3
    failed, reward, terminated, truncated, info = e.step(THROTTLE)  # tick 4 times out
    assert truncated and not terminated and reward == 0.0
    assert info["termination_reason"] == R.SIMULATOR_TIMEOUT
    assert all(np.array_equal(failed[k], obs[k]) for k in obs)  # the last observation again
    with pytest.raises(SimulatorError, match="reset\\(\\) reconnects"):
        e.step(THROTTLE)
    obs, info = e.reset(seed=0)
    _, _, _, truncated, info = e.step(THROTTLE)
    assert not truncated and info["termination_reason"] == ""
    e.close()


def test_dead_server_truncates_and_reset_reaches_the_restarted_one():
    e = _env(fake=FakeCarlaConfig(die_at_tick=3))
    e.reset(seed=0)
    e.step(THROTTLE)
    *_, truncated, info = e.step(THROTTLE)
    assert truncated and info["termination_reason"] == R.SIMULATOR_TIMEOUT
    e.reset(seed=0)
    assert _vehicles(e.world) == 1
    e.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_that_stays_unreachable_raises_on_reset():
    port = _free_port()
    cfg = EnvConfig(route_length_m=60.0, port=port, timeout_s=1.0,
                    fake=FakeCarlaConfig(fail_tick_at=2))
    module = types.SimpleNamespace(**vars(make_module(cfg.fake)))
    e = CarlaEnv(cfg, SPEC, module)
    e.reset(seed=0)
    assert e.step(THROTTLE)[3]
    module.Client = carla.Client  # from now on nobody answers at 127.0.0.1:port
    with pytest.raises(SimulatorUnreachable, match=f"127.0.0.1:{port}"):
        e.reset(seed=0)


def test_npcs_spawn_and_close_leaves_nothing_behind():
    e = _env(num_npcs=4)
    world = e.world
    e.reset(seed=5)
    assert _vehicles(world) == 5
    assert len(world.get_actors().filter("sensor.*")) == 3
    for _ in range(5):
        e.step(THROTTLE)
    e.reset(seed=6)  # the previous episode's actors are gone, new ones spawned
    assert _vehicles(world) == 5
    sensors = list(world.get_actors().filter("sensor.*"))
    assert all(s.is_listening() for s in sensors)
    e.close()
    assert len(world.get_actors()) == 0
    assert not any(s.is_listening() for s in sensors)
    assert world.get_settings().synchronous_mode is False
    e.close()  # twice is fine


def test_bad_actions_and_early_steps_are_errors(env):
    with pytest.raises(SpecError, match="before reset"):
        env.step(THROTTLE)
    env.reset(seed=0)
    with pytest.raises(SpecError, match="shape"):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(SpecError, match="finite"):
        env.step(np.array([np.nan, 0.0], np.float32))
