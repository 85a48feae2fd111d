"""The env's pure parts: frame-matched sensor queues, observation processing, the scripted
driver's geometry."""
import dataclasses
import math
import threading
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from rollout.carla_env import pedal_from_action
from rollout.observation import ObservationBuilder, bgra_to_array, build_vector, preprocess_frame
from rollout.scripted import PurePursuitDriver, _point_at_radius, path_curvature
from rollout.sensors import EventBuffer, FrameQueue
from common.config import EnvConfig, PedalAction, RunConfig, with_overrides
from common.errors import ConfigError, SimulatorTimeout, SpecError
from common.specs import EnvSpec

SPEC = EnvSpec()


def reading(frame, value=0):
    return SimpleNamespace(frame=frame, value=value)


def test_frame_queue_returns_the_requested_frame_not_the_latest():
    q = FrameQueue("camera")
    for f in (3, 4, 5):
        q.put(reading(f, value=f * 10))
    assert q.get(4, timeout_s=0.1).value == 40
    assert q.dropped == 1  # frame 3 is stale once frame 4 was consumed
    assert q.get(5, timeout_s=0.1).value == 50


def test_frame_queue_waits_for_a_late_frame_from_another_thread():
    q = FrameQueue("camera")
    q.put(reading(6))  # an old frame is already there; it must not be returned
    timer = threading.Timer(0.05, q.put, args=(reading(7, value=1),))
    timer.start()
    got = q.get(7, timeout_s=10.0)  # frame 7 only exists once the timer thread fires
    timer.join()
    assert got.frame == 7 and got.value == 1
    assert q.dropped == 1  # frame 6 was dropped as stale


def test_frame_queue_timeout_names_sensor_and_frame():
    q = FrameQueue("camera")
    q.put(reading(1))
    with pytest.raises(SimulatorTimeout, match=r"sensor 'camera': no data for frame 2 within 0.05 s"):
        q.get(2, timeout_s=0.05)


def test_event_buffer_takes_events_up_to_the_frame():
    buf = EventBuffer("collision")
    for f in (2, 3, 5):
        buf.put(reading(f))
    assert [e.frame for e in buf.take(3)] == [2, 3]
    assert buf.take(4) == []
    assert [e.frame for e in buf.take(5)] == [5]


def test_bgra_conversion_and_resize_follow_opencv():
    rng = np.random.default_rng(0)
    bgra = rng.integers(0, 256, (120, 160, 4), dtype=np.uint8)
    arr = bgra_to_array(bgra.tobytes(), 160, 120)
    assert np.array_equal(arr, bgra)
    frame = preprocess_frame(arr, 84)
    expected = cv2.resize(cv2.cvtColor(bgra, cv2.COLOR_BGRA2GRAY), (84, 84),
                          interpolation=cv2.INTER_AREA)
    assert frame.dtype == np.uint8 and frame.shape == (84, 84)
    assert np.array_equal(frame, expected)
    with pytest.raises(SpecError, match=r"76800 bytes, expected 119\*160\*4"):
        bgra_to_array(bgra.tobytes()[: 120 * 160 * 4], 160, 119)


def test_gray_weights_blue_green_red_like_opencv():
    bgra = np.zeros((84, 84, 4), np.uint8)
    bgra[..., 2] = 255  # pure red in BGRA
    assert int(preprocess_frame(bgra, 84)[0, 0]) == 76  # 0.299 * 255


def test_vector_layout_and_scales():
    wps = np.stack([np.arange(1, 11) * 5.0, np.linspace(0, 2, 10)], axis=1)
    v = build_vector(SPEC, speed_mps=15.0, lateral_m=-1.75, heading_error_rad=math.pi / 2,
                     waypoints_vehicle=wps)
    assert v.dtype == np.float32 and v.shape == (SPEC.vector_dim,)
    assert v[:3] == pytest.approx([0.5, -0.5, 0.5])
    assert v[3:5] == pytest.approx([5.0 / 50.0, 0.0])
    assert v[-2:] == pytest.approx([1.0, 2.0 / 50.0])
    with pytest.raises(SpecError, match=r"waypoints shape \(3, 2\)"):
        build_vector(SPEC, 0.0, 0.0, 0.0, np.zeros((3, 2)))


def test_the_spec_sets_the_lateral_and_heading_scales():
    spec = dataclasses.replace(SPEC, lateral_scale_m=1.0, heading_scale_rad=0.5)
    v = build_vector(spec, 15.0, -0.3, 0.1, np.zeros((spec.num_waypoints, 2)))
    assert v[:3] == pytest.approx([0.5, -0.3, 0.2])
    with pytest.raises(SpecError, match=r"lateral_scale_m \(0.0\) must be > 0"):
        dataclasses.replace(SPEC, lateral_scale_m=0.0)


def test_frame_stack_starts_with_copies_and_shifts():
    builder = ObservationBuilder(SPEC)
    vec = np.zeros(SPEC.vector_dim, np.float32)
    frames = [np.full((60, 80, 4), 40 * i, np.uint8) for i in range(1, 4)]
    obs = builder.reset(frames[0], vec)
    assert obs["image"].shape == (4, 84, 84)
    assert all(int(obs["image"][j].mean()) == 40 for j in range(4))
    obs = builder.push(frames[1], vec)
    obs = builder.push(frames[2], vec)
    assert [int(obs["image"][j].mean()) for j in range(4)] == [40, 40, 80, 120]
    again = builder.repeat_last()
    assert all(np.array_equal(again[k], obs[k]) for k in obs)


