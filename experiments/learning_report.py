"""Results of the learning benchmark: the point record, the JSON file, aggregation, the table.

A point is one evaluation of one arm and seed: the deterministic policy (or the random or
scripted controller) on the same held-out routes with the same episode seeds as every other
arm, under one evaluation condition (CONDITIONS: the run's own env, the second town, frames
blanked). Trained arms have one point per env-step milestone and condition; the baseline arms,
which do not train, have one point per condition at milestone 0.
"""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

from common.errors import ConfigError

TRAINED_ARMS = ("separate", "shared", "vector")
BASELINE_ARMS = ("random", "scripted", "privileged")
ARMS = TRAINED_ARMS + BASELINE_ARMS
METRICS = ("success_rate", "strict_success_rate", "route_completion", "mean_return",
           "mean_episode_length", "validation_success_rate", "collisions_per_km", "driving_score")
# Evaluation conditions: name -> env.* overrides over the arm's own held-out env.
HELD_OUT = "heldout"
CONDITIONS: dict[str, dict[str, str]] = {
    HELD_OUT: {}, "town02": {"env.town": "Town02"}, "blank": {"env.camera_input": "blank"}}


@dataclass(frozen=True)
class LearningPoint:
    """One evaluation of one arm and seed.

    Attributes:
        arm: separate, shared, random or scripted.
        seed: the arm's seed (the training run's master seed, or the random policy's seed).
        milestone: the env-step target this point was evaluated at (0 for the baselines).
        env_steps: env steps the run had taken when its checkpoint was written.
        updates: learner updates at that checkpoint.
        wall_seconds: training wall time up to the checkpoint (Ray start and evaluations
            excluded).
        success_rate: fraction of evaluation episodes that completed the route without a
            collision or a lane invasion (as CARLA's lane-invasion sensor reports one).
        strict_success_rate: fraction that succeeded with the vehicle's centre inside its lane
            of the route at every step, junctions included (where the sensor reports nothing).
        route_completion: mean fraction of the route driven.
        mean_return: mean undiscounted episode return.
        mean_episode_length: mean env steps per evaluation episode.
        collisions_per_km: collisions per km driven over the evaluation episodes.
        episodes: evaluation episodes behind the point.
        device: the learner's device and the precision it ran in ("cpu fp32", "gpu bf16"; "cpu"
            or "gpu" in results from before it was recorded; "-" for the baselines).
        validation_success_rate: success rate of the same checkpoint on validation episodes:
            training-split routes with their own episode seeds, never the held-out ones. What
            ``select_by_validation`` chooses a checkpoint by; NaN where none were run.
        validation_route_completion: route completion on those episodes (the tie-break).
        driving_score: mean CARLA Leaderboard driving score (deploy/evaluate.py); NaN in
            results from before it was recorded.
        condition: the evaluation condition (CONDITIONS): "heldout" (the arm's own env on
            held-out routes), "town02" (the same on the second town), "blank" (the same with
            the policy's frames blanked).
    """

    arm: str
    seed: int
    milestone: int
    env_steps: int
    updates: int
    wall_seconds: float
    success_rate: float
    strict_success_rate: float
    route_completion: float
    mean_return: float
    mean_episode_length: float
    collisions_per_km: float
    episodes: int
    device: str
    validation_success_rate: float = float("nan")
    validation_route_completion: float = float("nan")
    driving_score: float = float("nan")
    condition: str = HELD_OUT

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise ConfigError(f"arm ({self.arm!r}) must be one of {list(ARMS)}")
        if self.condition not in CONDITIONS:
            raise ConfigError(f"condition ({self.condition!r}) must be one of {list(CONDITIONS)}")

    @property
    def key(self) -> tuple[str, int, int, str]:
        return (self.arm, self.seed, self.milestone, self.condition)


def point_from_eval(arm: str, seed: int, milestone: int, counters: dict[str, Any],
                    evaluation: dict[str, Any], device: str,
                    validation: dict[str, Any] | None = None,
                    condition: str = HELD_OUT) -> LearningPoint:
    """A point from a run's counters (env_steps, updates, wall_seconds), an evaluation dict
    as ``deploy.evaluate.run_episodes`` returns it, and optionally one on validation episodes."""
    nan = float("nan")
    validation = validation or {"success_rate": nan, "route_completion": nan}
    return LearningPoint(
        arm=arm, seed=int(seed), milestone=int(milestone),
        env_steps=int(counters.get("env_steps", 0)), updates=int(counters.get("updates", 0)),
        wall_seconds=float(counters.get("wall_seconds", 0.0)),
        success_rate=float(evaluation["success_rate"]),
        strict_success_rate=float(evaluation["strict_success_rate"]),
        route_completion=float(evaluation["route_completion"]),
        mean_return=float(evaluation["mean_return"]),
        mean_episode_length=float(evaluation["mean_episode_length"]),
        collisions_per_km=float(evaluation["collisions_per_km"]),
        episodes=int(evaluation["episodes"]), device=device,
        validation_success_rate=float(validation["success_rate"]),
        validation_route_completion=float(validation["route_completion"]),
        driving_score=float(evaluation.get("driving_score", nan)), condition=condition)


