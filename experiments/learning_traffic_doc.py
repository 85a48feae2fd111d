"""Plots and docs/learning/traffic.md for the traffic benchmark (issue 31), from the results alone.

The traffic run of experiments/learning.py (``--preset traffic``) evaluates every arm under
conditions (learning_report.CONDITIONS): held-out routes with the preset's NPCs on the town it
trained on, the same on the second town, and, for the camera arms, with the policy's frames
blanked. This module writes one table and one set of plots per condition, and the status
against the issue's goals; the only hand-written text is the optional notes file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from experiments.learning_doc import GOAL_SUCCESS, LABELS, plot_metric
from experiments.learning_report import (ARMS, CONDITIONS, HELD_OUT, TRAINED_ARMS, Aggregate,
                                         LearningPoint, final, first_reaching, selection_markdown)

PLOTTED = (("success_rate", "success rate"), ("route_completion", "route completion"),
           ("collisions_per_km", "collisions per km"), ("driving_score", "driving score"))
CONDITION_TITLES = {HELD_OUT: "Held-out routes with traffic, the training town",
                    "town02": "Held-out routes with traffic, Town02 (never trained on)",
                    "blank": "Held-out routes with traffic, the policy's frames blanked"}
TABLE_HEADER = ("arm", "env steps", "seeds", "success rate", "collisions / km",
                "route completion", "driving score", "train wall s", "validation success")
CAMERA_ARMS = ("separate", "shared")


def of_condition(aggregates: Sequence[Aggregate], condition: str) -> list[Aggregate]:
    """The aggregates measured under ``condition``."""
    return [a for a in aggregates if a.condition == condition]


def _pm(a: Aggregate, metric: str, digits: int) -> str:
    if not math.isfinite(a.mean[metric]):
        return "-"
    return f"{a.mean[metric]:.{digits}f} ± {a.std[metric]:.{digits}f}"


def traffic_table(aggregates: Sequence[Aggregate]) -> str:
    """One condition's results in GitHub markdown, a row per (arm, milestone)."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for a in aggregates:
        trained = a.arm in TRAINED_ARMS
        row = (a.arm, f"{a.env_steps:,.0f}" if trained else "-", str(a.seeds),
               _pm(a, "success_rate", 2), _pm(a, "collisions_per_km", 2),
               _pm(a, "route_completion", 2), _pm(a, "driving_score", 2),
               f"{a.wall_seconds:,.0f}" if trained else "-", _pm(a, "validation_success_rate", 2))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_traffic_plots(aggregates: Sequence[Aggregate], out_dir: Path) -> list[Path]:
    """Per condition measured, one PNG per plotted metric, ``<condition>_<metric>.png``."""
    paths = []
    for condition in CONDITIONS:
        own = of_condition(aggregates, condition)
        if own:
            paths += [plot_metric(own, metric, label, out_dir / f"{condition}_{metric}.png")
                      for metric, label in PLOTTED]
    return paths


def _headline_lines(held: Sequence[Aggregate], meta: dict[str, Any]) -> list[str]:
    hit = first_reaching(held, "separate", "success_rate", GOAL_SUCCESS)
    sep = final(held, "separate")
    if hit is not None:
        return [f"- **Met**: separate encoders complete {hit.mean['success_rate']:.0%} of held-out "
                f"routes with traffic (mean of {hit.seeds} seed(s)) at {hit.env_steps:,.0f} env "
                f"steps, {hit.wall_seconds:,.0f} s of training on {meta.get('device', '?')}."]
    if sep is not None:
        return [f"- **Not met yet**: 80% held-out success with traffic. Separate encoders end at "
                f"{sep.mean['success_rate']:.0%} after {sep.env_steps:,.0f} env steps "
                f"({sep.wall_seconds:,.0f} s of training on {meta.get('device', '?')})."]
    return ["- **Not measured yet**: the separate-encoder (headline) arm."]


def _camera_lines(aggregates: Sequence[Aggregate]) -> list[str]:
    held, lines = of_condition(aggregates, HELD_OUT), []
    vector = final(held, "vector")
    for arm in CAMERA_ARMS:
        cam = final(held, arm)
        if cam is None:
            continue
        if vector is not None:
            verdict = "clearly short of" if vector.high["success_rate"] < cam.low["success_rate"] else "not clearly short of"
            lines.append(f"- Vector only ({vector.mean['success_rate']:.0%} success, every seed "
                         f"<= {vector.high['success_rate']:.2f}) is {verdict} {arm} encoders "
                         f"({cam.mean['success_rate']:.0%}, every seed >= {cam.low['success_rate']:.2f}).")
        blank = [a for a in of_condition(aggregates, "blank") if a.arm == arm and a.milestone == cam.milestone]
        if blank:
            ratio = blank[0].mean["success_rate"] / cam.mean["success_rate"] if cam.mean["success_rate"] else math.nan
            verdict = "at most half" if ratio <= 0.5 + 1e-9 else "more than half"
            lines.append(f"- The {arm}-encoder policies with their frames blanked: "
                         f"{blank[0].mean['success_rate']:.0%} success against "
                         f"{cam.mean['success_rate']:.0%} with the camera ({verdict}).")
    return lines


