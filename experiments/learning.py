"""Learning benchmark (issue 8): does TD3 with separate encoders learn to drive, and where does
the shared-encoder ablation end up? Arms: separate, shared, random, scripted.

Trained arms go through the real system (deploy.launch: Ray, rollout workers, replay, learner on
the fake town) and are evaluated at env-step milestones on held-out routes with fixed episode
seeds (experiments/learning_arms.py). Results accumulate in one JSON file, so arms and seeds can run
in separate invocations (or on separate machines) and a rerun continues unfinished runs; each
invocation rewrites the table, the PNG plots and docs/learning.md from everything measured so
far. Prints one JSON object (this invocation's points), then the table.

    .venv/bin/python -m experiments.learning --arms random,scripted --seeds 0,1,2
    nice -n 10 .venv/bin/python -m experiments.learning --arms separate,shared --seeds 0 \\
        --milestones 5000,10000,20000,30000
    # a GPU box: the learner takes the GPU by itself; give it more rollout workers
    python -m experiments.learning --arms separate,shared --seeds 0,1,2 --actors 8 \\
        --milestones 20000,50000,100000,200000
    .venv/bin/python -m experiments.learning --report-only   # redraw plots and docs from the JSON

The traffic benchmark (issue 31) is the same harness with ``--preset traffic``: its own results
file, plots and doc (docs/learning/traffic/results.json, docs/learning/traffic/*.png,
docs/learning/traffic.md), and each arm evaluated under the conditions of
learning_report.CONDITIONS: held-out routes with the preset's NPCs, the same on Town02, and
(the camera arms) with frames blanked. Arms vector (frames blanked in training too) and
privileged (the scripted driver that reads the NPCs) join the others.

    nice -n 10 .venv/bin/python -m experiments.learning --preset traffic \\
        --arms random,scripted,privileged --seeds 0,1,2 --episodes 20
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from experiments.learning_arms import arm_config, eval_env, run_baseline, run_trained
from experiments.learning_doc import render_markdown, write_plots
from experiments.learning_report import (ARMS, BASELINE_ARMS, CONDITIONS, HELD_OUT, TRAINED_ARMS,
                                         LearningPoint, aggregate, load_results, merge_points,
                                         save_results, select_by_validation, text_table)
from experiments.learning_traffic_doc import render_traffic_markdown, write_traffic_plots
from common import config as C
from common.errors import CarlaTD3Error, ConfigError
from deploy.rundir import RunDir

log = logging.getLogger("experiments.learning")

VIDEO_MAX_BYTES = 2_000_000
FULL_COMMAND = ("python -m experiments.learning --arms separate,shared,random,scripted --seeds 0,1,2 "
                "--milestones 5000,10000,20000,40000,60000")
TRAFFIC_PRESET = "traffic"
TRAFFIC_FULL_COMMAND = ("python -m experiments.learning --preset traffic --arms "
                        "separate,shared,vector,random,scripted,privileged --seeds 0,1,2 "
                        "--episodes 20 --milestones 50000,100000,200000,300000")
# Where each benchmark's outputs go by default: the empty roads', and the traffic one's.
OUTPUTS = {
    "learn": {"results": "docs/learning/results.json", "plots": "docs/learning",
              "doc": "docs/learning.md", "notes": "docs/learning/notes.md", "conditions": HELD_OUT},
    TRAFFIC_PRESET: {"results": "docs/learning/traffic/results.json",
                     "plots": "docs/learning/traffic", "doc": "docs/learning/traffic.md",
                     "notes": "docs/learning/traffic/notes.md",
                     "conditions": ",".join(CONDITIONS)},
}


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="experiments.learning", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list of {list(ARMS)}")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    p.add_argument("--milestones", default="5000,10000,20000",
                   help="env-step milestones at which trained arms are evaluated")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per point")
    p.add_argument("--eval-seed", type=int, default=10_000, help="first evaluation episode seed")
    p.add_argument("--validation-episodes", type=int, default=20,
                   help="validation episodes per milestone of a trained arm, on training-split "
                        "routes, for choosing a checkpoint (0: none)")
    p.add_argument("--validation-seed", type=int, default=20_000,
                   help="first validation episode seed")
    p.add_argument("--preset", default="learn")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every arm (repeatable)")
    p.add_argument("--actors", type=int, help="rollout workers (rollout.num_workers)")
    p.add_argument("--runs", type=Path, default=Path("/tmp/learning-runs"),
                   help="where the training run directories go (continued if present)")
    p.add_argument("--conditions", help=f"comma list of evaluation conditions {list(CONDITIONS)} "
                   "(default: heldout; with --preset traffic all of them)")
    p.add_argument("--results", type=Path,
                   help="results JSON (default: docs/learning/results.json; with --preset "
                        "traffic docs/learning/traffic/results.json)")
    p.add_argument("--plots", type=Path, help="PNG directory (default: the results' directory)")
    p.add_argument("--doc", type=Path, help="markdown written from the results (default: "
                   "docs/learning.md; with --preset traffic docs/learning/traffic.md)")
    p.add_argument("--notes", type=Path,
                   help="hand-written notes included in the doc if the file exists (default: "
                        "notes.md beside the results)")
    p.add_argument("--video", type=Path,
                   help="record the first evaluation episode of the separate arm's latest "
                        "checkpoint (first of --seeds) to this MP4")
    p.add_argument("--report-only", action="store_true", help="run nothing; redraw from --results")
    p.add_argument("--merge", type=Path, nargs="+", default=[], metavar="RESULTS",
                   help="run nothing; fold these results files (e.g. from seeds run in "
                        "parallel with their own --results) into --results, then redraw")
    return p


def with_output_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the outputs and conditions it left out set to its benchmark's defaults
    (OUTPUTS: the traffic preset's, or the empty-roads benchmark's for every other preset)."""
    defaults = OUTPUTS[TRAFFIC_PRESET if args.preset == TRAFFIC_PRESET else "learn"]
    for name in ("results", "plots", "doc", "notes"):
        if getattr(args, name) is None:
            setattr(args, name, Path(defaults[name]))
    if args.conditions is None:
        args.conditions = defaults["conditions"]
    return args


