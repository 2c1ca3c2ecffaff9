"""Schema 3: when a task was last polled, why a file's reports are not delivered yet, and the partial index of
open rows."""

import sqlalchemy as sa
from alembic import op

from daemon.states import OPEN_ROW_STATUSES

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("batches", sa.Column("polled_at", sa.Float))
    op.add_column("files", sa.Column("delivery_error", sa.String))
    is_open = sa.column("status").in_(sorted(str(s) for s in OPEN_ROW_STATUSES))
    op.create_index("rows_open", "rows", ["file_id"], sqlite_where=is_open, postgresql_where=is_open)
