"""Configuration: a tree of frozen dataclasses, each field documented in its class docstring.

Each component receives its own section (or plain arguments), never the root. Unknown keys are
an error wherever a config is built from data (a file, the command line, a checkpoint), and a
test checks that every field is read somewhere outside this module.

Each class states beside its fields what they may hold: ``RULES`` (one rule per field) and
``CHECKS`` (checks that span fields), which ``validate`` applies to the whole tree
(common/config_rules.py). ``with_overrides`` and ``loads`` validate what they build; a run
validates its config before anything starts (deploy/build.py ``validate``).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import ClassVar

from common.config_io import check_overrides, dumps, from_dict, loads, to_dict, with_overrides
from common.config_rules import (Check, Rule, above, at_least, each, endpoint, host_or_ip,
                                 in_range, matches, non_empty, tcp_port, unbounded, validate)
from common.specs import EnvSpec

# re-exported: C.from_dict(...), C.validate(...)
__all__ = ["check_overrides", "dumps", "from_dict", "loads", "to_dict", "validate",
           "with_overrides"]


class EncoderTopology(str, enum.Enum):
    """How the policy and the critic get their image features.

    SEPARATE: each has its own CNN, optimizer and target copy (this system).
    SHARED: one CNN trained by the critic loss and read by the policy (the ablation that
        reproduces the failure this project grew from).
    """

    SEPARATE = "separate"
    SHARED = "shared"


class PolicyCritic(str, enum.Enum):
    """Which critic the policy step of an update differentiates.

    STEPPED: the critic after this update's critic step (Fujimoto et al.'s TD3 and its
        reference code).
    PRE_STEP: the critic as it was before this update's critic step, as DeepMind Acme's JAX
        TD3 learner does (``policy_loss_and_grad(state.policy_params, state.critic_params,
        ...)``). The two steps then depend on nothing of each other, so on CUDA the policy's
        backward pass and Adam step run beside the critic's (``learner.streams``).
    """

    STEPPED = "stepped"
    PRE_STEP = "pre_step"


class SamplerKind(str, enum.Enum):
    UNIFORM = "uniform"
    PRIORITIZED = "prioritized"


class CpuScheduling(str, enum.Enum):
    """The Linux scheduling class of a learner that trains on the CPU (deploy/ray_actors.py).

    BATCH: SCHED_BATCH, for a throughput job: its share of the CPU is unchanged, but a rollout
    actor that wakes (its simulator tick done) preempts it at once instead of waiting for its
    time slice. NORMAL: the default class, as for every other process.
    """

    BATCH = "batch"
    NORMAL = "normal"


class SimulatorBackend(str, enum.Enum):
    """FAKE: the in-process stand-in (actors/fakecarla); CARLA: a real server at host:port."""

    FAKE = "fake"
    CARLA = "carla"


class PedalAction(str, enum.Enum):
    """What the second action component commands (actors/carla_env.py ``pedal_from_action``).

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


class RouteSplit(str, enum.Enum):
    """Which spawn points an env draws routes from (actors/route.py): disjoint sets, so that
    evaluation runs on held-out routes."""

    TRAIN = "train"
    EVAL = "eval"


@dataclass(frozen=True)
class NetworkConfig:
    """Network sizes.

    Attributes:
        encoder_features: width of the NatureCNN's final linear layer.
        hidden_sizes: MLP widths of the policy head and of each Q head.
        topology: separate or shared encoders (see EncoderTopology).
    """

    encoder_features: int = 512
    hidden_sizes: tuple[int, ...] = (256, 256)
    topology: EncoderTopology = EncoderTopology.SEPARATE

    RULES: ClassVar[dict[str, Rule]] = {"encoder_features": at_least(1),
                                        "hidden_sizes": each(at_least(1))}


