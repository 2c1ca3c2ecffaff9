"""Schema 2: which rows a batch carries in their own table (clustered by batch), a done file's counts, split
batches' parents, restarts caught sending, and async jobs' tasks."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "batch_rows",
        sa.Column("batch_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),
        sqlite_with_rowid=False,
    )
    op.execute("INSERT INTO batch_rows (batch_id, line) SELECT batch_id, line FROM rows WHERE batch_id IS NOT NULL")
    op.drop_index("rows_batch", table_name="rows")
    op.add_column("files", sa.Column("counts", sa.String))
    op.add_column("batches", sa.Column("parent_id", sa.Integer))
    op.add_column("batches", sa.Column("interrupted", sa.Integer, nullable=False, server_default="0"))
    for name in ("data_hash", "reference", "task_id", "task_state"):
        op.add_column("batches", sa.Column(name, sa.String))
    op.add_column("batches", sa.Column("codes_affected", sa.Integer))
    op.add_column("batches", sa.Column("submitted_at", sa.Float))
