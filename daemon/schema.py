"""The ledger's tables: the one schema source. The queries name these tables and columns, `create_all` builds a new
ledger from them, and the Alembic migrations (daemon/migrations) bring an older ledger to the same shape, on SQLite
and PostgreSQL alike (a test compares them).
"""

from sqlalchemy import Boolean, Column, Float, ForeignKey, Index, Integer, MetaData, String, Table

from daemon.states import OPEN_ROW_STATUSES

metadata = MetaData()

# One input file: its identity (SHA-256), its layout, and where it is in its life.
files = Table(
    "files",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sha256", String, nullable=False, index=True),
    Column("name", String, nullable=False),  # the file's name as dropped
    # Where it was claimed: inbox/.processing/<id>-<name> (older ledgers: the inbox path itself).
    Column("path", String, nullable=False),
    Column("size", Integer, nullable=False),
    Column("state", String, nullable=False),
    Column("outcome", String),  # summary.json's status, once known
    Column("data_key", String, nullable=False),
    Column("mode", String, nullable=False),
    # JSON: format, encoding, delimiter, sheet, headers, columns, key column, warnings (daemon.ledger.base.Layout)
    Column("layout", String, nullable=False),
    Column("error", String),  # why an unreadable file failed
    Column("report_base", String),  # reports' stem in the outbox ("LineA/x"), fixed before writing
    Column("destination", String),  # where the input is moved, fixed before it is moved
    Column("received_at", String, nullable=False),
    Column("finished_at", String),
    # Schema 2: the row counts by status (JSON), fixed when the file is done, so that `status` need not count
    # millions of rows and the counts outlive `prune`.
    Column("counts", String),
    # Schema 3. Why its reports could not be written or its input moved (the outbox unmounted, a full disk):
    # retried with backoff, shown by `status`; cleared once delivered.
    Column("delivery_error", String),
    # Schema 5. The instance (host:pid:start) that claimed it and alone moves it and writes its reports; a standby
    # that takes the lease over claims the open files anew.
    Column("claimed_by", String),
)

# One data row of a file; its identity is (file, spreadsheet row number). Clustered by file and row number on
# SQLite: every per-file query (plan, report, counts) is a range scan. No index on key: with random codes it made
# inserts three times slower, while the two queries that match keys (repeats within a file, open rows of earlier
# files) sort once instead. Schema 3: a partial index of the open rows, so that "has this file an open row?" (asked on
# every turn of the loop) is one index probe however many of the file's rows are final; final rows leave it.
rows = Table(
    "rows",
    metadata,
    Column("file_id", Integer, ForeignKey("files.id"), primary_key=True, autoincrement=False),
    Column("line", Integer, primary_key=True, autoincrement=False),
    Column("key", String),
    Column("data_hash", String),  # hash of the normalized SCM data (what would be sent besides the key)
    Column("cells", String, nullable=False),  # JSON list of the row's cells in header order, as read
    Column("status", String, nullable=False),
    Column("detail", String, nullable=False),
    Column("batch_id", Integer),  # the batch it is (or was last) in, for the reports
    sqlite_with_rowid=False,
)
_open = rows.c.status.in_(sorted(str(s) for s in OPEN_ROW_STATUSES))
Index("rows_open", rows.c.file_id, sqlite_where=_open, postgresql_where=_open)

# Which rows a batch carries (schema 2), clustered by batch so that sending one reads one range. Written in batch
# order when a file is planned: appending here and updating rows in row order keeps planning a million rows
# sequential, where an index on rows.batch_id made every insert land at random.
batch_rows = Table(
    "batch_rows",
    metadata,
    Column("batch_id", Integer, primary_key=True, autoincrement=False),
    Column("line", Integer, primary_key=True, autoincrement=False),
    sqlite_with_rowid=False,
)

