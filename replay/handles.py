"""Calling shards through handles: Ray actor handles or in-process ``LocalShard``.

Both follow Ray's convention, ``handle.method.remote(*args)`` returns a reference whose value
``result`` fetches (re-raising the call's exception). ``SHARD_FAILURES`` are the exceptions that
mean the shard itself did not answer (its process died, is restarting or became unreachable),
as opposed to an error the shard raised on purpose (an invalid message), which propagates.
"""
from __future__ import annotations

from typing import Any, Callable

import ray
from ray import exceptions as rex

from common.errors import ShardUnavailable

# RayActorError covers ActorDiedError and ActorUnavailableError (the actor is restarting).
# A RayTaskError (the shard's own exception, e.g. WireError) is deliberately not listed.
SHARD_FAILURES: tuple[type[BaseException], ...] = (
    ShardUnavailable, rex.RayActorError, rex.ActorUnschedulableError, rex.WorkerCrashedError,
    rex.NodeDiedError, rex.LocalRayletDiedError, rex.ObjectLostError)


class LocalRef:
    """A completed call on a LocalShard: its value or its exception."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._value, self._error = fn(*args), None
        except Exception as exc:  # re-raised by result(), as ray.get would
            self._value, self._error = None, exc

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class _LocalMethod:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> LocalRef:
        return LocalRef(self._fn, args)


class LocalShard:
    """Gives an in-process ReplayShard the ``handle.method.remote(...)`` convention."""

    def __init__(self, shard: Any) -> None:
        self.shard = shard

    def __getattr__(self, name: str) -> _LocalMethod:
        return _LocalMethod(getattr(self.shard, name))


def result(ref: Any) -> Any:
    """The value of a call (blocking for a Ray reference); re-raises the call's exception."""
    return ref.result() if isinstance(ref, LocalRef) else ray.get(ref)


def ready(refs: list[Any]) -> list[Any]:
    """The references among ``refs`` whose calls have completed (never blocks)."""
    local = [r for r in refs if isinstance(r, LocalRef)]
    remote = [r for r in refs if not isinstance(r, LocalRef)]
    if remote:
        done, _ = ray.wait(remote, num_returns=len(remote), timeout=0)
        local += done
    return local


def first_ready(refs: list[Any]) -> Any:
    """Blocks until one call of ``refs`` (non-empty, all of one kind) completes and returns its
    reference, so a dead shard's request never holds up a live shard's answer."""
    if isinstance(refs[0], LocalRef):
        return refs[0]
    done, _ = ray.wait(refs, num_returns=1)
    return done[0]
