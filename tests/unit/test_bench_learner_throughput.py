"""The learner benchmark refuses round sizes that would time SB3 and ours on different mixes
of critic and policy updates."""
import argparse

import pytest

from bench.learner_throughput import POLICY_DELAY, check_round_sizes


@pytest.mark.parametrize("updates,sb3_updates,bad", [
    (4, 3, "--sb3-updates \\(3\\)"),
    (5, 4, "--updates \\(5\\)"),
    (4, 1, "--sb3-updates \\(1\\)"),
])
def test_rounds_must_hold_whole_policy_delay_cycles(updates, sb3_updates, bad):
    with pytest.raises(SystemExit, match=bad + " must be a multiple of the policy delay"):
        check_round_sizes(argparse.Namespace(updates=updates, sb3_updates=sb3_updates))


def test_even_rounds_pass():
    assert POLICY_DELAY == 2
    check_round_sizes(argparse.Namespace(updates=4, sb3_updates=60))


def test_replay_feeds_sample_pixels_and_through_the_frame_cache(tmp_path):
    import json

    from bench.learner_throughput import main

    out = tmp_path / "result.json"
    main(["--device", "cpu", "--updates", "4", "--rounds", "1", "--warmup", "1", "--no-sb3",
          "--batch-size", "16", "--variant", "fp32", "--replay-feeds", "--replay-capacity",
          "600", "--env-steps-per-update", "8", "--json", str(out)])
    rows = {r["feed"]: r for r in json.loads(out.read_text())["ours"]}
    assert set(rows) == {"host", "device", "replay", "replay_cache"}
    cached = rows["replay_cache"]
    # 8 records inserted per update: the cache receives new frames, but far fewer than the
    # 16 x 5 frames a batch reads.
    assert 0 < cached["new_frames_per_batch"] < 16 * 5
    assert cached["env_steps_per_update"] == 8 and cached["replay_capacity"] == 600
