"""The learner's configuration: the algorithm (``TD3Config``, ``NetworkConfig``) and, apart
from it, how the learner runs on its machine (``LearnerExecution``), with their enums.

Re-exported by common/config.py; see there for how configs are built and checked.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

from common.config_rules import Check, Rule, above, at_least, each, in_range, matches


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


class CpuScheduling(str, enum.Enum):
    """The Linux scheduling class of a learner that trains on the CPU (deploy/components.py).

    BATCH: SCHED_BATCH, for a throughput job: its share of the CPU is unchanged, but a rollout
    actor that wakes (its simulator tick done) preempts it at once instead of waiting for its
    time slice. NORMAL: the default class, as for every other process.
    """

    BATCH = "batch"
    NORMAL = "normal"


class Precision(str, enum.Enum):
    """The learner's forward-pass precision (losses, targets and optimizer state are fp32).

    AUTO: bf16 autocast on CUDA; on a CPU whichever of fp32 and bf16 runs the learner's
        encoder clearly faster, timed once at start-up (bf16 where oneDNN has fast bf16
        kernels, e.g. AMX or AMD Zen 5, fp32 elsewhere).
    FP32, BF16: that precision.
    """

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"


class FirstConv(str, enum.Enum):
    """How the encoders' first convolution runs in the learner (weights and checkpoints are
    the same either way).

    STRIDED: the NatureCNN's 8x8 stride-4 convolution.
    BLOCKS: the same function as a 2x2 stride-1 convolution over space-to-depth pixels, which
        cuDNN runs faster.
    AUTO: BLOCKS on CUDA, STRIDED on a CPU.
    """

    AUTO = "auto"
    STRIDED = "strided"
    BLOCKS = "blocks"


class FrameCacheMode(str, enum.Enum):
    """Where the learner's batches take their camera frames from (learner/frame_cache.py).

    DEVICE: a copy of every replay shard's frames in device memory, sent there once per frame.
    OFF: each batch's F + 1 frames per transition travel as pixels.
    AUTO: DEVICE on CUDA when the copy fits in half the free memory; OFF on a CPU, where it
        would only move the shards' gather into the learner.
    """

    AUTO = "auto"
    DEVICE = "device"
    OFF = "off"


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
class LearnerExecution:
    """How the learner runs on its machine: none of it changes what TD3 computes.

    Attributes:
        device: "auto" (CUDA when available, else CPU), "cpu" or "cuda[:N]".
        precision: forward-pass precision (see Precision).
        compile: torch.compile the critic and policy loss computations (forward and
            backward); worth it on CUDA, compile time dominates short CPU runs.
        cuda_graphs: capture the update in CUDA graphs and replay them (CUDA only; learning
            rates are fixed at capture).
        first_conv: how the encoders' first convolution runs (see FirstConv).
        frame_cache: where batches take their camera frames from (see FrameCacheMode).
        prefetch: sample requests kept in flight.
        cpu_threads: torch threads of a CPU learner; 0 uses every core of the machine (Ray
            would otherwise give a zero-CPU actor one thread).
        cpu_scheduling: the scheduling class of a learner on the CPU (``CpuScheduling``);
            a CUDA learner keeps the default class.
        publish_shm: also write each published snapshot into a shared-memory file that
            rollout workers on the learner's machine read directly (deploy/weights_shm.py);
            actors elsewhere fetch it from the object store either way.
    """

    device: str = "auto"
    precision: Precision = Precision.AUTO
    compile: bool = False
    cuda_graphs: bool = False
    first_conv: FirstConv = FirstConv.AUTO
    frame_cache: FrameCacheMode = FrameCacheMode.AUTO
    prefetch: int = 4
    cpu_threads: int = 0
    cpu_scheduling: CpuScheduling = CpuScheduling.BATCH
    publish_shm: bool = True

    RULES: ClassVar[dict[str, Rule]] = {
        "device": matches(r"auto|cpu|cuda(:\d+)?", "'auto', 'cpu', 'cuda' or 'cuda:N'"),
        "prefetch": at_least(1), "cpu_threads": at_least(0),
    }
    CHECKS: ClassVar[tuple[Check, ...]] = (
        lambda c, p: (f"{p}cuda_graphs (True) needs a CUDA device, but {p}device is 'cpu'"
                      if c.cuda_graphs and c.device == "cpu" else None),
    )


@dataclass(frozen=True)
class LearnerConfig:
    """The learner process.

    Attributes:
        td3: the algorithm's hyper-parameters.
        network: network sizes and encoder topology.
        execution: how the learner runs on its machine (device, precision, ...).
        publish_every: updates between two policy-weight publishes.
        checkpoint_every: updates between two checkpoints (0: only at the end).
    """

    td3: TD3Config = field(default_factory=TD3Config)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    execution: LearnerExecution = field(default_factory=LearnerExecution)
    publish_every: int = 50
    checkpoint_every: int = 5000

    RULES: ClassVar[dict[str, Rule]] = {"publish_every": at_least(1),
                                        "checkpoint_every": at_least(0)}
    # Keys of configs saved before the execution section (config.json of older runs):
    # common/config_io.py reads each at its new place and refuses it on the command line.
    MOVED: ClassVar[dict[str, str]] = {
        name: f"execution.{name}" for name in (
            "device", "precision", "compile", "cuda_graphs", "first_conv", "frame_cache",
            "prefetch", "cpu_threads", "cpu_scheduling", "publish_shm")}
