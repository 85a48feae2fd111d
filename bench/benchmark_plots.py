"""Plots of the benchmark JSON files in docs/benchmarks/, for docs/benchmarks.md.

    python -m bench.benchmark_plots [--dir docs/benchmarks]

Reads what the benchmarks wrote (``bench.e2e_scaling --json``, ``bench.learner_throughput
--json``) and draws:

- ``e2e_scaling.png``: env steps/s against rollout workers with the linear ideal, and the
  weight broadcast's p50 and p99 against the 100 ms goal;
- ``learner_throughput.png``: updates/s of every learner variant and feed against SB3's, one
  panel per results file (device named in the title), with the goal: 1.8x SB3 on a CPU,
  1,000 updates/s on a GPU.

Files that are not there are skipped; a file that is there but malformed is an error naming
it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

E2E = "e2e_scaling.json"
# The current figures only; earlier runs are in docs/benchmarks/history/.
LEARNER_FILES = ("learner_cpu_epyc_auto.json", "learner_h200_first_conv_blocks.json")
BROADCAST_GOAL_MS = 100.0
CPU_GOAL_VS_SB3 = 1.8
GPU_GOAL_UPDATES_PER_S = 1000.0


class BadResults(ValueError):
    """A benchmark JSON file without the fields its plot needs."""


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadResults(f"{path}: not a readable JSON file ({exc})") from None


def _e2e_series(result: dict[str, Any], source: Path) -> dict[str, list[tuple]]:
    """Rows per weight transport, by actor count: (actors, steps/s, p50, p99, mid-episode p99
    or None). Runs before the shared-memory transport existed have no ``weights_transport``:
    they used the board; runs before the split by episode resets have no mid-episode p99."""
    series: dict[str, list[tuple]] = {}
    try:
        for r in sorted(result["rows"], key=lambda r: r["actors"]):
            series.setdefault(str(r.get("weights_transport", "board")), []).append(
                (int(r["actors"]), float(r["env_steps_per_s"]), r["broadcast_p50_ms"],
                 r["broadcast_p99_ms"], r.get("mid_episode_p99_ms")))
    except (KeyError, TypeError) as exc:
        raise BadResults(f"{source}: e2e rows lack {exc}") from None
    if not series or any(rows[0][0] != 1 for rows in series.values()):
        raise BadResults(f"{source}: the rows must start at 1 actor (the efficiency baseline)")
    return series


def plot_e2e(result: dict[str, Any], out: Path, source: Path) -> Path:
    """Scaling and broadcast latency of one ``bench.e2e_scaling`` run, a line per weight
    transport."""
    series = _e2e_series(result, source)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    actors = sorted({n for rows in series.values() for n, *_ in rows})
    first = next(iter(series.values()))
    left.plot(actors, [first[0][1] * n for n in actors], "--", color="grey",
              label="linear (1 actor x N)")
    for k, (transport, rows) in enumerate(series.items()):
        label = f" ({transport})" if len(series) > 1 else ""
        line, = left.plot([r[0] for r in rows], [r[1] for r in rows], "o-", label=f"measured{label}")
        for n, steps, *_ in rows:  # one series' labels below the points, the next above
            left.annotate(f"{100 * steps / (rows[0][1] * n):.0f}%", (n, steps),
                          textcoords="offset points", xytext=(4, -12 if k % 2 == 0 else 6),
                          fontsize=8, color=line.get_color())
        timed = [r for r in rows if r[2] is not None and r[3] is not None]
        right.plot([t[0] for t in timed], [t[2] for t in timed], "o-", label=f"p50{label}")
        right.plot([t[0] for t in timed], [t[3] for t in timed], "s-", label=f"p99{label}")
        mid = [t for t in timed if t[4] is not None]
        if mid:
            right.plot([t[0] for t in mid], [t[4] for t in mid], "^:",
                       label=f"p99 mid-episode{label}")
    left.set(xscale="log", yscale="log", xlabel="rollout workers", ylabel="env steps / s",
             title=f"Scaling, {result.get('tick_latency_s', 0.05) * 1e3:.0f} ms per tick")
    left.set_xticks(actors, [str(n) for n in actors])
    left.legend()
    right.axhline(BROADCAST_GOAL_MS, color="grey", linestyle="--", label="p99 goal")
    right.set(xscale="log", xlabel="rollout workers", ylabel="ms",
              title="Weight broadcast: publish to every actor running it")
    right.set_xticks(actors, [str(n) for n in actors])
    right.legend()
    fig.tight_layout()
    path = out / "e2e_scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(result: dict[str, Any], source: Path) -> list[tuple[str, float]]:
    try:
        bars = [(f"{m['name'].removeprefix('ours ')} ({m['feed']})", float(m["updates_per_s"]))
                for m in result["ours"]]
        bars.append(("SB3 TD3", float(result["sb3"]["updates_per_s"])))
        if "sb3_own_process" in result:
            bars.append(("SB3 TD3, own process", float(result["sb3_own_process"]["updates_per_s"])))
    except (KeyError, TypeError) as exc:
        raise BadResults(f"{source}: learner results lack {exc}") from None
    return bars


def plot_learners(results: list[tuple[Path, dict[str, Any]]], out: Path) -> Path:
    """One horizontal bar panel per ``bench.learner_throughput`` results file."""
    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.2 + 0.45 * sum(
        len(_bars(r, p)) for p, r in results)), squeeze=False)
    for ax, (source, result) in zip(axes[:, 0], results):
        bars = _bars(result, source)
        names, values = [b[0] for b in bars], [b[1] for b in bars]
        colours = ["tab:grey" if n.startswith("SB3") else "tab:blue" for n in names]
        ax.barh(names, values, color=colours)
        for y, v in enumerate(values):
            ax.annotate(f"{v:.1f}", (v, y), textcoords="offset points", xytext=(3, -3), fontsize=8)
        if result.get("sb3", {}).get("device", "cpu").startswith("cuda"):
            goal, label = GPU_GOAL_UPDATES_PER_S, f"goal {GPU_GOAL_UPDATES_PER_S:.0f}/s"
        else:
            goal, label = CPU_GOAL_VS_SB3 * values[names.index("SB3 TD3")], "1.8x SB3"
        ax.axvline(goal, color="tab:red", linestyle="--", label=label)
        ax.set_xlim(0, max(max(values), goal) * 1.12)
        ax.legend(loc="lower right", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{result.get('device_name', '?')}, {result.get('threads', '?')} threads, "
                     f"batch {result.get('batch_size', '?')}\n{source.name}", fontsize=9)
        ax.set_xlabel("updates / s")
    fig.tight_layout()
    path = out / "learner_throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("docs/benchmarks"),
                        help="where the JSON files are and the PNGs go")
    args = parser.parse_args(argv)
    written = []
    try:
        if (args.dir / E2E).exists():
            written.append(plot_e2e(_load(args.dir / E2E), args.dir, args.dir / E2E))
        learners = [(args.dir / f, _load(args.dir / f)) for f in LEARNER_FILES
                    if (args.dir / f).exists()]
        if learners:
            written.append(plot_learners(learners, args.dir))
    except BadResults as exc:
        print(f"bench.benchmark_plots: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
