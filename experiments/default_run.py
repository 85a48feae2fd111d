"""When did a run's training episodes pass a success rate? Reads a run's metrics.csv.

The default run (`make train`) is measured by running it and then this script on its run
directory (docs/default_run.md):

    .venv/bin/python -m experiments.default_run runs/RUN --threshold 0.5 --json out.json

Prints one JSON object: the first report at which the success rate of the recent training
episodes (the progress display's `success`, over the last 50 episodes) went above the
threshold, with its wall time and env steps, and the figures at fixed wall times.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Sequence

CHECKPOINTS_S = (600, 900, 1200, 1800)


def _float(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def milestones(rows: Sequence[dict[str, str]], threshold: float) -> dict[str, Any]:
    """The first row above ``threshold`` and the latest row at or before each of
    CHECKPOINTS_S (None where the run had not got there)."""
    def pick(row: dict[str, str] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        return {"wall_seconds": float(row["wall_seconds"]), "env_steps": int(row["env_steps"]),
                "updates": int(row["updates"]), "success_rate": _float(row["success_rate"]),
                "route_completion": _float(row["route_completion"]),
                "mean_return": _float(row["mean_return"])}

    first = next((r for r in rows if (_float(r["success_rate"]) or 0.0) > threshold), None)
    at: dict[str, Any] = {}
    for limit in CHECKPOINTS_S:
        before = [r for r in rows if float(r["wall_seconds"]) <= limit]
        at[str(limit)] = pick(before[-1]) if before and float(rows[-1]["wall_seconds"]) >= limit else None
    return {"threshold": threshold, "first_above": pick(first), "at_wall_seconds": at,
            "last": pick(rows[-1]) if rows else None}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run directory (its metrics.csv)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    with (args.run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    out = {"run": str(args.run), **milestones(rows, args.threshold)}
    config = args.run / "run.json"
    if config.is_file():
        out["run_json"] = json.loads(config.read_text())
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