def conditions_for(arm: str, conditions: list[str]) -> list[str]:
    """The conditions an arm is evaluated under: "blank" only for arms that read frames
    (the vector arm's are blank already; the baselines read none)."""
    reads_frames = arm in TRAINED_ARMS and arm != "vector"
    return [c for c in conditions if c != "blank" or reads_frames]


def full_command(args: argparse.Namespace) -> str:
    return TRAFFIC_FULL_COMMAND if args.preset == TRAFFIC_PRESET else FULL_COMMAND


def merge_files(paths: list[Path], points: list[LearningPoint],
                meta: dict[str, Any]) -> tuple[list[LearningPoint], dict[str, Any]]:
    """Points and commands of other results files folded into ``points`` and ``meta``
    (a point of the same arm, seed and env steps is replaced by the later file's)."""
    meta = dict(meta)
    for path in paths:
        if not path.exists():
            raise ConfigError(f"--merge {path}: no such results file")
        more, other = load_results(path)
        points = merge_points(points, more)
        for key in ("commands", "machines"):
            meta[key] = list(dict.fromkeys([*meta.get(key, []), *other.get(key, [])]))
        for key in ("config", "overrides", "preset", "episodes", "eval_seed",
                    "validation_episodes", "validation_seed"):
            meta.setdefault(key, other.get(key))
    meta["machine"] = meta["device"] = "; ".join(meta.get("machines", []))
    meta["full_command"] = FULL_COMMAND
    return points, meta


def overrides_of(args: argparse.Namespace) -> dict[str, str]:
    """--set pairs and --actors as dotted config overrides."""
    out: dict[str, str] = {}
    for text in args.overrides:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {text!r} must look like KEY=VALUE")
        out[key.strip()] = value.strip()
    if args.actors is not None:
        out["rollout.num_workers"] = str(args.actors)
    return out


def machine_description() -> str:
    """The learner's device as a person would name it: the GPU, or the CPU model and cores."""
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"CPU only ({model}, {os.cpu_count()} cores)"


def run_arms(args: argparse.Namespace, overrides: dict[str, str],
             points: list[LearningPoint], save: Any) -> list[LearningPoint]:
    """Baselines first (cheap), then each seed's trained arms in turn; returns new points."""
    arms, seeds = _csv(args.arms), [int(s) for s in _csv(args.seeds)]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ConfigError(f"--arms {unknown} unknown; choose from {list(ARMS)}")
    milestones = [int(m) for m in _csv(args.milestones)]
    conditions = _csv(args.conditions)
    bad = sorted(set(conditions) - set(CONDITIONS))
    if bad or not conditions:
        raise ConfigError(f"--conditions {bad or conditions} must name some of {list(CONDITIONS)}")
    new: list[LearningPoint] = []

    def keep(point: LearningPoint) -> None:
        new.append(point)
        save(merge_points(points, new))

    for arm in (a for a in BASELINE_ARMS if a in arms):
        for seed in seeds:
            for condition in conditions_for(arm, conditions):
                keep(run_baseline(arm, seed, arm_config(args.preset, overrides, arm, seed),
                                  args.episodes, args.eval_seed, condition))
    for seed in seeds:
        for arm in (a for a in TRAINED_ARMS if a in arms):
            run_trained(arm, seed, arm_config(args.preset, overrides, arm, seed), milestones,
                        args.runs, args.episodes, args.eval_seed, on_point=keep,
                        validation_episodes=args.validation_episodes,
                        validation_seed=args.validation_seed,
                        conditions=conditions_for(arm, conditions))
    return new


def shrink_video(path: Path, max_bytes: int = VIDEO_MAX_BYTES) -> float:
    """Re-encodes the MP4 at ``path`` at smaller frame sizes until it fits ``max_bytes``;
    returns the final scale (1.0: untouched)."""
    import cv2

    scale = 1.0
    while path.stat().st_size > max_bytes and scale > 0.3:
        scale *= 0.8
        src = cv2.VideoCapture(str(path))
        fps = src.get(cv2.CAP_PROP_FPS) or 20.0
        w = int(src.get(cv2.CAP_PROP_FRAME_WIDTH) * 0.8) // 2 * 2
        h = int(src.get(cv2.CAP_PROP_FRAME_HEIGHT) * 0.8) // 2 * 2
        tmp = path.with_name(f".{path.stem}.tmp.mp4")
        out = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        ok, frame = src.read()
        while ok:
            out.write(cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA))
            ok, frame = src.read()
        src.release()
        out.release()
        os.replace(tmp, path)
    return scale


