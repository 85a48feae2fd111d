"""Generates the small OpenDRIVE town the fake CARLA loads by default (``town.xodr``).

The town: a loop of two roads joined by two T-junctions, with a straight cross road between
the junctions. The loop's corners are arcs of 20, 30, 40 and 25 m radius; every road has two
driving lanes each way (3.5 m wide). Junction movements are connecting roads whose reference
lines are cubic Hermite curves (``paramPoly3``). Regenerate the shipped file with
``python -m rollout.fakecarla.town > rollout/fakecarla/town.xodr``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

LANE_WIDTH_M = 3.5
ARM_M = 15.0  # distance from a junction centre to the end of each arm

# (kind, length, curvature): kind is "line" or "arc"; curvature > 0 turns left (OpenDRIVE).
Segment = tuple[str, float, float]


class Arm(NamedTuple):
    """One road end at a junction: ``at_end`` is True when the road's end touches it."""

    road: int
    at_end: bool
    x: float
    y: float
    into: float  # heading (rad) of travel into the junction


def _loop_roads() -> dict[int, tuple[tuple[float, float, float], list[Segment]]]:
    """Roads as (start pose, segments). Junction J1 at (100, 0), J2 at (100, 120)."""
    quarter = math.pi / 2
    west: list[Segment] = [("line", 85.0 - 20.0, 0.0), ("arc", quarter * 20, -1 / 20),
                           ("line", 70.0, 0.0), ("arc", quarter * 30, -1 / 30),
                           ("line", 85.0 - 30.0, 0.0)]
    east: list[Segment] = [("line", 160.0 - 115.0, 0.0), ("arc", quarter * 40, 1 / 40),
                           ("line", 55.0, 0.0), ("arc", quarter * 25, 1 / 25),
                           ("line", 175.0 - 115.0, 0.0)]
    cross: list[Segment] = [("line", 120.0 - 2 * ARM_M, 0.0)]
    return {1: ((100.0 - ARM_M, 0.0, math.pi), west),
            2: ((100.0 + ARM_M, 0.0, 0.0), east),
            3: ((100.0, ARM_M, quarter), cross)}


def _junction_arms() -> dict[int, list[Arm]]:
    half_pi = math.pi / 2
    return {
        1000: [Arm(1, False, 100.0 - ARM_M, 0.0, 0.0), Arm(2, False, 100.0 + ARM_M, 0.0, math.pi),
               Arm(3, False, 100.0, ARM_M, -half_pi)],
        2000: [Arm(1, True, 100.0 - ARM_M, 120.0, 0.0), Arm(2, True, 100.0 + ARM_M, 120.0, math.pi),
               Arm(3, True, 100.0, 120.0 - ARM_M, half_pi)],
    }


def _lanes_xml(marks: bool, sides: str) -> str:
    """Lane section with lanes 2, 1 (left), 0 (centre), -1, -2 (right); ``sides`` "both"/"right"."""
    def lane(lane_id: int, mark: str, color: str) -> str:
        road_mark = f'<roadMark sOffset="0" type="{mark}" weight="standard" color="{color}" width="0.15"/>'
        link = f'<link><predecessor id="{lane_id}"/><successor id="{lane_id}"/></link>' if sides == "right" else ""
        return (f'<lane id="{lane_id}" type="driving" level="false">{link}'
                f'<width sOffset="0" a="{LANE_WIDTH_M}" b="0" c="0" d="0"/>{road_mark}</lane>')

    inner, outer = ("broken", "solid") if marks else ("none", "none")
    centre_mark = "solid" if marks else "none"
    right = lane(-1, inner, "white") + lane(-2, outer, "white")
    left = lane(2, outer, "white") + lane(1, inner, "white") if sides == "both" else ""
    centre = (f'<center><lane id="0" type="none" level="false"><roadMark sOffset="0" type="{centre_mark}" '
              f'weight="standard" color="yellow" width="0.15"/></lane></center>')
    left_xml = f"<left>{left}</left>" if left else ""
    return f'<lanes><laneSection s="0">{left_xml}{centre}<right>{right}</right></laneSection></lanes>'


def _plan_view(x: float, y: float, hdg: float, segments: list[Segment]) -> tuple[str, float]:
    parts, s = [], 0.0
    for kind, length, curvature in segments:
        shape = "<line/>" if kind == "line" else f'<arc curvature="{curvature:.10f}"/>'
        parts.append(f'<geometry s="{s:.6f}" x="{x:.6f}" y="{y:.6f}" hdg="{hdg:.10f}" '
                     f'length="{length:.6f}">{shape}</geometry>')
        if kind == "line":
            x, y = x + length * math.cos(hdg), y + length * math.sin(hdg)
        else:
            new_hdg = hdg + curvature * length
            x += (math.sin(new_hdg) - math.sin(hdg)) / curvature
            y -= (math.cos(new_hdg) - math.cos(hdg)) / curvature
            hdg = new_hdg
        s += length
    return f"<planView>{''.join(parts)}</planView>", s