@dataclass(frozen=True)
class TD3Config:
    """TD3 hyper-parameters (Fujimoto et al. 2018 defaults).

    Attributes:
        gamma: discount.
        tau: Polyak coefficient for every target network, encoders included.
        policy_noise: std of the target policy smoothing noise.
        noise_clip: clip of the target policy smoothing noise.
        policy_delay: critic updates per policy (and target) update.
        batch_size: transitions per update.
        encoder_lr: Adam learning rate of both CNN encoders.
        head_lr: Adam learning rate of the policy MLP and the Q heads.
        max_grad_norm: clip of each optimizer's gradient norm; 0 disables clipping.
        policy_critic: the critic the policy step differentiates (see PolicyCritic).
        preactivation_l2: weight of the mean squared pre-tanh policy output added to the
            policy loss; 0 (the paper) disables it. A policy whose tanh saturates gets no
            gradient from the critic there; the penalty pulls it back where the critic's
            gradient acts (OpenAI's DDPG for HER penalises the squared action, ``action_l2``,
            for the same reason). Its outcome on the driving task: docs/learning.md.
        image_shift: DrQ's random-shift augmentation of the learner's images: each image of
            a batch padded by this many border pixels and cropped back at a random offset
            (``learner.augment``); 0 (the paper) disables it.
    """

    gamma: float = 0.99
    tau: float = 0.005
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_delay: int = 2
    batch_size: int = 256
    encoder_lr: float = 1e-4
    head_lr: float = 3e-4
    max_grad_norm: float = 0.0
    policy_critic: PolicyCritic = PolicyCritic.STEPPED
    preactivation_l2: float = 0.0
    image_shift: int = 0

    RULES: ClassVar[dict[str, Rule]] = {
        "gamma": in_range(0, 1, low_open=True), "tau": in_range(0, 1, low_open=True),
        "policy_noise": at_least(0), "noise_clip": at_least(0), "policy_delay": at_least(1),
        "batch_size": at_least(1), "encoder_lr": above(0), "head_lr": above(0),
        "max_grad_norm": at_least(0), "preactivation_l2": at_least(0), "image_shift": at_least(0),
    }


@dataclass(frozen=True)
class LearnerConfig:
    """The learner process.

    Attributes:
        device: "auto" (CUDA when available, else CPU), "cpu" or "cuda[:N]".
        td3: the algorithm's hyper-parameters.
        network: network sizes and encoder topology.
        publish_every: updates between two policy-weight publishes.
        checkpoint_every: updates between two checkpoints (0: only at the end).
        prefetch: sample requests kept in flight.
        compile: torch.compile the critic and policy loss computations (forward and
            backward); worth it on CUDA, compile time dominates short CPU runs.
        precision: "auto" (bf16 autocast on CUDA; on a CPU whichever of fp32 and bf16 runs
            the learner's encoder clearly faster, timed once at start-up: bf16 where oneDNN
            has fast bf16 kernels, e.g. AMX or AMD Zen 5, fp32 elsewhere), "fp32" or "bf16".
            Losses, targets and optimizer state are fp32 in every case.
        cuda_graphs: capture the update in CUDA graphs and replay them (CUDA only; learning
            rates are fixed at capture).
        first_conv: how the encoders' first convolution runs in the learner: "strided" (the
            NatureCNN's 8x8 stride-4 convolution), "blocks" (the same function as a 2x2
            stride-1 convolution over space-to-depth pixels, which cuDNN runs faster) or
            "auto" (blocks on CUDA, strided on a CPU). Weights and checkpoints are the same.
        frame_cache: where the learner's batches take their camera frames from: "device" (a
            copy of every replay shard's frames in device memory, sent there once per frame:
            learner/frame_cache.py), "off" (each batch's F + 1 frames per transition travel
            as pixels) or "auto" (device on CUDA when the copy fits in half the free memory,
            off on a CPU, where it would only move the shards' gather into the learner).
        cpu_threads: torch threads of a CPU learner; 0 uses every core of the machine (Ray
            would otherwise give a zero-CPU actor one thread).
        publish_shm: also write each published snapshot into a shared-memory file that
            rollout actors on the learner's machine read directly (deploy/weights_shm.py);
            actors elsewhere fetch it from the object store either way.
        cpu_scheduling: the scheduling class of a learner on the CPU (``CpuScheduling``);
            a CUDA learner keeps the default class.
    """

    device: str = "auto"
    td3: TD3Config = field(default_factory=TD3Config)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    publish_every: int = 50
    checkpoint_every: int = 5000
    prefetch: int = 4
    compile: bool = False
    precision: str = "auto"
    cuda_graphs: bool = False
    first_conv: str = "auto"
    frame_cache: str = "auto"
    cpu_threads: int = 0
    publish_shm: bool = True
    cpu_scheduling: CpuScheduling = CpuScheduling.BATCH

    # precision, first_conv and frame_cache name what learner/ implements: deploy/build.py
    # checks them against its lists.
    RULES: ClassVar[dict[str, Rule]] = {
        "device": matches(r"auto|cpu|cuda(:\d+)?", "'auto', 'cpu', 'cuda' or 'cuda:N'"),
        "publish_every": at_least(1), "checkpoint_every": at_least(0), "prefetch": at_least(1),
        "precision": non_empty, "first_conv": non_empty, "frame_cache": non_empty,
        "cpu_threads": at_least(0),
    }
    CHECKS: ClassVar[tuple[Check, ...]] = (
        lambda c, p: (f"{p}cuda_graphs (True) needs a CUDA device, but {p}device is 'cpu'"
                      if c.cuda_graphs and c.device == "cpu" else None),
    )


