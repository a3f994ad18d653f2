"""The in-process job queue: priority levels, ageing, raised priorities, explanations last."""

from __future__ import annotations

import threading

from radtriage.app.core.domain import Priority
from radtriage.app.jobs import InlineJobQueue, PriorityJobQueue, aged_level

P = Priority


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drain(queue: PriorityJobQueue) -> list[str]:
    taken = []
    while (job := queue.take()) is not None:
        taken.append(job)
    return taken


def test_levels_are_served_stat_asap_urgent_routine_and_fifo_within_a_level() -> None:
    queue = PriorityJobQueue(max_wait_s=0, clock=FakeClock())
    for job, priority in [("r1", P.ROUTINE), ("u1", P.URGENT), ("r2", P.ROUTINE), ("s1", P.STAT), ("a1", P.ASAP)]:
        queue.put(job, priority)
    queue.put("s2", P.STAT)
    assert drain(queue) == ["s1", "s2", "a1", "u1", "r1", "r2"]


def test_a_job_that_waited_max_wait_is_served_one_level_up() -> None:
    clock = FakeClock()
    queue = PriorityJobQueue(max_wait_s=60, clock=clock)
    queue.put("old-routine", P.ROUTINE)
    clock.now += 61
    queue.put("new-urgent", P.URGENT)
    # Both are served at urgent now; the routine one waited longer.
    assert drain(queue) == ["old-routine", "new-urgent"]
    queue.put("old-routine", P.ROUTINE)
    clock.now += 59
    queue.put("new-urgent", P.URGENT)
    assert drain(queue) == ["new-urgent", "old-routine"]


def test_ageing_climbs_one_level_per_max_wait_up_to_stat() -> None:
    assert [aged_level(P.ROUTINE, s, 10) for s in (0, 9.9, 10, 25, 30, 500)] == [
        P.ROUTINE, P.ROUTINE, P.URGENT, P.ASAP, P.STAT, P.STAT,
    ]  # fmt: skip
    assert aged_level(P.ROUTINE, 10_000, 0) is P.ROUTINE  # 0 switches ageing off


def test_a_raised_priority_moves_a_waiting_job_up_and_keeps_its_wait() -> None:
    clock = FakeClock()
    queue = PriorityJobQueue(max_wait_s=0, clock=clock)
    for n in range(5):
        queue.put(f"r{n}", P.ROUTINE)
        clock.now += 1
    queue.put("s-new", P.STAT)
    assert queue.put("r3", P.STAT)  # HL7 XO raised it; it was queued before s-new
    assert not queue.put("r3", P.URGENT)  # a lower one changes nothing
    assert len(queue) == 6
    assert drain(queue) == ["r3", "s-new", "r0", "r1", "r2", "r4"]


def test_explanations_run_only_when_no_scoring_job_waits_or_runs() -> None:
    queue = InlineJobQueue(workers=1, max_wait_s=0)
    log: list[str] = []
    scoring_may_finish = threading.Event()

    def score(job_id: str) -> None:
        if job_id == "s0":
            scoring_may_finish.wait(10)
        log.append(job_id)

    queue.bind(score, lambda job_id: log.append(f"explain {job_id}"))
    queue.start()
    try:
        queue.enqueue("s0", P.ROUTINE)
        queue.enqueue_explanation("e0")
        for n in range(1, 4):
            queue.enqueue(f"s{n}", P.ROUTINE)
        scoring_may_finish.set()
        assert queue.wait_idle(10)
    finally:
        queue.stop()
    assert log == ["s0", "s1", "s2", "s3", "explain e0"]
