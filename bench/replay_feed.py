"""A replay feed for ``bench.learner_throughput --replay-feeds``: a filling shard in the
benchmark's process that feeds a learner pixels or through its frame cache."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Callable

from common.config import ReplayConfig
from common.specs import EnvSpec
from replay.shard import ReplayShard
from replay.synthetic import SyntheticStream

if TYPE_CHECKING:
    from learner.td3 import TD3Learner

SPEC = EnvSpec()


class BenchReplay:
    """A replay shard in this process, filled, and kept taking inserts at
    ``--env-steps-per-update`` (the cluster preset's 0.25 updates per env step is 4) while
    learners sample from it, so that a frame cache keeps receiving new frames as in a run.

    Its runners feed a learner as ``LearnerLoop`` does, update N+1 launched before N's stats
    are read: "replay" samples pixels (``sample_packed``: the shard's 9 MB gather, the pinned
    copy and the transfer), "replay_cache" samples for the learner's frame cache
    (``sample_cached``). The shard's own work (inserts, gathers) runs on this thread here,
    where in a run it runs in the shard's process; both feeds pay the same inserts.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        cfg = ReplayConfig(capacity=args.replay_capacity, min_size_to_sample=args.batch_size)
        self.shard = ReplayShard(SPEC, cfg)
        stream = SyntheticStream(SPEC, 1, chunk_length=32, max_episode=200, seed=0)
        self.chunks = [stream.next_chunk() for _ in range(64)]
        self.seq = 0
        self.batch_size = args.batch_size
        self.updates_per_chunk = 32 / args.env_steps_per_update
        self._due = 0.0
        while self.shard.ring.counter < args.replay_capacity:
            self._insert()
        self._caches = 0

    def _insert(self) -> None:
        chunk = self.chunks[self.seq % len(self.chunks)]
        self.shard.insert_chunk(chunk._replace(seq=self.seq))
        self.seq += 1

    def tick(self) -> None:
        """Called once per update: inserts a chunk whenever its share of updates has passed."""
        self._due += 1.0
        if self._due >= self.updates_per_chunk:
            self._due -= self.updates_per_chunk
            self._insert()

    def feeds(self, learner: TD3Learner, info: dict,
              warmup: int) -> list[tuple[str, Callable[[int], None], dict]]:
        """(feed name, step(n), info) of the two feeds of ``learner``, each warmed up."""
        self._caches += 1
        cache_id, new_frames = self._caches, [0, 0]  # frames received, batches

        def cached() -> Any:
            batch = self.shard.sample_cached(self.batch_size, cache_id)
            new_frames[0] += batch.new_rows.size
            new_frames[1] += 1
            return batch

        def feed(sample: Callable[[], Any]) -> Callable[[int], None]:
            def run(n: int) -> None:
                pending = None
                for _ in range(n):
                    self.tick()
                    launched = learner.launch(sample())
                    if pending is not None:
                        pending.result()
                    pending = launched
                pending.result()
            return run

        packed = feed(lambda: self.shard.sample_packed(self.batch_size).unpack())
        from_cache = feed(cached)
        packed(warmup)
        from_cache(max(warmup, 2))  # the first batches fill the cache
        new_frames[:] = [0, 0]
        cache_info = {**info, "env_steps_per_update": 32 / self.updates_per_chunk,
                      "replay_capacity": self.shard.ring.capacity, "new_frames": new_frames}
        return [("replay", packed, info), ("replay_cache", from_cache, cache_info)]
