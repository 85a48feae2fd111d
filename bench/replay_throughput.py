"""Replay throughput through Ray with msgpack: inserts and samples per shard, bytes per transition.

Workload: 84x84 frames, stacks of 4, 23-dim vectors, chunks of --chunk-length records from
synthetic episodes, batches of --batch-size with both image stacks rebuilt. The same workload
runs against the frame-deduplicating ReplayShard and a naive shard that stores obs and next_obs
for every transition (bench/naive_replay.py). Samples are timed as pixels (PackedBatch) and for
a learner's frame cache (CachedBatch), alone and while producers insert. Prints one JSON
object, then a table.

    .venv/bin/python -m bench.replay_throughput --seconds 4
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from typing import Any

import numpy as np
import ray

from bench.naive_replay import NaiveShard, chunk_to_transitions, encode_transitions
from common.codec import decode_batch, encode_chunk
from common.config import ReplayConfig
from common.specs import EnvSpec
from common.types import SampleBatch
from learner.device import packed_frames
from deploy.replay_ray import RAY, ray_system_config
from replay.client import ReplayClient
from replay.shard_writer import ShardWriter
from replay.shard import ReplayShard
from replay.synthetic import SyntheticStream

SPEC = EnvSpec()
STORES = ("dedup", "naive")


class Producer:
    """A rollout-actor stand-in: encodes chunks of a synthetic stream and inserts them."""

    def __init__(self, store: str, shard: Any, chunk_length: int, seed: int, pool: int) -> None:
        stream = SyntheticStream(SPEC, 10_000 + seed, chunk_length, max_episode=200, seed=seed)
        self.chunks = [stream.next_chunk() for _ in range(pool)]
        self.store, self.shard = store, shard
        if store == "naive":
            self.messages = [encode_transitions(chunk_to_transitions(c, SPEC)) for c in self.chunks]
        self.seq = 0

    def run(self, seconds: float) -> tuple[int, int, float]:
        """Inserts for ``seconds``; returns (transitions stored, wire bytes, elapsed)."""
        sent_bytes, stored, t0 = 0, 0, time.perf_counter()
        writer = ShardWriter(self.shard, SPEC, window=4, transport=RAY)
        pending: collections.deque = collections.deque()
        while time.perf_counter() - t0 < seconds:
            i = self.seq % len(self.chunks)
            if self.store == "dedup":
                data = encode_chunk(self.chunks[i]._replace(seq=self.seq), SPEC)
                writer.send(data)
            else:
                data = self.messages[i]
                pending.append(self.shard.insert.remote(data))
                if len(pending) > 4:
                    stored += ray.get(pending.popleft())
            sent_bytes += len(data)
            self.seq += 1
        writer.flush()
        stored += sum(ray.get(list(pending))) + writer.stored
        return stored, sent_bytes, time.perf_counter() - t0


def _make_shard(store: str, capacity: int, index: int = 0) -> Any:
    if store == "dedup":
        cfg = ReplayConfig(capacity=capacity, min_size_to_sample=1)
        return ray.remote(ReplayShard).options(num_cpus=0).remote(SPEC, cfg, index, 0)
    return ray.remote(NaiveShard).options(num_cpus=0).remote(SPEC, capacity, index)


def measure_insert(store: str, shard: Any, producers: int, args: argparse.Namespace) -> dict:
    remote = ray.remote(Producer).options(num_cpus=0)
    actors = [remote.remote(store, shard, args.chunk_length, 100 * producers + k, args.pool)
              for k in range(producers)]
    results = ray.get([a.run.remote(args.seconds) for a in actors])
    stored = sum(r[0] for r in results)
    elapsed = max(r[2] for r in results)
    return {"transitions_per_s": stored / elapsed, "mb_per_s": sum(r[1] for r in results) / elapsed / 1e6}


def _batch_bytes(batch: Any) -> int:
    """Bytes the batch's arrays hold, its two image stacks counted once when they are views
    of one [B, F + 1, H, W] block (a PackedBatch unpacked); for a CachedBatch: rows and new
    frames, not pixels."""
    total = sum(v.nbytes for v in batch if isinstance(v, np.ndarray))
    if isinstance(batch, SampleBatch) and (block := packed_frames(batch)) is not None:
        total += block.nbytes - batch.obs_image.nbytes - batch.next_image.nbytes
    return total


def measure_sample(shards: list, mode: str, args: argparse.Namespace,
                   producers: list | None = None) -> dict:
    """Samples for --seconds with --prefetch requests in flight, while ``producers`` (if any)
    insert into the shards.

    Modes: "ray" goes through ReplayClient (PackedBatch, Ray's serialisation); "ray_cache"
    through ReplayClient for a learner's frame cache (CachedBatch: rows, and only the frames
    the cache lacks; the learner-side store and gather run on its GPU, so they are not timed
    here); "msgpack" returns common.codec.encode_batch bytes; "naive" is the naive shard's
    SampleBatch.
    """
    cache = ray.get(shards[0].stats.remote())["capacity"] if mode == "ray_cache" else 0
    client = ReplayClient(shards, SPEC, args.batch_size, prefetch=args.prefetch,
                          cache_capacity=cache, transport=RAY)
    client.sizes()
    inserting = [p.run.remote(args.seconds) for p in producers or []]
    inflight: collections.deque = collections.deque()
    count, batches, nbytes, t0 = 0, 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        if mode in ("ray", "ray_cache"):
            batch = client.sample()
            if batch is None:
                continue
        else:
            while len(inflight) < args.prefetch:
                shard = shards[len(inflight) % len(shards)]
                call = shard.sample_bytes if mode == "msgpack" else shard.sample
                inflight.append(call.remote(args.batch_size))
            reply = ray.get(inflight.popleft())
            batch = decode_batch(reply, SPEC) if mode == "msgpack" else reply
        count += batch.size
        batches += 1
        nbytes += _batch_bytes(batch)
    elapsed = time.perf_counter() - t0
    out = {"transitions_per_s": count / elapsed, "mb_per_s": nbytes / elapsed / 1e6,
           "bytes_per_batch": nbytes / max(batches, 1)}
    if inserting:
        stored = sum(r[0] for r in ray.get(inserting))
        out["inserted_transitions_per_s"] = stored / elapsed
    if mode == "ray_cache":
        out["new_frames_per_batch"] = client.cache_frames_received / max(batches, 1)
    return out


def bytes_per_transition(store: str, shard: Any) -> float:
    """Ring bytes per slot times slots per transition (an episode of T uses T + 1 slots)."""
    if store == "dedup":
        st = ray.get(shard.stats.remote())
        return st["bytes"] / st["capacity"] * st["slots_written"] / max(1, st["inserts"])
    return ray.get(shard.nbytes.remote()) / ray.get(shard.capacity_slots.remote())


def shard_busy(shard: Any) -> dict:
    """Transitions per second of the shard's own busy time (decode+store, sample+gather)."""
    st = ray.get(shard.stats.remote())
    return {"insert_tr_per_busy_s": st["inserts"] / max(st["insert_busy_seconds"], 1e-9),
            "sample_tr_per_busy_s": st["samples"] / max(st["sample_busy_seconds"], 1e-9)}


