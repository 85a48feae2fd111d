"""How weights reach a rollout worker: a ``WeightSource`` offers what is newer, the worker
applies it to its policy, and releases the offer after the inference.

An offer is one of three kinds. SHARED arrays are run on in place (no copy): they stay valid
and unchanged until ``release()``, and a source hands the same mapping object for the same
slot every time, so the policy may keep a network built on each slot. A COPY is loaded into
the policy's own weights. A WITHDRAW says the shared arrays the policy runs on can no longer
be trusted (a damaged or truncated file): the policy goes back to its own weights, the last
copy it loaded, without reading the shared arrays again.

Implementations: ``LatestSnapshot`` here (a learner in the same process publishes into it),
and deploy/'s shared-memory files and Ray object store, composed there.
"""
from __future__ import annotations

import enum
import threading
import time
from typing import Mapping, NamedTuple, Protocol

import numpy as np

from common.weights import PolicySnapshot


class OfferKind(enum.Enum):
    SHARED = "shared"  # run on the arrays in place; valid until release()
    COPY = "copy"  # copy the arrays into the policy's own weights
    WITHDRAW = "withdraw"  # stop running on shared arrays: back to the policy's own weights


class WeightOffer(NamedTuple):
    """What a WeightSource hands the worker for one inference.

    Attributes:
        kind: how the policy takes the arrays (see OfferKind).
        version: the learner's update count the arrays hold (WITHDRAW: -1, unused).
        state: parameter name -> array (WITHDRAW: empty).
        slot: for SHARED, which of the source's places the arrays live in; the same slot
            holds the same array objects (in the same mapping) while the source lasts.
        published_at: ``time.time()`` when the learner published this version.
        fetched_at: ``time.time()`` when the source had the arrays (the publish time for
            shared memory, which holds them from that moment).
    """

    kind: OfferKind
    version: int
    state: Mapping[str, np.ndarray]
    slot: int = -1
    published_at: float = 0.0
    fetched_at: float = 0.0

    @classmethod
    def shared(cls, snapshot: PolicySnapshot, slot: int, published_at: float) -> WeightOffer:
        """Arrays to run on in place, valid until the source's ``release()``."""
        return cls(OfferKind.SHARED, snapshot.version, snapshot.state, slot, published_at,
                   published_at)

    @classmethod
    def copy(cls, snapshot: PolicySnapshot, published_at: float,
             fetched_at: float) -> WeightOffer:
        """Arrays to copy into the policy's own weights (read until ``release()``)."""
        return cls(OfferKind.COPY, snapshot.version, snapshot.state, -1, published_at, fetched_at)

    @classmethod
    def withdraw(cls) -> WeightOffer:
        """The shared arrays given before can no longer be trusted."""
        return cls(OfferKind.WITHDRAW, -1, {})


class WeightSource(Protocol):
    """Gives a rollout worker newer weights between inferences, never waiting for them."""

    def newer(self, version: int, poll: bool) -> WeightOffer | None:
        """An offer newer than ``version`` (the policy's), or a WITHDRAW (whatever ``poll``
        says), or None. ``poll`` False: only what costs no more than a few memory reads
        (a shared slot, a withdrawal). Its arrays stay valid until ``release``."""

    def release(self) -> None:
        """The inference after ``newer`` is over (called even when it failed)."""


class BroadcastLog:
    """Versions a worker took, with their broadcast latencies, until ``take`` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: list[int] = []
        self._latencies: list[float] = []
        self._fetch_latencies: list[float] = []
        self._published: list[float] = []

    def record(self, offer: WeightOffer) -> None:
        """Notes that the worker takes ``offer`` for its next inference, which starts now."""
        with self._lock:
            self._versions.append(offer.version)
            self._latencies.append(max(0.0, time.time() - offer.published_at))
            self._fetch_latencies.append(max(0.0, offer.fetched_at - offer.published_at))
            self._published.append(offer.published_at)

    def take(self) -> tuple[list[int], list[float], list[float], list[float]]:
        """Versions taken since the last call, with their broadcast latencies (seconds from
        publish until the first inference on each), the part of it until the source had the
        arrays, and each version's publish time."""
        with self._lock:
            out = (self._versions, self._latencies, self._fetch_latencies, self._published)
            self._versions, self._latencies, self._fetch_latencies = [], [], []
            self._published = []
        return out


class LatestSnapshot:
    """The in-process WeightSource: a learner in the same process publishes into it, and the
    worker takes the newest snapshot at its next poll.

    A snapshot published ``shared`` is run on in place: its publisher keeps the arrays
    unchanged until it publishes again or calls ``withdraw`` (which a policy running on them
    sees at its next inference, polled or not).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offer: WeightOffer | None = None
        self._lent = False  # the worker's policy runs on shared arrays from here
        self._withdrawn = False  # ... which it must give up at its next inference
        self.broadcasts = BroadcastLog()

    def publish(self, snapshot: PolicySnapshot, shared: bool = False,
                published_at: float | None = None) -> None:
        """Makes ``snapshot`` the newest (``shared``: to run on in place)."""
        at = time.time() if published_at is None else published_at
        offer = (WeightOffer.shared(snapshot, 0, at) if shared
                 else WeightOffer.copy(snapshot, at, at))
        with self._lock:
            self._offer = offer

    def withdraw(self) -> None:
        """The arrays of the last shared publish may change from now on: a policy running on
        them goes back to its own weights, and they are no longer offered."""
        with self._lock:
            if self._offer is not None and self._offer.kind is OfferKind.SHARED:
                self._offer = None
            self._withdrawn = self._lent

    def newer(self, version: int, poll: bool) -> WeightOffer | None:
        """The WeightSource protocol: the newest snapshot if newer than ``version`` and
        ``poll``; a WITHDRAW first, at any step, after ``withdraw``."""
        with self._lock:
            if self._withdrawn:
                self._withdrawn = self._lent = False
                return WeightOffer.withdraw()
            offer = self._offer
            if offer is None or not poll or offer.version <= version:
                return None
            self._lent = offer.kind is OfferKind.SHARED
        self.broadcasts.record(offer)
        return offer

    def release(self) -> None:
        """Nothing to let go of: a shared snapshot stays valid until ``withdraw``."""

    def take_broadcasts(self) -> tuple[list[int], list[float], list[float], list[float]]:
        """``BroadcastLog.take`` of the versions the worker took."""
        return self.broadcasts.take()
