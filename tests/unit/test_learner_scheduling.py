"""A CPU learner runs in SCHED_BATCH: every thread it has, and those it starts later."""
import multiprocessing
import os
import threading

import pytest

from common import config as C

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux only")


def _policies_after_the_switch(queue) -> None:
    from deploy.components import schedule_as_batch

    started = threading.Event()
    earlier = threading.Thread(target=started.wait, daemon=True)  # exists before the switch
    earlier.start()
    moved = schedule_as_batch()
    later = {}
    thread = threading.Thread(target=lambda: later.update(policy=os.sched_getscheduler(0)))
    thread.start()
    thread.join()
    queue.put((moved, os.sched_getscheduler(0), os.sched_getscheduler(earlier.native_id),
               later["policy"]))
    started.set()


def test_schedule_as_batch_moves_every_thread_and_new_ones_inherit_it():
    ctx = multiprocessing.get_context("spawn")  # not this test process
    queue = ctx.Queue()
    child = ctx.Process(target=_policies_after_the_switch, args=(queue,))
    child.start()
    moved, main, earlier, later = queue.get(timeout=60)
    child.join(30)
    assert moved >= 2
    assert (main, earlier, later) == (os.SCHED_BATCH,) * 3
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the parent is untouched


def test_batch_is_the_default_and_normal_is_the_alternative():
    assert C.LearnerExecution().cpu_scheduling is C.CpuScheduling.BATCH
    assert C.CpuScheduling("normal") is C.CpuScheduling.NORMAL
