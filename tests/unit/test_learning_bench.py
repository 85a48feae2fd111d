"""The learning benchmark's parts: points, aggregation, table, plots, doc, arm set-up."""
from __future__ import annotations

import json
from dataclasses import replace
import math
from pathlib import Path

import numpy as np
import pytest

from experiments import learning_arms as arms
from experiments import learning_doc as doc
from experiments import learning_report as rep
from common import config as C
from common.errors import ConfigError
from deploy import build
from deploy.presets import PRESETS, preset


def point(arm: str = "separate", seed: int = 0, milestone: int = 5000, success: float = 0.5,
          completion: float = 0.6, ret: float = 10.0, length: float = 200.0,
          collisions: float = 0.0, validation: float = float("nan")) -> rep.LearningPoint:
    trained = arm in rep.TRAINED_ARMS
    return rep.LearningPoint(arm=arm, seed=seed, milestone=milestone if trained else 0,
                             env_steps=milestone + 25 * seed if trained else 0,
                             updates=milestone // 2 if trained else 0,
                             wall_seconds=milestone / 50 if trained else 0.0,
                             success_rate=success, strict_success_rate=success * 0.9,
                             route_completion=completion, mean_return=ret,
                             mean_episode_length=length, collisions_per_km=collisions, episodes=10,
                             device="cpu" if trained else "-",
                             validation_success_rate=validation,
                             validation_route_completion=min(1.0, validation + 0.1),
                             driving_score=completion * 0.8)


def synthetic() -> list[rep.LearningPoint]:
    pts = [point("random", s, success=0.0, completion=0.02 + 0.01 * s, ret=-16.0 - s, length=400)
           for s in range(3)]
    pts += [point("scripted", s, success=1.0, completion=1.0, ret=270.0, length=320) for s in range(3)]
    for s in range(3):
        pts += [point("separate", s, 5000, success=0.2, completion=0.3 + 0.1 * s),
                point("separate", s, 10000, success=0.8 + 0.1 * (s == 0), completion=0.9)]
        pts += [point("shared", s, 5000, success=0.0, completion=0.1),
                point("shared", s, 10000, success=0.1 * s, completion=0.2)]
    return pts


def test_aggregate_means_std_and_order() -> None:
    aggs = rep.aggregate(synthetic())
    assert [(a.arm, a.milestone) for a in aggs] == [
        ("separate", 5000), ("separate", 10000), ("shared", 5000), ("shared", 10000),
        ("random", 0), ("scripted", 0)]
    sep5 = aggs[0]
    assert sep5.seeds == 3
    assert sep5.mean["route_completion"] == pytest.approx(0.4)
    assert sep5.std["route_completion"] == pytest.approx(math.sqrt(2 / 3) * 0.1)
    assert (sep5.low["route_completion"], sep5.high["route_completion"]) == pytest.approx((0.3, 0.5))
    assert sep5.env_steps == pytest.approx(5025.0)
    assert aggs[1].mean["success_rate"] == pytest.approx(0.8 + 0.1 / 3)


@pytest.mark.parametrize("threshold, expected", [(0.8, 10000), (0.2, 5000), (0.95, None)])
def test_first_reaching(threshold: float, expected: int | None) -> None:
    hit = rep.first_reaching(rep.aggregate(synthetic()), "separate", "success_rate", threshold)
    assert (hit.milestone if hit else None) == expected


def test_final_is_last_milestone_and_none_for_missing_arm() -> None:
    aggs = rep.aggregate([p for p in synthetic() if p.arm != "shared"])
    assert rep.final(aggs, "separate").milestone == 10000
    assert rep.final(aggs, "shared") is None


def test_merge_replaces_same_key_keeps_others() -> None:
    old = [point(seed=0, success=0.1), point(seed=1, success=0.2)]
    merged = rep.merge_points(old, [point(seed=0, success=0.9)])
    assert sorted((p.seed, p.success_rate) for p in merged) == [(0, 0.9), (1, 0.2)]


def test_results_round_trip_with_nan(tmp_path: Path) -> None:
    path = tmp_path / "r" / "results.json"
    pts = [point(collisions=float("nan")), point("random", 1, validation=0.5)]
    rep.save_results(path, pts, {"episodes": 10})
    loaded, meta = rep.load_results(path)
    assert meta == {"episodes": 10}
    assert [p.arm for p in loaded] == ["separate", "random"]
    assert math.isnan(loaded[0].collisions_per_km) and loaded[1] == pts[1]
    assert "NaN" not in path.read_text()


