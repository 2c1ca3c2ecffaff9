"""The ledger's outbox of notifications: queued with their event, sent by a worker, marked sent or given up."""

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection

from daemon.ledger.base import LedgerBase, put_meta, sql

NOTIFY_PAUSE = "notify_pause"  # meta key: the pause cause last announced ("" or absent: none, or resumed since)


class NotificationState(StrEnum):
    PENDING = "pending"  # waiting for its next delivery (next_attempt_at)
    SENT = "sent"  # delivered; never sent again
    GIVEN_UP = "given_up"  # failed max_attempts times (or its channel is no longer configured)


@dataclass(frozen=True)
class NotificationInfo:
    """A queued notification as the worker needs it."""

    id: int
    event_key: str
    channel: str
    event: str
    payload: dict[str, Any]
    attempts: int


_COLUMNS = "id, event_key, channel, event, payload, attempts"


def _info(row: Sequence[Any]) -> NotificationInfo:
    i, key, channel, event, payload, attempts = row
    return NotificationInfo(int(i), str(key), str(channel), str(event), json.loads(payload), int(attempts))


class NotificationStore(LedgerBase):
    """Notifications: at least once per channel, never lost by a crash (each is a row before it is sent)."""

    def queue_notification(
        self,
        event_key: str,
        event: str,
        payload: dict[str, Any],
        channels: Collection[str],
        *,
        now: float,
        pause: str | None = None,
    ) -> int:
        """Queue one notification per channel, in the current transaction (grouped() joins a file's final
        state); an event already queued is not queued again. `pause`, if given, is recorded as the announced
        pause state in the same transaction. Returns how many were queued."""
        with self.begin() as conn:
            queued = 0
            for channel in channels:
                queued += conn.execute(
                    sql(
                        "INSERT INTO notifications (event_key, channel, event, payload, state, attempts, "
                        "next_attempt_at, created_at) VALUES (:key, :channel, :event, :payload, :state, 0, :at, :now) "
                        "ON CONFLICT (event_key, channel) DO NOTHING"
                    ),
                    {
                        "key": event_key,
                        "channel": channel,
                        "event": event,
                        "payload": json.dumps(payload),
                        "state": str(NotificationState.PENDING),
                        "at": now,
                        "now": self.now(),
                    },
                ).rowcount
            if pause is not None:
                self._set_announced(conn, pause)
        return queued

    def announced_pause(self) -> str:
        """The pause cause last announced by a notification ("" when none is)."""
        return self.get_meta(NOTIFY_PAUSE) or ""

    @staticmethod
    def _set_announced(conn: Connection, pause: str) -> None:
        put_meta(conn, NOTIFY_PAUSE, pause)

    def due_notifications(self, now: float, *, limit: int, exclude: Collection[int] = ()) -> list[NotificationInfo]:
        """Pending notifications due at `now`, oldest first, leaving out those in flight."""
        skip = list(exclude)
        extra = " AND id NOT IN :skip" if skip else ""
        with self.connect() as conn:
            rows = conn.execute(
                sql(
                    f"SELECT {_COLUMNS} FROM notifications WHERE state=:pending AND next_attempt_at<=:now{extra} "
                    "ORDER BY id LIMIT :limit",
                    *(["skip"] if skip else []),
                ),
                {
                    "pending": str(NotificationState.PENDING),
                    "now": now,
                    "limit": limit,
                    **({"skip": skip} if skip else {}),
                },
            ).all()
        return [_info(r) for r in rows]

    def next_notification_at(self) -> float | None:
        """Epoch time when the next pending notification is due, if any is pending."""
        with self.connect() as conn:
            value = conn.execute(
                sql("SELECT min(next_attempt_at) FROM notifications WHERE state=:pending"),
                {"pending": str(NotificationState.PENDING)},
            ).scalar_one()
        return None if value is None else float(value)

    def notification_sent(self, notification_id: int) -> None:
        """Delivered: never sent again."""
        self._close(notification_id, NotificationState.SENT, None)

    def notification_given_up(self, notification_id: int, error: str) -> None:
        """Not delivered, and no more tries."""
        self._close(notification_id, NotificationState.GIVEN_UP, error)

    def _close(self, notification_id: int, state: NotificationState, error: str | None) -> None:
        with self.begin() as conn:
            conn.execute(
                sql(
                    "UPDATE notifications SET state=:to, attempts=attempts+1, last_error=coalesce(:error, last_error), "
                    "sent_at=:now WHERE id=:id AND state=:pending"
                ),
                {
                    "to": str(state),
                    "error": error,
                    "now": self.now(),
                    "id": notification_id,
                    "pending": str(NotificationState.PENDING),
                },
            )

    def notification_retry(self, notification_id: int, *, at: float, error: str) -> None:
        """A delivery failed: count it and try again at `at`."""
        with self.begin() as conn:
            conn.execute(
                sql(
                    "UPDATE notifications SET attempts=attempts+1, next_attempt_at=:at, last_error=:error "
                    "WHERE id=:id AND state=:pending"
                ),
                {"at": at, "error": error, "id": notification_id, "pending": str(NotificationState.PENDING)},
            )

    def clamp_notifications(self, latest: float) -> int:
        """After a restart: no pending notification waits beyond `latest` (the earlier process's clock may have
        run ahead); returns how many were brought forward."""
        with self.begin() as conn:
            return int(
                conn.execute(
                    sql(
                        "UPDATE notifications SET next_attempt_at=:latest "
                        "WHERE state=:pending AND next_attempt_at>:latest"
                    ),
                    {"latest": latest, "pending": str(NotificationState.PENDING)},
                ).rowcount
            )

    def notification_counts(self) -> dict[str, int]:
        """How many notifications are in each state."""
        with self.connect() as conn:
            rows = conn.execute(sql("SELECT state, count(*) FROM notifications GROUP BY state")).all()
        return {str(s): int(n) for s, n in rows}

    def notification_overview(self, *, recent: int = 3) -> dict[str, Any]:
        """For `status`: notifications by state, and the last ones given up with why."""
        with self.connect() as conn:
            given_up = conn.execute(
                sql(
                    "SELECT event, channel, last_error, sent_at FROM notifications WHERE state=:given_up "
                    "ORDER BY id DESC LIMIT :n"
                ),
                {"given_up": str(NotificationState.GIVEN_UP), "n": recent},
            ).all()
        return {
            "counts": self.notification_counts(),
            "given_up": [{"event": e, "channel": c, "error": err, "at": at} for e, c, err, at in given_up],
        }

    def prune_notifications(self, created_before: str, *, dry_run: bool = False) -> int:
        """Drop notifications sent or given up that were queued before this ISO time (pending ones stay);
        returns how many were (or, with dry_run, would be) dropped."""
        params = {"done": [str(NotificationState.SENT), str(NotificationState.GIVEN_UP)], "before": created_before}
        where = "FROM notifications WHERE state IN :done AND created_at < :before"
        with self.begin() as conn:
            if dry_run:
                return int(conn.execute(sql(f"SELECT count(*) {where}", "done"), params).scalar_one())
            return int(conn.execute(sql(f"DELETE {where}", "done"), params).rowcount)