def _transfer_lines(aggregates: Sequence[Aggregate]) -> list[str]:
    held, town02 = of_condition(aggregates, HELD_OUT), of_condition(aggregates, "town02")
    lines = []
    for arm in ARMS:
        home, away = final(held, arm), final(town02, arm)
        if home is None or away is None:
            continue
        lines.append(f"- {LABELS[arm]} on Town02: {away.mean['success_rate']:.0%} success, "
                     f"{away.mean['driving_score']:.2f} driving score (training town: "
                     f"{home.mean['success_rate']:.0%}, {home.mean['driving_score']:.2f}).")
    return lines


def status_lines(aggregates: Sequence[Aggregate], meta: dict[str, Any]) -> list[str]:
    """What the results say about each goal of issue 31, as markdown bullet lines."""
    lines = _headline_lines(of_condition(aggregates, HELD_OUT), meta)
    lines += _camera_lines(aggregates) + _transfer_lines(aggregates)
    seeds = {arm: max((a.seeds for a in aggregates if a.arm == arm), default=0) for arm in ARMS}
    short = [f"{arm} ({n})" for arm, n in seeds.items() if n < 3]
    lines.append("- Seeds per arm: " + ", ".join(f"{arm} {n}" for arm, n in seeds.items())
                 + (f". **Fewer than 3 seeds**: {', '.join(short)}." if short else " (3 or more each: met)."))
    return lines


def _condition_sections(aggregates: Sequence[Aggregate], plots: Sequence[Path], rel: Any) -> list[str]:
    parts = []
    for condition, overrides in CONDITIONS.items():
        own = of_condition(aggregates, condition)
        if not own:
            continue
        shown = [p for p in plots if p.stem.startswith(f"{condition}_")]
        parts += [f"### {CONDITION_TITLES[condition]}", "",
                  f"Overrides over each arm's own env: `{overrides or 'none'}`.", "",
                  traffic_table(own), "", *[f"![{p.stem}]({rel(p)})" for p in shown], ""]
    return parts


def render_traffic_markdown(aggregates: Sequence[Aggregate], meta: dict[str, Any],
                            plots: Sequence[Path], doc_path: Path, notes: str = "",
                            video: Path | None = None,
                            kept: dict[str, Sequence[LearningPoint]] | None = None) -> str:
    """docs/learning/traffic.md as text; ``plots`` and ``video`` linked relative to
    ``doc_path``; ``kept``: per trained arm, the checkpoints chosen by validation."""
    def rel(p: Path) -> str:
        return str(Path(p).resolve().relative_to(doc_path.parent.resolve()))

    env = meta.get("config", {}).get("env", {})
    parts = [
        "# Traffic benchmark: does the camera decide? (issue 31)", "",
        "Generated by `experiments/learning.py --preset traffic` from `"
        + str(meta.get("results", "results.json")) + "`: every figure in the status, the tables "
        "and the plots was measured by that script.", "",
        "## Status against issue 31", "", *status_lines(aggregates, meta), "",
        "## Results", "",
        f"Evaluation: the deterministic policy (or the controller), {meta.get('episodes', '?')} "
        f"episodes per seed on held-out routes (`env.route_split=eval`) with "
        f"{env.get('num_npcs', '?')} NPCs near the route, episode seeds "
        f"{meta.get('eval_seed', '?')} onwards, the same for every arm and milestone. Mean ± std "
        "over seeds. Success: the route completed with no collision and no lane invasion within "
        "the time limit. Driving score: the CARLA Leaderboard's, route completion times 0.60 per "
        "collision with a vehicle and 0.65 per collision with anything else. The vector arm is "
        "trained and evaluated with `env.camera_input=blank`. Env steps and train wall s: when "
        "the milestone's checkpoint was written.", "",
        *_condition_sections(aggregates, plots, rel),
    ]
    if kept and any(kept.values()):
        parts += ["## Checkpoint kept by validation", "",
                  f"Each seed keeps the checkpoint with the highest success on "
                  f"{meta.get('validation_episodes', '?')} validation episodes (training-split "
                  f"routes, episode seeds {meta.get('validation_seed', '?')} onwards); the table "
                  "gives its held-out figures on the training town.", "",
                  selection_markdown(kept), ""]
    if video is not None:
        parts += ["## Video", "", f"[{rel(video)}]({rel(video)}): {meta.get('video_caption', '')}", ""]
    if notes.strip():
        parts += ["## Notes", "", notes.strip(), ""]
    parts += ["## How it was run", "",
              f"Machine: {meta.get('machine', '?')}; learner device: {meta.get('device', '?')}.", "",
              "Commands (each invocation adds its points to the results file):", "",
              "```sh", *meta.get("commands", []), "```", "",
              "Full benchmark:", "", "```sh", meta.get("full_command", ""), "```", "",
              f"Preset `{meta.get('preset', '?')}` with overrides `{meta.get('overrides', {})}`; "
              "the effective configuration of the separate arm (shared differs in "
              "`learner.network.topology`, vector in `env.camera_input`):", "",
              "```json", json.dumps(meta.get("config", {}), indent=1, sort_keys=True), "```", ""]
    return "\n".join(parts)
