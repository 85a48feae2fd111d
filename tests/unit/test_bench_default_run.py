"""experiments.default_run: when a run's training success first passed a threshold."""
import csv

from experiments.default_run import main, milestones


def _rows(points):
    return [{"wall_seconds": str(t), "env_steps": str(100 * t), "updates": str(50 * t),
             "success_rate": "" if s is None else str(s), "route_completion": "0.9",
             "mean_return": "10"} for t, s in points]


def test_first_report_above_the_threshold_and_the_figures_at_fixed_times():
    rows = _rows([(5, None), (300, 0.2), (700, 0.5), (800, 0.52), (1250, 0.7)])
    out = milestones(rows, 0.5)
    assert out["first_above"]["wall_seconds"] == 800 and out["first_above"]["env_steps"] == 80_000
    assert out["at_wall_seconds"]["600"]["success_rate"] == 0.2
    assert out["at_wall_seconds"]["1200"]["wall_seconds"] == 800
    assert out["at_wall_seconds"]["1800"] is None  # the run stopped before 30 minutes
    assert out["last"]["success_rate"] == 0.7


def test_a_run_that_never_passes_says_so(tmp_path, capsys):
    with (tmp_path / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(_rows([(1, 0.1)])[0]))
        writer.writeheader()
        writer.writerows(_rows([(1, None), (2, 0.1)]))
    assert main([str(tmp_path), "--json", str(tmp_path / "out.json")]) == 0
    assert '"first_above": null' in (tmp_path / "out.json").read_text()
