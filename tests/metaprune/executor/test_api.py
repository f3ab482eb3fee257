"""The executor's plain-data types, task registry, progress throttle and factory."""

import math

import pytest

import metaprune.executor.factory as factory
import metaprune.testing.tasks  # noqa: F401 - registers the test tasks
from metaprune.errors import InvalidInputError, NotFoundError
from metaprune.executor import (
    ProgressThrottle,
    Resources,
    TaskHandle,
    TaskResult,
    TaskSpec,
    create_executor,
    list_tasks,
    resolve_task,
    task,
)


def test_task_spec_accepts_plain_data_only():
    spec = TaskSpec("metaprune.testing.tasks:echo", {"a": [1, 2.5, None, {"b": True}]})
    assert spec.resources == Resources() and spec.task_id is None
    with pytest.raises(InvalidInputError, match="package.module:function"):
        TaskSpec("os.system", {})
    with pytest.raises(InvalidInputError, match="package.module:function"):
        TaskSpec("os:system; rm", {})
    with pytest.raises(InvalidInputError, match=r"plain data.*found bytes"):
        TaskSpec("a.b:c", {"blob": b"\x80\x04"})
    with pytest.raises(InvalidInputError, match=r"keys must be strings"):
        TaskSpec("a.b:c", {"x": {1: 2}})
    with pytest.raises(InvalidInputError, match="finite"):
        TaskSpec("a.b:c", {"x": math.nan})
    with pytest.raises(InvalidInputError, match="nested deeper"):
        nested: dict = {}
        for _ in range(40):
            nested = {"n": nested}
        TaskSpec("a.b:c", nested)
    with pytest.raises(InvalidInputError, match="task_id"):
        TaskSpec("a.b:c", {}, task_id="")


def test_resources_are_checked():
    assert Resources(num_cpus=0.5, memory_bytes=1 << 20).memory_bytes == 1 << 20
    for bad in ({"num_cpus": 0}, {"num_cpus": -1}, {"num_gpus": math.inf}, {"num_cpus": True}):
        with pytest.raises(InvalidInputError, match="Resources.num_"):
            Resources(**bad)
    with pytest.raises(InvalidInputError, match="memory_bytes"):
        Resources(memory_bytes=0)


def test_task_result_and_handle():
    assert TaskResult("succeeded", {"x": 1}).ok and not TaskResult("failed", error="e").ok
    with pytest.raises(ValueError, match="status"):
        TaskResult("done")
    assert TaskResult.short_error(ValueError("bad")) == "ValueError: bad"
    assert TaskResult.short_error(KeyError()) == "KeyError"
    assert len(TaskResult.short_error(ValueError("x" * 10_000))) < 2100
    cancelled = []
    handle = TaskHandle("t1", cancelled.append)
    assert not handle.done() and handle.worker_pid is None
    with pytest.raises(TimeoutError, match="t1"):
        handle.result(timeout=0.01)
    handle.cancel()
    assert cancelled == [handle]
    assert handle._finish(TaskResult("cancelled", error="stop"))
    assert not handle._finish(TaskResult("succeeded", {}))  # the first result wins
    handle.cancel()  # finished: no second cancel request
    assert cancelled == [handle] and handle.done() and handle.result(0).status == "cancelled"


def test_registry_is_an_allow_list():
    assert resolve_task("metaprune.testing.tasks:echo") is metaprune.testing.tasks.echo
    assert "metaprune.testing.tasks:sleep" in list_tasks()
    with pytest.raises(NotFoundError, match="not registered"):
        resolve_task("os:system")  # importable, but neither an allowed module nor a task
    with pytest.raises(NotFoundError, match="not registered"):
        resolve_task("metaprune.testing.tasks:Progress")  # in an allowed module, not a task
    with pytest.raises(ValueError, match="module-level"):

        @task
        def inner(args, progress, cancel):
            return {}


def test_throttle_keeps_the_last_event_of_each_stage():
    sent: list[dict] = []
    now = [0.0]
    throttle = ProgressThrottle(sent.append, interval=0.1, clock=lambda: now[0])
    for i in range(100):  # 100 events in 0.99 s of a 100-step stage
        throttle({"stage": "a", "step": i, "total": 100})
        now[0] += 0.01
    throttle({"stage": "b", "step": 0, "total": 3})
    throttle({"stage": "b", "step": 1, "total": 3})
    throttle({"stage": "b", "step": 3, "total": 3})  # completes its stage: sent at once
    throttle({"stage": "c", "step": 0, "total": 5})
    throttle({"stage": "c", "step": 1, "total": 5})  # held ...
    throttle.flush()  # ... until the task ends
    a_steps = [e["step"] for e in sent if e["stage"] == "a"]
    assert a_steps[0] == 0 and a_steps[-1] == 99  # first and last kept
    assert 9 <= len(a_steps) <= 12  # ~10 per second
    assert [e["step"] for e in sent if e["stage"] == "b"] == [0, 3]
    assert [e["step"] for e in sent if e["stage"] == "c"] == [0, 1]
    assert [e["stage"] for e in sent] == sorted(e["stage"] for e in sent)  # order preserved


def test_factory_refuses_bad_backends(monkeypatch):
    with pytest.raises(InvalidInputError, match="unknown executor backend 'dask'"):
        create_executor("dask")
    with pytest.raises(InvalidInputError, match="only meaningful with backend 'ray'"):
        create_executor("local", ray_address="auto")
    with pytest.raises(InvalidInputError, match="workers must be an int >= 1"):
        create_executor("local", workers=0)
    monkeypatch.setattr(factory, "ray_available", lambda: False)
    with pytest.raises(InvalidInputError, match=r"needs Ray.*pip install 'metaprune\[ray\]'"):
        create_executor("ray")
