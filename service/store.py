"""The job store: models, their owners and jobs in an embedded SQLite database (WAL).

The database ``metaprune.db`` sits beside the blob directory (:mod:`service.blobs`) in the
data directory. Tables::

    models(model_id PK, sha256, size, spec_json, params, created_at)
    model_refs(model_id, owner, display_name, created_at)   -- who uploaded it
    jobs(seq PK autoincrement, job_id UNIQUE, owner, request_id, request_hash, model_id,
         dataset, config_json, state, created_at, started_at, finished_at, error,
         attempts, latest_event_json, result_sha256, result_size, summary_json,
         graceful_stops, dataset_kwargs_json)

The schema is versioned (``PRAGMA user_version``, :data:`SCHEMA_VERSION`); an older
database is migrated in place when it is opened.

WAL mode lets readers (listing, watching) proceed while a writer commits; every write is
one transaction, so a crash leaves the previous committed state. One connection is shared
under a lock: the service's writes are tiny and rare (per RPC and per job transition,
progress is persisted at most once a second per job).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

__all__ = ["ACTIVE_STATES", "FINAL_STATES", "SCHEMA_VERSION", "JobRecord", "ModelRecord", "Store"]

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled",
)  # fmt: skip
ACTIVE_STATES = (QUEUED, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    spec_json TEXT NOT NULL, params INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS model_refs (
    model_id TEXT NOT NULL REFERENCES models(model_id), owner TEXT NOT NULL,
    display_name TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (model_id, owner));
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL,
    request_id TEXT NOT NULL, request_hash TEXT NOT NULL, model_id TEXT NOT NULL,
    dataset TEXT NOT NULL, config_json TEXT NOT NULL, state TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0, latest_event_json TEXT, result_sha256 TEXT,
    result_size INTEGER, summary_json TEXT, UNIQUE (owner, request_id));
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
"""
#: (schema version, statements): applied in order to a database whose ``user_version`` is
#: lower, in one transaction each; a new database is created as version 1 and migrated too,
#: so both paths end in the same schema
_MIGRATIONS: tuple[tuple[int, str], ...] = (
    # graceful stops (SIGTERM) re-queue a running job without counting as a crash
    (2, "ALTER TABLE jobs ADD COLUMN graceful_stops INTEGER NOT NULL DEFAULT 0"),
    # the dataset options a job runs with (CreatePruneJobRequest.dataset_kwargs)
    (3, "ALTER TABLE jobs ADD COLUMN dataset_kwargs_json TEXT NOT NULL DEFAULT '{}'"),
)
SCHEMA_VERSION = _MIGRATIONS[-1][0]


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    model_id: str
    sha256: str
    size: int
    spec_json: str
    params: int
    created_at: float
    display_name: str = ""


@dataclasses.dataclass(frozen=True)
class JobRecord:
    seq: int
    job_id: str
    owner: str
    request_id: str
    request_hash: str
    model_id: str
    dataset: str
    config: dict[str, Any]
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str
    attempts: int
    latest_event: dict[str, Any] | None
    result_sha256: str | None
    result_size: int | None
    summary: dict[str, Any] | None
    dataset_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    graceful_stops: int = 0  # starts that ended in a graceful server stop (not crashes)

    @property
    def crashes(self) -> int:
        """Starts that ended with the server dying (``attempts`` minus graceful stops)."""
        return self.attempts - self.graceful_stops

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES


class Store:
    """SQLite (WAL) persistence of models and jobs; thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed job survives power loss too
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for target, sql in _MIGRATIONS:
                if version < target:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._db.execute(sql)
                        self._db.execute(f"PRAGMA user_version = {int(target)}")
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                    version = target

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    def _rows(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # ------------------------------------------------------------------ models

    def add_model(self, record: ModelRecord, owner: str) -> bool:
        """Store a model row (if new) and ``owner``'s reference; True if ``owner`` had no
        reference yet. Whether *another* owner stored the same bytes is never revealed:
        the bytes are stored once, but ``created`` is per owner."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                    (record.model_id, record.sha256, record.size, record.spec_json,
                     record.params, record.created_at),
                )  # fmt: skip
                new = (
                    self._db.execute(
                        "INSERT OR IGNORE INTO model_refs VALUES (?, ?, ?, ?)",
                        (record.model_id, owner, record.display_name, record.created_at),
                    ).rowcount
                    == 1
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return new

    def get_model(self, model_id: str, owner: str | None) -> ModelRecord | None:
        """The model if ``owner`` uploaded it (``None`` owner = any, for admins)."""
        if owner is None:
            rows = self._rows(
                "SELECT m.*, COALESCE(MIN(r.display_name), '') AS display_name FROM models m "
                "LEFT JOIN model_refs r USING (model_id) WHERE m.model_id = ? GROUP BY m.model_id",
                (model_id,),
            )
        else:
            rows = self._rows(  # the owner's own upload time, not the first uploader's
                "SELECT m.model_id, m.sha256, m.size, m.spec_json, m.params, r.created_at, "
                "r.display_name FROM models m JOIN model_refs r USING (model_id) "
                "WHERE m.model_id = ? AND r.owner = ?",
                (model_id, owner),
            )
        return ModelRecord(**dict(rows[0])) if rows else None

    def remove_model_ref(self, model_id: str, owner: str | None) -> bool:
        """Drop ``owner``'s reference (every reference for ``None``); True if one existed."""
        if owner is None:
            cur = self._write("DELETE FROM model_refs WHERE model_id = ?", (model_id,))
        else:
            cur = self._write(
                "DELETE FROM model_refs WHERE model_id = ? AND owner = ?", (model_id, owner)
            )
        return cur.rowcount > 0

    def drop_model_if_unused(self, model_id: str) -> ModelRecord | None:
        """Delete the model row when no reference and no job uses it; return what was deleted."""
        with self._lock:
            used = self._db.execute(
                "SELECT (SELECT COUNT(*) FROM model_refs WHERE model_id = ?) + "
                "(SELECT COUNT(*) FROM jobs WHERE model_id = ?)",
                (model_id, model_id),
            ).fetchone()[0]
            if used:
                return None
            rows = self._db.execute("SELECT * FROM models WHERE model_id = ?", (model_id,))
            row = rows.fetchone()
            if row is None:
                return None
            self._db.execute("DELETE FROM models WHERE model_id = ?", (model_id,))
            return ModelRecord(**dict(row))

    def active_jobs_of_model(self, model_id: str, owner: str | None) -> int:
        sql = "SELECT COUNT(*) FROM jobs WHERE model_id = ? AND state IN ('queued', 'running')"
        params: tuple = (model_id,)
        if owner is not None:
            sql, params = sql + " AND owner = ?", (model_id, owner)
        return int(self._rows(sql, params)[0][0])

    def used_bytes(self) -> int:
        """Bytes charged to the blob quota: each owner's reference to a model counts its full
        size, as if every owner had stored their own copy (a model kept only by jobs counts
        once), plus results. Disk use is at most this, and what an upload is charged never
        depends on whether someone else stored the same bytes (no de-duplication side
        channel)."""
        rows = self._rows(
            "SELECT (SELECT COALESCE(SUM(m.size * MAX(1, (SELECT COUNT(*) FROM model_refs r "
            "WHERE r.model_id = m.model_id))), 0) FROM models m) + "
            "(SELECT COALESCE(SUM(result_size), 0) FROM jobs)"
        )
        return int(rows[0][0])

    # ------------------------------------------------------------------ jobs

    def insert_job(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Insert a job unless ``(owner, request_id)`` exists; return (the job, created)."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO jobs (job_id, owner, request_id, request_hash, model_id, "
                "dataset, config_json, state, created_at, error, attempts, dataset_kwargs_json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '', 0, ?)",
                (record.job_id, record.owner, record.request_id, record.request_hash,
                 record.model_id, record.dataset, json.dumps(record.config), record.state,
                 record.created_at, json.dumps(record.dataset_kwargs)),
            )  # fmt: skip
            created = cur.rowcount == 1
            row = self._db.execute(
                "SELECT * FROM jobs WHERE owner = ? AND request_id = ?",
                (record.owner, record.request_id),
            ).fetchone()
        return _job(row), created

    def get_job(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        if owner is None:
            rows = self._rows("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        else:
            rows = self._rows("SELECT * FROM jobs WHERE job_id = ? AND owner = ?", (job_id, owner))
        return _job(rows[0]) if rows else None

    def find_job_by_request(self, owner: str, request_id: str) -> JobRecord | None:
        rows = self._rows(
            "SELECT * FROM jobs WHERE owner = ? AND request_id = ?", (owner, request_id)
        )
        return _job(rows[0]) if rows else None

    def count_jobs(self, states: tuple[str, ...], owner: str | None = None) -> int:
        sql = f"SELECT COUNT(*) FROM jobs WHERE state IN ({', '.join('?' * len(states))})"
        params: list[Any] = list(states)
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        return int(self._rows(sql, tuple(params))[0][0])

    def list_jobs(
        self, owner: str | None, states: tuple[str, ...] = (), before_seq: int | None = None,
        limit: int = 50,
    ) -> list[JobRecord]:  # fmt: skip
        """Newest first; ``before_seq`` pages (jobs with a smaller ``seq``)."""
        where, params = ["1 = 1"], []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params += list(states)
        if before_seq is not None:
            where.append("seq < ?")
            params.append(before_seq)
        sql = f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        return [_job(r) for r in self._rows(sql, (*params, limit))]

    def jobs_in(self, states: tuple[str, ...], owner: str | None = None) -> list[JobRecord]:
        """Jobs in ``states``, oldest first (the queue order)."""
        sql = f"SELECT * FROM jobs WHERE state IN ({', '.join('?' * len(states))})"
        params: list[Any] = list(states)
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        return [_job(r) for r in self._rows(sql + " ORDER BY seq", tuple(params))]

    def update_job(
        self, job_id: str, *, only_if_state: tuple[str, ...] = (), **fields: Any
    ) -> bool:
        """Set columns of one job (``config``/``latest_event``/``summary`` as JSON); with
        ``only_if_state`` the update happens only while the job is in one of those states.
        Returns whether a row changed."""
        columns = {
            {"latest_event": "latest_event_json", "summary": "summary_json"}.get(k, k): (
                json.dumps(v) if k in ("latest_event", "summary") and v is not None else v
            )
            for k, v in fields.items()
        }
        sql = f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in columns)} WHERE job_id = ?"
        params: list[Any] = [*columns.values(), job_id]
        if only_if_state:
            sql += f" AND state IN ({', '.join('?' * len(only_if_state))})"
            params += list(only_if_state)
        return self._write(sql, tuple(params)).rowcount == 1

    def requeue_after_stop(self, job_id: str, **fields: Any) -> bool:
        """Put a running job back in the queue after a graceful stop (not a crash: the
        stop is counted in ``graceful_stops``, which recovery subtracts from ``attempts``)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                changed = self.update_job(job_id, only_if_state=(RUNNING,), state=QUEUED, **fields)
                if changed:
                    self._db.execute(
                        "UPDATE jobs SET graceful_stops = graceful_stops + 1 WHERE job_id = ?",
                        (job_id,),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return changed

    def delete_job(self, job_id: str) -> None:
        self._write("DELETE FROM jobs WHERE job_id = ?", (job_id,))


def _job(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    return JobRecord(
        seq=data["seq"], job_id=data["job_id"], owner=data["owner"],
        request_id=data["request_id"], request_hash=data["request_hash"],
        model_id=data["model_id"], dataset=data["dataset"],
        config=json.loads(data["config_json"]), state=data["state"],
        created_at=data["created_at"], started_at=data["started_at"],
        finished_at=data["finished_at"], error=data["error"], attempts=data["attempts"],
        latest_event=json.loads(data["latest_event_json"]) if data["latest_event_json"] else None,
        result_sha256=data["result_sha256"], result_size=data["result_size"],
        summary=json.loads(data["summary_json"]) if data["summary_json"] else None,
        dataset_kwargs=json.loads(data.get("dataset_kwargs_json") or "{}"),
        graceful_stops=data["graceful_stops"],
    )  # fmt: skip
