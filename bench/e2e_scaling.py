"""End-to-end env steps/s against the number of rollout workers, and weight-broadcast latency.

Each point builds the real fleet (deploy.driver.build_fleet: replay shards, weight board,
learner, rollout workers on local Ray) with the fake CARLA charging a realistic server cost per
tick (default 50 ms, a CARLA server at 20 FPS), lets every actor reset and load the policy,
then times all actors running ``--steps`` env steps each while the learner keeps updating and
publishing (publish_every=1) in the background. Scaling efficiency at N is
steps/s(N) / (N x steps/s(1)).

Broadcast latency: for each published version, the time from publish until EVERY rollout worker
runs it (the max over actors of publish -> its first inference on it), p50 and p99; and the
same over the actors that were in the middle of an episode (no episode reset between the
publish and that inference: a reset ticks the simulator and spawns actors, and runs no policy).

``--transports shm,board`` measures every actor count with each weight transport in turn: the
shared-memory weight file (``learner.execution.publish_shm``, the default) and the weight board's
object-store path alone.

    python -m bench.e2e_scaling [--actors 1,2,4,8,16] [--steps 500] [--tick-latency 0.05]
                                [--transports shm]
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import threading
import time
from dataclasses import replace

import numpy as np
import ray

from common import config as C
from common.specs import EnvSpec
from deploy import build
from deploy.driver import build_fleet
from deploy.rundir import RunDir
from deploy.replay_ray import ray_system_config


TRANSPORTS = ("shm", "board")


def bench_config(actors: int, tick_latency_s: float, updates_per_env_step: float,
                 batch_size: int = 256, transport: str = "shm") -> C.RunConfig:
    """Standard 84x84 workload, fake CARLA with a per-tick server cost, learner rate-limited."""
    base = C.RunConfig()
    return replace(
        base, spec=EnvSpec(),
        env=replace(base.env, fake=replace(base.env.fake, tick_latency_s=tick_latency_s),
                    max_steps=400),
        # One learner thread: on 2 cores, two OpenMP threads spin at barriers whenever an actor
        # holds the other core, and the learner would take the actors' CPU.
        learner=replace(base.learner, publish_every=1,
                        td3=replace(base.learner.td3, batch_size=batch_size),
                        execution=replace(base.learner.execution, device="cpu", prefetch=2,
                                          cpu_threads=1, publish_shm=transport == "shm")),
        replay=replace(base.replay, num_shards=min(2, actors), capacity=20_000,
                       min_size_to_sample=256),
        rollout=replace(base.rollout, num_workers=actors, learning_starts=0, weight_poll_every=1),
        train=replace(base.train, env_steps=10**9, updates_per_env_step=updates_per_env_step))


_ROLES = {"ray::RolloutActor": "actors", "ray::LearnerActor": "learner",
          "ray::RestoringShard": "replay shards", "ray::WeightBoard": "weight board"}


def _cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by this machine's processes, grouped by fleet role (the rest of
    Ray's processes under "ray", everything else under "other")."""
    import psutil

    out: dict[str, float] = {}
    for proc in psutil.process_iter(["cmdline", "name"]):
        try:
            times = proc.cpu_times()
            cmd = " ".join(proc.info["cmdline"] or []) or proc.info["name"] or ""
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        role = next((r for k, r in _ROLES.items() if cmd.startswith(k)), None)
        if role is None:
            role = "ray" if ("ray" in cmd or "raylet" in cmd or "gcs_server" in cmd) else "other"
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def _keep_learner_busy(learner, stop: threading.Event, updates: list[int]) -> None:
    while not stop.is_set():
        report = ray.get(learner.run_updates.remote(2, 1.0))
        updates.append(report.updates)


def _ms(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q) * 1e3) if values else None


