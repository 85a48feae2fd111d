"""Plots and docs/learning.md for the learning benchmark, written from the results alone.

Every figure in the document comes from the results file; the only hand-written text is the
optional notes file, included verbatim under "Notes".
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from experiments.learning_report import (BASELINE_ARMS, TRAINED_ARMS, Aggregate,  # noqa: E402
                                   LearningPoint, final, first_reaching, markdown_table,
                                   selection_markdown)

GOAL_SUCCESS = 0.8
EMPTY_ROADS_ARMS = ("separate", "shared", "random", "scripted")
PLOTTED = (("success_rate", "success rate"), ("strict_success_rate", "strict success rate"),
           ("route_completion", "route completion"),
           ("mean_return", "mean return"), ("mean_episode_length", "episode length (steps)"))
COLOURS = {"separate": "tab:blue", "shared": "tab:red", "vector": "tab:orange",
           "random": "tab:gray", "scripted": "tab:green", "privileged": "tab:purple"}
LABELS = {"separate": "TD3, separate encoders", "shared": "TD3, shared encoder",
          "vector": "TD3, frames blanked (vector only)", "random": "random policy",
          "scripted": "scripted (pure pursuit)",
          "privileged": "privileged scripted (reads the NPCs)"}


def plot_metric(aggregates: Sequence[Aggregate], metric: str, ylabel: str, path: Path) -> Path:
    """One PNG: ``metric`` against env steps, a line per trained arm with its min-max band over
    seeds, and a dashed level per baseline arm. Returns ``path``."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    trained_x = [a.env_steps for a in aggregates if a.arm in TRAINED_ARMS]
    x_max = max(trained_x, default=1.0)
    for arm in TRAINED_ARMS:
        own = sorted((a for a in aggregates if a.arm == arm), key=lambda a: a.milestone)
        if not own:
            continue
        x = [a.env_steps for a in own]
        seeds = max(a.seeds for a in own)
        ax.plot(x, [a.mean[metric] for a in own], "o-", color=COLOURS[arm],
                label=f"{LABELS[arm]} ({seeds} seed{'s' * (seeds != 1)})")
        ax.fill_between(x, [a.low[metric] for a in own], [a.high[metric] for a in own],
                        color=COLOURS[arm], alpha=0.2, linewidth=0)
    for arm in BASELINE_ARMS:
        a = final(aggregates, arm)
        if a is None:
            continue
        ax.axhline(a.mean[metric], color=COLOURS[arm], linestyle="--", label=LABELS[arm])
        if a.high[metric] > a.low[metric]:
            ax.axhspan(a.low[metric], a.high[metric], color=COLOURS[arm], alpha=0.1)
    if metric in ("success_rate", "strict_success_rate"):
        ax.axhline(GOAL_SUCCESS, color="black", linestyle=":", linewidth=1,
                   label=f"goal ({GOAL_SUCCESS:.0%})")
    ax.set_xlim(0, x_max * 1.02)
    ax.set_xlabel("env steps")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(aggregates: Sequence[Aggregate], out_dir: Path) -> list[Path]:
    """One PNG per plotted metric in ``out_dir``; returns their paths."""
    return [plot_metric(aggregates, metric, label, out_dir / f"{metric}.png")
            for metric, label in PLOTTED]


def selection_line(chosen: Sequence[LearningPoint], meta: dict[str, Any]) -> str:
    """The goal line for the separate arm's checkpoints kept by validation."""
    mean = sum(p.success_rate for p in chosen) / len(chosen)
    verdict = "**Met**" if mean >= GOAL_SUCCESS - 1e-9 else "**Not met**"
    return (f"- {verdict} with the checkpoint each seed keeps by validation (the best of its "
            f"milestones on {meta.get('validation_episodes', '?')} validation episodes on "
            f"training routes; the held-out routes play no part in the choice): separate-encoder "
            f"TD3 completes {mean:.0%} of held-out routes (mean of {len(chosen)} seed(s): "
            + ", ".join(f"{p.success_rate:.2f} at {p.env_steps:,}" for p in chosen)
            + f" env steps, after {min(p.wall_seconds for p in chosen):,.0f} to "
            f"{max(p.wall_seconds for p in chosen):,.0f} s of training on "
            f"{meta.get('device', '?')}).")


