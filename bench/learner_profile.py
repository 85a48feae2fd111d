"""Where a learner update's time goes: kernels (or CPU ops) per update, by total time.

    python -m bench.learner_profile --device cuda --precision fp32 --updates 20
    python -m bench.learner_profile --device cpu --threads 2 --updates 4

Runs ``--warmup`` updates, then profiles ``--updates`` more (eagerly: a profile of the same
kernels replayed from a CUDA graph shows the same device times) and prints the device time
per update (the sum of kernel times, which bounds updates/s from above once launches are
hidden), the kernel count per update and the top ops by total device time. ``--json`` writes
the same figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench.learner_throughput import SPEC, device_name, synthetic_batches
from common.config import (FirstConv, LearnerConfig, LearnerExecution, NetworkConfig,
                           Precision, TD3Config)
from learner.td3 import TD3Learner


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_updates(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    run = LearnerExecution(device=args.device, precision=Precision(args.precision),
                           compile=args.compile, first_conv=FirstConv(args.first_conv))
    cfg = LearnerConfig(execution=run, td3=TD3Config(batch_size=args.batch_size),
                        network=NetworkConfig(encoder_features=512, hidden_sizes=(256, 256)))
    learner = TD3Learner(SPEC, cfg, seed=0)
    batches = [learner.to_device(b) for b in synthetic_batches(args.batch_size, 2)]
    _sync(learner.device)
    for i in range(args.warmup):
        learner.update_on_device(batches[i % 2])
    _sync(learner.device)
    cuda = learner.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for i in range(args.updates):
            learner.update_on_device(batches[i % 2])
        _sync(learner.device)
    wall = (time.perf_counter() - t0) / args.updates
    events = prof.key_averages()
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        timed = sorted(kernels, key=lambda e: -e.self_device_time_total)
        total_us = sum(e.self_device_time_total for e in kernels)
        count = sum(e.count for e in kernels)
        per_op = [(e.key, e.count / args.updates, e.self_device_time_total / args.updates)
                  for e in timed[: args.top]]
    else:
        ops = [e for e in events if e.key.startswith("aten::")]
        timed = sorted(ops, key=lambda e: -e.self_cpu_time_total)
        total_us = sum(e.self_cpu_time_total for e in ops)
        count = sum(e.count for e in ops)
        per_op = [(e.key, e.count / args.updates, e.self_cpu_time_total / args.updates)
                  for e in timed[: args.top]]
    return {"device": device_name(learner.device), "precision": args.precision,
            "first_conv_blocks": learner.kernels.first_conv_blocks,
            "batch_size": args.batch_size, "updates": args.updates,
            "wall_ms_per_update_profiled": wall * 1e3,
            "busy_ms_per_update": total_us / args.updates / 1e3,
            "ops_per_update": count / args.updates,
            "top": [{"op": k, "calls_per_update": c, "us_per_update": us} for k, c, us in per_op]}


def build_parser() -> argparse.ArgumentParser:
    """The command line (bench/gpu_check.sh's calls are checked against it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=[p.value for p in Precision])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward passes")
    parser.add_argument("--first-conv", default="auto", choices=[f.value for f in FirstConv],
                        help="learner.execution.first_conv")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", default="")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    result = profile_updates(args)
    print(f"device: {result['device']}  precision {args.precision}  compile {args.compile}  "
          f"batch {args.batch_size}")
    print(f"busy {result['busy_ms_per_update']:.3f} ms per update in "
          f"{result['ops_per_update']:.0f} kernels/ops; profiled wall "
          f"{result['wall_ms_per_update_profiled']:.3f} ms")
    for row in result["top"]:
        print(f"{row['us_per_update']:9.1f} us  {row['calls_per_update']:6.1f}x  {row['op'][:110]}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
