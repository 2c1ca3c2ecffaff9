"""Leases between instances that share the ledger (daemon.lease decides; this stores), and the files' claims."""

from collections.abc import Callable
from dataclasses import dataclass

from daemon.lease import Instance, may_take
from daemon.ledger.base import LedgerBase, sql
from daemon.states import OPEN_FILE_STATES

_OPEN_FILES = [str(s) for s in OPEN_FILE_STATES]


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds a lease until when, and the database's time when this was read (epoch seconds)."""

    holder: str | None
    expires_at: float | None
    now: float

    @property
    def remaining(self) -> float:
        return max(0.0, self.expires_at - self.now) if self.expires_at is not None else 0.0


class LeaseStore(LedgerBase):
    """The `leases` table; every time in it is the database server's, read in the statement that uses it."""

    def lease(self, name: str) -> LeaseInfo:
        with self.connect() as conn:
            now = float(conn.execute(sql(f"SELECT {self.dialect.epoch_now}")).scalar_one())
            row = conn.execute(sql("SELECT holder, expires_at FROM leases WHERE name=:name"), {"name": name}).first()
        return LeaseInfo(None, None, now) if row is None else LeaseInfo(str(row[0]), float(row[1]), now)

    def take_lease(self, name: str, me: Instance, seconds: float, *, alive: Callable[[int], bool]) -> LeaseInfo:
        """Take (or renew) the lease for `seconds` when `may_take` allows it; returns the lease as it is now.

        A compare-and-set on the holder and expiry that were read: of two instances taking an expired lease at the
        same moment, one changes the row and the other matches nothing and stands by.
        """
        with self.begin() as conn:
            now = float(conn.execute(sql(f"SELECT {self.dialect.epoch_now}")).scalar_one())
            row = conn.execute(sql("SELECT holder, expires_at FROM leases WHERE name=:name"), {"name": name}).first()
            holder, expires = (None, None) if row is None else (str(row[0]), float(row[1]))
            if not may_take(holder, expires, now, me, alive):
                return LeaseInfo(holder, expires, now)
            values = {"name": name, "me": me.id, "now": now, "until": now + seconds}
            if row is None:
                changed = conn.execute(
                    sql(
                        "INSERT INTO leases (name, holder, acquired_at, expires_at) "
                        "VALUES (:name, :me, :now, :until) ON CONFLICT (name) DO NOTHING"
                    ),
                    values,
                ).rowcount
            else:
                acquired = "acquired_at" if holder == me.id else ":now"
                changed = conn.execute(
                    sql(
                        f"UPDATE leases SET holder=:me, acquired_at={acquired}, expires_at=:until "
                        "WHERE name=:name AND holder=:holder AND expires_at=:expires"
                    ),
                    {**values, "holder": holder, "expires": expires},
                ).rowcount
        if changed != 1:
            return self.lease(name)  # another instance was quicker
        return LeaseInfo(me.id, now + seconds, now)

    def release_lease(self, name: str, me: Instance) -> None:
        """Give the lease up (a graceful stop): a standby takes it at its next try, not a lease's length later."""
        with self.begin() as conn:
            conn.execute(sql("DELETE FROM leases WHERE name=:name AND holder=:me"), {"name": name, "me": me.id})

    def claim_open_files(self, me: Instance) -> int:
        """A new leader claims every file still open: it alone moves them and writes their reports from now on."""
        with self.begin() as conn:
            return int(
                conn.execute(
                    sql(
                        "UPDATE files SET claimed_by=:me "
                        "WHERE state IN :open AND (claimed_by IS NULL OR claimed_by<>:me)",
                        "open",
                    ),
                    {"me": me.id, "open": _OPEN_FILES},
                ).rowcount
            )