# -- the results file ---------------------------------------------------------------------


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def save_results(path: Path, points: Sequence[LearningPoint], meta: dict[str, Any]) -> None:
    """Writes ``{"meta": ..., "points": [...]}`` sorted by arm, seed, milestone (NaN -> null)."""
    rows = [{k: _finite_or_none(v) for k, v in asdict(p).items()}
            for p in sorted(points, key=lambda p: (ARMS.index(p.arm), p.seed, p.milestone,
                                                 list(CONDITIONS).index(p.condition)))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "points": rows}, indent=1, sort_keys=True) + "\n")


def load_results(path: Path) -> tuple[list[LearningPoint], dict[str, Any]]:
    """Reads a results file; a missing file is no points and empty meta. A point written
    before an optional field existed (one with a default) reads it at the default.

    Raises:
        ConfigError: if a point has unknown fields or misses a required one.
    """
    if not path.exists():
        return [], {}
    data = json.loads(path.read_text())
    names = {f.name for f in fields(LearningPoint)}
    required = {f.name for f in fields(LearningPoint) if f.default is MISSING}
    points = []
    for row in data.get("points", []):
        if not required <= set(row) <= names:
            raise ConfigError(f"{path}: point fields {sorted(row)} must include {sorted(required)} "
                              f"and be among {sorted(names)}")
        row = {k: (float("nan") if v is None else v) for k, v in row.items()}
        points.append(LearningPoint(**row))
    return points, dict(data.get("meta", {}))


def merge_points(old: Iterable[LearningPoint], new: Iterable[LearningPoint]) -> list[LearningPoint]:
    """``old`` with every (arm, seed, milestone, condition) that ``new`` has replaced by the
    new point."""
    merged = {p.key: p for p in old}
    merged.update({p.key: p for p in new})
    return list(merged.values())


# -- aggregation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregate:
    """Mean and population std over seeds of one arm at one milestone.

    Attributes:
        arm: the arm.
        milestone: the env-step milestone.
        seeds: seeds behind the figures.
        env_steps: mean env steps at the checkpoints.
        wall_seconds: mean training wall time.
        mean: metric name -> mean over seeds.
        std: metric name -> std over seeds (0 for one seed).
        low: metric name -> minimum over seeds.
        high: metric name -> maximum over seeds.
        condition: the evaluation condition (CONDITIONS).
    """

    arm: str
    milestone: int
    seeds: int
    env_steps: float
    wall_seconds: float
    mean: dict[str, float]
    std: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    condition: str = HELD_OUT


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _std(values: Sequence[float]) -> float:
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def aggregate(points: Iterable[LearningPoint]) -> list[Aggregate]:
    """One Aggregate per (arm, milestone, condition), ordered by arm, milestone, condition."""
    groups: dict[tuple[str, int, str], list[LearningPoint]] = {}
    for p in points:
        groups.setdefault((p.arm, p.milestone, p.condition), []).append(p)
    out = []
    order = list(CONDITIONS)
    for (arm, milestone, condition), group in sorted(
            groups.items(), key=lambda kv: (ARMS.index(kv[0][0]), kv[0][1], order.index(kv[0][2]))):
        values = {m: [float(getattr(p, m)) for p in group] for m in METRICS}
        out.append(Aggregate(
            arm=arm, milestone=milestone, seeds=len(group),
            env_steps=_mean([p.env_steps for p in group]),
            wall_seconds=_mean([p.wall_seconds for p in group]),
            mean={m: _mean(v) for m, v in values.items()},
            std={m: _std(v) for m, v in values.items()},
            low={m: min(v) for m, v in values.items()},
            high={m: max(v) for m, v in values.items()}, condition=condition))
    return out


def first_reaching(aggregates: Iterable[Aggregate], arm: str, metric: str,
                   threshold: float) -> Aggregate | None:
    """The earliest milestone at which ``arm``'s mean ``metric`` is >= ``threshold``.

    Compared with a 1e-9 tolerance: rates are counts over episodes, and a mean of exactly the
    threshold (48 successes in 60 episodes over three seeds: 0.95, 0.8, 0.65) comes out of
    floating point as 0.7999999999999999."""
    hits = [a for a in aggregates if a.arm == arm and a.mean[metric] >= threshold - 1e-9]
    return min(hits, key=lambda a: a.milestone) if hits else None


