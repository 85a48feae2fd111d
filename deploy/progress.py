"""Counters of a run, the live progress line, metrics.csv rows and summary.json."""
from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass, field
from typing import Any

from rollout.worker import RolloutReport
from learner.loop import LearnerReport

RECENT_EPISODES = 50


@dataclass
class RunCounters:
    """Everything that continues across --resume (saved in each checkpoint's counters.json)."""

    env_steps: int = 0
    episodes: int = 0
    updates: int = 0
    policy_version: int = -1
    wall_seconds: float = 0.0
    actor_restarts: int = 0
    simulator_reconnects: int = 0  # connections a rollout worker rebuilt after a server failure
    endings: dict = field(default_factory=dict)  # episodes by termination reason ("" : none)
    recent_returns: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT_EPISODES))
    recent_success: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT_EPISODES))
    recent_completion: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT_EPISODES))

    def to_json(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "episodes": self.episodes, "updates": self.updates,
                "policy_version": self.policy_version, "wall_seconds": self.wall_seconds,
                "actor_restarts": self.actor_restarts,
                "simulator_reconnects": self.simulator_reconnects,
                "endings": dict(self.endings),
                "recent_returns": list(self.recent_returns),
                "recent_success": list(self.recent_success),
                "recent_completion": list(self.recent_completion)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunCounters":
        c = cls(env_steps=int(data["env_steps"]), episodes=int(data["episodes"]),
                updates=int(data["updates"]), policy_version=int(data["policy_version"]),
                wall_seconds=float(data["wall_seconds"]),
                actor_restarts=int(data.get("actor_restarts", 0)),
                simulator_reconnects=int(data.get("simulator_reconnects", 0)),
                endings={str(k): int(v) for k, v in data.get("endings", {}).items()})
        c.recent_returns.extend(data.get("recent_returns", []))
        c.recent_success.extend(data.get("recent_success", []))
        c.recent_completion.extend(data.get("recent_completion", []))
        return c

    def add_rollout(self, report: RolloutReport) -> None:
        self.env_steps += report.env_steps
        self.simulator_reconnects += report.reconnects
        for ep in report.episodes:
            self.episodes += 1
            self.endings[ep.reason] = self.endings.get(ep.reason, 0) + 1
            self.recent_returns.append(ep.ret)
            self.recent_success.append(1.0 if ep.success else 0.0)
            self.recent_completion.append(ep.route_completion)

    def add_learner(self, report: LearnerReport) -> None:
        self.updates = report.total_updates
        self.policy_version = max(self.policy_version, report.policy_version)


def _mean(values) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


class Progress:
    """Rates over the last interval, printed as one key=value line and kept as a CSV row."""

    def __init__(self, counters: RunCounters) -> None:
        self._last_t = time.monotonic()
        self._last_steps = counters.env_steps
        self._last_updates = counters.updates
        self.policy_lag = float("nan")
        self.replay_size = 0
        self.last_learner_stats: dict[str, float] = {}

    def row(self, counters: RunCounters) -> dict[str, Any]:
        now = time.monotonic()
        dt = max(now - self._last_t, 1e-9)
        row = {
            "wall_seconds": round(counters.wall_seconds, 2),
            "env_steps": counters.env_steps,
            "env_steps_per_s": round((counters.env_steps - self._last_steps) / dt, 2),
            "updates": counters.updates,
            "updates_per_s": round((counters.updates - self._last_updates) / dt, 3),
            "replay_size": self.replay_size,
            "policy_version": counters.policy_version,
            "policy_lag": round(self.policy_lag, 2) if math.isfinite(self.policy_lag) else "",
            "episodes": counters.episodes,
            "mean_return": round(_mean(counters.recent_returns), 3) if counters.recent_returns else "",
            "success_rate": round(_mean(counters.recent_success), 3) if counters.recent_success else "",
            "route_completion": round(_mean(counters.recent_completion), 3) if counters.recent_completion else "",
        }
        for key, stat in (("critic_loss", "critic_loss"), ("policy_loss", "policy_loss"),
                          ("mean_q", "q1_mean")):  # UpdateStats (learner/stats.py) names
            if stat in self.last_learner_stats:
                row[key] = round(self.last_learner_stats[stat], 5)
        self._last_t, self._last_steps, self._last_updates = now, counters.env_steps, counters.updates
        return row

    @staticmethod
    def line(row: dict[str, Any]) -> str:
        keys = ("env_steps", "env_steps_per_s", "updates", "updates_per_s", "replay_size",
                "policy_version", "policy_lag", "episodes", "mean_return", "success_rate")
        return " ".join(f"{k}={row[k]}" for k in keys if k in row)


def summary(counters: RunCounters, extra: dict[str, Any]) -> dict[str, Any]:
    out = {"env_steps": counters.env_steps, "updates": counters.updates,
           "episodes": counters.episodes, "policy_version": counters.policy_version,
           "wall_seconds": round(counters.wall_seconds, 2),
           "mean_return": _mean(counters.recent_returns) if counters.recent_returns else None,
           "success_rate": _mean(counters.recent_success) if counters.recent_success else None,
           "route_completion": _mean(counters.recent_completion) if counters.recent_completion else None,
           "actor_restarts": counters.actor_restarts,
           "simulator_reconnects": counters.simulator_reconnects,
           "episode_endings": dict(sorted(counters.endings.items()))}
    out.update(extra)
    return out
