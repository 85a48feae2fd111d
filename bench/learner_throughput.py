"""Learner updates per second at batch 256, side by side with Stable-Baselines3's TD3.

Workload: 4x84x84 uint8 image stacks + 23-dim vectors, 2-dim actions, separate encoders,
NatureCNN 512 features, MLP 256-256 heads, policy delay 2. Each variant of this learner,
"precision[:compile][:graphs][:pre_step][:blocks|:strided]" (e.g. ``fp32``, ``bf16:compile``,
``bf16:graphs``; ``pre_step``: ``td3.policy_critic=pre_step``, the policy step beside the
critic's; ``blocks``/``strided``: ``learner.execution.first_conv``, "auto" if neither), is timed
fed numpy batches through ``update`` (validation and host-to-device copy included; batches
laid out as the replay returns them, both image stacks views of one F + 1 frame block), fed
batches that already sit on the device (``update_on_device``, what a device-resident replay
cache gives), and on CUDA "pipeline": numpy batches with update N+1 launched before N's stats
are read, as ``learner.loop.LearnerLoop`` runs them; with ``--replay-feeds``, also fed from a
replay shard that keeps taking inserts, as pixels ("replay") and through the learner's frame
cache ("replay_cache"; ``bench/replay_feed.py``). The reference is SB3 ``TD3("MultiInputPolicy", share_features_extractor=False)``
trained with ``model.train(gradient_steps, 256)`` from a filled replay buffer, same device and
threads. On a CPU it runs twice: in this process, after this learner has set glibc's allocator
to keep freed memory (``learner.device.keep_freed_memory``, process-wide, so SB3 gets it too),
and in a child process of its own that never builds this learner, as SB3's users run it. All
contenders are timed in interleaved rounds (the child runs while this process waits on it) and
the median round is reported, so a load change on a shared machine hits them alike. Prints one
JSON object, then a table.

    .venv/bin/python -m bench.learner_throughput --updates 8 --rounds 3
    python3 -m bench.learner_throughput --device cuda --updates 500 --variant fp32:graphs \
        --variant bf16:graphs --no-sb3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from common.config import (FirstConv, LearnerConfig, LearnerExecution, NetworkConfig,
                           PolicyCritic, Precision, TD3Config)
from common.specs import EnvSpec
from common.types import SampleBatch
from bench.replay_feed import BenchReplay
from learner.td3 import TD3Learner

SPEC = EnvSpec()
POLICY_DELAY = TD3Config().policy_delay  # both learners: a policy update every 2nd update
POOL = 8  # distinct batches cycled through (bounds memory; each holds 9 MB of images)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def synthetic_batches(batch_size: int, count: int, seed: int = 0) -> list[SampleBatch]:
    """Random batches laid out as the replay returns them: the obs and next-obs image stacks
    are overlapping views of one [B, F + 1, H, W] block (``replay.shard.PackedBatch``)."""
    rng = np.random.default_rng(seed)
    frames = (batch_size, SPEC.frames + 1, SPEC.image_size, SPEC.image_size)
    vector = (batch_size, SPEC.vector_dim)  # clipped to the spec's bounds, as the env's are

    def one() -> SampleBatch:
        block = rng.integers(0, 256, frames, dtype=np.uint8)
        return SampleBatch(
            block[:, :-1],
            SPEC.vector.clip(rng.standard_normal(vector, dtype=np.float32)),
            rng.uniform(-1, 1, (batch_size, SPEC.action_dim)).astype(np.float32),
            rng.standard_normal(batch_size, dtype=np.float32),
            block[:, 1:],
            SPEC.vector.clip(rng.standard_normal(vector, dtype=np.float32)),
            (rng.random(batch_size) < 0.02).astype(np.float32),
            np.zeros(batch_size, np.float32), np.zeros(batch_size, np.int64),
            np.ones(batch_size, np.float32), np.arange(batch_size, dtype=np.int64))

    return [one() for _ in range(count)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One contender: a name, a feed, and ``step(n)`` that runs ``n`` updates."""

    def __init__(self, name: str, feed: str, step: Any, device: torch.device, info: dict) -> None:
        self.name, self.feed, self.step, self.device, self.info = name, feed, step, device, info
        self.rounds: list[float] = []

    def time(self, n: int) -> None:
        _sync(self.device)
        t0 = time.perf_counter()
        self.step(n)
        _sync(self.device)
        self.rounds.append((time.perf_counter() - t0) / n)

    def summary(self) -> dict:
        median = float(np.median(self.rounds))
        info = {k: v for k, v in self.info.items() if k != "new_frames"}
        if "new_frames" in self.info:  # [frames the cache received, batches] while timed
            frames, batches = self.info["new_frames"]
            info["new_frames_per_batch"] = frames / max(batches, 1)
        return {"name": self.name, "feed": self.feed, **info, "rounds_s_per_update": self.rounds,
                "s_per_update": median, "updates_per_s": 1.0 / median}


