"""The local backend: real spawned workers, real signals (tests wait on events, never on time)."""

import os
import signal
import threading

import pytest

import metaprune.testing.tasks  # noqa: F401 - registers the test tasks
from metaprune.errors import InvalidInputError, NotFoundError
from metaprune.executor import Resources, TaskSpec, create_executor

pytestmark = pytest.mark.timeout(180)
T = "metaprune.testing.tasks:"
WAIT = 120  # generous bound for a loaded machine; a healthy run takes seconds


@pytest.fixture(scope="module")
def executor():
    ex = create_executor("local", workers=2, cancel_grace=2.0)
    yield ex
    pids = [p for p in ex.worker_pids if p]
    ex.shutdown()
    for pid in pids:  # no worker outlives the executor
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def started(executor, fn, args, **kw):
    """Submit and wait until the task has reported its first progress event in a worker."""
    first = threading.Event()
    events: list[dict] = []

    def on_progress(event):
        events.append(event)
        first.set()

    handle = executor.submit(TaskSpec(T + fn, args, **kw), on_progress=on_progress)
    assert first.wait(WAIT), f"{fn} never reported progress"
    return handle, events


def test_result_and_plain_data_round_trip(executor):
    result = executor.submit(TaskSpec(T + "echo", {"x": [1, "two", {"3": 3.0}]})).result(WAIT)
    assert result.status == "succeeded" and result.error is None
    assert result.value["args"] == {"x": [1, "two", {"3": 3.0}]}
    assert result.value["pid"] in executor.worker_pids and result.value["pid"] != os.getpid()


def test_threads_follow_the_cpu_request(executor):
    one = executor.submit(TaskSpec(T + "matmul", {"size": 8, "repeats": 1})).result(WAIT)
    two = executor.submit(
        TaskSpec(T + "matmul", {"size": 8, "repeats": 1}, resources=Resources(num_cpus=2))
    ).result(WAIT)
    assert one.value["threads"] == 1 and two.value["threads"] == 2
    assert one.value["checksum"] == two.value["checksum"]  # same seeded work


def test_a_raising_task_fails_with_its_reason_and_the_pool_continues(executor):
    pids = executor.worker_pids
    result = executor.submit(TaskSpec(T + "fail", {"message": "bad weights"})).result(WAIT)
    assert result.status == "failed" and result.value is None
    assert result.error == "ValueError: bad weights"  # type and message, no stack trace
    assert executor.worker_pids == pids  # an exception does not cost a worker
    assert executor.submit(TaskSpec(T + "echo", {})).result(WAIT).ok


def test_a_worker_killed_by_pid_fails_its_task_and_is_replaced(executor):
    handle, _ = started(executor, "sleep", {"steps": 100, "seconds": 100})
    pid = handle.worker_pid
    assert pid in executor.worker_pids
    os.kill(pid, signal.SIGKILL)
    result = handle.result(WAIT)
    assert result.status == "failed"
    assert result.error == "worker process died: killed by signal 9 (SIGKILL)"
    assert pid not in executor.worker_pids
    # the replacement is warm and takes work; both slots serve tasks again
    handles = [executor.submit(TaskSpec(T + "echo", {"i": i})) for i in range(4)]
    results = [h.result(WAIT) for h in handles]
    assert all(r.ok for r in results) and [r.value["args"]["i"] for r in results] == [0, 1, 2, 3]
    assert all(r.value["pid"] != pid for r in results)


def test_a_worker_that_exits_reports_its_exit_code(executor):
    result = executor.submit(TaskSpec(T + "die", {"exit_code": 3})).result(WAIT)
    assert result.status == "failed" and result.error == "worker process died: exited with code 3"
    assert executor.submit(TaskSpec(T + "echo", {})).result(WAIT).ok


def test_cooperative_cancel_keeps_the_worker(executor):
    handle, events = started(executor, "sleep", {"steps": 1000, "seconds": 100})
    pid = handle.worker_pid
    handle.cancel()
    result = handle.result(WAIT)
    assert result.status == "cancelled" and "cancelled during sleep" in result.error
    assert pid in executor.worker_pids  # it stopped by itself: no kill
    assert events and events[-1]["step"] < 1000


