"""The store: schema migration of an existing database, per-owner ``created`` and quota,
graceful stops counted apart from crashes, dataset options kept with the job."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path

from service import store as store_module
from service.store import SCHEMA_VERSION, JobRecord, ModelRecord, Store


def _model(model_id: str = "sha256:" + "a" * 64, created_at: float = 1.0) -> ModelRecord:
    return ModelRecord(
        model_id=model_id, sha256=model_id[7:], size=10, spec_json="{}", params=5,
        created_at=created_at, display_name="m",
    )  # fmt: skip


def _job(job_id: str, model_id: str, owner: str = "alice") -> JobRecord:
    return JobRecord(
        seq=0, job_id=job_id, owner=owner, request_id=f"r-{job_id}", request_hash="h",
        model_id=model_id, dataset="synthetic", config={}, state="queued",
        created_at=time.time(), started_at=None, finished_at=None, error="", attempts=0,
        latest_event=None, result_sha256=None, result_size=None, summary=None,
    )  # fmt: skip


def test_a_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "metaprune.db"
    old = sqlite3.connect(path)  # the schema as released before graceful_stops existed
    old.executescript(store_module._SCHEMA)
    old.execute(
        "INSERT INTO jobs (job_id, owner, request_id, request_hash, model_id, dataset, "
        "config_json, state, created_at, attempts) VALUES "
        "('j1', 'alice', 'r1', 'h', 'm', 'synthetic', '{}', 'running', 1.0, 2)"
    )
    old.commit()
    assert old.execute("PRAGMA user_version").fetchone()[0] == 0
    old.close()
    store = Store(path)
    job = store.get_job("j1")
    assert job is not None and job.attempts == 2 and job.graceful_stops == 0 and job.crashes == 2
    assert job.dataset_kwargs == {}  # a job stored before dataset options existed
    stored, created = store.insert_job(
        dataclasses.replace(_job("j2", "m"), dataset_kwargs={"image_size": 64})
    )
    assert created and stored.dataset_kwargs == {"image_size": 64}
    assert store.get_job("j2").dataset_kwargs == {"image_size": 64}
    store.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    columns = [row[1] for row in check.execute("PRAGMA table_info(jobs)")]
    assert columns.count("graceful_stops") == columns.count("dataset_kwargs_json") == 1
    check.close()
    Store(path).close()  # opening a migrated database again changes nothing
    fresh = Store(tmp_path / "new.db")  # a new database ends in the same schema
    fresh.close()
    check = sqlite3.connect(tmp_path / "new.db")
    assert [row[1] for row in check.execute("PRAGMA table_info(jobs)")] == columns
    check.close()


def test_created_is_per_owner_and_times_are_the_owners(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db")
    assert store.add_model(_model(created_at=100.0), "alice") is True
    assert store.add_model(_model(created_at=150.0), "alice") is False
    assert store.add_model(_model(created_at=200.0), "bob") is True  # not "already stored"
    assert store.add_model(_model(created_at=300.0), "bob") is False
    alice = store.get_model(_model().model_id, "alice")
    bob = store.get_model(_model().model_id, "bob")
    assert alice is not None and alice.created_at == 100.0
    assert bob is not None and bob.created_at == 200.0  # alice's upload time is not shown
    assert store.get_model(_model().model_id, "carol") is None
    assert store.remove_model_ref(_model().model_id, "alice")
    assert store.add_model(_model(created_at=400.0), "alice") is True  # deleted, uploaded again
    store.close()


def test_the_quota_charges_every_owners_reference_in_full(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    model_id = _model().model_id
    assert store.used_bytes() == 0
    store.add_model(_model(), "alice")
    store.add_model(_model(), "alice")  # a re-upload adds no reference
    assert store.used_bytes() == 10
    store.add_model(_model(), "bob")  # stored once on disk, charged as bob's own copy
    assert store.used_bytes() == 20
    store.insert_job(_job("j1", model_id))
    store.update_job("j1", result_size=7)
    assert store.used_bytes() == 27
    assert store.remove_model_ref(model_id, "alice") and store.remove_model_ref(model_id, "bob")
    assert store.used_bytes() == 17  # kept for the job only: counted once
    assert store.drop_model_if_unused(model_id) is None
    store.close()


def test_graceful_stops_are_counted_apart_from_crashes(tmp_path: Path) -> None:
    store = Store(tmp_path / "j.db")
    store.add_model(_model(), "alice")
    store.insert_job(_job("j1", _model().model_id))
    for attempt in (1, 2, 3):  # three starts, each ended by SIGTERM
        assert store.update_job("j1", state="running", attempts=attempt)
        assert store.requeue_after_stop("j1", latest_event={"stage": "prune"})
    job = store.get_job("j1")
    assert job is not None
    assert (job.state, job.attempts, job.graceful_stops, job.crashes) == ("queued", 3, 3, 0)
    assert job.latest_event == {"stage": "prune"}
    assert not store.requeue_after_stop("j1")  # only a running job is re-queued
    assert store.get_job("j1").graceful_stops == 3
    store.update_job("j1", state="running", attempts=4)  # then SIGKILL: one crash
    assert store.get_job("j1").crashes == 1
    store.close()


def test_a_job_stored_before_a_bound_existed_still_converts() -> None:
    from service import convert

    job = _job("old", "m")
    over = {**job.config, "seed": 2**40, "sparse": {"auto_grid": [0.1] * 1000}}
    message = convert.job_to_proto(dataclasses.replace(job, config=over))
    assert message.job_id == "old" and message.config.seed == 2**40
    assert len(message.config.sparse.auto_grid) == 1000  # shown as stored
    broken = {"seed": 10**30}  # not even representable: the config is left empty
    assert convert.job_to_proto(dataclasses.replace(job, config=broken)).config.seed == 0