def parse_variant(variant: str) -> tuple[str, set[str], str]:
    """(precision, flags, learner.execution.first_conv) of "precision[:compile][:graphs][:pre_step]
    [:blocks|:strided]"; SystemExit naming the variant if it is not of that form."""
    precision, *flags = variant.split(":")
    first_conv = [f for f in flags if f in ("blocks", "strided")]
    precisions = [p.value for p in Precision]
    if (precision not in precisions or len(first_conv) > 1
            or not set(flags) <= {"compile", "graphs", "pre_step", "blocks", "strided"}):
        raise SystemExit(f"variant {variant!r}: expected "
                         "precision[:compile][:graphs][:pre_step][:blocks|:strided], "
                         f"precision in {'/'.join(precisions)}")
    return precision, set(flags), (first_conv or [FirstConv.AUTO.value])[0]


def ours(variant: str, args: argparse.Namespace, batches: list[SampleBatch],
         replay: BenchReplay | None = None) -> list[Runner]:
    """Runners over one learner: numpy batches through ``update``, device batches, on CUDA
    pipelined numpy batches, and with ``replay`` the replay feeds (``BenchReplay``)."""
    precision, flags, first_conv = parse_variant(variant)
    order = PolicyCritic.PRE_STEP if "pre_step" in flags else PolicyCritic.STEPPED
    run = LearnerExecution(device=args.device, precision=Precision(precision),
                           compile="compile" in flags, cuda_graphs="graphs" in flags,
                           first_conv=FirstConv(first_conv))
    cfg = LearnerConfig(execution=run,
                        td3=TD3Config(batch_size=args.batch_size, policy_critic=order),
                        network=NetworkConfig(encoder_features=512, hidden_sizes=(256, 256)))
    learner = TD3Learner(SPEC, cfg, seed=0)
    t0 = time.perf_counter()
    for b in batches[:2]:  # the first updates pay for compilation
        learner.update(b)
    first = time.perf_counter() - t0
    on_device = []
    for b in batches:
        on_device.append(learner.to_device(b))
        _sync(learner.device)  # the pinned staging buffers are reused by the next batch
    counter = iter(range(10**12))

    def host(n: int) -> None:
        for _ in range(n):
            learner.update(batches[next(counter) % len(batches)])

    def device(n: int) -> None:
        for _ in range(n):
            learner.update_on_device(on_device[next(counter) % len(on_device)])

    def pipelined(n: int) -> None:  # as LearnerLoop runs it: N+1 launched before N is read
        pending = None
        for _ in range(n):
            launched = learner.launch(batches[next(counter) % len(batches)])
            if pending is not None:
                pending.result()
            pending = launched
        pending.result()

    warmup = max(args.warmup, 10 if run.cuda_graphs else 0)  # graphs are captured by then
    host(warmup)
    info = {"device": str(learner.device), "precision": learner.precision,
            "precision_asked": precision, "dense_as_conv": learner.kernels.dense_as_conv,
            "first_conv_blocks": learner.kernels.first_conv_blocks,
            "compile": run.compile,
            "cuda_graphs": run.cuda_graphs, "policy_critic": order.value,
            "first_two_updates_s": first}
    chosen = ([learner.precision] if precision == "auto" else []) + (
        ["dense as conv"] if learner.kernels.dense_as_conv else []) + (
        ["first conv as blocks"] if learner.kernels.first_conv_blocks and first_conv == "auto" else [])
    name = f"ours {variant}" + (f" ({', '.join(chosen)})" if chosen else "")
    runners = [Runner(name, "host", host, learner.device, info),
               Runner(name, "device", device, learner.device, info)]
    if learner.device.type == "cuda":  # on CPU launching is updating: nothing to overlap
        runners.append(Runner(name, "pipeline", pipelined, learner.device, info))
    if replay is not None:
        runners += [Runner(name, feed, step, learner.device, feed_info)
                    for feed, step, feed_info in replay.feeds(learner, info, args.warmup)]
    return runners


