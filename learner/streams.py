"""Side CUDA streams for the independent parts of an update.

At batch 256 most kernels of an update (the later convolutions, the linear layers, the
heads) leave much of a large GPU idle, and four of the update's encoder passes do not depend
on each other: the online critic's, the target critic's and the target policy's forward
passes, and the policy encoder's forward pass of a policy step. Running them on their own
streams lets the GPU overlap them. A CUDA graph captures the streams' fork and join points as graph edges, so
the replayed graph keeps the overlap.

On a CPU every side stream's work runs inline, in the order the calls are made.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

import torch

T = TypeVar("T")


def _tensors(values: Iterable[Any]) -> Iterable[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from _tensors(value)


class SideStreams:
    """Named side streams of one device (none on a CPU).

    ``run(name, fn, *args)`` queues ``fn(*args)`` on side stream ``name`` after everything
    queued so far on the main (current) stream; ``join(name)`` makes the main stream wait for
    what that stream has queued; ``after(name, other)`` makes stream ``name`` wait for stream
    ``other``.
    Tensors crossing between streams are recorded with the caching allocator, so their memory
    is not reused while the other stream may still read it. A side stream with nothing queued
    since the main stream last joined it is not waited on again: inside a CUDA graph capture,
    waiting on a stream the capture has not forked invalidates the capture.

    Args:
        device: the learner's device.
        names: the side streams.
    """

    def __init__(self, device: torch.device, names: Iterable[str]) -> None:
        self._device = device
        self._streams = ({n: torch.cuda.Stream(device) for n in names}
                         if device.type == "cuda" else {})
        self._pending: set[str] = set()  # streams with work queued since their last join

    def _main(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self._device)

    def run(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, queued on side stream ``name`` (inline on a CPU)."""
        stream = self._streams.get(name)
        if stream is None:
            return fn(*args)
        main = self._main()
        stream.wait_stream(main)
        self._pending.add(name)
        with torch.cuda.stream(stream):
            out = fn(*args)
        for t in _tensors(args):
            t.record_stream(stream)
        for t in _tensors(out if isinstance(out, (tuple, list)) else (out,)):
            t.record_stream(main)
        return out

    def after(self, name: str, other: str) -> None:
        """Side stream ``name`` waits for what side stream ``other`` has queued so far."""
        if self._streams and other in self._pending:
            self._streams[name].wait_stream(self._streams[other])
            self._pending.add(name)

    def join(self, *names: str) -> None:
        """The main stream waits for what the side streams ``names`` have queued so far."""
        if self._streams:
            main = self._main()
            for name in names:
                # Called from inside that stream's own run, there is nothing to join yet.
                if name in self._pending and self._streams[name] != main:
                    main.wait_stream(self._streams[name])
                    self._pending.discard(name)
