"""How replay code calls a shard: the ``Transport`` seam, and its in-process implementation.

A shard handle follows Ray's calling convention: ``handle.method.remote(*args)`` returns a
reference to the call. What a reference is, how to wait for one and which exceptions mean "the
shard itself did not answer" belong to the transport that made the handle. Replay code (the
learner's ``ReplayClient``, a rollout worker's ``ShardWriter``, ``ShardHealth``) receives a
``Transport`` with its handles and never imports the transport's library:

- ``LOCAL`` (here): ``LocalShard`` wraps an in-process ReplayShard; a call runs at once and its
  reference holds the value or the exception. Tests and benchmarks use it.
- ``deploy.replay_ray.RAY``: Ray actor handles, ``ray.get``/``ray.wait``, and Ray's exceptions
  for a dead, restarting or unreachable actor.

``failures`` are the exceptions that mean the shard did not answer (its process died, is
restarting or became unreachable), as opposed to an error the shard raised on purpose (an
invalid message), which propagates.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from common.errors import ShardUnavailable


class Transport(Protocol):
    """Waits for shard calls made through one kind of handle."""

    failures: tuple[type[BaseException], ...]

    def result(self, ref: Any) -> Any:
        """The call's value, blocking until it is there; re-raises the call's exception."""

    def ready(self, refs: Sequence[Any]) -> list[Any]:
        """The references among ``refs`` whose calls have completed (never blocks)."""

    def first_ready(self, refs: Sequence[Any]) -> Any:
        """Blocks until one call of ``refs`` (non-empty) completes and returns its reference,
        so a dead shard's call never holds up a live shard's answer."""


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


class LocalTransport:
    """The transport of ``LocalShard`` handles: every call has completed when it returns."""

    failures: tuple[type[BaseException], ...] = (ShardUnavailable,)

    def result(self, ref: LocalRef) -> Any:
        return ref.result()

    def ready(self, refs: Sequence[LocalRef]) -> list[LocalRef]:
        return list(refs)

    def first_ready(self, refs: Sequence[LocalRef]) -> LocalRef:
        return refs[0]


LOCAL = LocalTransport()


def shard_for(worker_index: int, num_shards: int) -> int:
    """The shard rollout worker ``worker_index`` writes to: always the same one, so its
    episodes stay whole in one shard. The one routing rule of the system."""
    if num_shards < 1:
        raise ValueError(f"num_shards ({num_shards}) must be >= 1")
    return worker_index % num_shards