def goal_lines(aggregates: Sequence[Aggregate], meta: dict[str, Any],
               kept: Sequence[LearningPoint] = ()) -> list[str]:
    """What the results say about each part of the issue, as markdown bullet lines;
    ``kept``: the separate arm's checkpoints chosen by validation, one per seed."""
    lines = [selection_line(kept, meta)] if kept else []
    hit = first_reaching(aggregates, "separate", "success_rate", GOAL_SUCCESS)
    sep = final(aggregates, "separate")
    if hit is not None:
        lines.append(f"- **Met**: separate-encoder TD3 completes {hit.mean['success_rate']:.0%} of "
                     f"held-out routes (mean of {hit.seeds} seed(s)) at {hit.env_steps:,.0f} env "
                     f"steps, {hit.wall_seconds:,.0f} s of training on {meta.get('device', '?')}; "
                     f"strict success (the centre also kept its lane inside junctions) "
                     f"{hit.mean['strict_success_rate']:.0%} there.")
        if sep is not None and sep.milestone != hit.milestone:
            lines.append(f"- At its last milestone, {sep.env_steps:,.0f} env steps, separate-encoder "
                         f"TD3 completes {sep.mean['success_rate']:.0%} ({sep.mean['strict_success_rate']:.0%} "
                         f"strict), seeds {sep.low['success_rate']:.2f} to {sep.high['success_rate']:.2f}.")
    elif sep is not None:
        lines.append(f"- **Not met yet**: the 80% goal. Separate-encoder TD3 ends at "
                     f"{sep.mean['success_rate']:.0%} success ({sep.mean['strict_success_rate']:.0%} "
                     f"strict) and {sep.mean['route_completion']:.0%} "
                     f"route completion after {sep.env_steps:,.0f} env steps "
                     f"({sep.wall_seconds:,.0f} s of training on {meta.get('device', '?')}).")
    rnd, shared = final(aggregates, "random"), final(aggregates, "shared")
    if sep is not None and rnd is not None:
        verdict = "above" if sep.mean["route_completion"] > rnd.high["route_completion"] else "not above"
        lines.append(f"- Learning vs random: separate-encoder route completion "
                     f"{sep.mean['route_completion']:.2f} against {rnd.mean['route_completion']:.2f} "
                     f"for the random policy ({verdict} every random seed); success "
                     f"{sep.mean['success_rate']:.2f} against {rnd.mean['success_rate']:.2f}.")
    if shared is not None:
        lines.append(f"- Shared-encoder ablation ends at {shared.mean['success_rate']:.0%} success and "
                     f"{shared.mean['route_completion']:.0%} route completion after "
                     f"{shared.env_steps:,.0f} env steps ({shared.seeds} seed(s)).")
    # the empty-roads benchmark's four arms always (a missing one shows 0), others when measured
    listed = [arm for arm in TRAINED_ARMS + BASELINE_ARMS
              if arm in EMPTY_ROADS_ARMS or any(a.arm == arm for a in aggregates)]
    seeds = {arm: max((a.seeds for a in aggregates if a.arm == arm), default=0) for arm in listed}
    short = [f"{arm} ({n})" for arm, n in seeds.items() if n < 3]
    lines.append("- Seeds per arm: " + ", ".join(f"{arm} {n}" for arm, n in seeds.items())
                 + (f". **Fewer than 3 seeds**: {', '.join(short)}." if short else " (3 or more each: met)."))
    return lines


def render_markdown(aggregates: Sequence[Aggregate], meta: dict[str, Any], plots: Sequence[Path],
                    doc_path: Path, notes: str = "", video: Path | None = None,
                    kept: dict[str, Sequence[LearningPoint]] | None = None) -> str:
    """docs/learning.md as text; ``plots`` and ``video`` are linked relative to ``doc_path``;
    ``kept``: per trained arm, the checkpoints chosen by validation (``select_by_validation``)."""
    kept = kept or {}
    def rel(p: Path) -> str:
        return str(Path(p).resolve().relative_to(doc_path.parent.resolve()))

    parts = [
        "# Learning benchmark: separate vs shared encoders",
        "",
        "Generated by `experiments/learning.py` from `" + str(meta.get("results", "results.json"))
        + "`: every figure in the status, the table and the plots was measured by that "
        "script; the notes name the command behind each of their figures.",
        "",
        "## Status against issue 8",
        "",
        *goal_lines(aggregates, meta, kept.get("separate", ())),
        "",
        "## Results",
        "",
        f"Evaluation: the deterministic policy, {meta.get('episodes', '?')} episodes on held-out "
        f"routes (`env.route_split=eval`), episode seeds {meta.get('eval_seed', '?')} onwards, the "
        "same for every arm and milestone. Mean ± std over seeds; success means the route was "
        "completed without a collision or a lane invasion as CARLA's lane-invasion sensor reports "
        "one (a corner of the vehicle's box crossing a marking; none inside junctions); strict "
        "success also needs the vehicle's centre inside its lane of the route at every step, "
        "junctions included.",
        "",
        markdown_table(aggregates),
        "",
        *[f"![{p.stem}]({rel(p)})" for p in plots],
        "",
    ]
    if any(kept.values()):
        parts += [
            "## Checkpoint kept by validation", "",
            f"At every milestone a trained arm's checkpoint also drives "
            f"{meta.get('validation_episodes', '?')} validation episodes: routes of the training "
            f"split (`env.route_split=train`), episode seeds {meta.get('validation_seed', '?')} "
            "onwards. Each seed keeps the checkpoint with the highest validation success (then "
            "route completion, then the earliest), as Stable-Baselines3's `EvalCallback` keeps "
            "its best model; the table gives that checkpoint's figures on the held-out routes, "
            "which played no part in the choice.", "",
            selection_markdown(kept), ""]
    if video is not None:
        parts += ["## Video", "", f"[{rel(video)}]({rel(video)}): {meta.get('video_caption', '')}", ""]
    if notes.strip():
        parts += ["## Notes", "", notes.strip(), ""]
    parts += [
        "## How it was run",
        "",
        f"Machine: {meta.get('machine', '?')}; learner device: {meta.get('device', '?')}.",
        "",
        "Commands (each invocation adds its points to the results file):",
        "",
        "```sh",
        *meta.get("commands", []),
        "```",
        "",
        "Full benchmark (3 seeds per arm; on a GPU box add `--actors 8`):",
        "",
        "```sh",
        meta.get("full_command", ""),
        "```",
        "",
        f"Preset `{meta.get('preset', '?')}` with overrides `{meta.get('overrides', {})}`; the "
        "effective configuration of the separate arm (the shared arm differs only in "
        "`learner.network.topology`):",
        "",
        "```json",
        json.dumps(meta.get("config", {}), indent=1, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(parts)
