"""The Ray transport of replay calls (replay/transport.py): shard handles are Ray actor handles."""
from __future__ import annotations

from typing import Any, Sequence

import ray
from ray import exceptions as rex

from common.errors import ShardUnavailable
from common.specs import EnvSpec


class RayTransport:
    """``ray.get`` / ``ray.wait`` over Ray actor handles' references."""

    # RayActorError covers ActorDiedError and ActorUnavailableError (the actor is restarting).
    # A RayTaskError (the shard's own exception, e.g. WireError) is deliberately not listed.
    failures: tuple[type[BaseException], ...] = (
        ShardUnavailable, rex.RayActorError, rex.ActorUnschedulableError, rex.WorkerCrashedError,
        rex.NodeDiedError, rex.LocalRayletDiedError, rex.ObjectLostError)

    def result(self, ref: Any) -> Any:
        return ray.get(ref)

    def ready(self, refs: Sequence[Any]) -> list[Any]:
        if not refs:
            return []
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        return done

    def first_ready(self, refs: Sequence[Any]) -> Any:
        done, _ = ray.wait(list(refs), num_returns=1)
        return done[0]


RAY = RayTransport()


def ray_system_config(spec: EnvSpec, chunk_length: int) -> dict[str, int]:
    """Ray system settings the replay service needs, for ``ray.init(_system_config=...)``.

    Ray passes a task argument above ``max_direct_call_object_size`` (100 KiB by default)
    through the object store, which costs more per insert than passing it inline
    (bench/replay_throughput.py; figures in docs/benchmarks.md "Code choices"). This raises the limit
    above the size of one insert message, with room for chunks up to twice ``chunk_length``.
    """
    record = spec.frame.nbytes + spec.vector.nbytes + spec.action.nbytes + 4 + 1 + 1 + 1 + 8
    return {"max_direct_call_object_size": max(100 * 1024, 2 * chunk_length * record + 4096)}