def test_load_rejects_unknown_fields_and_missing_file_is_empty(tmp_path: Path) -> None:
    assert rep.load_results(tmp_path / "none.json") == ([], {})
    bad = tmp_path / "bad.json"
    bad.write_text('{"points": [{"arm": "random", "speed": 1}]}')
    with pytest.raises(ConfigError, match="point fields"):
        rep.load_results(bad)


def test_load_reads_points_from_before_the_validation_fields_as_nan(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    rep.save_results(path, [point()], {})
    data = json.loads(path.read_text())
    for row in data["points"]:
        del row["validation_success_rate"], row["validation_route_completion"]
    path.write_text(json.dumps(data))
    (loaded,), _ = rep.load_results(path)
    assert math.isnan(loaded.validation_success_rate) and loaded.success_rate == 0.5
    del data["points"][0]["success_rate"]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="success_rate"):
        rep.load_results(path)


def test_select_by_validation_reads_validation_only_and_breaks_ties_early() -> None:
    pts = [point(seed=0, milestone=10_000, success=0.1, validation=0.9),
           point(seed=0, milestone=20_000, success=1.0, validation=0.7),   # best held-out: ignored
           point(seed=0, milestone=30_000, success=0.3, validation=0.9),   # a tie: the earlier stays
           point(seed=1, milestone=10_000, success=0.2, validation=0.6),
           point(seed=1, milestone=20_000, success=0.4, validation=0.6 + 1e-3),
           point(seed=2, milestone=10_000, success=0.9),                   # never validated
           point("shared", 0, 10_000, validation=1.0)]
    chosen = rep.select_by_validation(pts, "separate")
    assert [(p.seed, p.milestone, p.success_rate) for p in chosen] == [(0, 10_000, 0.1), (1, 20_000, 0.4)]
    tied = [point(seed=0, milestone=10_000, validation=0.8),
            replace(point(seed=0, milestone=20_000, validation=0.8), validation_route_completion=1.0)]
    assert [p.milestone for p in rep.select_by_validation(tied, "separate")] == [20_000]


def test_point_rejects_unknown_arm() -> None:
    with pytest.raises(ConfigError, match="'ppo'"):
        point("ppo")


def test_tables_show_mean_pm_std_and_dash_for_baselines() -> None:
    md = rep.markdown_table(rep.aggregate(synthetic()))
    lines = md.splitlines()
    assert lines[0].startswith("| arm | env steps |") and len(lines) == 2 + 6
    assert "| separate | 10,000 | 3 | 0.83 ± 0.05 | 0.75 ± 0.04 | 0.90 ± 0.00 |" in md
    assert "| random | - | 3 | 0.00 ± 0.00 |" in md
    text = rep.text_table(rep.aggregate(synthetic()))
    assert text.splitlines()[0].split()[:3] == ["arm", "env", "steps"]


def test_write_plots_makes_pngs(tmp_path: Path) -> None:
    paths = doc.write_plots(rep.aggregate(synthetic()), tmp_path / "plots")
    assert [p.name for p in paths] == [f"{m}.png" for m, _ in doc.PLOTTED]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_markdown_reports_goal_met_and_links_plots(tmp_path: Path) -> None:
    aggs = rep.aggregate(synthetic())
    plots = [tmp_path / "learning" / "success_rate.png"]
    text = doc.render_markdown(aggs, {"device": "CPU", "commands": ["python -m experiments.learning"]},
                               plots, tmp_path / "learning.md", notes="hand notes")
    assert "**Met**: separate-encoder TD3 completes 83% of held-out routes" in text
    assert "at 10,025 env steps" in text
    assert "![success_rate](learning/success_rate.png)" in text
    assert "hand notes" in text and "python -m experiments.learning" in text
    assert "(3 or more each: met)" in text


def test_markdown_reports_goal_not_met_and_few_seeds(tmp_path: Path) -> None:
    pts = [p for p in synthetic() if p.seed == 0 and not (p.arm == "separate" and p.milestone == 10000)]
    text = doc.render_markdown(rep.aggregate(pts), {}, [], tmp_path / "learning.md")
    assert "**Not met yet**: the 80% goal" in text and "ends at 20% success" in text
    assert "(above every random seed)" in text
    assert "**Fewer than 3 seeds**" in text


