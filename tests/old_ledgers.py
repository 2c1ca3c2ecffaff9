"""The DDL of SQLite ledgers written before the migrations moved to Alembic (schema 1 to 3, as scm-daemon wrote
them), to build an old ledger in a test and check that it is adopted and brought forward."""

import sqlite3
from pathlib import Path

V1 = [
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
V2 = [
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
V3 = [
    "ALTER TABLE batches ADD COLUMN polled_at FLOAT",
    "ALTER TABLE files ADD COLUMN delivery_error VARCHAR",
    "CREATE INDEX rows_open ON rows (file_id) WHERE status IN ('pending', 'queued')",
]
V4 = [
    """CREATE TABLE notifications (id INTEGER NOT NULL, event_key VARCHAR NOT NULL, channel VARCHAR NOT NULL,
    event VARCHAR NOT NULL, payload VARCHAR NOT NULL, state VARCHAR NOT NULL, attempts INTEGER NOT NULL,
    next_attempt_at FLOAT NOT NULL, last_error VARCHAR, created_at VARCHAR NOT NULL, sent_at VARCHAR,
    PRIMARY KEY (id))""",
    "CREATE UNIQUE INDEX notifications_event ON notifications (event_key, channel)",
    "CREATE INDEX notifications_due ON notifications (state, next_attempt_at)",
]
VERSIONS = {1: V1, 2: V2, 3: V3, 4: V4}


def old_ledger(path: Path, version: int) -> None:
    """A SQLite ledger as scm-daemon left it at this schema version (1 to 4), holding one done file."""
    with sqlite3.connect(path) as db:
        for v in range(1, version + 1):
            for statement in VERSIONS[v]:
                db.execute(statement)
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
        db.execute(
            "INSERT INTO files (sha256, name, path, size, state, data_key, mode, layout, received_at) "
            "VALUES ('ab', 'old.csv', '/in/old.csv', 1, 'done', 'extended_id', 'sync', '{}', 'then')"
        )
    db.close()