def _hermite(a: Arm, b: Arm) -> tuple[str, float]:
    """A paramPoly3 from arm ``a`` (heading in) to arm ``b`` (heading out), and its length."""
    dx, dy = b.x - a.x, b.y - a.y
    c, s = math.cos(a.into), math.sin(a.into)
    x1, y1 = dx * c + dy * s, -dx * s + dy * c
    out = b.into + math.pi - a.into
    tangent = math.hypot(x1, y1)
    t1x, t1y = tangent * math.cos(out), tangent * math.sin(out)
    coeffs_u = (0.0, tangent, 3 * x1 - 2 * tangent - t1x, -2 * x1 + tangent + t1x)
    coeffs_v = (0.0, 0.0, 3 * y1 - t1y, -2 * y1 + t1y)
    length, steps, prev = 0.0, 400, (0.0, 0.0)
    for i in range(1, steps + 1):
        t = i / steps
        p = (sum(k * t ** n for n, k in enumerate(coeffs_u)), sum(k * t ** n for n, k in enumerate(coeffs_v)))
        length += math.hypot(p[0] - prev[0], p[1] - prev[1])
        prev = p
    au, bu, cu, du = coeffs_u
    av, bv, cv, dv = coeffs_v
    geometry = (f'<planView><geometry s="0" x="{a.x:.6f}" y="{a.y:.6f}" hdg="{a.into:.10f}" '
                f'length="{length:.6f}"><paramPoly3 aU="{au:.8f}" bU="{bu:.8f}" cU="{cu:.8f}" '
                f'dU="{du:.8f}" aV="{av:.8f}" bV="{bv:.8f}" cV="{cv:.8f}" dV="{dv:.8f}" '
                f'pRange="normalized"/></geometry></planView>')
    return geometry, length


def _junction_xml(junction_id: int, arms: list[Arm], next_road: int) -> tuple[list[str], str]:
    roads, connections = [], []
    for a in arms:
        for b in arms:
            if a is b:
                continue
            road_id = next_road
            next_road += 1
            plan, length = _hermite(a, b)
            pre = f'<predecessor elementType="road" elementId="{a.road}" contactPoint="{"end" if a.at_end else "start"}"/>'
            suc = f'<successor elementType="road" elementId="{b.road}" contactPoint="{"end" if b.at_end else "start"}"/>'
            lanes = _lanes_xml(marks=False, sides="right")
            # Lane ids of the arms: a road ending at the junction enters with -1/-2 and leaves
            # with 1/2; a road starting there enters with 1/2 and leaves with -1/-2.
            sign_in = -1 if a.at_end else 1
            sign_out = 1 if b.at_end else -1
            lanes = lanes.replace('<predecessor id="-1"/><successor id="-1"/>',
                                  f'<predecessor id="{sign_in}"/><successor id="{sign_out}"/>')
            lanes = lanes.replace('<predecessor id="-2"/><successor id="-2"/>',
                                  f'<predecessor id="{2 * sign_in}"/><successor id="{2 * sign_out}"/>')
            roads.append(f'<road name="c{road_id}" length="{length:.6f}" id="{road_id}" junction="{junction_id}">'
                         f'<link>{pre}{suc}</link><type s="0" type="town"><speed max="30" unit="km/h"/></type>'
                         f'{plan}{lanes}</road>')
            connections.append(
                f'<connection id="{len(connections)}" incomingRoad="{a.road}" connectingRoad="{road_id}" '
                f'contactPoint="start"><laneLink from="{sign_in}" to="-1"/>'
                f'<laneLink from="{2 * sign_in}" to="-2"/></connection>')
    return roads, f'<junction id="{junction_id}" name="j{junction_id}">{"".join(connections)}</junction>'


def generate_town_xodr() -> str:
    """Returns the OpenDRIVE text of the default town."""
    roads = []
    junction_of = {(1, False): 1000, (2, False): 1000, (3, False): 1000,
                   (1, True): 2000, (2, True): 2000, (3, True): 2000}
    for road_id, ((x, y, hdg), segments) in _loop_roads().items():
        plan, length = _plan_view(x, y, hdg, segments)
        link = (f'<link><predecessor elementType="junction" elementId="{junction_of[(road_id, False)]}"/>'
                f'<successor elementType="junction" elementId="{junction_of[(road_id, True)]}"/></link>')
        roads.append(f'<road name="r{road_id}" length="{length:.6f}" id="{road_id}" junction="-1">{link}'
                     f'<type s="0" type="town"><speed max="30" unit="km/h"/></type>{plan}'
                     f'{_lanes_xml(marks=True, sides="both")}</road>')
    junctions, next_road = [], 100
    for junction_id, arms in _junction_arms().items():
        connecting, junction = _junction_xml(junction_id, arms, next_road)
        next_road += 100
        roads.extend(connecting)
        junctions.append(junction)
    return opendrive_document("FakeTown", (130, -10, 210, -10), [*roads, *junctions])


def opendrive_document(name: str, bounds: tuple[int, int, int, int], parts: list[str]) -> str:
    """An OpenDRIVE 1.4 file: its header (``name``; ``bounds`` north, south, east, west in
    metres; a local transverse Mercator projection), then ``parts`` (roads, junctions)."""
    north, south, east, west = bounds
    header = (f'<header revMajor="1" revMinor="4" name="{name}" version="1" north="{north}" '
              f'south="{south}" east="{east}" west="{west}"><geoReference><![CDATA[+proj=tmerc '
              '+lat_0=0 +lon_0=0 +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs]]></geoReference>'
              '</header>')
    body = "\n".join([header, *parts])
    return f'<?xml version="1.0" standalone="yes"?>\n<OpenDRIVE>\n{body}\n</OpenDRIVE>\n'


if __name__ == "__main__":
    print(generate_town_xodr(), end="")