def measure(actors: int, steps: int, tick_latency_s: float, ratio: float, batch_size: int,
            transport: str = "shm") -> dict:
    cfg = bench_config(actors, tick_latency_s, ratio, batch_size, transport)
    build.validate(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = RunDir.create(tmp, "bench")
        fleet = build_fleet(cfg, run_dir)
        stop, updates = threading.Event(), []
        thread = threading.Thread(target=_keep_learner_busy, args=(fleet.learner, stop, updates),
                                  daemon=True)
        try:
            # The learner samples from the start: behind the rate limiter, a warm-up longer
            # than its error buffer would otherwise wait for samples forever.
            thread.start()
            # Connect, reset, and fill every shard to its minimum size so the learner can run.
            per_shard = -(-actors // len(fleet.shards))
            warm = max(steps // 4, -(-cfg.replay.min_size_to_sample // per_shard) + 10)
            ray.get([a.run_steps.remote(warm, 10**9) for a in fleet.actors])
            time.sleep(1.0)
            first_timed_version = ray.get(fleet.board.version.remote()) + 1
            precision = ray.get(fleet.learner.precision.remote())
            updates.clear()  # count the timed window's updates only
            cpu0, t0 = _cpu_by_role(), time.perf_counter()
            reports = ray.get([a.run_steps.remote(steps, 10**9) for a in fleet.actors])
            wall = time.perf_counter() - t0
            cpu1 = _cpu_by_role()
        finally:
            stop.set()
            thread.join()
            fleet.destroy()
    per_version: dict[int, list[tuple[float, float, bool]]] = {}
    for report in reports:
        for version, latency, fetch, published in zip(
                report.broadcast_versions, report.broadcast_latencies,
                report.broadcast_fetch_latencies, report.broadcast_published_at):
            reset = any(start < published + latency and end > published
                        for start, end in report.reset_spans)
            per_version.setdefault(version, []).append((latency, fetch, reset))
    # A version counts once every actor ran it; its latency is the slowest actor's.
    timed = [lats for v, lats in per_version.items()
             if len(lats) == actors and v >= first_timed_version]
    complete = [max(lat for lat, _, _ in lats) for lats in timed]
    fetched = [max(fetch for _, fetch, _ in lats) for lats in timed]
    mid_episode = [max(lat for lat, _, reset in lats if not reset) for lats in timed
                   if not all(reset for _, _, reset in lats)]
    met_reset = sum(any(reset for _, _, reset in lats) for lats in timed)
    # Cores each role kept busy during the timed window (2.0 = both cores of the CI machine).
    cores = {role: round((cpu1.get(role, 0.0) - cpu0.get(role, 0.0)) / wall, 3)
             for role in cpu1 if cpu1.get(role, 0.0) - cpu0.get(role, 0.0) > 0.0}
    actor_ms = 1e3 * cores.get("actors", 0.0) * wall / (actors * steps)
    return {"actors": actors, "weights_transport": transport, "env_steps": actors * steps,
            "wall_seconds": wall,
            "cores_busy": cores, "actor_cpu_ms_per_step": actor_ms, "learner_precision": precision,
            "env_steps_per_s": actors * steps / wall, "learner_updates": int(sum(updates)),
            "versions_seen_by_all": len(complete),
            "broadcast_p50_ms": float(np.percentile(complete, 50) * 1e3) if complete else None,
            "broadcast_p99_ms": float(np.percentile(complete, 99) * 1e3) if complete else None,
            # the same, over the actors with no episode reset between publish and first use
            "versions_met_by_a_reset": int(met_reset),
            "mid_episode_p50_ms": _ms(mid_episode, 50), "mid_episode_p99_ms": _ms(mid_episode, 99),
            # publish -> the slowest actor's poll thread has the snapshot (the rest of the
            # latency is that actor's env loop finishing its current step)
            "fetch_p50_ms": float(np.percentile(fetched, 50) * 1e3) if fetched else None,
            "fetch_p99_ms": float(np.percentile(fetched, 99) * 1e3) if fetched else None}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--actors", default="1,2,4,8,16")
    # 500 steps: at 16 actors about 35 s and 30 to 40 published versions, enough for a p99.
    p.add_argument("--steps", type=int, default=500, help="timed env steps per actor")
    p.add_argument("--tick-latency", type=float, default=0.05, help="fake server cost per tick, s")
    p.add_argument("--updates-per-env-step", type=float, default=0.004,
                   help="learner updates per env step held by the rate limiter")
    p.add_argument("--batch-size", type=int, default=256, help="learner batch size")
    p.add_argument("--transports", default="shm",
                   help="weight transports measured at each actor count, in turn: shm, board")
    p.add_argument("--json", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    transports = args.transports.split(",")
    unknown = sorted(set(transports) - set(TRANSPORTS))
    if unknown:
        p.error(f"--transports: unknown {unknown}; choose from {list(TRANSPORTS)}")
    logging.basicConfig(level=logging.WARNING)
    counts = [int(x) for x in args.actors.split(",")]
    spec = EnvSpec()
    ray.init(num_cpus=max(counts) + 4, include_dashboard=False, logging_level="WARNING",
             _system_config=ray_system_config(spec, C.ReplayConfig().chunk_length))
    try:
        rows = [measure(n, args.steps, args.tick_latency, args.updates_per_env_step, args.batch_size,
                        transport) for n in counts for transport in transports]
    finally:
        ray.shutdown()
    for transport in transports:  # each transport's efficiency against its own first count
        own = [r for r in rows if r["weights_transport"] == transport]
        base = own[0]["env_steps_per_s"] / own[0]["actors"]
        for row in own:
            row["scaling_efficiency"] = row["env_steps_per_s"] / (row["actors"] * base)
    out = {"benchmark": "e2e_scaling", "tick_latency_s": args.tick_latency,
           "steps_per_actor": args.steps, "updates_per_env_step": args.updates_per_env_step,
           "batch_size": args.batch_size,
           "rows": rows}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(f"{'actors':>6} {'weights':>7} {'steps/s':>9} {'efficiency':>10} {'bcast p50 ms':>12}"
          f" {'bcast p99 ms':>12} {'mid-ep p50':>12} {'mid-ep p99':>12}"
          f" {'fetch p50 ms':>12} {'fetch p99 ms':>12}")
    for r in rows:
        fmt = lambda v: f"{v:12.1f}" if v is not None else f"{'-':>12}"
        print(f"{r['actors']:>6} {r['weights_transport']:>7} {r['env_steps_per_s']:9.1f} "
              f"{r['scaling_efficiency']:10.1%} "
              f"{fmt(r['broadcast_p50_ms'])} {fmt(r['broadcast_p99_ms'])} "
              f"{fmt(r['mid_episode_p50_ms'])} {fmt(r['mid_episode_p99_ms'])} "
              f"{fmt(r['fetch_p50_ms'])} {fmt(r['fetch_p99_ms'])}")


if __name__ == "__main__":
    main()