@dataclass(frozen=True)
class ReplayConfig:
    """The sharded replay service.

    Attributes:
        num_shards: replay shards (Ray actors).
        capacity: observation slots held by each shard; each slot stores one camera frame and
            the transition into it, so an episode of T transitions uses T + 1 slots.
        sampler: uniform or prioritized.
        priority_alpha: prioritization exponent.
        priority_beta: importance-weight exponent.
        priority_eps: added to |TD error| before prioritization.
        samples_per_insert: target samples per inserted transition (0 disables the limit).
        error_buffer: allowed deviation from the target ratio, in samples.
        min_size_to_sample: transitions a shard needs before it serves samples.
        chunk_length: observation records per insert message from a rollout actor.
    """

    num_shards: int = 2
    capacity: int = 100_000
    sampler: SamplerKind = SamplerKind.UNIFORM
    priority_alpha: float = 0.6
    priority_beta: float = 0.4
    priority_eps: float = 1e-6
    samples_per_insert: float = 0.0
    error_buffer: float = 100_000.0
    min_size_to_sample: int = 1000
    chunk_length: int = 32

    RULES: ClassVar[dict[str, Rule]] = {
        "num_shards": in_range(1, 16384), "capacity": at_least(2),
        "priority_alpha": in_range(0, 1), "priority_beta": in_range(0, 1),
        "priority_eps": above(0), "samples_per_insert": at_least(0), "error_buffer": at_least(0),
        "min_size_to_sample": at_least(1), "chunk_length": at_least(1),
    }
    CHECKS: ClassVar[tuple[Check, ...]] = (
        # Each shard holds its own limiter: it serves samples once it holds min_size_to_sample.
        lambda c, p: (f"{p}min_size_to_sample ({c.min_size_to_sample}) must be < {p}capacity "
                      f"({c.capacity}), each shard's: the shard could never serve a sample"
                      if c.min_size_to_sample >= c.capacity else None),
        lambda c, p: (f"{p}chunk_length ({c.chunk_length}) must be <= {p}capacity ({c.capacity})"
                      if c.chunk_length > c.capacity else None),
    )


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward components (see actors/rewards.py for each component).

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
        lane_invasion_ends_episode: a step that touches a lane marking or ends off the
            driving lanes also ends the episode ("lane_invasion"), as a collision does;
            success needs a route with no invasion at all. Off by default: with the default
            weights an early step's reward is negative on average, so ending the episode
            at once pays, and policies trained with it learn to.
        curve_lateral_accel_mps2: when above 0, the efficiency term's target speed in a bend
            is lowered to ``sqrt(a / curvature)``, the lateral acceleration of ``a`` m/s^2
            (the scripted driver keeps under 2), from the route's largest curvature within
            ``curve_window_m`` ahead. 0 (off) by default.
        curve_window_m: how far ahead of the vehicle that curvature is read, metres.
        lane_keeping_corners: the lane-keeping term's lateral error is the box's worst
            corner's offset from the route's centre line beyond the vehicle's half width (the
            corner the lane-invasion sensor watches), instead of the centre's offset. The two
            agree for a vehicle driving straight along a straight lane; a heading error or a
            bend moves a corner towards the marking while the centre stays put (a 4.8 m box
            centred in a 9 m radius bend already has a corner 0.28 m out). Off by default.
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
    lane_invasion_ends_episode: bool = False
    curve_lateral_accel_mps2: float = 0.0
    curve_window_m: float = 20.0
    lane_keeping_corners: bool = False

    RULES: ClassVar[dict[str, Rule]] = {
        **{name: at_least(0) for name in ("efficiency", "lane_keeping", "comfort", "safety",
                                          "progress", "collision_penalty", "lane_invasion_penalty",
                                          "off_road_penalty", "waypoint_bonus", "goal_bonus",
                                          "curve_window_m")},
        "target_speed_mps": above(0),
        "standstill_penalty": in_range(0, 1, why="the efficiency term is bounded to [-1, 1]"),
        "overspeed_zero_ratio": above(1, why="the efficiency term peaks at the target speed"),
        "heading_error_scale_rad": above(0),
        "curve_lateral_accel_mps2": at_least(0, why="0 is off"),
    }


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
            stem ("/maps/ring.xodr" is map "ring"); "" serves the small town the project
            ships (actors/fakecarla/town.xodr, not CARLA's Town01) under the default
            ``env.town``, "Town01". Set, it wins over ``env.town``, which must then be left at
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
            minute of driving away from junctions (actors/fakecarla/traffic.py); 0: never.
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
        route_length_m: length of a planned route.
        route_split: the spawn points routes start from (train, or held-out eval).
        max_steps: step limit (truncation).
        max_lateral_m: |lateral deviation| from the route that terminates an episode, in a
            3.5 m lane; in a lane of width w, at the same margin beyond its half width
            (w / 2 + max_lateral_m - 1.75; actors/rewards.py off_road).
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


@dataclass(frozen=True)
class RolloutConfig:
    """Rollout actors.

    Attributes:
        num_actors: rollout actors, one env (one CARLA server) each.
        learning_starts: env steps (all actors together) of uniform random actions first.
        exploration_noise: std of the Gaussian noise added to the policy's action.
        noise_spread: Ape-X style per-actor noise: actor i of N uses
            exploration_noise ** (1 + noise_spread * i / (N - 1)); 0 gives every actor the same.
        weight_poll_every: env steps between two checks for a new policy version fetched from
            the object store (a check reads what a background thread fetched: no remote call,
            so every step is cheap); an actor on the learner's node checks the weight files at
            every step.
        cpu_threads: threads of torch (the CPU policy) and OpenCV (image preprocessing) in
            each actor.
    """

    num_actors: int = 2
    learning_starts: int = 2000
    exploration_noise: float = 0.1
    noise_spread: float = 0.0
    weight_poll_every: int = 1
    cpu_threads: int = 1

    RULES: ClassVar[dict[str, Rule]] = {
        "num_actors": at_least(1), "learning_starts": at_least(0),
        "exploration_noise": at_least(0), "noise_spread": at_least(0),
        "weight_poll_every": at_least(1), "cpu_threads": at_least(1),
    }
    CHECKS: ClassVar[tuple[Check, ...]] = (
        # actors/exploration.py: the noise falls with the actor index only from a base below 1.
        lambda c, p: (f"{p}exploration_noise ({c.exploration_noise}) must be < 1 when noise_spread "
                      f"> 0 ({c.noise_spread}) and there are several actors"
                      if c.noise_spread > 0 and c.num_actors > 1 and c.exploration_noise >= 1
                      else None),
    )


@dataclass(frozen=True)
class TrainConfig:
    """The driver's budget and pacing.

    Attributes:
        env_steps: total env steps (all actors together) before the run ends.
        updates_per_env_step: learner updates per env step, held by the replay's rate limiter
            (samples_per_insert = this x batch_size); 0 lets both sides run free.
        actor_steps_per_call: env steps a rollout actor runs per remote call.
        learner_updates_per_call: updates the learner runs per remote call.
        progress_every_s: seconds between two progress lines (and metrics.csv rows).
        endpoints: CARLA servers as "host:port" (one rollout actor each); empty: rollout
            actors use env.host and ports env.port + 3 * i.
    """

    env_steps: int = 20_000
    updates_per_env_step: float = 0.0
    actor_steps_per_call: int = 50
    learner_updates_per_call: int = 10
    progress_every_s: float = 5.0
    endpoints: tuple[str, ...] = ()

    RULES: ClassVar[dict[str, Rule]] = {
        "env_steps": at_least(1), "updates_per_env_step": at_least(0),
        "actor_steps_per_call": at_least(1), "learner_updates_per_call": at_least(1),
        "progress_every_s": above(0), "endpoints": each(endpoint),
    }


class MetricsBackend(str, enum.Enum):
    """Where metrics go.

    AUTO: RAY in a training run (each component records in its own Ray process);
        PROMETHEUS where everything runs in one process (``make_sink(ray_mode=False)``).
    NONE: nowhere (checked, then discarded).
    PROMETHEUS: a prometheus_client endpoint in this process (metrics.port).
    RAY: ray.util.metrics, exported by each node's Ray metrics agent.
    """

    AUTO = "auto"
    NONE = "none"
    PROMETHEUS = "prometheus"
    RAY = "ray"


@dataclass(frozen=True)
class MetricsConfig:
    """Metrics export (see docs/metrics.md).

    Attributes:
        backend: where metrics go (see MetricsBackend).
        port: port of the prometheus_client endpoint (PROMETHEUS backend); 0 picks a free one.
        address: bind address of that endpoint; loopback unless a scraper runs elsewhere.
        gauge_refresh_s: seconds between two re-sets of every gauge (RAY backend): Ray drops a
            gauge series that is not set within its report interval.
        ray_export_port: metrics export port of the Ray node a run starts itself (backend auto
            or ray, no --ray-address); 0 picks a free one, logged as ``event=metrics_endpoint``.
            A joined cluster's nodes use ``ray start --metrics-export-port`` instead.
    """

    backend: MetricsBackend = MetricsBackend.AUTO
    port: int = 9108
    address: str = "127.0.0.1"
    gauge_refresh_s: float = 5.0
    ray_export_port: int = 0

    RULES: ClassVar[dict[str, Rule]] = {
        "port": tcp_port(zero="picks a free one"), "address": host_or_ip,
        "gauge_refresh_s": above(0), "ray_export_port": tcp_port(zero="picks a free one"),
    }


@dataclass(frozen=True)
class RunConfig:
    """The root: one training run.

    Attributes:
        seed: master seed.
        spec: observation and action spec.
        env: env settings shared by all rollout actors (ports are assigned per actor).
        learner: the learner.
        replay: the replay service.
        rollout: the rollout actors.
        train: the driver's budget and pacing.
        metrics: metrics export.
    """

    seed: int = 0
    spec: EnvSpec = field(default_factory=EnvSpec)
    env: EnvConfig = field(default_factory=EnvConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    RULES: ClassVar[dict[str, Rule]] = {"seed": in_range(0, 2**32 - 1)}
    CHECKS: ClassVar[tuple[Check, ...]] = (
        lambda c, _: (f"replay.min_size_to_sample ({c.replay.min_size_to_sample}) must be >= "
                      f"learner.td3.batch_size ({c.learner.td3.batch_size})"
                      if c.replay.min_size_to_sample < c.learner.td3.batch_size else None),
        # A stored transition needs its stacked frames and its next frame in the ring.
        lambda c, _: (f"replay.capacity ({c.replay.capacity}) must be >= spec.frames + 1 "
                      f"({c.spec.frames + 1})" if c.replay.capacity < c.spec.frames + 1 else None),
        lambda c, _: (f"rollout.learning_starts ({c.rollout.learning_starts}) must be < "
                      f"train.env_steps ({c.train.env_steps}), or the policy never acts"
                      if c.rollout.learning_starts >= c.train.env_steps else None),
        lambda c, _: (f"learner.td3.image_shift ({c.learner.td3.image_shift}) must be < "
                      f"spec.image_size ({c.spec.image_size})"
                      if c.learner.td3.image_shift >= c.spec.image_size else None),
    )
