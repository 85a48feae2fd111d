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
