"""What `carla-td3 evaluate` reports: the Leaderboard's driving score, collisions by kind, and
the env it ran on."""
from types import SimpleNamespace

import numpy as np
import pytest

from common import config as C
from deploy.evaluate import driving_score, env_record, run_episodes
from rollout.carla_env import _hit_a_vehicle


@pytest.mark.parametrize("completion,collisions,vehicle,expected", [
    (1.0, 0, 0, 1.0),                      # a clean route
    (0.5, 0, 0, 0.5),                      # half of it
    (1.0, 1, 1, 0.60),                     # one crash into a vehicle
    (1.0, 1, 0, 0.65),                     # one into the layout
    (0.8, 3, 2, 0.8 * 0.60 ** 2 * 0.65),   # both kinds multiply
])
def test_driving_score_is_completion_times_the_leaderboard_penalties(completion, collisions, vehicle,
                                                                      expected):
    info = {"route_completion": completion, "collisions": collisions, "vehicle_collisions": vehicle}
    assert driving_score(info) == pytest.approx(expected)


def test_a_collision_counts_as_a_vehicle_one_only_when_the_other_actor_is_a_vehicle():
    assert _hit_a_vehicle(SimpleNamespace(other_actor=SimpleNamespace(type_id="vehicle.tesla.model3")))
    assert not _hit_a_vehicle(SimpleNamespace(other_actor=SimpleNamespace(type_id="static.pole")))
    assert not _hit_a_vehicle(SimpleNamespace(other_actor=None))


class TwoRoutes:
    """Route 1: completed cleanly; route 2: 40% done, then a crash into an NPC."""

    def __init__(self):
        self.k = 0

    def reset(self, seed=None):
        self.k += 1
        return {}, {}

    def step(self, action):
        clean = self.k == 1
        info = {"success": clean, "route_completion": 1.0 if clean else 0.4,
                "collisions": 0 if clean else 1, "vehicle_collisions": 0 if clean else 1,
                "distance_m": 100.0 if clean else 40.0, "termination_reason":
                "route_completed" if clean else "collision", "lateral_m": 0.0,
                "half_lane_width_m": 1.75}
        return {}, 1.0, True, False, info


def test_run_episodes_reports_success_driving_score_and_collisions_per_km():
    out = run_episodes(TwoRoutes(), lambda obs: np.zeros(2, np.float32), episodes=2, seed=0)
    assert out["success_rate"] == 0.5
    assert out["driving_score"] == pytest.approx((1.0 + 0.4 * 0.60) / 2)
    assert out["route_completion"] == pytest.approx(0.7)
    assert out["collisions_per_km"] == pytest.approx(1 / 0.14)


def test_the_env_record_names_town_traffic_and_split():
    env = C.EnvConfig(num_npcs=10, route_split=C.RouteSplit.EVAL, town="Town02")
    rec = env_record(env)
    assert rec["town"] == "Town02" and rec["num_npcs"] == 10 and rec["route_split"] == "eval"
