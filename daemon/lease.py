"""Which instance does the work: one leader at a time, by a lease in the ledger that its holder renews.

Instances of the service that share one ledger (PostgreSQL, usually on two hosts over one shared inbox) elect a
leader through a row of `leases`: the leader takes files, sends, polls and reports; the others stand by, ready, and
try to take the lease every `ha.renew_seconds`. A leader that dies stops renewing; once its lease has expired (by the
database's clock, so the hosts' clocks need not agree) a standby takes it, recovers the ledger by the rules of crash
recovery, and goes on. The decision is `may_take`, a pure function; `Leadership` applies it.
"""

import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

if TYPE_CHECKING:
    from daemon.ledger.leases import LeaseInfo

log = structlog.get_logger(__name__)

WORK = "work"  # the one lease: whoever holds it does the work of the ledger


@dataclass(frozen=True)
class Instance:
    """One run of the service: the host, the process and when it started (epoch seconds)."""

    host: str
    pid: int
    started: float

    @property
    def id(self) -> str:
        return f"{self.host}:{self.pid}:{self.started:.3f}"

    @classmethod
    def parse(cls, text: str) -> "Instance | None":
        host, _, rest = text.rpartition(":")
        host, _, pid = host.rpartition(":")
        try:
            return cls(host, int(pid), float(rest))
        except ValueError:
            return None

    @classmethod
    def this(cls, started: float, host: str | None = None) -> "Instance":
        return cls(host or this_host(), os.getpid(), started)


def this_host() -> str:
    """This host's name in the lease: the hostname, the kernel's boot id and the pid namespace.

    Two containers may share a hostname (and both be pid 1); only processes of one kernel and one pid namespace can
    see each other's pids, so only an instance of exactly this place is judged by whether its pid still exists.
    """
    place = []
    try:
        place.append(Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()[:8])
        place.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        place = [f"unknown{os.urandom(4).hex()}"]  # nothing to tell this place by: never judge others' pids
    return f"{socket.gethostname()}@{'.'.join(place)}"


def process_alive(pid: int) -> bool:
    """Whether a process of this host has that pid (one of another user counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def may_take(
    holder: str | None, expires_at: float | None, now: float, me: Instance, alive: Callable[[int], bool]
) -> bool:
    """Whether `me` may take the lease held by `holder` until `expires_at` (all times the database's).

    Free, ours, or expired: yes. Before it expires, only when the holder provably is gone: it ran in this very place
    (host, boot and pid namespace: `this_host`) and its process no longer exists, or it had our very pid (an earlier
    run of this process) — so that a service restarted after a crash goes on at once, not a lease's length later.
    """
    if holder is None or expires_at is None or holder == me.id or now >= expires_at:
        return True
    other = Instance.parse(holder)
    if other is None or other.host != me.host:
        return False
    return other.pid == me.pid or not alive(other.pid)


class LeaseLostError(Exception):
    """Another instance holds the lease this one led by (this one stalled past its lease): it must stop working."""


class Leases(Protocol):
    """What Leadership needs of the ledger (daemon.ledger.leases.LeaseStore)."""

    instance: str | None

    def take_lease(self, name: str, me: Instance, seconds: float, *, alive: Callable[[int], bool]) -> "LeaseInfo":
        """Take or renew; returns the lease as it now is."""

    def release_lease(self, name: str, me: Instance) -> None:
        """Give it up."""

    def claim_open_files(self, me: Instance) -> int:
        """Claim the open files."""


class Leadership:
    """This instance's hold on the work lease: taken before recovery, renewed every `renew` seconds while it leads.

    `safe()` says whether the lease is certainly still ours by this process's own monotonic clock (no other instance
    can have taken it yet): nothing is sent when it is not. A renewal that fails on a database error keeps the lead
    while it is safe and is tried again at the next turn; one that finds another holder raises LeaseLostError.
    """

    def __init__(
        self,
        ledger: Leases,
        *,
        lease_seconds: float,
        renew_seconds: float,
        monotonic: Callable[[], float],
        me: Instance,
        alive: Callable[[int], bool] = process_alive,
    ) -> None:
        self.ledger = ledger
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.monotonic = monotonic
        self.me = me
        self.alive = alive
        self.leading = False
        self.holder: str | None = None  # who holds it, as last seen
        self.remaining = 0.0  # seconds left of the holder's lease, as last seen
        self._renewed = -math.inf  # monotonic time at which the last successful take or renewal was asked

    def try_take(self) -> bool:
        """Take the lease if `may_take` allows; on success this instance claims the open files and leads."""
        asked = self.monotonic()
        info = self.ledger.take_lease(WORK, self.me, self.lease_seconds, alive=self.alive)
        self.holder, self.remaining = info.holder, info.remaining
        if info.holder != self.me.id:
            self.leading = False  # (also after a take whose recovery then failed for longer than the lease)
            self.ledger.instance = None
            return False
        self._renewed = asked
        if not self.leading:
            self.leading = True
            self.ledger.instance = self.me.id
            claimed = self.ledger.claim_open_files(self.me)
            log.info("lease_taken", instance=self.me.id, lease_seconds=self.lease_seconds, files_claimed=claimed)
        return True

    def safe(self) -> bool:
        """Whether no other instance can have taken the lease yet (by this process's own clock)."""
        return self.leading and self.monotonic() < self._renewed + self.lease_seconds - self.renew_seconds

    def tick(self) -> None:
        """Renew when due. Raises LeaseLostError when another instance holds the lease now."""
        if not self.leading or self.monotonic() < self._renewed + self.renew_seconds:
            return
        try:
            held = self.try_take()
        except Exception as exc:  # the database is away: lead on while safe, then stop sending until it is back
            log.warning("lease_renewal_failed", error=f"{type(exc).__name__}: {exc}", still_safe=self.safe())
            self._retry_soon()
            return
        if not held:
            log.error("lease_lost", instance=self.me.id, holder=self.holder, note="another instance leads now")
            raise LeaseLostError(f"the work lease is held by {self.holder} now")

    def _retry_soon(self) -> None:
        # The next turn tries again after a second, not after a whole renew interval.
        self._renewed = min(self._renewed, self.monotonic() - self.renew_seconds + 1.0)

    def release(self) -> None:
        """Give the lease up at a graceful stop, so that a standby goes on at once."""
        if not self.leading:
            return
        self.leading = False
        try:
            self.ledger.release_lease(WORK, self.me)
        except Exception as exc:  # it expires by itself
            log.warning("lease_release_failed", error=f"{type(exc).__name__}: {exc}")
        else:
            log.info("lease_released", instance=self.me.id)
