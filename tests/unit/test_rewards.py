"""Reward components and termination, as named cases on hand-made step measurements."""
import dataclasses
import math

import pytest

from rollout import rewards as R
from common.config import RewardConfig

CFG = RewardConfig()
DT = 0.05
NOMINAL = CFG.target_speed_mps * DT  # metres gained per step at the target speed


def step(**kw) -> R.StepMeasurements:
    base = dict(speed_mps=CFG.target_speed_mps, heading_error_rad=0.0, lateral_m=0.0,
                half_lane_width_m=1.75, progress_m=NOMINAL, dt_s=DT)
    base.update(kw)
    return R.StepMeasurements(**base)


@pytest.mark.parametrize("name,m,expected", [
    ("at_target_speed", step(), 1.0),
    ("standstill", step(speed_mps=0.0), -CFG.standstill_penalty),
    ("crawling", step(speed_mps=CFG.target_speed_mps / 8),
     0.125 - CFG.standstill_penalty / 2),
    ("quarter_target", step(speed_mps=CFG.target_speed_mps / 4), 0.25),
    ("half_target", step(speed_mps=CFG.target_speed_mps / 2), 0.5),
    ("twice_target", step(speed_mps=2 * CFG.target_speed_mps), 0.0),
    ("far_too_fast", step(speed_mps=4 * CFG.target_speed_mps), -1.0),
    ("sideways", step(heading_error_rad=math.pi / 2), 0.0),
    ("backwards_along_route", step(heading_error_rad=math.pi), -1.0),
])
def test_efficiency(name, m, expected):
    assert R.efficiency(m, CFG) == pytest.approx(expected, abs=1e-9), name


STEEP = dataclasses.replace(CFG, overspeed_zero_ratio=1.25)


@pytest.mark.parametrize("name,ratio,expected", [
    ("at_target", 1.0, 1.0),
    ("halfway_to_zero", 1.125, 0.5),
    ("zero", 1.25, 0.0),
    ("same_slope_below_zero", 1.375, -0.5),
    ("floor", 1.5, -1.0),
    ("below_target_unchanged", 0.5, 0.5),
])
def test_efficiency_falls_to_zero_at_the_overspeed_ratio(name, ratio, expected):
    m = step(speed_mps=ratio * CFG.target_speed_mps)
    assert R.efficiency(m, STEEP) == pytest.approx(expected, abs=1e-9), name


def test_heading_scale_is_configurable():
    tight = dataclasses.replace(CFG, heading_error_scale_rad=0.2)
    assert R.lane_keeping(step(heading_error_rad=0.1), tight) == pytest.approx(0.5)
    assert R.lane_keeping(step(heading_error_rad=0.3), tight) == pytest.approx(0.0)


@pytest.mark.parametrize("name,m,expected", [
    ("centred_and_aligned", step(), 1.0),
    ("half_lane_off", step(lateral_m=0.875), 0.5),
    ("on_the_marking", step(lateral_m=1.75), 0.0),
    ("off_and_crooked", step(lateral_m=3.0, heading_error_rad=1.0), -1.0),
    ("heading_only", step(heading_error_rad=CFG.heading_error_scale_rad / 2), 0.5),
    # a 2 m wide vehicle in a 3.5 m lane has 0.75 m of room each side
    ("half_the_room", step(lateral_m=0.375, vehicle_half_width_m=1.0), 0.5),
    ("box_on_the_marking", step(lateral_m=-0.75, vehicle_half_width_m=1.0), 0.0),
    ("wider_than_the_lane", step(lateral_m=0.21875, vehicle_half_width_m=2.0), 0.5),
    ("standstill_earns_nothing", step(speed_mps=0.0), 0.0),
    ("slow_gated", step(speed_mps=R.SPEED_GATE_FRACTION * CFG.target_speed_mps / 2), 0.5),
])
def test_lane_keeping(name, m, expected):
    assert R.lane_keeping(m, CFG) == pytest.approx(expected, abs=1e-9), name


@pytest.mark.parametrize("name,jerk,expected", [
    ("smooth", 0.0, 0.0),
    ("moderate", R.COMFORT_JERK_SCALE_MPS3 / 2, -0.5),
    ("harsh_is_capped", 10 * R.COMFORT_JERK_SCALE_MPS3, -1.0),
])
def test_comfort(name, jerk, expected):
    assert R.comfort(step(jerk_mps3=jerk)) == pytest.approx(expected), name


@pytest.mark.parametrize("name,m,expected", [
    ("clean", step(), 0.0),
    ("lane_invasion", step(lane_invasion=True), -CFG.lane_invasion_penalty),
    ("off_driving_lane", step(on_driving_lane=False), -CFG.lane_invasion_penalty),
    ("both_count_once", step(lane_invasion=True, on_driving_lane=False), -CFG.lane_invasion_penalty),
    ("off_road", step(lateral_m=2.6), -CFG.off_road_penalty),
    ("collision_standstill", step(collided=True, collision_speed_mps=0.0), -CFG.collision_penalty / 2),
    ("collision_at_target", step(collided=True, collision_speed_mps=CFG.target_speed_mps),
     -CFG.collision_penalty),
    ("collision_capped", step(collided=True, collision_speed_mps=10 * CFG.target_speed_mps),
     -1.5 * CFG.collision_penalty),
])
def test_safety(name, m, expected):
    assert R.safety(m, CFG) == pytest.approx(expected), name


