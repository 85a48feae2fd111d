"""1,000 short NPC-only episodes on the fake CARLA (no camera): NPC vehicles never touch.

Every episode puts NPCs on the lanes entering both junctions of the town, 6 to 24 m before
them, and on random spawn points, so that most episodes make them meet at a junction or
follow each other, and drives them for EPISODE_TICKS ticks. Each NPC carries a collision
sensor, as a real client would attach one.
"""
import numpy as np

from rollout.fakecarla import make_module
from rollout.route import spawn_points
from common.config import FakeCarlaConfig

EPISODES = 1000
EPISODE_TICKS = 80
NPCS = 10
TM_PORT = 8000


def _junction_approaches(carla, world):
    """Transforms on every lane entering a junction, 6, 12, 18 and 24 m before it."""
    carla_map = world.get_map()
    seen, points = set(), []
    for waypoint in carla_map.generate_waypoints(4.0):
        if not waypoint.is_junction or waypoint.junction_id in seen:
            continue
        seen.add(waypoint.junction_id)
        for entry, _ in waypoint.get_junction().get_waypoints(carla.LaneType.Driving):
            for back in (6.0, 12.0, 18.0, 24.0):
                before = entry.previous(back)
                if before and not before[0].is_junction:
                    points.append(before[0].transform)
    return points


def _episode(carla, world, tm, seed, approaches, anywhere, blueprints, collision_bp):
    rng = np.random.default_rng(seed)
    tm.set_random_device_seed(seed)
    npcs = []
    picks = [approaches[i] for i in rng.permutation(len(approaches))[:NPCS // 2 + 1]]
    picks += [anywhere[i] for i in rng.permutation(len(anywhere))[:NPCS]]
    for transform in picks:
        if len(npcs) == NPCS:
            break
        npc = world.try_spawn_actor(blueprints[int(rng.integers(len(blueprints)))], transform)
        if npc is not None:
            npc.set_autopilot(True, TM_PORT)
            npcs.append(npc)
    contacts, sensors = [], []
    for npc in npcs:
        sensor = world.spawn_actor(collision_bp, carla.Transform(), attach_to=npc)
        sensor.listen(lambda event, episode=seed: contacts.append((episode, event.actor.id, event.other_actor.id)))
        sensors.append(sensor)
    for _ in range(EPISODE_TICKS):
        world.tick()
    moved = sum(npc.get_velocity().length() > 0.5 for npc in npcs)
    for actor in sensors + npcs:
        actor.destroy()
    return contacts, len(npcs), moved


def test_a_thousand_npc_only_episodes_have_no_npc_npc_collision():
    carla = make_module(FakeCarlaConfig(camera_delay_s=0.0))
    client = carla.Client("127.0.0.1", 2000)
    world = client.get_world()
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    tm = client.get_trafficmanager(TM_PORT)
    tm.set_synchronous_mode(True)
    library = world.get_blueprint_library()
    blueprints = list(library.filter("vehicle.*"))
    approaches = _junction_approaches(carla, world)
    anywhere = spawn_points(world.get_map(), carla)
    contacts, spawned, moving = [], 0, 0
    for seed in range(EPISODES):
        found, count, moved = _episode(carla, world, tm, seed, approaches, anywhere, blueprints,
                                       library.find("sensor.other.collision"))
        contacts += found
        spawned += count
        moving += moved
    assert contacts == [], f"NPC-NPC contacts (episode, vehicle, other): {contacts[:10]}"
    assert spawned >= 0.9 * NPCS * EPISODES
    assert moving >= 0.5 * spawned, "NPCs must drive, not stand (a traffic that never moves never collides)"
