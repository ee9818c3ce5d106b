"""The ingest worker's store stage: jobs run in order on one thread, at most ``depth`` wait,
and nothing submitted after a failed job runs (its positions would pass the failed batch)."""

from __future__ import annotations

import threading

import pytest

from crm_ledger.adapters.kafka.pipeline import StoreStage


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_results_come_back_in_the_order_submitted(depth: int) -> None:
    stage = StoreStage(depth)
    ran: list[int] = []
    for i in range(50):
        stage.submit(lambda i=i: ran.append(i) or i * i)
    assert stage.collect(wait=True) == [i * i for i in range(50)]
    assert ran == list(range(50))
    assert stage.pending == 0
    stage.close()


def test_the_jobs_run_on_another_thread_while_the_submitter_goes_on() -> None:
    stage = StoreStage(1)
    release = threading.Event()
    started = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(30)
        return threading.current_thread().name

    stage.submit(slow)
    assert started.wait(30)
    assert stage.collect() == []  # not finished: nothing to collect yet, and no waiting
    release.set()
    assert stage.collect(wait=True) == ["ledger-store"]
    stage.close()


def test_at_most_depth_jobs_wait_besides_the_one_running() -> None:
    stage = StoreStage(1)
    release = threading.Event()
    started = threading.Event()

    def blocked() -> int:
        started.set()
        release.wait(30)
        return 0

    stage.submit(blocked)
    assert started.wait(30)
    stage.submit(lambda: 1)  # waits in the queue
    third = threading.Thread(target=stage.submit, args=(lambda: 2,))
    third.start()
    third.join(0.2)
    assert third.is_alive()  # the submitter is held back: memory stays bounded
    release.set()
    third.join(30)
    assert not third.is_alive()
    assert stage.collect(wait=True) == [0, 1, 2]
    stage.close()


@pytest.mark.parametrize("depth", [0, 1])
def test_after_a_failed_job_none_of_the_later_ones_runs(depth: int) -> None:
    stage = StoreStage(depth)
    ran: list[str] = []
    gate = threading.Event()

    def first() -> str:
        gate.wait(30)
        ran.append("first")
        return "first"

    def failing() -> None:
        ran.append("failing")
        raise RuntimeError("the store refused the batch")

    if depth:
        stage.submit(first)
        stage.submit(failing)
        later = threading.Thread(target=stage.submit, args=(lambda: ran.append("later"),))
        later.start()
        gate.set()
        later.join(30)
    else:
        gate.set()
        stage.submit(first)
        stage.submit(failing)
    with pytest.raises(RuntimeError, match="refused the batch"):
        stage.collect(wait=True)
    # The failure sticks: nothing more is taken, and waiting for the skipped job's result
    # raises instead of blocking for ever (it may be collected from another thread).
    with pytest.raises(RuntimeError, match="refused the batch"):
        stage.submit(lambda: ran.append("after"))
    while stage.pending:
        with pytest.raises(RuntimeError, match="refused the batch"):
            stage.collect(wait=True)
    stage.close()
    assert ran == ["first", "failing"]


def test_close_lets_the_jobs_in_hand_finish() -> None:
    stage = StoreStage(2)
    done: list[int] = []
    for i in range(3):
        stage.submit(lambda i=i: done.append(i))
    stage.close()
    assert done == [0, 1, 2]
