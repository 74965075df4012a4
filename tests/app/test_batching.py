"""The micro-batcher (app.batching) on fake jobs: what it puts in one step, back-pressure, and closing."""
from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

import pytest

from app.batching import Batcher, EngineClosed, QueueFull


@dataclass(eq=False)
class FakeJob:
    rows: int  # rows per step
    steps: int = 1  # steps until done
    future: Future = field(default_factory=Future)
    t_submit: float = 0.0
    done: bool = False

    @property
    def pending_rows(self) -> int:
        return 0 if self.done else self.rows


class Recorder:
    """A step that records the jobs of each call; a job finishes after its steps."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False):
        self.calls: list[list[FakeJob]] = []
        self.gate, self.fail = gate, fail
        self.entered = threading.Event()

    def __call__(self, jobs: list[FakeJob]) -> None:
        self.calls.append(list(jobs))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise RuntimeError("boom")
        for j in jobs:
            j.steps -= 1
            if j.steps == 0:
                j.done = True
                j.future.set_result(len(self.calls))


def test_waiting_jobs_share_a_step_up_to_the_row_limit():
    gate = threading.Event()
    step = Recorder(gate)
    b = Batcher(step, max_batch_rows=10, max_wait_s=0.5, queue_size=16)
    b.start()
    try:
        first = FakeJob(rows=2)
        b.submit(first)  # alone, it is stepped at once; its step waits at the gate while the others queue
        assert step.entered.wait(5)
        others = [FakeJob(rows=4) for _ in range(4)]
        for j in others:
            b.submit(j)
        gate.set()
        for j in [first, *others]:
            j.future.result(5)
    finally:
        b.close(5)
    assert step.calls[0] == [first]
    rows = [sum(j.rows for j in call) for call in step.calls[1:]]
    # the queued jobs join a step until their rows reach the limit (the job that crosses it is taken too)
    assert rows[0] >= 10 and all(r <= 16 for r in rows) and sum(rows) == 16


def test_a_job_of_several_steps_stays_in_the_active_set():
    step = Recorder()
    b = Batcher(step, max_batch_rows=64, max_wait_s=0.0, queue_size=4)
    b.start()
    try:
        j = FakeJob(rows=3, steps=3)
        b.submit(j)
        assert j.future.result(5) == 3
    finally:
        b.close(5)
    assert [call == [j] for call in step.calls] == [True, True, True]


def test_queue_full_and_release():
    gate = threading.Event()
    b = Batcher(Recorder(gate), max_batch_rows=4, max_wait_s=0.0, queue_size=2)
    b.start()
    try:
        a, c = FakeJob(rows=1), FakeJob(rows=1)
        b.submit(a)
        b.submit(c)
        with pytest.raises(QueueFull):
            b.submit(FakeJob(rows=1))
        assert b.admitted == 2
        gate.set()
        a.future.result(5)
        c.future.result(5)
        b.submit(FakeJob(rows=1))  # finished jobs free their places
    finally:
        b.close(5)


def test_a_failing_step_fails_its_jobs_and_the_batcher_goes_on():
    step = Recorder(fail=True)
    b = Batcher(step, max_batch_rows=4, max_wait_s=0.0, queue_size=4)
    b.start()
    try:
        j = FakeJob(rows=1)
        b.submit(j)
        with pytest.raises(RuntimeError, match="boom"):
            j.future.result(5)
        step.fail = False
        k = FakeJob(rows=1)
        b.submit(k)
        assert k.future.result(5) >= 1
    finally:
        b.close(5)


def test_close_refuses_new_jobs_and_fails_what_never_ran():
    gate = threading.Event()
    b = Batcher(Recorder(gate), max_batch_rows=1, max_wait_s=0.0, queue_size=8)
    b.start()
    running, queued = FakeJob(rows=1), FakeJob(rows=1, steps=1)
    b.submit(running)
    b.submit(queued)
    closer = threading.Thread(target=lambda: b.close(0.2))
    closer.start()
    closer.join(2)
    gate.set()
    with pytest.raises(EngineClosed):
        b.submit(FakeJob(rows=1))
    outcomes = []
    for j in (running, queued):
        try:
            outcomes.append(j.future.result(5))
        except EngineClosed:
            outcomes.append("closed")
    assert "closed" in outcomes  # a job the thread never finished gets EngineClosed, not a hang
    assert not b.running


def test_fair_queue_takes_clients_round_robin():
    from app.batching import FairQueue

    q = FairQueue()
    for i in range(3):
        q.put(("heavy", i), "heavy")
    q.put(("light", 0), "light")
    q.put(("heavy", 3), "heavy")
    order = [q.get_nowait() for _ in range(5)]
    assert order == [("heavy", 0), ("light", 0), ("heavy", 1), ("heavy", 2), ("heavy", 3)]
    import queue as stdlib_queue

    with pytest.raises(stdlib_queue.Empty):
        q.get(timeout=0.01)


def test_a_light_client_is_not_queued_behind_a_heavy_clients_backlog():
    """A heavy client's ten queued jobs, then one light job: the light job runs in the next step, not the
    eleventh (one FIFO for everyone ran it last)."""
    gate = threading.Event()
    step = Recorder(gate)
    b = Batcher(step, max_batch_rows=4, max_wait_s=0.0, queue_size=32)
    b.start()
    try:
        heavy = [FakeJob(rows=4) for _ in range(10)]
        b.submit(heavy[0], "heavy")
        assert step.entered.wait(5)  # the first heavy job is running; the rest queue behind it
        for j in heavy[1:]:
            b.submit(j, "heavy")
        light = FakeJob(rows=1)
        b.submit(light, "light")
        gate.set()
        light.future.result(5)
        for j in heavy:
            j.future.result(5)
    finally:
        b.close(5)
    first_with_light = next(i for i, call in enumerate(step.calls) if light in call)
    assert first_with_light <= 2


def test_a_client_past_its_cap_gets_queue_full_and_others_still_get_in():
    gate = threading.Event()
    b = Batcher(Recorder(gate), max_batch_rows=4, max_wait_s=0.0, queue_size=8, max_per_client=2)
    b.start()
    try:
        mine = [FakeJob(rows=1), FakeJob(rows=1)]
        for j in mine:
            b.submit(j, "a")
        with pytest.raises(QueueFull) as e:
            b.submit(FakeJob(rows=1), "a")
        assert e.value.reason == "client_limit"
        other = FakeJob(rows=1)
        b.submit(other, "b")  # another client is not held by a's cap
        gate.set()
        for j in [*mine, other]:
            j.future.result(5)
        b.submit(FakeJob(rows=1), "a")  # a's finished requests free its places
    finally:
        b.close(5)