def _sb3_model(args: argparse.Namespace, batches: list[SampleBatch]) -> Any:
    import gymnasium as gym  # the bench extra, imported only when the reference runs
    from stable_baselines3 import TD3
    from stable_baselines3.common.logger import configure

    class Workload(gym.Env):
        observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, SPEC.image.shape, np.uint8),
            "vector": gym.spaces.Box(-np.inf, np.inf, SPEC.vector.shape, np.float32)})
        action_space = gym.spaces.Box(-1.0, 1.0, SPEC.action.shape, np.float32)

    fill = len(batches) * args.batch_size
    model = TD3("MultiInputPolicy", Workload(), buffer_size=fill, batch_size=args.batch_size,
                learning_starts=0, policy_delay=POLICY_DELAY, device=args.device if args.device != "auto" else "auto",
                policy_kwargs=dict(share_features_extractor=False, net_arch=[256, 256],
                                   features_extractor_kwargs=dict(cnn_output_dim=512)),
                seed=0)
    model.set_logger(configure(None, []))
    for b in batches:
        for i in range(b.size):
            model.replay_buffer.add(
                {"image": b.obs_image[i:i + 1], "vector": b.obs_vector[i:i + 1]},
                {"image": b.next_image[i:i + 1], "vector": b.next_vector[i:i + 1]},
                b.action[i:i + 1], b.reward[i:i + 1], b.terminated[i:i + 1].astype(bool),
                [{}])
    return model


def sb3(args: argparse.Namespace, batches: list[SampleBatch]) -> Runner:
    import stable_baselines3

    model = _sb3_model(args, batches)
    model.train(gradient_steps=args.warmup + 2, batch_size=args.batch_size)
    return Runner(f"sb3 {stable_baselines3.__version__}", "buffer",
                  lambda n: model.train(gradient_steps=n, batch_size=args.batch_size),
                  torch.device(model.device), {"device": str(model.device)})