def test_markdown_reports_the_checkpoints_kept_by_validation(tmp_path: Path) -> None:
    pts = [point(seed=s, milestone=m, success=held, validation=val)
           for s, m, held, val in [(0, 5000, 0.9, 0.5), (0, 10000, 0.7, 0.8),
                                   (1, 5000, 0.85, 0.6), (1, 10000, 0.2, 0.4)]]
    kept = {"separate": rep.select_by_validation(pts, "separate"), "shared": []}
    meta = {"validation_episodes": 20, "validation_seed": 20_000, "device": "CPU"}
    text = doc.render_markdown(rep.aggregate(pts), meta, [], tmp_path / "learning.md", kept=kept)
    assert ("**Not met** with the checkpoint each seed keeps by validation" in text
            and "completes 77% of held-out routes (mean of 2 seed(s): 0.70 at 10,000, 0.85 at "
                "5,025 env steps, after 100 to 200 s of training on CPU)" in text)
    assert "## Checkpoint kept by validation" in text and "episode seeds 20000 onwards" in text
    assert "| separate | 0 | 10,000 | 0.80 | 0.70 | 0.63 | 0.60 |" in text
    assert "| **separate, mean** | 2 seeds | 7,512 | 0.70 | **0.77** |" in text
    kept["separate"] = [replace(p, success_rate=0.8) for p in kept["separate"]]
    assert "**Met** with the checkpoint" in doc.render_markdown(rep.aggregate(pts), meta, [],
                                                                  tmp_path / "learning.md", kept=kept)
    assert "kept by validation" not in doc.render_markdown(rep.aggregate(pts), meta, [],
                                                           tmp_path / "learning.md")


def test_check_milestones_sorts_and_rejects() -> None:
    assert arms.check_milestones([20000, 5000, 5000], 3000) == [5000, 20000]
    with pytest.raises(ConfigError, match=r"milestone \(3000\) must exceed"):
        arms.check_milestones([3000], 3000)
    with pytest.raises(ConfigError, match="at least one"):
        arms.check_milestones([], 0)


@pytest.mark.parametrize("arm, topology", [("separate", C.EncoderTopology.SEPARATE),
                                           ("shared", C.EncoderTopology.SHARED)])
def test_arm_config_sets_topology_seed_and_overrides(arm: str, topology: C.EncoderTopology) -> None:
    cfg = arms.arm_config("learn", {"rollout.num_workers": "3"}, arm, 7)
    assert cfg.learner.network.topology is topology
    assert cfg.seed == 7 and cfg.rollout.num_workers == 3
    with pytest.raises(ConfigError, match="'a2c'"):
        arms.arm_config("learn", {}, "a2c", 0)


def test_learn_preset_is_registered_and_valid() -> None:
    assert PRESETS["learn"] is not None
    cfg = preset("learn")
    build.validate(cfg)
    assert cfg.learner.td3.image_shift == 4  # DrQ's shift: what the benchmark's figures used
    assert build.replay_config(cfg).samples_per_insert == cfg.train.updates_per_env_step * cfg.learner.td3.batch_size


def test_random_policy_is_reproducible_and_in_range() -> None:
    a, b = arms.random_policy(2, 3), arms.random_policy(2, 3)
    acts = [a({}) for _ in range(5)]
    assert all(((x >= -1) & (x <= 1)).all() and x.dtype.name == "float32" for x in acts)
    assert all((x == b({})).all() for x in acts)


def test_baselines_on_held_out_routes_smoke() -> None:
    cfg = arms.arm_config("smoke", {"env.max_steps": "60"}, "random", 0)
    rnd = arms.run_baseline("random", 0, cfg, episodes=1, eval_seed=10_000)
    scripted = arms.run_baseline("scripted", 0, cfg, episodes=1, eval_seed=10_000)
    assert rnd.milestone == 0 and rnd.episodes == 1 and 1 <= rnd.mean_episode_length <= 60
    assert scripted.route_completion > rnd.route_completion


def test_scripted_baseline_speaks_the_env_pedal_setting() -> None:
    plain = arms.arm_config("learn", {}, "scripted", 0)
    speed = arms.arm_config("learn", {"env.pedal": "target_speed"}, "scripted", 0)
    assert arms.baseline_act("scripted", plain, 0).max_target_speed_mps is None
    assert arms.baseline_act("scripted", speed, 0).max_target_speed_mps == \
        speed.env.max_target_speed_mps


