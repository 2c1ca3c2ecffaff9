"""systemd's notify protocol (sd_notify): READY, STATUS, WATCHDOG, RELOADING and STOPPING over $NOTIFY_SOCKET."""

import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)

STATUS_MIN_INTERVAL = 1.0  # seconds between two STATUS= messages, so a busy loop does not flood the journal


ESSENTIAL_TRIES = 20  # READY and STOPPING are tried this often while the manager's queue is full ...
ESSENTIAL_WAIT = 0.05  # ... this many seconds apart; other messages (a status, a ping) are dropped at once


def socket_address(value: str) -> str | None:
    """The AF_UNIX address named by $NOTIFY_SOCKET ('@name' is Linux's abstract namespace), or None if unusable."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:... (a service in a VM); not for a daemon on the host


class Notifier:
    """Sends notifications to the service manager; without $NOTIFY_SOCKET every method does nothing.

    Sending never raises: a service manager that went away must not stop the uploads.
    """

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.watchdog_seconds = watchdog_seconds
        self.clock = clock
        self._socket: socket.socket | None = None
        self._last_ping = -float("inf")
        self._last_status: str | None = None
        self._last_status_at = -float("inf")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Notifier":
        """A notifier for $NOTIFY_SOCKET, with the watchdog of $WATCHDOG_USEC when $WATCHDOG_PID is us (or unset)."""
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        address = socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("notify_socket_unsupported", notify_socket=raw)
        watchdog: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isascii() and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1_000_000
        return cls(address, watchdog_seconds=watchdog)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram of KEY=VALUE lines; returns whether it went out."""
        if self.address is None:
            return False
        essential = lines[0].startswith(("READY=", "STOPPING="))
        tries = ESSENTIAL_TRIES if essential else 1
        try:
            if self._socket is None:
                # Non-blocking: a manager that does not read (its queue full) must never stall the service loop.
                kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                self._socket = socket.socket(socket.AF_UNIX, kind)
            for attempt in range(tries):
                try:
                    self._socket.sendto("\n".join(lines).encode(), self.address)
                    break
                except BlockingIOError:
                    if attempt + 1 == tries:
                        raise
                    time.sleep(ESSENTIAL_WAIT)
        except OSError as exc:
            if not isinstance(exc, BlockingIOError):  # a full queue: the manager is busy; the next one will do
                log.warning("notify_failed", error=str(exc), message=lines[0].split("=", 1)[0])
            return False
        return True

    def ready(self, status: str) -> None:
        """The service is up: its ledger, folders and configuration are checked."""
        self._remember(status)
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str, *, force: bool = False) -> None:
        """Say what the service is doing; repeated or too frequent texts are dropped unless forced."""
        now = self.clock()
        if text == self._last_status or (not force and now - self._last_status_at < STATUS_MIN_INTERVAL):
            return
        if self.send(f"STATUS={text}"):
            self._remember(text)  # one that could not go out (the manager's queue full) is sent again next time

    def alive(self) -> None:
        """The main loop made a turn: ping the watchdog if half its interval has passed since the last ping."""
        if self.watchdog_seconds is None:
            return
        now = self.clock()
        if now - self._last_ping >= self.watchdog_seconds / 2:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """The configuration is being re-read; ready() follows."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self, status: str) -> None:
        """The service is shutting down."""
        self._remember(status)
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        """Release the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _remember(self, status: str) -> None:
        self._last_status = status
        self._last_status_at = self.clock()
