"""The ledger's tables, the SQLite connection setup, and the schema migrations."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, Index, create_engine, event, text
from sqlmodel import Field, SQLModel

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 4


class FileRecord(SQLModel, table=True):
    """One input file: its identity (SHA-256), its layout, and where it is in its life."""

    __tablename__ = "files"

    id: int | None = Field(default=None, primary_key=True)
    sha256: str = Field(index=True)
    name: str  # the file's name as dropped
    path: str  # where it was claimed: inbox/.processing/<id>-<name> (older ledgers: the inbox path itself)
    size: int
    state: str
    outcome: str | None = None  # summary.json's status, once known
    data_key: str
    mode: str
    layout: str = "{}"  # JSON: format, encoding, delimiter, sheet, headers, columns, key column, warnings
    error: str | None = None  # why an unreadable file failed
    report_base: str | None = None  # reports' stem in the outbox ("LineA/x"), fixed before writing
    destination: str | None = None  # where the input is moved, fixed before it is moved
    received_at: str
    finished_at: str | None = None
    # Schema 2: the row counts by status, fixed when the file is done, so that `status` need not count millions
    # of rows and the counts outlive `prune`.
    counts: str | None = None
    # Schema 3. Why its reports could not be written or its input moved (the outbox unmounted, a full disk):
    # retried with backoff, shown by `status`; cleared once delivered.
    delivery_error: str | None = None


class RowRecord(SQLModel, table=True):
    """One data row of a file; its identity is (file, spreadsheet row number)."""

    __tablename__ = "rows"
    # Clustered by file and row number: every per-file query (plan, report, counts) is a range scan.
    # No index on key: with random codes it made inserts three times slower, while the two queries that match
    # keys (repeats within a file, open rows of earlier files) sort once instead (SQLite's automatic index).
    # Schema 3: a partial index of the open rows, so that "has this file an open row?" (asked on every turn of the
    # loop) is one index probe however many of the file's rows are final; final rows leave it.
    __table_args__ = (
        Index("rows_open", "file_id", sqlite_where=text("status IN ('pending', 'queued')")),
        {"sqlite_with_rowid": False},
    )

    file_id: int = Field(primary_key=True, foreign_key="files.id")
    line: int = Field(primary_key=True)
    key: str | None = None
    data_hash: str | None = None  # hash of the normalized SCM data (what would be sent besides the key)
    cells: str  # JSON list of the row's cells in header order, as read
    status: str
    detail: str = ""
    batch_id: int | None = None  # the batch it is (or was last) in, for the reports


class BatchRowRecord(SQLModel, table=True):
    """Which rows a batch carries (schema 2), clustered by batch so that sending one reads one range.

    Written in batch order when a file is planned: appending here and updating rows in row order keeps planning
    a million rows sequential, where an index on rows.batch_id made every insert land at random.
    """

    __tablename__ = "batch_rows"
    __table_args__ = ({"sqlite_with_rowid": False},)

    batch_id: int = Field(primary_key=True)
    line: int = Field(primary_key=True)


class BatchRecord(SQLModel, table=True):
    """One unit of upload: a sync call's items (or, later, an async job); retries are its own state."""

    __tablename__ = "batches"
    __table_args__ = (Index("batches_due", "state", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    file_id: int = Field(foreign_key="files.id", index=True)
    seq: int  # the batch's number within its file, from 1
    kind: str  # sync | async
    state: str
    size: int
    attempts: int = 0  # requests sent for this batch (its API calls)
    failures: int = 0  # transient failures in a row, counted against retry.max_attempts
    next_attempt_at: float = 0.0  # epoch seconds; the batch is due from then on
    ambiguous: bool = False  # an earlier attempt may have been applied before its answer was lost
    last_error: str | None = None
    created_at: str
    finished_at: str | None = None
    # Schema 2. A batch split to isolate defective items names the batch it came from.
    parent_id: int | None = None
    interrupted: int = 0  # restarts that caught this batch `sending` (its request may or may not have left)
    # Async jobs: the shared data's hash, the job's reference and task, followed to its end.
    data_hash: str | None = None
    reference: str | None = None
    task_id: str | None = None
    task_state: str | None = None  # the state as the API last named it
    codes_affected: int | None = None
    submitted_at: float | None = None  # epoch seconds; a task older than poll.timeout_seconds is failed
    # Schema 3. When the task was last asked about: after a restart its age counts up to there, not the downtime.
    polled_at: float | None = None


class CodeRecord(SQLModel, table=True):
    """The last data uploaded per code: what idempotency needs, kept after rows are pruned."""

    __tablename__ = "codes"

    data_key: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    data_hash: str
    file_id: int
    line: int
    uploaded_at: str


class NotificationRecord(SQLModel, table=True):
    """Schema 4. One notification to one channel (webhook, email, command): queued in the transaction that
    records its event, marked sent after delivery, retried with backoff until a bound, then given up."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("notifications_event", "event_key", "channel", unique=True),  # an event is queued once per channel
        Index("notifications_due", "state", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_key: str  # the event's stable id, also sent in the notification so that a receiver can drop a repeat
    channel: str  # webhook | email | command
    event: str  # file_finished | uploads_paused | uploads_resumed
    payload: str  # JSON: the text and the structured fields, scrubbed of secrets when queued
    state: str  # pending | sent | given_up
    attempts: int = 0  # deliveries tried
    next_attempt_at: float = 0.0  # epoch seconds; due from then on
    last_error: str | None = None
    created_at: str
    sent_at: str | None = None


class MetaRecord(SQLModel, table=True):
    """Key-value facts about the ledger itself, such as its schema version."""

    __tablename__ = "meta"

    key: str = Field(primary_key=True)
    value: str


# Each migration is written out as the DDL of its day, so that a ledger of any age is brought forward the same way
# as a new one; tests check that the result matches the models above.
_V1 = [
    """CREATE TABLE files (id INTEGER NOT NULL, sha256 VARCHAR NOT NULL, name VARCHAR NOT NULL, path VARCHAR NOT NULL,
    size INTEGER NOT NULL, state VARCHAR NOT NULL, outcome VARCHAR, data_key VARCHAR NOT NULL, mode VARCHAR NOT NULL,
    layout VARCHAR NOT NULL, error VARCHAR, report_base VARCHAR, destination VARCHAR, received_at VARCHAR NOT NULL,
    finished_at VARCHAR, PRIMARY KEY (id))""",
    "CREATE INDEX ix_files_sha256 ON files (sha256)",
    """CREATE TABLE rows (file_id INTEGER NOT NULL, line INTEGER NOT NULL, "key" VARCHAR, data_hash VARCHAR,
    cells VARCHAR NOT NULL, status VARCHAR NOT NULL, detail VARCHAR NOT NULL, batch_id INTEGER,
    PRIMARY KEY (file_id, line), FOREIGN KEY(file_id) REFERENCES files (id)) WITHOUT ROWID""",
    "CREATE INDEX rows_batch ON rows (batch_id) WHERE batch_id IS NOT NULL",
    """CREATE TABLE batches (id INTEGER NOT NULL, file_id INTEGER NOT NULL, seq INTEGER NOT NULL, kind VARCHAR NOT NULL,
    state VARCHAR NOT NULL, size INTEGER NOT NULL, attempts INTEGER NOT NULL, failures INTEGER NOT NULL,
    next_attempt_at FLOAT NOT NULL, ambiguous BOOLEAN NOT NULL, last_error VARCHAR, created_at VARCHAR NOT NULL,
    finished_at VARCHAR, PRIMARY KEY (id), FOREIGN KEY(file_id) REFERENCES files (id))""",
    "CREATE INDEX ix_batches_file_id ON batches (file_id)",
    "CREATE INDEX batches_due ON batches (state, next_attempt_at)",
    """CREATE TABLE codes (data_key VARCHAR NOT NULL, "key" VARCHAR NOT NULL, data_hash VARCHAR NOT NULL,
    file_id INTEGER NOT NULL, line INTEGER NOT NULL, uploaded_at VARCHAR NOT NULL, PRIMARY KEY (data_key, "key"))""",
    """CREATE TABLE meta ("key" VARCHAR NOT NULL, value VARCHAR NOT NULL, PRIMARY KEY ("key"))""",
]
_V2 = [
    "CREATE TABLE batch_rows (batch_id INTEGER NOT NULL, line INTEGER NOT NULL, PRIMARY KEY (batch_id, line)) "
    "WITHOUT ROWID",
    "INSERT INTO batch_rows (batch_id, line) SELECT batch_id, line FROM rows WHERE batch_id IS NOT NULL",
    "DROP INDEX rows_batch",
    "ALTER TABLE files ADD COLUMN counts VARCHAR",
    "ALTER TABLE batches ADD COLUMN parent_id INTEGER",
    "ALTER TABLE batches ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE batches ADD COLUMN data_hash VARCHAR",
    "ALTER TABLE batches ADD COLUMN reference VARCHAR",
    "ALTER TABLE batches ADD COLUMN task_id VARCHAR",
    "ALTER TABLE batches ADD COLUMN task_state VARCHAR",
    "ALTER TABLE batches ADD COLUMN codes_affected INTEGER",
    "ALTER TABLE batches ADD COLUMN submitted_at FLOAT",
]


def _run(statements: list[str]) -> Callable[[Connection], None]:
    def apply(conn: Connection) -> None:
        for statement in statements:
            conn.exec_driver_sql(statement)

    return apply


# Version N's entry brings a ledger from version N-1 to N; each runs in the same transaction as the version bump.
_V3 = [
    "ALTER TABLE batches ADD COLUMN polled_at FLOAT",
    "ALTER TABLE files ADD COLUMN delivery_error VARCHAR",
    "CREATE INDEX rows_open ON rows (file_id) WHERE status IN ('pending', 'queued')",
]
_V4 = [
    """CREATE TABLE notifications (id INTEGER NOT NULL, event_key VARCHAR NOT NULL, channel VARCHAR NOT NULL,
    event VARCHAR NOT NULL, payload VARCHAR NOT NULL, state VARCHAR NOT NULL, attempts INTEGER NOT NULL,
    next_attempt_at FLOAT NOT NULL, last_error VARCHAR, created_at VARCHAR NOT NULL, sent_at VARCHAR,
    PRIMARY KEY (id))""",
    "CREATE UNIQUE INDEX notifications_event ON notifications (event_key, channel)",
    "CREATE INDEX notifications_due ON notifications (state, next_attempt_at)",
]
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _run(_V1), 2: _run(_V2), 3: _run(_V3), 4: _run(_V4)}


class LedgerVersionError(Exception):
    """The ledger was written by a newer scm-daemon than this one."""


def connect(path: Path) -> Engine:
    """An engine on the ledger file (WAL, busy timeout, foreign keys, full fsync), migrated to the latest schema."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed state change survives a power cut too, not only a crash; commits are per step, not per row.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.close()

    migrate(engine)
    return engine


def schema_version(conn: Connection) -> int:
    """The ledger's schema version; 0 for an empty file."""
    has_meta = conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").first()
    if not has_meta:
        return 0
    row = conn.exec_driver_sql("SELECT value FROM meta WHERE key='schema_version'").first()
    return int(row[0]) if row else 0


def migrate(engine: Engine) -> None:
    """Bring the ledger to SCHEMA_VERSION, one migration per transaction."""
    with engine.begin() as conn:
        current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise LedgerVersionError(
            f"the ledger has schema version {current}, newer than this scm-daemon knows ({SCHEMA_VERSION}); "
            "upgrade scm-daemon or point paths.ledger at another file"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        with engine.begin() as conn:
            MIGRATIONS[version](conn)
            conn.exec_driver_sql(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(version),),
            )
        log.info("ledger_migrated", version=version)