def test_repeat_before_reset_is_an_error():
    with pytest.raises(SpecError, match="before the first reset"):
        ObservationBuilder(SPEC).repeat_last()


def test_point_at_radius_interpolates_on_the_polyline():
    path = np.array([[2.0, 0.0], [6.0, 0.0], [10.0, 0.0]])
    assert np.allclose(_point_at_radius(path, 5.0), [5.0, 0.0])
    assert np.allclose(_point_at_radius(path, 1.0), [2.0, 0.0])
    assert np.allclose(_point_at_radius(path, 50.0), [10.0, 0.0])


def test_path_curvature_of_an_arc():
    radius = 20.0
    angles = np.arange(1, 11) * 5.0 / radius
    arc = np.stack([radius * np.sin(angles), radius * (1 - np.cos(angles))], axis=1)
    assert path_curvature(arc, 30.0) == pytest.approx(1 / radius, rel=0.1)
    line = np.stack([np.arange(1, 11) * 5.0, np.zeros(10)], axis=1)
    assert path_curvature(line, 30.0) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("name,lateral_y,steer_sign", [
    ("route_bends_right", 3.0, 1.0), ("route_bends_left", -3.0, -1.0), ("straight", 0.0, 0.0)])
def test_driver_steers_towards_the_route(name, lateral_y, steer_sign):
    xs = np.arange(1, 11) * 5.0
    wps = np.stack([xs, lateral_y * (xs / 50.0) ** 2], axis=1)
    vec = build_vector(SPEC, 5.0, 0.0, 0.0, wps)
    steer, pedal = PurePursuitDriver(SPEC)({"vector": vec})
    assert np.sign(round(float(steer), 6)) == steer_sign, name
    assert pedal > 0  # below the cruise speed


def test_driver_brakes_when_too_fast_for_a_bend():
    radius = 15.0
    angles = np.arange(1, 11) * 5.0 / radius
    arc = np.stack([radius * np.sin(angles), radius * (1 - np.cos(angles))], axis=1)
    _, pedal = PurePursuitDriver(SPEC)({"vector": build_vector(SPEC, 12.0, 0.0, 0.0, arc)})
    assert pedal < 0


SPEED_CFG = EnvConfig(pedal=PedalAction.TARGET_SPEED, max_target_speed_mps=12.0, speed_gain=0.5)


@pytest.mark.parametrize("name,command,speed,expected", [
    ("top_speed_reached", 1.0, 12.0, 0.0),
    ("half_way_target_from_standstill", 0.0, 0.0, 1.0),  # 6 m/s wanted: 0.5 * 6, capped
    ("one_mps_short", 0.0, 5.0, 0.5),
    ("one_mps_over", 0.0, 7.0, -0.5),
    ("stop_at_speed", -1.0, 8.0, -1.0),
    ("stopped_and_asked_to_stop", -1.0, 0.0, 0.0),
])
def test_target_speed_pedal_holds_the_commanded_speed(name, command, speed, expected):
    assert pedal_from_action(command, speed, SPEED_CFG) == pytest.approx(expected), name


def test_throttle_brake_pedal_is_the_command():
    assert pedal_from_action(-0.3, 9.0, EnvConfig()) == -0.3


def test_driver_commands_its_speed_under_target_speed_pedals():
    vec = build_vector(SPEC, 5.0, 0.0, 0.0, np.stack([np.arange(1, 11) * 5.0, np.zeros(10)], 1))
    driver = PurePursuitDriver.for_env(SPEC, SPEED_CFG)
    _, command = driver({"vector": vec})
    cruise = driver.settings.cruise_speed_mps
    assert command == pytest.approx(2 * cruise / 12.0 - 1)  # its cruise speed, not a pedal
    assert PurePursuitDriver.for_env(SPEC, EnvConfig()).max_target_speed_mps is None


@pytest.mark.parametrize("path,value,message", [
    ("env.fixed_delta_seconds", 0.2, r"fixed_delta_seconds \(0.2\) must be in \(0, 0.1\]"),
    ("env.tm_port", 2001, r"tm_port \(2001\) collides with the server's ports 2000..2002"),
    ("env.max_steps", 0, r"max_steps \(0\) must be >= 1"),
    ("env.num_npcs", -1, r"num_npcs \(-1\) must be >= 0"),
    ("env.sensor_timeout_s", 0.0, r"sensor_timeout_s \(0.0\) must be > 0"),
    ("env.reward.target_speed_mps", 0.0, r"target_speed_mps \(0.0\) must be > 0"),
    ("env.reward.goal_bonus", -1.0, r"goal_bonus \(-1.0\) must be >= 0"),
    ("env.reward.standstill_penalty", 1.5, r"standstill_penalty \(1.5\) must be in \[0, 1\]"),
    ("env.camera.fov", 200.0, r"fov \(200.0\) must be in \(0, 180\)"),
    ("env.camera.width", 0, r"env.camera.width \(0\) must be >= 1"),
    ("env.route_split", "test", r"'test' is not one of \['train', 'eval'\]"),
    ("env.pedal", "gas", r"'gas' is not one of \['throttle_brake', 'target_speed'\]"),
    ("env.max_target_speed_mps", 0.0, r"max_target_speed_mps \(0.0\) must be > 0"),
    ("env.speed_gain", -0.5, r"speed_gain \(-0.5\) must be > 0"),
])
def test_env_config_rejects_bad_values_naming_them(path, value, message):
    with pytest.raises(ConfigError, match=message):
        with_overrides(RunConfig(), {path: value})
