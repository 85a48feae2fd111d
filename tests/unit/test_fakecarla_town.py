"""The shipped OpenDRIVE town: it is what the generator makes, carla.Map reads it, its lanes
connect through the junctions, any other OpenDRIVE file loads too, and each is served under one
map name that load_world and get_available_maps agree on."""
import random

import carla
import pytest

from rollout.fakecarla import make_module
from rollout.fakecarla.mapdata import DEFAULT_XODR, TOWN_NAME
from rollout.fakecarla.town import generate_town_xodr
from common.config import EnvConfig, FakeCarlaConfig

STRAIGHT_XODR = """<?xml version="1.0" standalone="yes"?>
<OpenDRIVE><header revMajor="1" revMinor="4" name="Straight"><geoReference><![CDATA[+proj=tmerc]]></geoReference></header>
<road name="r" length="200" id="7" junction="-1"><link/><planView>
<geometry s="0" x="0" y="0" hdg="0" length="200"><line/></geometry></planView>
<lanes><laneSection s="0"><center><lane id="0" type="none" level="false">
<roadMark sOffset="0" type="solid" color="yellow" width="0.15"/></lane></center>
<right><lane id="-1" type="driving" level="false"><width sOffset="0" a="3.0" b="0" c="0" d="0"/>
<roadMark sOffset="0" type="solid" color="white" width="0.15"/></lane></right></laneSection></lanes></road>
</OpenDRIVE>
"""


@pytest.fixture(scope="module")
def town():
    return carla.Map(TOWN_NAME, DEFAULT_XODR.read_text())


def test_shipped_file_is_the_generator_output():
    assert DEFAULT_XODR.read_text() == generate_town_xodr()


def test_town_has_two_lanes_each_way_curves_and_junctions(town):
    waypoints = town.generate_waypoints(2.0)
    roads = {w.road_id for w in waypoints if not w.is_junction}
    assert roads == {1, 2, 3}
    for road in roads:
        assert {w.lane_id for w in waypoints if w.road_id == road} == {-2, -1, 1, 2}
    assert sum(w.is_junction for w in waypoints) > 0
    yaws = {round(w.transform.rotation.yaw) % 360 for w in waypoints if w.road_id == 1 and w.lane_id == -1}
    assert len(yaws) > 20, "road 1 curves"


def test_every_lane_connects_through_the_junctions(town):
    rng = random.Random(0)
    starts = [w for w in town.generate_waypoints(5.0) if not w.is_junction]
    visited = set()
    for start in rng.sample(starts, 12):
        waypoint = start
        for _ in range(400):
            options = waypoint.next(2.0)
            assert options, f"dead end on road {waypoint.road_id} lane {waypoint.lane_id} s={waypoint.s:.1f}"
            waypoint = rng.choice(options)
            visited.add(waypoint.road_id)
    assert {100, 101, 102, 103, 104, 105} & visited and {200, 201, 202, 203, 204, 205} & visited
    assert len(visited) >= 12


def test_offline_map_has_no_spawn_points(town):
    assert list(town.get_spawn_points()) == []


def test_any_opendrive_file_loads(tmp_path):
    path = tmp_path / "straight.xodr"
    path.write_text(STRAIGHT_XODR)
    fake = make_module(FakeCarlaConfig(xodr_path=str(path)))
    world = fake.Client("127.0.0.1", 2000).load_world("straight")
    waypoint = world.get_map().get_waypoint(fake.Location(x=50.0, y=1.5))
    assert world.get_map().name == "straight" and waypoint.road_id == 7 and waypoint.lane_width == 3.0
    ego = world.try_spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"), waypoint.transform)
    assert ego is not None and world.tick() == 1


def test_shipped_town_is_served_as_the_default_env_town():
    assert TOWN_NAME == EnvConfig().town == "Town01"
    client = make_module().Client("127.0.0.1", 2000)
    assert client.get_world().get_map().name == "Town01"
    assert client.get_available_maps() == ["/Game/Carla/Maps/Town01", "/Game/Carla/Maps/Town02"]
    for name in ("Town01", "/Game/Carla/Maps/Town01"):
        assert client.load_world(name).get_map().name == "Town01"


@pytest.mark.parametrize("name", ["Town99", "town01", "Carla/Maps/Town01", ""])
def test_load_world_of_another_map_fails_as_the_real_server_does(name):
    client = make_module().Client("127.0.0.1", 2000)
    with pytest.raises(RuntimeError, match="map not found"):
        client.load_world(name)


def test_an_opendrive_file_is_served_under_its_stem(tmp_path):
    path = tmp_path / "straight.xodr"
    path.write_text(STRAIGHT_XODR)
    client = make_module(FakeCarlaConfig(xodr_path=str(path))).Client("127.0.0.1", 2000)
    assert client.get_available_maps() == ["/Game/Carla/Maps/straight"]
    with pytest.raises(RuntimeError, match="map not found"):
        client.load_world("Town01")