def test_a_task_ignoring_cancel_is_killed_after_the_grace_period(executor):
    handle, _ = started(executor, "stubborn", {"seconds": 100})
    pid = handle.worker_pid
    handle.cancel()
    result = handle.result(WAIT)
    assert result.status == "cancelled"
    assert "the worker was stopped (killed by signal 9 (SIGKILL))" in result.error
    assert pid not in executor.worker_pids
    assert executor.submit(TaskSpec(T + "echo", {})).result(WAIT).ok


def test_cancel_of_a_queued_task(executor):
    busy = [started(executor, "sleep", {"steps": 1000, "seconds": 100})[0] for _ in range(2)]
    queued = executor.submit(TaskSpec(T + "echo", {}))
    assert not queued.started.is_set()
    queued.cancel()
    result = queued.result(WAIT)
    assert result.status == "cancelled" and result.error == "cancelled before it started"
    assert queued.worker_pid is None
    for h in busy:
        h.cancel()
        assert h.result(WAIT).status == "cancelled"


def test_progress_is_throttled_ordered_and_complete_before_the_result(executor):
    events: list[dict] = []
    handle = executor.submit(
        TaskSpec(T + "sleep", {"steps": 300, "seconds": 0.3, "stage": "fast"}),
        on_progress=events.append,
    )
    result = handle.result(WAIT)
    assert result.ok and result.value["steps"] == 300
    steps = [e["step"] for e in events]
    assert steps[0] == 0 and steps[-1] == 300  # first and last of the stage always arrive
    assert steps == sorted(steps) and len(steps) < 300  # in order, and thinned
    assert all(
        e == {"stage": "fast", "step": e["step"], "total": 300, "metrics": {}} for e in events
    )


def test_memory_request_caps_the_task(executor):
    big = executor.submit(
        TaskSpec(T + "allocate", {"bytes": 4 << 30}, resources=Resources(memory_bytes=256 << 20))
    ).result(WAIT)
    assert big.status == "failed" and big.error.startswith("MemoryError")
    small = executor.submit(
        TaskSpec(T + "allocate", {"bytes": 1 << 20}, resources=Resources(memory_bytes=256 << 20))
    ).result(WAIT)
    assert small.ok and small.value == {"allocated": 1 << 20}
    # the cap is lifted after the task: the same worker may allocate more again
    assert executor.submit(TaskSpec(T + "allocate", {"bytes": 512 << 20})).result(WAIT).ok


def test_submit_refuses_what_it_cannot_run(executor):
    with pytest.raises(NotFoundError, match="'os:system' is not registered"):
        executor.submit(TaskSpec("os:system", {"command": "true"}))
    with pytest.raises(InvalidInputError, match="GPU"):
        executor.submit(TaskSpec(T + "echo", {}, resources=Resources(num_gpus=1)))
    handle, _ = started(executor, "sleep", {"steps": 1000, "seconds": 100}, task_id="dup")
    with pytest.raises(InvalidInputError, match="'dup' is already in use"):
        executor.submit(TaskSpec(T + "echo", {}, task_id="dup"))
    handle.cancel()
    assert handle.result(WAIT).status == "cancelled"
    assert executor.submit(TaskSpec(T + "echo", {}, task_id="dup")).result(WAIT).ok  # free again


def test_shutdown_cancels_running_tasks_and_stops_workers():
    ex = create_executor("local", workers=1, cancel_grace=2.0)
    with ex:
        handle, _ = started(ex, "sleep", {"steps": 1000, "seconds": 100})
        queued = ex.submit(TaskSpec(T + "echo", {}))
        pid = handle.worker_pid
    assert handle.result(0).status == "cancelled" and queued.result(0).status == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="shut down"):
        ex.submit(TaskSpec(T + "echo", {}))
    ex.shutdown()  # idempotent