def record_video(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The separate arm's latest checkpoint driving the first evaluation episode, as an MP4."""
    from rollout.video import record_episode
    from deploy import evaluate

    run_dir, checkpoint = evaluate.resolve_checkpoint(args.runs / f"separate-seed{seed}")
    cfg, _ = run_dir.read_config()
    policy = evaluate.load_policy(cfg, checkpoint)
    env = eval_env(cfg, args.eval_seed)
    try:
        summary = record_episode(env, policy.act, str(args.video), seed=args.eval_seed)
    finally:
        env.close()
    shrink_video(args.video)
    env_steps = int(RunDir.read_counters(checkpoint)["env_steps"])
    caption = (f"separate-encoder TD3, seed {seed}, checkpoint at {env_steps:,} env steps, held-out "
               f"episode seed {args.eval_seed}: {summary.frames} steps, return "
               f"{summary.episode_return:.1f}, ended by {summary.termination_reason or 'none'}"
               f" ({'success' if summary.success else 'no success'})")
    return {"video": str(args.video), "video_caption": caption}


def update_meta(meta: dict[str, Any], args: argparse.Namespace, overrides: dict[str, str]) -> dict[str, Any]:
    """The results file's meta with this invocation's command and settings added."""
    command = "python -m experiments.learning " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    commands = list(meta.get("commands", []))
    if not args.report_only and command not in commands:
        commands.append(command)
    machines = list(meta.get("machines", []))
    if not args.report_only and machine_description() not in machines:
        machines.append(machine_description())
    cfg = arm_config(args.preset, overrides, "separate", 0)
    last = max([int(m) for m in _csv(args.milestones)], default=cfg.train.env_steps)
    cfg = replace(cfg, train=replace(cfg.train, env_steps=last))
    return {**meta, "commands": commands, "machines": machines, "machine": "; ".join(machines),
            "device": "; ".join(machines), "preset": args.preset,
            "overrides": meta.get("overrides", overrides) if args.report_only else overrides,
            "config": meta.get("config", C.to_dict(cfg)) if args.report_only else C.to_dict(cfg),
            # --report-only re-renders what was measured: the file's settings, not the flags'
            "episodes": meta.get("episodes", args.episodes) if args.report_only else args.episodes,
            "eval_seed": meta.get("eval_seed", args.eval_seed) if args.report_only else args.eval_seed,
            **({} if args.report_only else {"validation_episodes": args.validation_episodes,
                                            "validation_seed": args.validation_seed}),
            "results": str(args.results), "full_command": full_command(args)}


def write_outputs(args: argparse.Namespace, points: list[LearningPoint], meta: dict[str, Any]) -> None:
    """The plots, the doc (the traffic benchmark's for --preset traffic) and the table."""
    aggregates = aggregate(points)
    traffic = args.preset == TRAFFIC_PRESET
    plots = (write_traffic_plots if traffic else write_plots)(aggregates, args.plots)
    notes = args.notes.read_text() if args.notes.exists() else ""
    video = Path(meta["video"]) if meta.get("video") and Path(meta["video"]).exists() else None
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    kept = {arm: select_by_validation(points, arm) for arm in TRAINED_ARMS}
    render = render_traffic_markdown if traffic else render_markdown
    args.doc.write_text(render(aggregates, meta, plots, args.doc, notes, video, kept))
    print(text_table([a for a in aggregates if a.condition == HELD_OUT]))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CARLA_TD3_LOG", "INFO"), format="%(message)s")
    args = with_output_defaults(_parser().parse_args(argv))
    try:
        overrides = overrides_of(args)
        points, meta = load_results(args.results)
        if args.merge:
            points, meta = merge_files(args.merge, points, meta)
            meta["full_command"] = full_command(args)
            meta["results"] = str(args.results)
            command = "python -m experiments.learning " + " ".join(shlex.quote(a) for a in sys.argv[1:])
            meta["commands"] = [*meta.get("commands", []), command]
            if args.video is not None:
                meta.update(record_video(args, int(_csv(args.seeds)[0])))
            save_results(args.results, points, meta)
            write_outputs(args, points, meta)
            return 0
        meta = update_meta(meta, args, overrides)
        new: list[LearningPoint] = []
        if not args.report_only:
            new = run_arms(args, overrides, points,
                           lambda merged: save_results(args.results, merged, meta))
            points = merge_points(points, new)
        if args.video is not None:
            meta.update(record_video(args, int(_csv(args.seeds)[0])))
        if new or args.video is not None:
            save_results(args.results, points, meta)
        print(json.dumps([asdict(p) for p in new], indent=1))
        write_outputs(args, points, meta)
    except CarlaTD3Error as exc:
        print(f"experiments.learning: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
