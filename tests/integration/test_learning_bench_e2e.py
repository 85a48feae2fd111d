"""One tiny end-to-end call of the learning benchmark's arm runner: real Ray, fake CARLA, the
smoke preset with the rate limiter on (as the learn preset has it), one milestone, then a rerun
that finds the milestone already trained. The milestone is evaluated on the held-out routes
and on validation episodes from the training routes."""
from __future__ import annotations

from pathlib import Path

import pytest

from experiments import learning_arms as arms
from common import config as C
from deploy import evaluate


@pytest.mark.timeout(240)
def test_run_trained_one_milestone_then_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    splits = []

    def make_env(env_cfg, spec, seed):
        splits.append((env_cfg.route_split, seed))
        return real_make_env(env_cfg, spec, seed=seed)

    real_make_env = evaluate.make_env
    monkeypatch.setattr(evaluate, "make_env", make_env)
    cfg = arms.arm_config("smoke", {"train.updates_per_env_step": "0.5", "env.max_steps": "60",
                                    "metrics.backend": "none", "rollout.num_workers": "1",
                                    "replay.num_shards": "1"}, "separate", 0)
    points = arms.run_trained("separate", 0, cfg, [300], tmp_path, episodes=1, eval_seed=10_000,
                              validation_episodes=2, validation_seed=20_000)
    assert len(points) == 1
    p = points[0]
    assert splits == [(C.RouteSplit.EVAL, 10_000), (C.RouteSplit.TRAIN, 20_000)]
    assert p.validation_success_rate in (0.0, 0.5, 1.0) and 0 <= p.validation_route_completion <= 1
    assert (p.arm, p.seed, p.milestone, p.episodes) == ("separate", 0, 300, 1)
    assert p.device in ("cpu fp32", "cpu bf16")  # "auto" precision, measured on this CPU
    assert p.env_steps >= 300 and p.updates > 0 and p.wall_seconds > 0
    assert 1 <= p.mean_episode_length <= 60
    assert (tmp_path / "separate-seed0" / "summary.json").exists()
    assert arms.run_trained("separate", 0, cfg, [300], tmp_path, episodes=1, eval_seed=10_000) == []