def test_shrink_video_reencodes_smaller_until_it_fits(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    from experiments.learning import shrink_video

    path = tmp_path / "v.mp4"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (320, 240))
    rng = np.random.default_rng(0)
    for _ in range(10):
        out.write(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    out.release()
    size = path.stat().st_size
    assert shrink_video(path, max_bytes=size * 10) == 1.0 and path.stat().st_size == size
    scale = shrink_video(path, max_bytes=size // 2)
    assert scale < 1.0 and path.stat().st_size <= size // 2
    cap = cv2.VideoCapture(str(path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) < 320


def test_merge_files_folds_parallel_results_and_commands(tmp_path: Path) -> None:
    from experiments.learning import main, merge_files
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    rep.save_results(a, [point(seed=0, success=0.1)], {"commands": ["run a"], "machines": ["m1"],
                                                        "episodes": 10})
    rep.save_results(b, [point(seed=0, success=0.9), point(seed=1)],
                     {"commands": ["run b", "run a"], "machines": ["m1"]})
    points, meta = merge_files([a, b], [], {})
    assert sorted((p.seed, p.success_rate) for p in points) == [(0, 0.9), (1, 0.5)]
    assert meta["commands"] == ["run a", "run b"] and meta["machine"] == "m1"
    with pytest.raises(ConfigError, match="no such results file"):
        merge_files([tmp_path / "missing.json"], [], {})
    out = tmp_path / "merged.json"
    assert main(["--merge", str(a), str(b), "--results", str(out), "--plots", str(tmp_path),
                 "--doc", str(tmp_path / "doc.md"), "--notes", str(tmp_path / "none.md")]) == 0
    assert len(rep.load_results(out)[0]) == 2 and (tmp_path / "doc.md").exists()


def test_diagnose_rows_report_lateral_error_and_lane_departure() -> None:
    from experiments import learning_diagnose as diag

    cfg = arms.arm_config("learn", {}, "scripted", 0)
    env = arms.eval_env(cfg, 10_000)
    try:
        rows = diag.episode_rows(env, arms.baseline_act("scripted", cfg, 0), 1, 10_000)
        # A policy that steers off to one side leaves its lane: the centre crosses the edge.
        drift = diag.episode_rows(env, lambda obs: np.array([0.5, 0.5], np.float32), 1, 10_000)
    finally:
        env.close()
    good, bad = rows[0], drift[0]
    assert good["success"] and 0.0 < good["max_lateral_m"] < 1.0 and not good["centre_left_lane"]
    assert bad["centre_left_lane"] and bad["max_lateral_m"] > 1.5
    summary = diag.totals(rows + drift)
    assert summary["episodes_whose_centre_left_the_lane"] == 1


def test_report_only_keeps_the_settings_the_results_were_measured_with() -> None:
    from experiments.learning import _parser, update_meta
    measured = {"episodes": 20, "eval_seed": 777, "commands": ["python -m experiments.learning x"]}
    rendered = update_meta(dict(measured), _parser().parse_args(["--report-only"]), {})
    assert (rendered["episodes"], rendered["eval_seed"]) == (20, 777)
    fresh = update_meta(dict(measured), _parser().parse_args(["--episodes", "5"]), {})
    assert fresh["episodes"] == 5  # a new run records its own


class _ScriptedEnv:
    """Episodes of three steps whose laterals come from ``laterals[episode]``; all succeed."""

    def __init__(self, laterals):
        self.laterals, self.episode, self.t = laterals, -1, 0

    def reset(self, seed):
        self.episode, self.t = self.episode + 1, 0
        return {}, {}

    def step(self, action):
        lateral = self.laterals[self.episode][self.t]
        self.t += 1
        done = self.t == 3
        info = {"lateral_m": lateral, "half_lane_width_m": 1.75, "success": done, "route_completion": 1.0,
                "distance_m": 10.0, "collisions": 0, "termination_reason": "route_completed" if done else ""}
        return {}, 1.0, done, False, info


def test_strict_success_also_needs_the_centre_in_its_lane_at_every_step() -> None:
    from deploy.evaluate import run_episodes

    env = _ScriptedEnv([[0.1, -0.5, 0.2], [0.1, 1.9, 0.0], [-1.75, 0.0, 0.0], [0.0, -2.0, 0.0]])
    out = run_episodes(env, lambda obs: None, 4, seed=0)
    assert out["success_rate"] == 1.0
    assert out["strict_success_rate"] == 0.5


def test_first_reaching_counts_a_mean_of_exactly_the_threshold() -> None:
    pts = [point("separate", s, milestone=70_000, success=v) for s, v in enumerate((0.95, 0.8, 0.65))]
    pts += [point("separate", s, milestone=80_000, success=v) for s, v in enumerate((0.9, 0.75, 0.6))]
    hit = rep.first_reaching(rep.aggregate(pts), "separate", "success_rate", 0.8)
    assert hit is not None and hit.milestone == 70_000