# One unit of upload: a sync call's items or an async job; retries are its own state.
batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("file_id", Integer, ForeignKey("files.id"), nullable=False, index=True),
    Column("seq", Integer, nullable=False),  # the batch's number within its file, from 1
    Column("kind", String, nullable=False),  # sync | async
    Column("state", String, nullable=False),
    Column("size", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),  # requests sent for this batch (its API calls)
    Column("failures", Integer, nullable=False),  # transient failures in a row, counted against retry.max_attempts
    Column("next_attempt_at", Float, nullable=False),  # epoch seconds; the batch is due from then on
    Column("ambiguous", Boolean, nullable=False),  # an earlier attempt may have been applied before its answer was lost
    Column("last_error", String),
    Column("created_at", String, nullable=False),
    Column("finished_at", String),
    # Schema 2. A batch split to isolate defective items names the batch it came from.
    Column("parent_id", Integer),
    Column("interrupted", Integer, nullable=False, server_default="0"),  # restarts that caught it `sending`
    # Async jobs: the shared data's hash, the job's reference and task, followed to its end.
    Column("data_hash", String),
    Column("reference", String),
    Column("task_id", String),
    Column("task_state", String),  # the state as the API last named it
    Column("codes_affected", Integer),
    Column("submitted_at", Float),  # epoch seconds; a task older than poll.timeout_seconds is failed
    # Schema 3. When the task was last asked about: after a restart its age counts up to there, not the downtime.
    Column("polled_at", Float),
)
Index("batches_due", batches.c.state, batches.c.next_attempt_at)

# The last data uploaded per code: what idempotency needs, kept after rows are pruned.
codes = Table(
    "codes",
    metadata,
    Column("data_key", String, primary_key=True),
    Column("key", String, primary_key=True),
    Column("data_hash", String, nullable=False),
    Column("file_id", Integer, nullable=False),
    Column("line", Integer, nullable=False),
    Column("uploaded_at", String, nullable=False),
)

# Schema 6. Codes uploaded since the last merge into `codes`, appended in the transaction that records their answer.
# An upsert per code into `codes` (random keys into a B-tree of millions) dirtied a page per code and was a third of
# the cost of an upload; appended here and merged in key order, tens of thousands at a time, it is a few percent.
# Whatever reads `codes` merges first (daemon.ledger.codes), so that nothing ever sees one without the other.
codes_new = Table(
    "codes_new",
    metadata,
    Column("id", Integer, primary_key=True),  # arrival order: of two uploads of one code, the later one wins
    Column("data_key", String, nullable=False),
    Column("key", String, nullable=False),
    Column("data_hash", String, nullable=False),
    Column("file_id", Integer, nullable=False),
    Column("line", Integer, nullable=False),
    Column("uploaded_at", String, nullable=False),
)

# Schema 4. One notification to one channel (webhook, email, command): queued in the transaction that records its
# event, marked sent after delivery, retried with backoff until a bound, then given up.
notifications = Table(
    "notifications",
    metadata,
    Column("id", Integer, primary_key=True),
    # The event's stable id, also sent in the notification so that a receiver can drop a repeat.
    Column("event_key", String, nullable=False),
    Column("channel", String, nullable=False),  # webhook | email | command
    Column("event", String, nullable=False),  # file_finished | uploads_paused | uploads_resumed
    Column("payload", String, nullable=False),  # JSON: the text and the fields, scrubbed of secrets when queued
    Column("state", String, nullable=False),  # pending | sent | given_up
    Column("attempts", Integer, nullable=False),  # deliveries tried
    Column("next_attempt_at", Float, nullable=False),  # epoch seconds; due from then on
    Column("last_error", String),
    Column("created_at", String, nullable=False),
    Column("sent_at", String),
)
Index("notifications_event", notifications.c.event_key, notifications.c.channel, unique=True)  # once per channel
Index("notifications_due", notifications.c.state, notifications.c.next_attempt_at)

# Schema 5. Leases between instances sharing the ledger (daemon.lease): the one named "work" makes its holder the
# leader. Times are epoch seconds by the database's clock, so that the hosts' clocks need not agree.
leases = Table(
    "leases",
    metadata,
    Column("name", String, primary_key=True),
    Column("holder", String, nullable=False),  # host:pid:start of the instance
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Key-value facts about the ledger itself and the service, such as a pause.
meta = Table(
    "meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
)
