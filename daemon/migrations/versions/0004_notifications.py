"""Schema 4: the outbox of notifications, one per event and channel."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("event_key", sa.String, nullable=False),
        sa.Column("channel", sa.String, nullable=False),
        sa.Column("event", sa.String, nullable=False),
        sa.Column("payload", sa.String, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("last_error", sa.String),
        sa.Column("created_at", sa.String, nullable=False),
        sa.Column("sent_at", sa.String),
    )
    op.create_index("notifications_event", "notifications", ["event_key", "channel"], unique=True)
    op.create_index("notifications_due", "notifications", ["state", "next_attempt_at"])
