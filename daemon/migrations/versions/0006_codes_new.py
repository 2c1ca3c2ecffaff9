"""Schema 6: codes uploaded since the last merge into `codes` (appended per answer, merged in key order)."""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "codes_new",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("data_key", sa.String, nullable=False),
        sa.Column("key", sa.String, nullable=False),
        sa.Column("data_hash", sa.String, nullable=False),
        sa.Column("file_id", sa.Integer, nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("uploaded_at", sa.String, nullable=False),
    )
