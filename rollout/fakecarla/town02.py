"""Generates the fake CARLA's second town (``Town02.xodr``), for transfer: a layout the first town
(rollout/fakecarla/town.py) does not have.

One driving lane each way, LANE_WIDTH_M wide (the first town: two each way, 3.5 m); a four-way
junction X at (0, 0) and two T-junctions, T2 at (90, 0) and T3 at (0, 70) (OpenDRIVE
coordinates; CARLA's y is the negative); five roads between them: two straight ones (60 and
40 m), a loop with 25 m corners to the north-east, one with 20 m corners to the west, and a
long one with 35 m corners to the south. Regenerate the shipped file with
``python -m rollout.fakecarla.town02 > rollout/fakecarla/Town02.xodr``.
"""
from __future__ import annotations

import math

from rollout.fakecarla.town import ARM_M, Arm, Segment, _hermite, _plan_view, opendrive_document

LANE_WIDTH_M = 3.2
NAME = "Town02"
QUARTER = math.pi / 2

# Junction arms: (junction id, centre x, centre y, arm directions out of the centre).
JUNCTIONS = {1000: (0.0, 0.0, ("E", "N", "W", "S")), 2000: (90.0, 0.0, ("W", "N", "S")),
             3000: (0.0, 70.0, ("S", "E", "W"))}
_OUT = {"E": 0.0, "N": QUARTER, "W": math.pi, "S": -QUARTER}

# Roads: (id, start (junction, arm), end (junction, arm), segments from the start arm's end).
ROADS: list[tuple[int, tuple[int, str], tuple[int, str], list[Segment]]] = [
    (1, (1000, "E"), (2000, "W"), [("line", 90.0 - 2 * ARM_M, 0.0)]),
    (2, (1000, "N"), (3000, "S"), [("line", 70.0 - 2 * ARM_M, 0.0)]),
    (3, (2000, "N"), (3000, "E"), [("line", 30.0, 0.0), ("arc", QUARTER * 25, 1 / 25), ("line", 50.0, 0.0)]),
    (4, (3000, "W"), (1000, "W"), [("line", 15.0, 0.0), ("arc", QUARTER * 20, 1 / 20), ("line", 30.0, 0.0),
                                   ("arc", QUARTER * 20, 1 / 20), ("line", 15.0, 0.0)]),
    (5, (2000, "S"), (1000, "S"), [("line", 20.0, 0.0), ("arc", QUARTER * 35, -1 / 35), ("line", 20.0, 0.0),
                                   ("arc", QUARTER * 35, -1 / 35), ("line", 20.0, 0.0)]),
]


def _arm_end(junction: int, arm: str) -> tuple[float, float, float]:
    """Where an arm's road touches the junction, and the heading out of the junction there."""
    cx, cy, _ = JUNCTIONS[junction]
    heading = _OUT[arm]
    return cx + ARM_M * math.cos(heading), cy + ARM_M * math.sin(heading), heading


def _lanes(marks: bool, connecting: bool, links: tuple[int, int] = (0, 0)) -> str:
    """One lane each way (a connecting road: its right lane only, linked as ``links``)."""
    def lane(lane_id: int, mark: str, color: str, link: str = "") -> str:
        return (f'<lane id="{lane_id}" type="driving" level="false">{link}'
                f'<width sOffset="0" a="{LANE_WIDTH_M}" b="0" c="0" d="0"/><roadMark sOffset="0" type="{mark}" '
                f'weight="standard" color="{color}" width="0.15"/></lane>')
    outer = "solid" if marks else "none"
    centre = (f'<center><lane id="0" type="none" level="false"><roadMark sOffset="0" '
              f'type="{"solid" if marks else "none"}" weight="standard" color="yellow" width="0.15"/></lane></center>')
    if connecting:
        link = f'<link><predecessor id="{links[0]}"/><successor id="{links[1]}"/></link>'
        return f'<lanes><laneSection s="0">{centre}<right>{lane(-1, "none", "white", link)}</right></laneSection></lanes>'
    return (f'<lanes><laneSection s="0"><left>{lane(1, outer, "white")}</left>{centre}'
            f'<right>{lane(-1, outer, "white")}</right></laneSection></lanes>')


def _road_xml(road_id: int, start: tuple[int, str], end: tuple[int, str], segments: list[Segment]) -> str:
    x, y, heading = _arm_end(*start)
    plan, length = _plan_view(x, y, heading, segments)
    link = (f'<link><predecessor elementType="junction" elementId="{start[0]}"/>'
            f'<successor elementType="junction" elementId="{end[0]}"/></link>')
    return (f'<road name="r{road_id}" length="{length:.6f}" id="{road_id}" junction="-1">{link}'
            f'<type s="0" type="town"><speed max="30" unit="km/h"/></type>{plan}{_lanes(True, False)}</road>')


def _arms() -> dict[int, list[Arm]]:
    """Each junction's arms: the road touching it, which end, and the heading into it."""
    arms: dict[int, list[Arm]] = {j: [] for j in JUNCTIONS}
    for road_id, start, end, _ in ROADS:
        for (junction, arm), at_end in ((start, False), (end, True)):
            x, y, heading = _arm_end(junction, arm)
            arms[junction].append(Arm(road_id, at_end, x, y, heading + math.pi))
    return arms


def _junction_xml(junction_id: int, arms: list[Arm], next_road: int) -> tuple[list[str], str]:
    roads, connections = [], []
    for a in arms:
        for b in arms:
            if a is b:
                continue
            plan, length = _hermite(a, b)
            sign_in, sign_out = (-1 if a.at_end else 1), (1 if b.at_end else -1)
            contact_a, contact_b = ("end" if a.at_end else "start"), ("end" if b.at_end else "start")
            roads.append(
                f'<road name="c{next_road}" length="{length:.6f}" id="{next_road}" junction="{junction_id}">'
                f'<link><predecessor elementType="road" elementId="{a.road}" contactPoint="{contact_a}"/>'
                f'<successor elementType="road" elementId="{b.road}" contactPoint="{contact_b}"/></link>'
                f'<type s="0" type="town"><speed max="30" unit="km/h"/></type>{plan}'
                f'{_lanes(False, True, (sign_in, sign_out))}</road>')
            connections.append(
                f'<connection id="{len(connections)}" incomingRoad="{a.road}" connectingRoad="{next_road}" '
                f'contactPoint="start"><laneLink from="{sign_in}" to="-1"/></connection>')
            next_road += 1
    return roads, f'<junction id="{junction_id}" name="j{junction_id}">{"".join(connections)}</junction>'


def generate_town02_xodr() -> str:
    """Returns the OpenDRIVE text of the second town."""
    roads = [_road_xml(*road) for road in ROADS]
    junctions = []
    for k, (junction_id, arms) in enumerate(_arms().items()):
        connecting, junction = _junction_xml(junction_id, arms, 100 * (k + 1))
        roads.extend(connecting)
        junctions.append(junction)
    return opendrive_document("FakeTown02", (90, -90, 140, -60), [*roads, *junctions])


if __name__ == "__main__":
    print(generate_town02_xodr(), end="")