def select_by_validation(points: Iterable[LearningPoint], arm: str,
                         condition: str = HELD_OUT) -> list[LearningPoint]:
    """Per seed of ``arm``, the point (of ``condition``) whose checkpoint did best on the
    validation episodes, ordered by seed; seeds without a validated point are left out.

    Best: the highest validation success, then the highest validation route completion, then
    the earliest milestone (as Stable-Baselines3's ``EvalCallback`` keeps a new best model only
    when it is strictly better). The choice reads nothing measured on the held-out routes, so
    the chosen points' held-out figures stay an unbiased estimate of the chosen policies."""
    best: dict[int, LearningPoint] = {}
    for p in sorted(points, key=lambda p: p.milestone):
        if p.arm != arm or p.condition != condition or not math.isfinite(p.validation_success_rate):
            continue
        rank = (p.validation_success_rate, p.validation_route_completion)
        held = best.get(p.seed)
        if held is None or rank > (held.validation_success_rate, held.validation_route_completion):
            best[p.seed] = p
    return [best[seed] for seed in sorted(best)]


def final(aggregates: Iterable[Aggregate], arm: str) -> Aggregate | None:
    """``arm``'s aggregate at its last milestone."""
    own = [a for a in aggregates if a.arm == arm]
    return max(own, key=lambda a: a.milestone) if own else None


# -- the table ----------------------------------------------------------------------------

TABLE_HEADER = ("arm", "env steps", "seeds", "success rate", "strict success", "route completion",
                "return", "episode length", "train wall s", "validation success")


def _pm(a: Aggregate, metric: str, digits: int) -> str:
    if not math.isfinite(a.mean[metric]):
        return "-"
    return f"{a.mean[metric]:.{digits}f} ± {a.std[metric]:.{digits}f}"


def table_rows(aggregates: Iterable[Aggregate]) -> list[tuple[str, ...]]:
    """Rows of the results table, one per (arm, milestone); baselines show "-" for steps."""
    rows = []
    for a in aggregates:
        trained = a.arm in TRAINED_ARMS
        rows.append((a.arm, f"{a.milestone:,}" if trained else "-", str(a.seeds),
                     _pm(a, "success_rate", 2), _pm(a, "strict_success_rate", 2),
                     _pm(a, "route_completion", 2),
                     _pm(a, "mean_return", 1), _pm(a, "mean_episode_length", 0),
                     f"{a.wall_seconds:,.0f}" if trained else "-",
                     _pm(a, "validation_success_rate", 2)))
    return rows


def markdown_table(aggregates: Iterable[Aggregate]) -> str:
    """The results table in GitHub markdown."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(aggregates)]
    return "\n".join(lines)


SELECTION_HEADER = ("arm", "seed", "kept at env steps", "validation success", "success rate",
                    "strict success", "route completion")


def selection_markdown(selected: dict[str, Sequence[LearningPoint]]) -> str:
    """The checkpoints ``select_by_validation`` keeps, one row per arm and seed, then each
    arm's mean over its seeds, in GitHub markdown; empty if none."""
    lines = []
    for arm, chosen in selected.items():
        for p in chosen:
            lines.append((arm, str(p.seed), f"{p.env_steps:,}", f"{p.validation_success_rate:.2f}",
                          f"{p.success_rate:.2f}", f"{p.strict_success_rate:.2f}",
                          f"{p.route_completion:.2f}"))
        if len(chosen) > 1:
            mean = {m: _mean([float(getattr(p, m)) for p in chosen])
                    for m in ("env_steps", "validation_success_rate", "success_rate",
                              "strict_success_rate", "route_completion")}
            lines.append((f"**{arm}, mean**", f"{len(chosen)} seeds", f"{mean['env_steps']:,.0f}",
                          f"{mean['validation_success_rate']:.2f}", f"**{mean['success_rate']:.2f}**",
                          f"{mean['strict_success_rate']:.2f}", f"{mean['route_completion']:.2f}"))
    if not lines:
        return ""
    rows = ["| " + " | ".join(SELECTION_HEADER) + " |", "|" + "---|" * len(SELECTION_HEADER)]
    return "\n".join(rows + ["| " + " | ".join(r) + " |" for r in lines])


def text_table(aggregates: Iterable[Aggregate]) -> str:
    """The results table in aligned plain text, for the terminal."""
    rows = [TABLE_HEADER, *table_rows(aggregates)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
