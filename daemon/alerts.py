"""Notifications ([notify]): what is worth telling people, queued in the ledger with the event it tells of, and
delivered by worker threads with retries and backoff, so that the loop never waits for a slow receiver.

Events: a file finished with a status in `notify.on`; uploads paused (the token refused, a configuration problem,
the API failing again and again); uploads resumed. Delivery is at least once per channel: a notification is a
ledger row before it is sent and is marked sent after its receiver took it, so a crash loses none; a crash in
between sends it again, with the same `id` (the e-mail's Message-ID) so that a receiver can drop the repeat.
"""

import re
import socket
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from daemon import alert_channels
from daemon.config import NotifySettings
from daemon.ledger import UPLOADS_PAUSED, FileInfo, Ledger, NotificationInfo
from daemon.logs import redact
from daemon.reporter import ReportNames
from daemon.retry import Backoff
from daemon.states import ERROR_ROW_STATUSES, RowStatus

log = structlog.get_logger(__name__)

FILE_FINISHED = "file_finished"
UPLOADS_PAUSED_EVENT = "uploads_paused"
UPLOADS_RESUMED = "uploads_resumed"
LOOK_EVERY = 0.5  # seconds between looks for due notifications, unless one was just queued
PAUSE_WORDS = {
    "token": "the API refused the token",
    "configuration": "a configuration problem",
    "api_down": "the API kept failing",
}

Sender = Callable[[NotificationInfo], None]


class PauseSource(Protocol):
    """What the uploader shows about a pause (see Uploader.pause and its breaker)."""

    @property
    def pause(self) -> Any: ...  # Pause(cause, reason) | None

    @property
    def breaker(self) -> Any: ...  # .is_open, .failures

    @property
    def start_failures(self) -> int: ...  # start-up checks in a row that could not reach the API


def pause_cause(uploader: PauseSource) -> str:
    """Why uploads are paused right now: "token", "configuration", "api_down" (the circuit breaker, or a start-up
    check that could not reach the API), or "" (also while the start-up check has not answered yet)."""
    cause = str(uploader.pause.cause) if uploader.pause is not None else ""
    if cause == "starting":
        cause = "api_down" if uploader.start_failures else ""
    if not cause and uploader.breaker.is_open:
        cause = "api_down"
    return cause


def pause_change(announced: str, current: str, *, answered_ok: bool) -> str | None:
    """The event to announce, if any, given the pause last announced and the pause now.

    A pause (or a pause of another cause) is announced at once. "Resumed" only once an answer shows the API
    working again: a new process starts unpaused before it knows better, and must not announce a resume then.
    """
    if current and current != announced:
        return UPLOADS_PAUSED_EVENT
    if not current and announced and answered_ok:
        return UPLOADS_RESUMED
    return None


def retry_wait(attempts: int, first: float, longest: float) -> float:
    """Seconds to wait after the `attempts`-th failed delivery: first, doubling, at most longest."""
    return Backoff(first, longest, failures=attempts - 1).failed(0.0, "")


def _compact(iso: str) -> str:
    return re.sub(r"[^0-9]", "", iso)[:17]


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return _scrub(value)
    if isinstance(value, list):
        return [_scrub_value(v) for v in value]
    return value


