"""Whether a Ray actor is dead for good, as opposed to restarting.

A call on an actor that crashed fails whether Ray is restarting it or not. The driver asks the
GCS's actor table (``ray._private.state.actors``: Ray's own debugging accessor, which needs no
dashboard) for the actor's state: ``DEAD`` means no restart will come (its constructor raised,
or its ``max_restarts`` are spent), and the run must stop instead of calling it again.
"""
from __future__ import annotations

import logging
from typing import Any

import ray

log = logging.getLogger(__name__)


def actor_state(handle: Any) -> str:
    """"ALIVE", "RESTARTING", "PENDING_CREATION", "DEAD", ... or "UNKNOWN" if the table can't be
    read."""
    try:
        from ray._private import state
        info = state.actors(actor_id=handle._actor_id.hex())
        return str(info.get("State", "UNKNOWN"))
    except Exception as exc:  # an accessor that moved in a later Ray: assume it may recover
        log.warning("event=actor_state_unknown error=%r", exc)
        return "UNKNOWN"


def dead_for_good(handle: Any, exc: BaseException) -> bool:
    """Whether the actor behind ``handle``, whose call raised ``exc``, will never answer again."""
    if isinstance(exc, ray.exceptions.RayActorError) and exc.actor_init_failed:
        return True  # Ray does not restart an actor whose constructor raised
    return actor_state(handle) == "DEAD"


def death_cause(exc: BaseException) -> str:
    """The first lines of what killed the actor, for an error message."""
    text = str(getattr(exc, "cause", None) or exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-3:])[:600] if lines else type(exc).__name__
