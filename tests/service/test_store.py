"""service/store.py: a database written before ``dataset_kwargs_json`` existed still opens."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from service.store import _SCHEMA, JobRecord, Store


def _record(**changes: object) -> JobRecord:
    base = JobRecord(
        seq=0, job_id="j1", owner="alice", request_id="r1", request_hash="h", model_id="m",
        dataset="synthetic", config={"seed": 0}, state="queued", created_at=1.0,
        started_at=None, finished_at=None, error="", attempts=0, latest_event=None,
        result_sha256=None, result_size=None, summary=None,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_an_older_database_gains_the_dataset_kwargs_column(tmp_path: Path) -> None:
    path = tmp_path / "metaprune.db"
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA)  # the first release's tables; later columns come by migration
    db.execute(
        "INSERT INTO jobs (job_id, owner, request_id, request_hash, model_id, dataset, "
        "config_json, state, created_at) VALUES ('old', 'alice', 'r0', 'h', 'm', 'digits', "
        "'{}', 'succeeded', 0.5)"
    )
    db.commit()
    db.close()
    store = Store(path)
    try:
        assert store.get_job("old").dataset_kwargs == {}
        job, created = store.insert_job(_record(dataset_kwargs={"image_size": 64}))
        assert created and job.dataset_kwargs == {"image_size": 64}
        assert store.get_job("j1").dataset_kwargs == {"image_size": 64}
    finally:
        store.close()
    reopened = Store(path)  # the migration runs once; opening again changes nothing
    try:
        assert reopened.get_job("j1").dataset_kwargs == {"image_size": 64}
    finally:
        reopened.close()