def _scrub(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Secrets out of every string in a payload (the token, the SMTP password, the webhook's URL)."""
    return {k: _scrub_value(v) for k, v in payload.items()}


def file_payload(
    f: FileInfo, counts: Mapping[RowStatus, int], *, summary: Path, rejected: Path | None, host: str
) -> dict[str, Any]:
    """The notification of a finished file: a `text` for people, the figures for programs."""
    status = str(f.outcome)
    total = sum(counts.values())
    errors = {str(s): counts.get(s, 0) for s in sorted(ERROR_ROW_STATUSES)}
    if status == "completed_with_errors":
        told = f"completed with errors: {errors['rejected']} rejected and {errors['failed']} failed of {total} rows"
        if rejected is not None:
            told += f"; fix them in {rejected.name} and drop it into the inbox again"
    elif status == "failed":
        told = f"failed: {f.error or 'it could not be processed'}"
    elif status == "duplicate":
        told = "duplicate: the same content was processed before, nothing was uploaded again"
    else:
        told = f"completed: {total} rows, {counts.get(RowStatus.UPLOADED, 0)} uploaded"
    finished = f.finished_at or ""
    return _scrub(
        {
            "id": f"file-{f.id}-{_compact(finished)}",
            "event": FILE_FINISHED,
            "text": f"scm-daemon on {host}: {f.name} {told}. Summary: {summary}",
            "subject": f"scm-daemon: {f.name} {status.replace('_', ' ')}",
            "host": host,
            "file": f.name,
            "status": status,
            "rows": {"total": total, **{str(s): n for s, n in sorted(counts.items())}},
            "error": f.error,
            "summary": str(summary),
            "rejected_file": str(rejected) if rejected is not None else None,  # rejected.csv or .xlsx
            "sha256": f.sha256,
            "at": finished,
        }
    )


def pause_payload(event: str, cause: str, reason: str, *, host: str, at: str) -> dict[str, Any]:
    """The notification that uploads paused (`cause`, with the words `status` shows) or resumed (after `cause`)."""
    words = PAUSE_WORDS.get(cause, cause)
    if event == UPLOADS_PAUSED_EVENT:
        text = f"scm-daemon on {host}: uploads paused: {reason or words}. Rows wait in the ledger; nothing is lost."
        subject = f"scm-daemon: uploads paused ({words})"
    else:
        text = f"scm-daemon on {host}: uploads resumed (they had paused: {words})."
        subject = "scm-daemon: uploads resumed"
    kind = "pause" if event == UPLOADS_PAUSED_EVENT else "resume"
    return _scrub(
        {
            "id": f"{kind}-{cause}-{_compact(at)}",
            "event": event,
            "text": text,
            "subject": subject,
            "host": host,
            "cause": cause,
            "reason": reason or None,
            "at": at,
        }
    )


def senders(notify: NotifySettings) -> dict[str, Sender]:
    """The configured channels' senders."""
    timeout = notify.timeout_seconds
    chosen: dict[str, Sender] = {}
    if notify.webhook_url:
        url = notify.webhook_url
        chosen["webhook"] = lambda n: alert_channels.post_webhook(url, n.payload, timeout)
    if notify.email_to:
        sender = notify.email_from or f"scm-daemon@{socket.getfqdn()}"
        password = notify.smtp_password.get_secret_value() if notify.smtp_password is not None else None

        def email(n: NotificationInfo) -> None:
            alert_channels.send_email(
                alert_channels.email_message(n.payload, sender=sender, to=notify.email_to),
                host=notify.smtp_host,
                port=notify.smtp_port,
                security=notify.smtp_security,
                username=notify.smtp_username,
                password=password,
                ca_file=notify.smtp_ca_file,
                timeout=timeout,
            )

        chosen["email"] = email
    if notify.command:
        argv = list(notify.command)

        def command(n: NotificationInfo) -> None:
            summary = n.payload.get("summary")
            arguments = [summary] if isinstance(summary, str) else []
            alert_channels.run_command(argv, n.payload, arguments=arguments, timeout=timeout)

        chosen["command"] = command
    return chosen


def send_test(notify: NotifySettings, *, host: str | None = None) -> list[tuple[str, str | None]]:
    """`scm-daemon notify-test`: one test notification through each configured channel, now, in this thread;
    (channel, None when delivered, else why not)."""
    host = host or socket.gethostname()
    at = datetime.now(UTC).isoformat(timespec="milliseconds")
    payload = _scrub(
        {
            "id": f"test-{_compact(at)}",
            "event": "test",
            "text": f"scm-daemon on {host}: a test notification; this channel works.",
            "subject": "scm-daemon: test notification",
            "host": host,
            "at": at,
        }
    )
    results: list[tuple[str, str | None]] = []
    for channel, sender in senders(notify).items():
        try:
            sender(NotificationInfo(0, payload["id"], channel, "test", payload, 0))
        except alert_channels.DeliveryError as exc:
            results.append((channel, str(exc)))
        else:
            results.append((channel, None))
    return results


class Alerts:
    """Queues notifications in the ledger (from the loop's thread) and delivers them from worker threads.

    Only the loop's thread writes the ledger: workers deliver, and their outcomes are recorded by step().
    """

    def __init__(
        self,
        notify: NotifySettings,
        ledger: Ledger,
        outbox: Path,
        *,
        epoch: Callable[[], float],
        monotonic: Callable[[], float],
        chosen: Mapping[str, Sender] | None = None,
        host: str | None = None,
    ) -> None:
        self.notify = notify
        self.ledger = ledger
        self.outbox = outbox
        self.epoch = epoch
        self.monotonic = monotonic
        self.senders = dict(senders(notify) if chosen is None else chosen)
        self.host = host or socket.gethostname()
        self.inflight: dict[Future[None], NotificationInfo] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._next_look = 0.0
        self._announced: str | None = None  # the pause last announced (kept in the ledger); None until read

    @property
    def enabled(self) -> bool:
        """Whether any channel is configured."""
        return bool(self.senders)

    def file_done(self, f: FileInfo, names: ReportNames) -> None:
        """A file reached its final state: queue its notification, in the transaction that records that state."""
        if not self.enabled or str(f.outcome) not in self.notify.on:
            return
        counts = self.ledger.row_counts(f.id)
        rejected = self.outbox / names.rejected if any(counts.get(s) for s in ERROR_ROW_STATUSES) else None
        payload = file_payload(f, counts, summary=self.outbox / names.summary, rejected=rejected, host=self.host)
        self._queue(payload)

    def _queue(self, payload: dict[str, Any], pause: str | None = None) -> None:
        queued = self.ledger.queue_notification(
            payload["id"], payload["event"], payload, self.senders, now=self.epoch(), pause=pause
        )
        log.info("notification_queued", kind=payload["event"], id=payload["id"], channels=queued)
        self._next_look = 0.0

    def step(self, now: float, uploader: PauseSource, answered: int) -> int:
        """Record finished deliveries, announce a pause or a resume, and start the deliveries that are due;
        returns how many things it did. Never waits."""
        if not self.enabled:
            return 0
        if self._announced is None:
            self._announced = self.ledger.announced_pause()
            # The clock of an earlier process may have run ahead: nothing waits beyond one longest backoff.
            self.ledger.clamp_notifications(now + self.notify.max_retry_seconds)
        done = self._collect([f for f in self.inflight if f.done()])
        done += self._observe_pause(uploader, answered_ok=answered > 0 and uploader.breaker.failures == 0)
        return done + self._start_due(now)

    def _observe_pause(self, uploader: PauseSource, *, answered_ok: bool) -> int:
        announced, current = self._announced or "", pause_cause(uploader)
        event = pause_change(announced, current, answered_ok=answered_ok)
        if event is None:
            return 0
        at = self.ledger.now()
        if event == UPLOADS_PAUSED_EVENT:
            reason = self.ledger.get_meta(UPLOADS_PAUSED) or ""
            self._queue(pause_payload(event, current, reason, host=self.host, at=at), pause=current)
        else:
            self._queue(pause_payload(event, announced, "", host=self.host, at=at), pause="")
        self._announced = current
        return 1

    def _start_due(self, now: float) -> int:
        mono = self.monotonic()
        free = len(self.senders) - len(self.inflight)
        if free <= 0 or mono < self._next_look:
            return 0
        self._next_look = mono + LOOK_EVERY
        due = self.ledger.due_notifications(now, limit=free, exclude=[n.id for n in self.inflight.values()])
        for n in due:
            sender = self.senders.get(n.channel)
            if sender is None:
                self.ledger.notification_given_up(n.id, f"the {n.channel} channel is no longer configured")
                log.warning("notification_given_up", id=n.event_key, channel=n.channel, reason="channel removed")
                continue
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.senders)), thread_name_prefix="notify")
            clean = NotificationInfo(n.id, n.event_key, n.channel, n.event, _scrub(n.payload), n.attempts)
            self.inflight[self._pool.submit(sender, clean)] = clean
        return len(due)

    def _collect(self, finished: list[Future[None]]) -> int:
        for future in finished:
            n = self.inflight.pop(future)
            bound = log.bind(id=n.event_key, kind=n.event, channel=n.channel, attempt=n.attempts + 1)
            error = future.exception()
            if error is None:
                self.ledger.notification_sent(n.id)
                bound.info("notification_sent")
                continue
            plain = isinstance(error, alert_channels.DeliveryError)
            words = redact(str(error) if plain else f"{type(error).__name__}: {error}")
            if n.attempts + 1 >= self.notify.max_attempts:
                self.ledger.notification_given_up(n.id, words)
                bound.error("notification_given_up", error=words, note=f"not delivered after {n.attempts + 1} tries")
                continue
            wait_for = retry_wait(n.attempts + 1, self.notify.retry_seconds, self.notify.max_retry_seconds)
            self.ledger.notification_retry(n.id, at=self.epoch() + wait_for, error=words)
            bound.warning("notification_failed", error=words, retry_in=round(wait_for, 3))
            self._next_look = min(self._next_look, self.monotonic() + wait_for)
        return len(finished)

    def close(self) -> None:
        """At the end of the service: deliver what is due now, waiting at most notify.timeout_seconds, and
        record it; what is still undelivered stays queued for the next start."""
        if not self.enabled:
            return
        deadline = self.monotonic() + self.notify.timeout_seconds
        try:
            while self.monotonic() < deadline:
                self._next_look = 0.0
                self._start_due(self.epoch())
                if not self.inflight:
                    break
                left = deadline - self.monotonic()
                finished, _ = wait(list(self.inflight), timeout=left, return_when=FIRST_COMPLETED)
                self._collect(list(finished))
        except Exception as exc:  # the ledger may be failing too: what is queued stays queued
            log.error("notifications_not_flushed", error=redact(f"{type(exc).__name__}: {exc}"))
        if self.inflight:
            log.warning("notifications_left_queued", count=len(self.inflight), note="delivered after the next start")
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
