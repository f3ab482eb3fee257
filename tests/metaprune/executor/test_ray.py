"""The Ray backend on a local ``ray.init(num_cpus=2)``: the executor contract, a batch with
the same summary as the local backend, and a 2-member zoo. One Ray instance for the module,
shut down afterwards with no process left behind."""

import os
import threading

import pytest
import ray  # the test environment installs the ray extra (make test): a missing Ray fails

import metaprune.testing.tasks  # noqa: F401 - registers the test tasks
from metaprune.batch import run_batch
from metaprune.errors import NotFoundError
from metaprune.executor import Resources, TaskSpec, create_executor
from metaprune.testing.batch import TINY_FIXED_CONFIG as CONFIG
from metaprune.testing.batch import make_tiny_models, write_manifest
from metaprune.testing.procs import descendants, wait_gone

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
T = "metaprune.testing.tasks:"
WAIT = 180


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    before = descendants()
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 << 20
    )
    started = descendants() - before
    assert started, "ray.init started no processes"
    yield
    ray.shutdown()
    assert wait_gone(descendants() & started | started) == set()  # no Ray process survives


def test_the_executor_contract_on_ray():
    with create_executor("ray", workers=2, cancel_grace=2.0) as ex:
        assert ex.backend == "ray"
        echo = ex.submit(
            TaskSpec(T + "echo", {"x": [1, {"y": 2.5}]}, resources=Resources(memory_bytes=64 << 20))
        )
        fail = ex.submit(TaskSpec(T + "fail", {"message": "bad weights"}))
        events: list[dict] = []
        fast = ex.submit(
            TaskSpec(T + "sleep", {"steps": 200, "seconds": 0.4, "stage": "s"}),
            on_progress=events.append,
        )
        result = echo.result(WAIT)
        assert result.ok and result.value["args"] == {"x": [1, {"y": 2.5}]}
        assert result.value["pid"] != os.getpid() and echo.worker_pid is None
        assert (
            fail.result(WAIT).status == "failed"
            and fail.result().error == "ValueError: bad weights"
        )
        assert fast.result(WAIT).ok
        steps = [e["step"] for e in events]
        assert steps[0] == 0 and steps[-1] == 200 and steps == sorted(steps) and len(steps) < 200

        first = threading.Event()
        slow = ex.submit(
            TaskSpec(T + "sleep", {"steps": 1000, "seconds": 100}),
            on_progress=lambda e: first.set(),
        )
        assert first.wait(WAIT)
        slow.cancel()
        assert slow.result(WAIT).status == "cancelled"
        with pytest.raises(NotFoundError, match="not registered"):
            ex.submit(TaskSpec("os:system", {}))
        assert ex.submit(TaskSpec(T + "echo", {})).result(WAIT).ok  # the pool goes on
    assert ray.is_initialized()  # the executor did not start this Ray, so it leaves it running


@pytest.mark.slow
def test_a_batch_on_ray_gives_the_same_summary_as_on_local_processes(tmp_path):
    make_tiny_models(tmp_path / "zoo", n=2)
    manifest = write_manifest(tmp_path / "m.yaml", [{"path": "zoo/*.safetensors"}], config=CONFIG)
    local = run_batch(manifest, tmp_path / "local", backend="local", workers=2, progress=False)
    on_ray = run_batch(manifest, tmp_path / "ray", backend="ray", workers=2, progress=False)
    assert local.counts["succeeded"] == on_ray.counts["succeeded"] == 4
    keys = ("model", "target", "status", "method", "base_val_accuracy", "base_test_accuracy",
            "final_val_accuracy", "final_test_accuracy", "base_macs", "final_macs", "final_params",
            "macs_speedup", "target_reached")  # fmt: skip
    assert [{k: r[k] for k in keys} for r in on_ray.rows] == [
        {k: r[k] for k in keys} for r in local.rows
    ]
    assert (tmp_path / "ray" / "m1" / "macs-2x" / "model.safetensors").is_file()


def test_the_zoo_builder_on_ray_builds_a_two_member_zoo(tmp_path):
    from metanet.zoo import Zoo, build_zoo, tiny_zoo_config

    built: list[str] = []
    zoo = build_zoo(tiny_zoo_config(size=2), tmp_path, backend="ray", workers=2, progress=False,
                    on_member=lambda m: built.append(m["name"]))  # fmt: skip
    assert sorted(built) == ["0000", "0001"] and sorted(zoo.finished()) == sorted(built)
    reopened = Zoo.open(tmp_path)
    assert sorted(reopened.finished()) == ["0000", "0001"]
    for name in reopened.members:
        model, spec = reopened.load_member(name)
        assert spec.name == "cifar_resnet20" and reopened.metrics(name)["macs_speedup"] >= 1.3