def sb3_own_process(args: argparse.Namespace) -> Runner:
    """SB3 in a child process (``--sb3-worker``) that builds the same batches and model; each
    round sends it a step count and waits for it to finish."""
    forwarded = ["--device", args.device, "--batch-size", str(args.batch_size),
                 "--warmup", str(args.warmup), "--threads", str(args.threads)]
    child = subprocess.Popen([sys.executable, "-m", "bench.learner_throughput", "--sb3-worker",
                              *forwarded], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = child.stdout.readline().split()
    if not ready or ready[0] != "ready":
        child.kill()
        raise SystemExit(f"the SB3 worker did not start: {ready!r}")

    def step(n: int) -> None:
        child.stdin.write(f"{n}\n")
        child.stdin.flush()
        if child.stdout.readline().strip() != "done":
            raise SystemExit(f"the SB3 worker failed (exit code {child.poll()})")

    runner = Runner(f"sb3 {ready[1]} own process", "buffer", step, torch.device(ready[2]),
                    {"device": ready[2], "own_process": True})
    runner.child = child
    return runner


def sb3_worker(args: argparse.Namespace) -> None:
    """The child side of ``sb3_own_process``: reads step counts, trains, answers "done"."""
    import stable_baselines3

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model = _sb3_model(args, synthetic_batches(args.batch_size, POOL))
    model.train(gradient_steps=args.warmup + 2, batch_size=args.batch_size)
    print("ready", stable_baselines3.__version__, model.device, flush=True)
    for line in sys.stdin:
        model.train(gradient_steps=int(line), batch_size=args.batch_size)
        _sync(torch.device(model.device))
        print("done", flush=True)


def run(args: argparse.Namespace) -> dict:
    """Times every runner in ``args.rounds`` interleaved rounds (fair under varying load)."""
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    batches = synthetic_batches(args.batch_size, POOL)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    replay = BenchReplay(args) if args.replay_feeds else None
    runners = [r for v in args.variant or ["auto"] for r in ours(v, args, batches, replay)]
    reference = None if args.no_sb3 else sb3(args, batches)
    own = sb3_own_process(args) if reference is not None and device.type == "cpu" else None
    try:
        for _ in range(args.rounds):
            for r in runners:
                r.time(args.updates)
            for ref in (reference, own):
                if ref is not None:
                    ref.time(args.sb3_updates)
    finally:
        if own is not None:
            own.child.stdin.close()
            own.child.wait(timeout=60)
    result: dict[str, Any] = {
        "benchmark": "learner_throughput", "device_name": device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "args": vars(args),
        "ours": [r.summary() for r in runners],
    }
    if reference is not None:
        result["sb3"] = reference.summary()
        for r in result["ours"]:
            r["speedup_vs_sb3"] = r["updates_per_s"] / result["sb3"]["updates_per_s"]
    if own is not None:
        result["sb3_own_process"] = own.summary()
        for r in result["ours"]:
            r["speedup_vs_sb3_own_process"] = (r["updates_per_s"]
                                               / result["sb3_own_process"]["updates_per_s"])
    return result


def table(result: dict) -> str:
    own = "sb3_own_process" in result
    lines = [f"device: {result['device_name']}  torch {result['torch']}  threads "
             f"{result['threads']}  batch {result['batch_size']}  (median of rounds)",
             f"{'learner':<30} {'feed':<12} {'updates/s':>10} {'s/update':>9} {'vs sb3':>7}"
             + (f" {'vs sb3 own process':>19}" if own else "")]
    refs = [result[k] for k in ("sb3", "sb3_own_process") if k in result]
    for m in result["ours"] + refs:
        ratio = f"{m['speedup_vs_sb3']:.2f}x" if "speedup_vs_sb3" in m else (
            "1.00x" if m is result.get("sb3") else "-")
        line = (f"{m['name']:<30} {m['feed']:<12} {m['updates_per_s']:>10.2f} "
                f"{m['s_per_update']:>9.4f} {ratio:>7}")
        if own:
            other = f"{m['speedup_vs_sb3_own_process']:.2f}x" if "speedup_vs_sb3_own_process" in m \
                else ("1.00x" if m is result["sb3_own_process"] else "-")
            line += f" {other:>19}"
        lines.append(line)
    return "\n".join(lines)


def check_round_sizes(args: argparse.Namespace) -> None:
    """Every timed round must hold whole policy-delay cycles. Both learners count updates
    across rounds and update the policy on every POLICY_DELAY-th one, so with 3 SB3 steps a
    round, rounds alternate between one and two policy updates, and the median picks the mode
    that holds the majority of rounds (previously 2 of 3: SB3 looked 8% slower than it is)."""
    for flag, value in (("--updates", args.updates), ("--sb3-updates", args.sb3_updates)):
        if value < POLICY_DELAY or value % POLICY_DELAY:
            raise SystemExit(f"{flag} ({value}) must be a multiple of the policy delay "
                             f"({POLICY_DELAY}), so that every round holds the same mix of "
                             f"critic and policy updates")


def build_parser() -> argparse.ArgumentParser:
    """The command line (bench/gpu_check.sh's calls are checked against it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--updates", type=int, default=8, help="timed updates per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates before timing")
    parser.add_argument("--sb3-updates", type=int, default=4, help="timed SB3 steps per round")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch.set_num_threads; 0: every core, as the learner actor runs "
                             "(learner.execution.cpu_threads=0), e.g. for a GPU learner's host side")
    parser.add_argument("--variant", action="append", default=[],
                        help="precision[:compile][:graphs][:pre_step][:blocks|:strided], "
                             "precision in auto/fp32/bf16, pre_step: td3.policy_critic=pre_step, "
                             "blocks/strided: learner.execution.first_conv; repeatable")
    parser.add_argument("--replay-feeds", action="store_true",
                        help="also feed each learner from a replay shard in this process, as "
                             "pixels and through the learner's frame cache (BenchReplay)")
    parser.add_argument("--replay-capacity", type=int, default=20_000,
                        help="slots of that shard")
    parser.add_argument("--env-steps-per-update", type=float, default=4.0,
                        help="records inserted into that shard per update")
    parser.add_argument("--no-sb3", action="store_true", help="skip the SB3 reference")
    parser.add_argument("--json", default="", help="also write the JSON here")
    parser.add_argument("--sb3-worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.sb3_worker:
        sb3_worker(args)
        return
    check_round_sizes(args)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    print(text)
    print(table(result))


if __name__ == "__main__":
    main()
