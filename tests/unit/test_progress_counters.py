"""Run counters (deploy/progress.py): simulator reconnects add up from rollout reports, survive
a checkpoint's counters.json, and reach summary.json."""
from rollout.worker import RolloutReport
from deploy.progress import RunCounters, summary


def test_simulator_reconnects_add_up_resume_and_reach_the_summary():
    counters = RunCounters()
    counters.add_rollout(RolloutReport(actor_index=0, env_steps=10, reconnects=2))
    counters.add_rollout(RolloutReport(actor_index=1, env_steps=5, reconnects=1))
    assert counters.simulator_reconnects == 3 and counters.env_steps == 15
    resumed = RunCounters.from_json(counters.to_json())
    assert resumed.simulator_reconnects == 3
    assert summary(resumed, {})["simulator_reconnects"] == 3
    old = counters.to_json()
    del old["simulator_reconnects"]  # a checkpoint written before the field existed
    assert RunCounters.from_json(old).simulator_reconnects == 0
