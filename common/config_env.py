"""The env's configuration: the simulator, the camera, the reward and the fake CARLA, with
their enums.

Re-exported by common/config.py; see there for how configs are built and checked.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import ClassVar

from common.config_rules import (Check, Rule, above, at_least, host_or_ip, in_range, non_empty,
                                 tcp_port, unbounded)


class SimulatorBackend(str, enum.Enum):
    """FAKE: the in-process stand-in (rollout/fakecarla); CARLA: a real server at host:port."""

    FAKE = "fake"
    CARLA = "carla"


class PedalAction(str, enum.Enum):
    """What the second action component commands (rollout/carla_env.py ``pedal_from_action``).

    THROTTLE_BRAKE: the pedal itself: throttle above 0, brake below (the original design, and
        the setting docs/learning.md's main results were measured with). Learned policies
        tend to floor it (docs/learning.md, "Why some defaults are what they are").
    TARGET_SPEED: a speed, 0 at -1 and ``env.max_target_speed_mps`` at +1, that a
        proportional controller in the env holds (``env.speed_gain`` of pedal per m/s of
        error), as driving agents with a low-level speed controller do. A policy whose tanh
        saturates then drives at that speed instead of flooring the throttle. Not the
        default until a full run of every arm (docs/learning.md).
    """

    THROTTLE_BRAKE = "throttle_brake"
    TARGET_SPEED = "target_speed"


class CameraInput(str, enum.Enum):
    """What the policy's frames hold (rollout/observation.py ``ObservationBuilder``).

    RGB: the camera's images, as the spec preprocesses them.
    BLANK: one constant grey frame, whatever the camera sees: the camera removed, in training
        and in evaluation (the traffic benchmark's vector arm, and a trained policy's
        blanked-frames evaluation). The vector is unchanged.
    """

    RGB = "rgb"
    BLANK = "blank"


class RouteSplit(str, enum.Enum):
    """Which spawn points an env draws routes from (rollout/route.py): disjoint sets, so that
    evaluation runs on held-out routes."""

    TRAIN = "train"
    EVAL = "eval"


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward components (see rollout/rewards.py for each component).

    The default weights keep an ordinary step's reward within about [-1, 1]; only terminal
    events (collision, off road, goal) and a lane invasion go beyond. The runs behind the
    defaults: docs/learning.md, "Why some defaults are what they are".

    Attributes:
        efficiency: weight of speed along the route towards the target speed, term in [-1, 1].
        lane_keeping: weight of lateral and heading error, term in [-1, 1].
        comfort: weight of jerk, term in [-1, 0].
        safety: weight of collision by speed, lane invasion, off road (penalties below).
        progress: weight of distance along the route (term in [-1, 1]) plus bonuses below.
        target_speed_mps: speed the efficiency term rewards most.
        standstill_penalty: what the efficiency term loses at a standstill (in full, falling
            to 0 at a quarter of the target speed), so that standing still costs something
            instead of earning exactly 0, which learned policies settle into.
        collision_penalty: safety penalty of a collision at the target speed (half of it at
            standstill, 1.5 times it at twice the target speed).
        lane_invasion_penalty: safety penalty of a step that crosses a lane marking or ends
            off the driving lanes. About three ordinary steps' reward: success needs a route
            with no invasion at all, so a small penalty is traded for speed, while a large
            one makes standing still the best policy.
        off_road_penalty: safety penalty when the lateral deviation ends the episode.
        waypoint_bonus: progress bonus per observation waypoint passed.
        goal_bonus: progress bonus for completing the route.
        overspeed_zero_ratio: multiple of the target speed at which the efficiency term has
            fallen from 1 to 0 (it goes on falling at the same slope to -1); a steeper fall
            made learned policies stall in some routes.
        heading_error_scale_rad: heading error at which the lane-keeping term has lost 1;
            a smaller scale also made learned policies stall in some routes.
    """

    efficiency: float = 0.5
    lane_keeping: float = 0.3
    comfort: float = 0.1
    safety: float = 1.0
    progress: float = 0.2
    target_speed_mps: float = 8.0
    standstill_penalty: float = 0.1
    collision_penalty: float = 10.0
    lane_invasion_penalty: float = 3.0
    off_road_penalty: float = 10.0
    waypoint_bonus: float = 0.5
    goal_bonus: float = 50.0
    overspeed_zero_ratio: float = 2.0
    heading_error_scale_rad: float = math.pi / 4

    RULES: ClassVar[dict[str, Rule]] = {
        **{name: at_least(0) for name in ("efficiency", "lane_keeping", "comfort", "safety",
                                          "progress", "collision_penalty", "lane_invasion_penalty",
                                          "off_road_penalty", "waypoint_bonus", "goal_bonus")},
        "target_speed_mps": above(0),
        "standstill_penalty": in_range(0, 1, why="the efficiency term is bounded to [-1, 1]"),
        "overspeed_zero_ratio": above(1, why="the efficiency term peaks at the target speed"),
        "heading_error_scale_rad": above(0),
    }
    # Knobs whose experiments lost (docs/learning.md, "Why some defaults are what they are",
    # and its tables in ``git show 856e83c:docs/learning.md``), with the value the code runs
    # as (None: any). Added in 5f22fb7 (lane_invasion_ends_episode: episodes ended on a marking
    # at once), 65d5512 (curve_*: variant L) and c627030 (lane_keeping_corners: variant C, the
    # defaults' plateau). common/config_io.py drops them from saved configs.
    REMOVED: ClassVar[dict[str, object]] = {
        "lane_invasion_ends_episode": False, "curve_lateral_accel_mps2": 0.0,
        "curve_window_m": None, "lane_keeping_corners": False}


@dataclass(frozen=True)
class CameraConfig:
    """The RGB camera on the ego vehicle.

    Attributes:
        width: image width in pixels as rendered by the server.
        height: image height in pixels.
        fov: horizontal field of view in degrees.
        x: mount position forward of the vehicle origin, metres.
        z: mount height, metres.
        pitch: mount pitch in degrees (negative looks down).
    """

    width: int = 160
    height: int = 120
    fov: float = 90.0
    x: float = 1.6
    z: float = 1.7
    pitch: float = -15.0

    RULES: ClassVar[dict[str, Rule]] = {
        "width": at_least(1), "height": at_least(1),
        "fov": in_range(0, 180, low_open=True, high_open=True, why="degrees"),
        "x": unbounded, "z": unbounded, "pitch": in_range(-90, 90),
    }


@dataclass(frozen=True)
class FakeCarlaConfig:
    """The fake CARLA server (used when EnvConfig.backend is FAKE).

    Attributes:
        xodr_path: OpenDRIVE file the fake serves as its one map, named after the file's
            stem ("/maps/ring.xodr" is map "ring"); "" serves the small towns the project
            ships: rollout/fakecarla/town.xodr (not CARLA's Town01) under the default
            ``env.town``, "Town01", and rollout/fakecarla/Town02.xodr as "Town02". Set, it wins over ``env.town``, which must then be left at
            its default or name the stem (see EnvConfig.town).
        tick_latency_s: wall-clock cost added to every tick, standing in for a real server.
        fail_tick_at: tick number at which a tick times out (-1: never). Fault injection.
        die_at_tick: tick number from which the server is dead (-1: never). Fault injection.
        fault_delay_s: wall-clock wait before an injected time-out is raised (a real client
            waits its whole timeout; the fake waits the smaller of the two).
        camera_delay_s: camera images reach the callback after a random delay up to this,
            from a worker thread, so a reader must match frames.
        boot_s: seconds a fake-server process (``carla-td3 fake-server``) takes to boot, at
            start and when a client first connects after a death, before it serves its world;
            until then it refuses connections, as a booting CARLA server does.
        npc_stops_per_min: how often an NPC stops in its lane at random: stops begun per
            minute of driving away from junctions (rollout/fakecarla/traffic.py); 0: never.
        npc_stop_s: how long a random stop stands still, seconds.
        npc_park_fraction: the fraction of random stops that are parks instead.
        npc_park_s: how long a park stands still in the lane, seconds.
    """

    xodr_path: str = ""
    tick_latency_s: float = 0.0
    fail_tick_at: int = -1
    die_at_tick: int = -1
    fault_delay_s: float = 0.05
    camera_delay_s: float = 0.002
    boot_s: float = 0.0
    npc_stops_per_min: float = 1.0
    npc_stop_s: float = 3.0
    npc_park_fraction: float = 0.2
    npc_park_s: float = 8.0

    RULES: ClassVar[dict[str, Rule]] = {
        "xodr_path": unbounded, "tick_latency_s": at_least(0), "fail_tick_at": at_least(-1),
        "die_at_tick": at_least(-1), "fault_delay_s": at_least(0), "camera_delay_s": at_least(0),
        "boot_s": at_least(0), "npc_stops_per_min": at_least(0), "npc_stop_s": at_least(0),
        "npc_park_fraction": in_range(0, 1), "npc_park_s": at_least(0),
    }


@dataclass(frozen=True)
class EnvConfig:
    """One driving env bound to one CARLA server.

    Attributes:
        backend: the fake CARLA or a real server.
        fake: fake-server options (ignored for a real server).
        host: CARLA server host.
        port: CARLA RPC port (the server also uses port+1 and port+2).
        tm_port: traffic-manager port, distinct per env.
        timeout_s: client timeout for connecting and for each tick.
        sensor_timeout_s: how long to wait for a sensor reading of the tick's frame (10 s,
            as the CARLA leaderboard waits).
        town: the map to drive on. On connecting, an env whose server runs another map
            loads this one; a name the server does not have fails before any episode with a
            ConfigError naming it and the server's maps. The fake serves one map: the shipped
            town as "Town01" (the default), or ``fake.xodr_path``'s, which then wins: this
            field is left at "Town01" or names the file's stem, anything else is an error.
        fixed_delta_seconds: synchronous-mode time step.
        vehicle: ego blueprint id.
        camera: the camera.
        camera_input: what the policy's frames hold: the camera's images, or blank (see
            CameraInput).
        route_length_m: length of a planned route.
        route_split: the spawn points routes start from (train, or held-out eval).
        max_steps: step limit (truncation).
        max_lateral_m: |lateral deviation| from the route that terminates an episode, in a
            3.5 m lane; in a lane of width w, at the same margin beyond its half width
            (w / 2 + max_lateral_m - 1.75; rollout/rewards.py off_road).
        num_npcs: NPC vehicles driven by the traffic manager.
        reward: reward weights.
        pedal: what the action's second component commands (see PedalAction).
        max_target_speed_mps: the speed an action of +1 asks for under TARGET_SPEED.
        speed_gain: pedal per m/s of speed error under TARGET_SPEED (the scripted driver's).
    """

    backend: SimulatorBackend = SimulatorBackend.FAKE
    fake: FakeCarlaConfig = field(default_factory=FakeCarlaConfig)
    host: str = "127.0.0.1"
    port: int = 2000
    tm_port: int = 8000
    timeout_s: float = 10.0
    sensor_timeout_s: float = 10.0
    town: str = "Town01"
    fixed_delta_seconds: float = 0.05
    vehicle: str = "vehicle.tesla.model3"
    camera: CameraConfig = field(default_factory=CameraConfig)
    camera_input: CameraInput = CameraInput.RGB
    route_length_m: float = 200.0
    route_split: RouteSplit = RouteSplit.TRAIN
    max_steps: int = 1000
    max_lateral_m: float = 2.5
    num_npcs: int = 0
    reward: RewardConfig = field(default_factory=RewardConfig)
    pedal: PedalAction = PedalAction.THROTTLE_BRAKE
    max_target_speed_mps: float = 12.0
    speed_gain: float = 0.5

    RULES: ClassVar[dict[str, Rule]] = {
        "host": host_or_ip,
        "port": in_range(1, 65533, why="a server uses port, port + 1 and port + 2"),
        "tm_port": tcp_port(), "timeout_s": above(0), "sensor_timeout_s": above(0),
        "town": non_empty,
        "fixed_delta_seconds": in_range(0, 0.1, low_open=True,
                                        why="CARLA's physics sub-stepping limit"),
        "vehicle": non_empty, "route_length_m": above(0), "max_steps": at_least(1),
        "max_lateral_m": above(0), "num_npcs": at_least(0), "max_target_speed_mps": above(0),
        "speed_gain": above(0),
    }
    CHECKS: ClassVar[tuple[Check, ...]] = (
        lambda c, p: (f"{p}tm_port ({c.tm_port}) collides with the server's ports "
                      f"{c.port}..{c.port + 2}" if c.port <= c.tm_port <= c.port + 2 else None),
    )
