"""The env with traffic on both fake towns: NPCs start within reach of the route (lead vehicles
on it, crossing traffic at its junctions), the second town loads by name and renders, and the
privileged scripted driver completes held-out routes among them without a collision."""
import numpy as np
import pytest

from rollout.carla_env import make_env
from rollout.npc_spawns import route_spawn_points
from rollout.scripted import PurePursuitDriver
from rollout.scripted_privileged import PrivilegedDriver
from common.config import EnvConfig, RouteSplit
from common.specs import EnvSpec


def _npcs(env):
    return [v for v in env.world.get_actors().filter("vehicle.*")
            if not v.attributes.get("role_name", "").startswith("hero")]


def _route_junctions(carla, carla_map, route):
    points = route.points_at(np.arange(0.0, route.length, 2.0))
    return {w.junction_id for w in (carla_map.get_waypoint(carla.Location(x=float(x), y=float(y)))
                                    for x, y in points) if w.is_junction}


def _next_junction(carla, carla_map, location, within_m=220.0):
    waypoint = carla_map.get_waypoint(location)
    for _ in range(int(within_m / 2.0)):
        if waypoint.is_junction:
            return waypoint.junction_id
        waypoint = waypoint.next(2.0)[0]
    return None


@pytest.mark.parametrize("town", ["Town01", "Town02"])
def test_npcs_start_near_the_route_with_lead_and_crossing_traffic(town):
    env = make_env(EnvConfig(town=town, num_npcs=12), EnvSpec())
    try:
        env.reset(seed=3)
        carla, carla_map = env._carla, env.world.get_map()
        assert carla_map.name == town
        route, npcs = env.route, _npcs(env)
        junctions = _route_junctions(carla, carla_map, route)
        assert len(npcs) == 12 and junctions
        lead = beside = crossing = 0
        for npc in npcs:
            loc = npc.get_location()
            at = route.project(loc.x, loc.y)
            if abs(at.lateral) < 0.5 and 0.0 < at.s < route.length:
                lead += 1
            elif float(np.hypot(*(route.xy - (loc.x, loc.y)).T).min()) < 12.0:
                beside += 1
            elif _next_junction(carla, carla_map, loc) in junctions:
                crossing += 1
        assert lead >= 2, "lead vehicles on the route ahead"
        assert crossing >= 2, "crossing traffic heading for the route's junctions"
        assert lead + beside + crossing == len(npcs), "every NPC within reach of the route"
        assert len(route_spawn_points(carla_map, carla, route, 3)) > 12
    finally:
        env.close()


def test_the_second_town_renders_and_drives_with_traffic():
    cfg = EnvConfig(town="Town02", num_npcs=10, route_split=RouteSplit.EVAL)
    spec = EnvSpec()
    env = make_env(cfg, spec)
    try:
        obs, _ = env.reset(seed=1)
        assert env.route.length > 150.0
        assert obs["image"].std() > 5.0, "road and markings are visible"
        driver = PurePursuitDriver.for_env(spec, cfg)
        moved = []
        for _ in range(60):
            obs, _, terminated, truncated, info = env.step(driver(obs))
            moved.append(info["distance_m"])
            if terminated or truncated:
                break
        assert moved[-1] > 10.0
    finally:
        env.close()


@pytest.mark.parametrize("town, seed", [("Town01", 0), ("Town02", 4)])
def test_the_privileged_driver_completes_a_held_out_route_in_traffic(town, seed):
    cfg = EnvConfig(town=town, num_npcs=10, route_split=RouteSplit.EVAL)
    spec = EnvSpec()
    env = make_env(cfg, spec)
    try:
        obs, _ = env.reset(seed=seed)
        driver = PrivilegedDriver(spec, cfg, env)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(driver(obs))
            done = terminated or truncated
        assert info["collisions"] == 0 and info["success"], info
    finally:
        env.close()