def test_collision_penalty_grows_with_speed():
    values = [R.safety(step(collided=True, collision_speed_mps=v), CFG) for v in (0, 4, 8, 12)]
    assert values == sorted(values, reverse=True) and values[0] > values[-1]


@pytest.mark.parametrize("name,m,expected", [
    ("nominal_progress", step(), 1.0),
    ("no_progress", step(progress_m=0.0), 0.0),
    ("backwards", step(progress_m=-NOMINAL), -1.0),
    ("capped", step(progress_m=10 * NOMINAL), 1.0),
    ("waypoints", step(waypoints_passed=2), 1.0 + 2 * CFG.waypoint_bonus),
    ("goal", step(route_completed=True), 1.0 + CFG.goal_bonus),
])
def test_progress(name, m, expected):
    assert R.progress(m, CFG) == pytest.approx(expected), name


def test_weights_scale_each_component_and_total_is_the_sum():
    m = step(lateral_m=0.5, jerk_mps3=6.0, lane_invasion=True, waypoints_passed=1)
    terms = R.reward_terms(m, CFG)
    assert terms.efficiency == pytest.approx(CFG.efficiency * R.efficiency(m, CFG))
    assert terms.lane_keeping == pytest.approx(CFG.lane_keeping * R.lane_keeping(m, CFG))
    assert terms.comfort == pytest.approx(CFG.comfort * R.comfort(m))
    assert terms.safety == pytest.approx(CFG.safety * R.safety(m, CFG))
    assert terms.progress == pytest.approx(CFG.progress * R.progress(m, CFG))
    assert terms.total == pytest.approx(sum(terms))
    zero = dataclasses.replace(CFG, efficiency=0.0, lane_keeping=0.0, comfort=0.0, safety=0.0,
                               progress=0.0)
    assert R.reward_terms(m, zero).total == 0.0


@pytest.mark.parametrize("name,m", [
    ("perfect", step()),
    ("standstill", step(speed_mps=0.0, progress_m=0.0)),
    ("worst_non_terminal", step(speed_mps=40.0, heading_error_rad=math.pi, lateral_m=2.4,
                                progress_m=-1.0, jerk_mps3=1e3, lane_invasion=True,
                                on_driving_lane=False, waypoints_passed=0)),
])
def test_ordinary_steps_stay_roughly_within_unit_range(name, m):
    # Beyond the unit range only by the lane-invasion penalty, the one non-terminal event.
    invasion = CFG.safety * CFG.lane_invasion_penalty if m.lane_invasion or not m.on_driving_lane else 0.0
    assert -1.2 - invasion <= R.reward_terms(m, CFG).total <= 1.2, name


def test_driving_well_beats_standing_still_and_crashing():
    good = R.reward_terms(step(), CFG).total
    idle = R.reward_terms(step(speed_mps=0.0, progress_m=0.0), CFG).total
    crash = R.reward_terms(step(collided=True, collision_speed_mps=8.0), CFG).total
    assert good > 0.9 and crash < -5.0
    assert idle == pytest.approx(-CFG.efficiency * CFG.standstill_penalty)


def test_efficiency_rises_with_speed_through_the_standstill_ramp():
    speeds = [0.0, 0.5, 1.0, 1.5, 2.0, 4.0, 8.0]
    values = [R.efficiency(step(speed_mps=v), CFG) for v in speeds]
    assert all(a < b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("name,m,reason", [
    ("goes_on", step(), ""),
    ("collision", step(collided=True), R.COLLISION),
    ("off_road", step(lateral_m=-2.6), R.OFF_ROAD),
    ("just_inside", step(lateral_m=2.5), ""),
    ("route_completed", step(route_completed=True), R.ROUTE_COMPLETED),
    ("collision_wins", step(collided=True, lateral_m=3.0, route_completed=True), R.COLLISION),
    ("off_road_before_goal", step(lateral_m=3.0, route_completed=True), R.OFF_ROAD),
])
def test_termination_reason(name, m, reason):
    assert R.termination_reason(m, CFG) == reason, name
    assert reason in R.TERMINATION_REASONS


@pytest.mark.parametrize("name,m", [
    ("invasion", step(lane_invasion=True)),
    ("off_the_lanes", step(on_driving_lane=False)),
    ("invasion_on_the_last_step", step(lane_invasion=True, route_completed=True)),
])
def test_a_lane_invasion_is_penalised_but_does_not_end_the_episode(name, m):
    assert R.safety(m, CFG) == -CFG.lane_invasion_penalty, name
    assert R.termination_reason(m, CFG) == (R.ROUTE_COMPLETED if m.route_completed else ""), name
