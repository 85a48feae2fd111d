"""The traffic run of the learning benchmark: the vector and privileged arms, evaluation
conditions, output defaults, and the doc written from the results."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from common import config as C
from common.errors import ConfigError
from experiments import learning
from experiments import learning_arms as arms
from experiments import learning_report as rep
from experiments import learning_traffic_doc as tdoc
from tests.unit.test_learning_bench import point


def cpoint(arm: str, seed: int, success: float, condition: str = rep.HELD_OUT,
           milestone: int = 10000, score: float = 0.5) -> rep.LearningPoint:
    p = point(arm, seed, milestone, success=success, completion=0.9, collisions=1.5)
    return replace(p, condition=condition, driving_score=score)


def test_vector_arm_blanks_frames_on_the_separate_topology() -> None:
    vector = arms.arm_config("traffic", {}, "vector", 1)
    separate = arms.arm_config("traffic", {}, "separate", 1)
    assert vector.env.camera_input is C.CameraInput.BLANK
    assert separate.env.camera_input is C.CameraInput.RGB
    assert vector.learner.network.topology is C.EncoderTopology.SEPARATE
    assert (vector.seed, vector.env.num_npcs, vector.spec.image_size) == (1, 10, 84)


def test_conditions_blank_only_for_arms_that_read_frames() -> None:
    every = list(rep.CONDITIONS)
    assert learning.conditions_for("separate", every) == every
    for arm in ("vector", "random", "scripted", "privileged"):
        assert learning.conditions_for(arm, every) == ["heldout", "town02"]
    assert arms.condition_overrides("town02") == {"env.town": "Town02"}
    with pytest.raises(ConfigError, match="'town03'"):
        arms.condition_overrides("town03")


def test_output_defaults_per_benchmark() -> None:
    parse = learning._parser().parse_args
    traffic = learning.with_output_defaults(parse(["--preset", "traffic"]))
    assert traffic.results == Path("docs/learning/traffic/results.json")
    assert traffic.doc == Path("docs/learning/traffic.md")
    assert traffic.conditions == "heldout,town02,blank"
    empty = learning.with_output_defaults(parse([]))
    assert (empty.results, empty.doc, empty.plots) == (
        Path("docs/learning/results.json"), Path("docs/learning.md"), Path("docs/learning"))
    assert empty.conditions == "heldout"
    mine = learning.with_output_defaults(parse(["--preset", "traffic", "--doc", "x.md"]))
    assert mine.doc == Path("x.md")


def test_point_condition_is_checked_keyed_and_read_back(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'dusk'"):
        cpoint("separate", 0, 0.5, condition="dusk")
    a, b = cpoint("separate", 0, 0.5), cpoint("separate", 0, 0.1, condition="blank")
    assert len(rep.merge_points([a], [b])) == 2
    path = tmp_path / "r.json"
    rep.save_results(path, [b, a], {})
    back = rep.load_results(path)[0]
    assert [(p.key, p.driving_score, p.success_rate) for p in back] == [
        (a.key, 0.5, 0.5), (b.key, 0.5, 0.1)]
    row = {k: v for k, v in json.loads(path.read_text())["points"][0].items()
           if k not in ("condition", "driving_score")}
    path.write_text(json.dumps({"points": [row]}))
    old = rep.load_results(path)[0][0]
    assert old.condition == rep.HELD_OUT and math.isnan(old.driving_score)


def test_privileged_baseline_needs_its_env_and_runs_on_town02() -> None:
    cfg = arms.arm_config("traffic", {"env.max_steps": "40", "env.num_npcs": "3"}, "privileged", 0)
    with pytest.raises(ConfigError, match="privileged"):
        arms.baseline_act("privileged", cfg, 0)
    p = arms.run_baseline("privileged", 0, cfg, episodes=1, eval_seed=10_000, condition="town02")
    assert (p.arm, p.condition, p.episodes, p.milestone) == ("privileged", "town02", 1, 0)
    assert 0.0 <= p.driving_score <= p.route_completion <= 1.0


def test_traffic_doc_reports_each_condition_and_the_camera_question(tmp_path: Path) -> None:
    pts = []
    for s in range(3):
        pts += [cpoint("separate", s, 0.9), cpoint("separate", s, 0.3, "blank"),
                cpoint("separate", s, 0.6, "town02"), cpoint("vector", s, 0.2),
                cpoint("shared", s, 0.5), cpoint("shared", s, 0.4, "blank"),
                cpoint("privileged", s, 1.0), cpoint("random", s, 0.0)]
    aggs = rep.aggregate(pts)
    plots = tdoc.write_traffic_plots(aggs, tmp_path / "traffic")
    assert {p.name for p in plots} >= {"heldout_success_rate.png", "town02_driving_score.png",
                                      "blank_collisions_per_km.png"}
    text = tdoc.render_traffic_markdown(aggs, {"device": "CPU"}, plots, tmp_path / "traffic.md")
    assert "**Met**: separate encoders complete 90% of held-out routes" in text
    assert "is clearly short of separate encoders" in text
    assert "The separate-encoder policies with their frames blanked: 30% success against 90% " \
           "with the camera (at most half)" in text
    assert "The shared-encoder policies with their frames blanked: 40% success against 50% " \
           "with the camera (more than half)" in text
    assert "TD3, separate encoders on Town02: 60% success" in text
    assert "| separate | 10,025 | 3 | 0.90 ± 0.00 | 1.50 ± 0.00 | 0.90 ± 0.00 | 0.50 ± 0.00 |" in text
    assert "![heldout_success_rate](traffic/heldout_success_rate.png)" in text
    assert "**Fewer than 3 seeds**: scripted (0)" in text