def run(args: argparse.Namespace) -> dict:
    out: dict[str, Any] = {"spec": {"frames": SPEC.frames, "image_size": SPEC.image_size,
                                    "vector_dim": SPEC.vector_dim},
                           "chunk_length": args.chunk_length, "batch_size": args.batch_size,
                           "capacity": args.capacity, "seconds": args.seconds, "rows": []}
    for store in STORES:
        for producers in (1, 2):
            shard = _make_shard(store, args.capacity)
            row = {"store": store, "producers": producers,
                   "insert": measure_insert(store, shard, producers, args),
                   "bytes_per_transition": bytes_per_transition(store, shard)}
            if store == "dedup":
                row["sample"] = {m: measure_sample([shard], m, args)
                                 for m in ("ray", "ray_cache", "msgpack")}
                row["shard_busy"] = shard_busy(shard)
            else:
                row["sample"] = {"ray": measure_sample([shard], "naive", args)}
            out["rows"].append(row)
            ray.kill(shard)
    shards = [_make_shard("dedup", args.capacity // 2, i) for i in range(args.shards)]
    for i, shard in enumerate(shards):
        measure_insert("dedup", shard, 1, argparse.Namespace(**{**vars(args), "seconds": 2.0}))
    out["sample_all_shards"] = {"shards": args.shards, **measure_sample(shards, "ray", args)}
    # The learner's view in a run: sampling while every shard takes inserts, so the cache
    # keeps receiving the new frames (one producer per shard, as many as on a 2-core box).
    remote = ray.remote(Producer).options(num_cpus=0)
    producers = [remote.remote("dedup", shard, args.chunk_length, 500 + i, args.pool)
                 for i, shard in enumerate(shards)]
    out["sample_all_shards_while_inserting"] = {
        "shards": args.shards,
        **{m: measure_sample(shards, m, args, producers) for m in ("ray", "ray_cache")}}
    return out


def table(result: dict) -> str:
    lines = [f"{'store':6} {'prod':>4} {'insert tr/s':>12} {'ins MB/s':>9} {'sample tr/s':>12} "
             f"{'smp MB/s':>9} {'msgpack tr/s':>13} {'B/transition':>13}"]
    for r in result["rows"]:
        mp = r["sample"].get("msgpack", {}).get("transitions_per_s", float("nan"))
        lines.append(f"{r['store']:6} {r['producers']:>4} {r['insert']['transitions_per_s']:>12,.0f} "
                     f"{r['insert']['mb_per_s']:>9.1f} {r['sample']['ray']['transitions_per_s']:>12,.0f} "
                     f"{r['sample']['ray']['mb_per_s']:>9.1f} {mp:>13,.0f} {r['bytes_per_transition']:>13,.0f}")
    for r in result["rows"]:
        if "shard_busy" in r:
            b = r["shard_busy"]
            lines.append(f"dedup {r['producers']} producer(s), shard busy time only: insert "
                         f"{b['insert_tr_per_busy_s']:,.0f} tr/s, sample {b['sample_tr_per_busy_s']:,.0f} tr/s")
    for r in result["rows"]:
        if "ray_cache" in r["sample"]:
            c = r["sample"]["ray_cache"]
            lines.append(f"dedup {r['producers']} producer(s), frame-cache samples: "
                         f"{c['transitions_per_s']:,.0f} tr/s, {c['bytes_per_batch'] / 1e3:,.1f} KB "
                         f"and {c['new_frames_per_batch']:.1f} new frames per batch (no inserts "
                         f"meanwhile)")
    s = result["sample_all_shards"]
    lines.append(f"sampling from {s['shards']} shards together: {s['transitions_per_s']:,.0f} tr/s")
    w = result["sample_all_shards_while_inserting"]
    for m in ("ray", "ray_cache"):
        lines.append(f"{w['shards']} shards while inserting, {m:9}: "
                     f"{w[m]['transitions_per_s']:>8,.0f} tr/s, {w[m]['bytes_per_batch'] / 1e3:>7,.1f} "
                     f"KB/batch, inserts {w[m]['inserted_transitions_per_s']:,.0f} tr/s"
                     + (f", {w[m]['new_frames_per_batch']:.1f} new frames/batch"
                        if m == "ray_cache" else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each measurement")
    parser.add_argument("--chunk-length", type=int, default=32, help="records per insert message")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--capacity", type=int, default=50_000, help="slots per shard")
    parser.add_argument("--prefetch", type=int, default=4, help="sample requests in flight")
    parser.add_argument("--pool", type=int, default=64, help="distinct chunks per producer")
    parser.add_argument("--shards", type=int, default=2, help="shards for the all-shards sample run")
    parser.add_argument("--json", default="", help="also write the JSON here")
    args = parser.parse_args(argv)
    ray.init(include_dashboard=False, log_to_driver=False,
             _system_config=ray_system_config(SPEC, args.chunk_length))
    try:
        result = run(args)
    finally:
        ray.shutdown()
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    print(text)
    print(table(result), file=sys.stdout)


if __name__ == "__main__":
    main()
