"""Configuration: a tree of frozen dataclasses, each field documented in its class docstring.

Each component receives its own section (or plain arguments), never the root. Unknown keys are
an error wherever a config is built from data (a file, the command line, a checkpoint), and a
test checks that every field is read somewhere outside the config modules.

This module holds the root (``RunConfig``) and the replay, rollout, train and metrics
sections; the learner's sections are in common/config_learner.py and the env's in
common/config_env.py, all re-exported here (``C.EnvConfig``, ``C.LearnerExecution``).

Each class states beside its fields what they may hold: ``RULES`` (one rule per field) and
``CHECKS`` (checks that span fields), which ``validate`` applies to the whole tree
(common/config_rules.py). ``with_overrides`` and ``loads`` validate what they build; a run
validates its config before anything starts (deploy/build.py ``validate``).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

from common.config_env import (CameraConfig, CameraInput, EnvConfig, FakeCarlaConfig, PedalAction,
                               RewardConfig, RouteSplit, SimulatorBackend)
from common.config_io import check_overrides, dumps, from_dict, loads, to_dict, with_overrides
from common.config_learner import (CpuScheduling, EncoderTopology, FirstConv, FrameCacheMode,
                                   LearnerConfig, LearnerExecution, NetworkConfig, PolicyCritic,
                                   Precision, TD3Config)
from common.config_rules import (Check, Rule, above, at_least, each, endpoint, host_or_ip,
                                 in_range, tcp_port, validate)
from common.specs import EnvSpec

# re-exported: C.from_dict(...), C.validate(...), C.LearnerConfig, ...
__all__ = ["check_overrides", "dumps", "from_dict", "loads", "to_dict", "validate",
           "with_overrides", "CpuScheduling", "EncoderTopology", "FirstConv", "FrameCacheMode",
           "LearnerConfig", "LearnerExecution", "NetworkConfig", "PolicyCritic", "Precision",
           "TD3Config", "CameraConfig", "CameraInput", "EnvConfig", "FakeCarlaConfig", "PedalAction",
           "RewardConfig", "RouteSplit", "SimulatorBackend"]


class SamplerKind(str, enum.Enum):
    UNIFORM = "uniform"
    PRIORITIZED = "prioritized"


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
        chunk_length: observation records per insert message from a rollout worker.
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
class RolloutConfig:
    """Rollout workers.

    Attributes:
        num_workers: rollout workers, one env (one CARLA server) each.
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

    num_workers: int = 2
    learning_starts: int = 2000
    exploration_noise: float = 0.1
    noise_spread: float = 0.0
    weight_poll_every: int = 1
    cpu_threads: int = 1

    MOVED: ClassVar[dict[str, str]] = {"num_actors": "num_workers"}
    RULES: ClassVar[dict[str, Rule]] = {
        "num_workers": at_least(1), "learning_starts": at_least(0),
        "exploration_noise": at_least(0), "noise_spread": at_least(0),
        "weight_poll_every": at_least(1), "cpu_threads": at_least(1),
    }
    CHECKS: ClassVar[tuple[Check, ...]] = (
        # rollout/exploration.py: the noise falls with the actor index only from a base below 1.
        lambda c, p: (f"{p}exploration_noise ({c.exploration_noise}) must be < 1 when noise_spread "
                      f"> 0 ({c.noise_spread}) and there are several actors"
                      if c.noise_spread > 0 and c.num_workers > 1 and c.exploration_noise >= 1
                      else None),
    )


@dataclass(frozen=True)
class TrainConfig:
    """The driver's budget and pacing.

    Attributes:
        env_steps: total env steps (all actors together) before the run ends.
        updates_per_env_step: learner updates per env step, held by the replay's rate limiter
            (samples_per_insert = this x batch_size); 0 lets both sides run free.
        worker_steps_per_call: env steps a rollout worker runs per remote call.
        learner_updates_per_call: updates the learner runs per remote call.
        progress_every_s: seconds between two progress lines (and metrics.csv rows).
        endpoints: CARLA servers as "host:port" (one rollout worker each); empty: rollout
            actors use env.host and ports env.port + 3 * i.
    """

    env_steps: int = 20_000
    updates_per_env_step: float = 0.0
    worker_steps_per_call: int = 50
    learner_updates_per_call: int = 10
    progress_every_s: float = 5.0
    endpoints: tuple[str, ...] = ()

    MOVED: ClassVar[dict[str, str]] = {"actor_steps_per_call": "worker_steps_per_call"}
    RULES: ClassVar[dict[str, Rule]] = {
        "env_steps": at_least(1), "updates_per_env_step": at_least(0),
        "worker_steps_per_call": at_least(1), "learner_updates_per_call": at_least(1),
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
        env: env settings shared by all rollout workers (ports are assigned per actor).
        learner: the learner.
        replay: the replay service.
        rollout: the rollout workers.
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
        lambda c, _: (f"{len(c.train.endpoints)} CARLA endpoint(s) {list(c.train.endpoints)} "
                      f"but rollout.num_workers is {c.rollout.num_workers}: one actor per server"
                      if c.train.endpoints and len(c.train.endpoints) != c.rollout.num_workers
                      else None),
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
