"""Schema 1: files, rows, batches, the uploaded codes, and the meta facts.

Each revision is written out as the schema of its day, so that a ledger of any age is brought forward the same way
on SQLite and PostgreSQL; a test checks that the head matches daemon.schema.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sha256", sa.String, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("path", sa.String, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("outcome", sa.String),
        sa.Column("data_key", sa.String, nullable=False),
        sa.Column("mode", sa.String, nullable=False),
        sa.Column("layout", sa.String, nullable=False),
        sa.Column("error", sa.String),
        sa.Column("report_base", sa.String),
        sa.Column("destination", sa.String),
        sa.Column("received_at", sa.String, nullable=False),
        sa.Column("finished_at", sa.String),
    )
    op.create_index("ix_files_sha256", "files", ["sha256"])
    op.create_table(
        "rows",
        sa.Column("file_id", sa.Integer, sa.ForeignKey("files.id"), primary_key=True, autoincrement=False),
        sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("key", sa.String),
        sa.Column("data_hash", sa.String),
        sa.Column("cells", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("detail", sa.String, nullable=False),
        sa.Column("batch_id", sa.Integer),
        sqlite_with_rowid=False,
    )
    batched = sa.text("batch_id IS NOT NULL")
    op.create_index("rows_batch", "rows", ["batch_id"], sqlite_where=batched, postgresql_where=batched)
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("file_id", sa.Integer, sa.ForeignKey("files.id"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("ambiguous", sa.Boolean, nullable=False),
        sa.Column("last_error", sa.String),
        sa.Column("created_at", sa.String, nullable=False),
        sa.Column("finished_at", sa.String),
    )
    op.create_index("ix_batches_file_id", "batches", ["file_id"])
    op.create_index("batches_due", "batches", ["state", "next_attempt_at"])
    op.create_table(
        "codes",
        sa.Column("data_key", sa.String, primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("data_hash", sa.String, nullable=False),
        sa.Column("file_id", sa.Integer, nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("uploaded_at", sa.String, nullable=False),
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("value", sa.String, nullable=False),
    )
