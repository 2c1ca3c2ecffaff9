"""Notifications ([notify]) against real receivers on loopback: a webhook receiver, an SMTP server with STARTTLS,
a command; queued in a real SQLite ledger, delivered by the worker with retries, never carrying a secret."""

import email
import email.policy
import itertools
import json
import sqlite3
import stat
import sys
import time
from concurrent.futures import wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from alert_receivers import WebhookReceiver, smtp_server
from hypothesis import given
from hypothesis import strategies as st
from old_ledgers import old_ledger
from pydantic import SecretStr
from structlog.testing import capture_logs
from support import csv_text, make_project

from daemon.alerts import (
    UPLOADS_PAUSED_EVENT,
    UPLOADS_RESUMED,
    Alerts,
    file_payload,
    pause_change,
    retry_wait,
)
from daemon.config import ConfigError, NotifySettings, load_settings
from daemon.folders import prepare_folders
from daemon.ledger import FileInfo, Ledger
from daemon.ledger.migrate import SCHEMA_VERSION
from daemon.logs import redact, register_secret
from daemon.sandbox import Emulator
from daemon.service import Service
from daemon.states import FileState, Outcome, RowStatus
from daemon.status import render_overview
from daemon.uploader import Pause

SECRET = "alerts-test-secret-0123456789"


@dataclass
class Breaker:
    is_open: bool = False
    failures: int = 0


@dataclass
class Uploads:
    """The two things the notifier reads from the uploader: its pause and its breaker."""

    pause: Pause | None = None
    breaker: Breaker = field(default_factory=Breaker)
    start_failures: int = 0


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger(tmp_path / "ledger.sqlite3")
    yield led  # type: ignore[misc]
    led.close()


def alerts_for(ledger: Ledger, tmp_path: Path, **notify: Any) -> Alerts:
    settings = NotifySettings(**{"retry_seconds": 0.01, "max_retry_seconds": 0.05, **notify})
    return Alerts(settings, ledger, tmp_path / "outbox", epoch=time.time, monotonic=time.monotonic, host="testhost")


def deliver(alerts: Alerts, uploads: Uploads | None = None, *, answered: int = 0, rounds: int = 500) -> None:
    """Step the notifier until nothing is pending or in flight (waiting only on real answers and backoffs)."""
    uploads = uploads or Uploads()
    for _ in range(rounds):
        alerts.step(time.time(), uploads, answered)
        if alerts.inflight:
            wait(list(alerts.inflight), timeout=60)
        elif not alerts.ledger.notification_counts().get("pending"):
            return
        else:
            time.sleep(0.01)  # a backoff of a few hundredths of a second
    raise AssertionError("notifications still pending")


def finished_file(ledger: Ledger, outcome: Outcome, *, error: str | None = None) -> FileInfo:
    file_id = ledger.add_file(
        sha256="c" * 64, name="orders.csv", path="/in/orders.csv", size=1, data_key="extended_id", mode="sync"
    )
    ledger.insert_rows(file_id, iter([(2, "A", "h", "[]", "rejected", "bad"), (3, "B", "h", "[]", "uploaded", "")]))
    ledger.transition_file(file_id, FileState.REPORTING, outcome=outcome, error=error)
    ledger.transition_file(file_id, FileState.DONE)
    return ledger.file(file_id)


# --- the pure rules --------------------------------------------------------------------------------------------


def test_a_pause_is_announced_at_once_and_a_resume_only_on_an_answer() -> None:
    assert pause_change("", "token", answered_ok=False) == UPLOADS_PAUSED_EVENT
    assert pause_change("token", "token", answered_ok=True) is None  # already announced (also after a restart)
    assert pause_change("api_down", "token", answered_ok=False) == UPLOADS_PAUSED_EVENT  # another cause
    assert pause_change("token", "", answered_ok=False) is None  # a new process, not yet knowing better
    assert pause_change("token", "", answered_ok=True) == UPLOADS_RESUMED
    assert pause_change("", "", answered_ok=True) is None


@given(st.lists(st.tuples(st.sampled_from(["", "token", "configuration", "api_down"]), st.booleans()), max_size=40))
def test_announcements_alternate_and_follow_the_pause(observations: list[tuple[str, bool]]) -> None:
    announced, events = "", []
    for current, answered_ok in observations:
        event = pause_change(announced, current, answered_ok=answered_ok)
        if event == UPLOADS_PAUSED_EVENT:
            announced = current
        elif event == UPLOADS_RESUMED:
            assert announced, "a resume is only announced after a pause"
            announced = ""
        if event is not None:
            events.append(event)
        if current:
            assert announced == current  # a pause is never left unannounced
    assert all(not (a == b == UPLOADS_RESUMED) for a, b in itertools.pairwise(events))


def test_retry_waits_double_up_to_the_longest() -> None:
    assert [retry_wait(n, 10, 60) for n in range(1, 6)] == [10, 20, 40, 60, 60]


def test_a_notification_never_carries_a_registered_secret(ledger: Ledger, tmp_path: Path) -> None:
    register_secret(SECRET)
    f = finished_file(ledger, Outcome.FAILED, error=f"cannot read it with Authorization UAT {SECRET}")
    counts = ledger.row_counts(f.id)
    payload = file_payload(f, counts, summary=tmp_path / "orders.summary.json", rejected=None, host="h")
    assert SECRET not in json.dumps(payload)
    assert "***" in payload["text"]
    assert payload["status"] == "failed"
    assert payload["text"].startswith("scm-daemon on h: orders.csv failed: cannot read it")


# --- the ledger: queued once, migrated ----------------------------------------------------------------------------


def test_an_event_is_queued_once_per_channel(ledger: Ledger) -> None:
    payload = {"id": "e1", "event": "file_finished", "text": "t"}
    assert ledger.queue_notification("e1", "file_finished", payload, ["webhook", "email"], now=0.0) == 2
    assert ledger.queue_notification("e1", "file_finished", payload, ["webhook", "email"], now=0.0) == 0
    assert ledger.notification_counts() == {"pending": 2}
    due = ledger.due_notifications(1.0, limit=10)
    assert [(n.event_key, n.channel, n.payload) for n in due] == [("e1", "webhook", payload), ("e1", "email", payload)]
    assert ledger.due_notifications(1.0, limit=10, exclude=[due[0].id]) == due[1:]


def test_a_schema_3_ledger_is_migrated_keeping_its_files_and_gains_the_notifications(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    old_ledger(path, 3)
    led = Ledger(path)
    try:
        assert led.schema_version == SCHEMA_VERSION
        assert [f.name for f in led.files([FileState.DONE])] == ["old.csv"]
        assert led.queue_notification("k", "file_finished", {"id": "k"}, ["command"], now=0.0) == 1
    finally:
        led.close()


# --- webhook -----------------------------------------------------------------------------------------------------


def test_a_file_with_rejected_rows_is_told_to_the_webhook_once_and_a_clean_file_is_not(
    tmp_path: Path, emulator: Emulator
) -> None:
    with WebhookReceiver() as receiver:
        project = make_project(tmp_path / "site", emulator.base_url, notify={"webhook_url": receiver.url})
        project.drop("clean.csv", csv_text(["extended_id", "batch"], [("CLEAN0001", "x")]))
        project.drop("orders.csv", csv_text(["extended_id", "batch"], [("GOOD00001", "x"), ("1.23457E+11", "y")]))
        settings = load_settings(project.config, env={"SCM_API__TOKEN": "sandbox-token"})
        prepare_folders(settings)
        Service.from_settings(settings, once=True).run(once=True)

        assert receiver.events() == ["file_finished"]
        told = receiver.taken[0]
    assert told["file"] == "orders.csv"
    assert told["status"] == "completed_with_errors"
    assert told["rows"]["rejected"] == 1
    assert "orders.csv completed with errors: 1 rejected and 0 failed of 2 rows" in told["text"]
    assert Path(told["summary"]).is_file()
    assert Path(told["rejected_file"]).name == "orders.rejected.csv"
    with sqlite3.connect(project.ledger) as db:
        assert db.execute("SELECT channel, state, attempts FROM notifications").fetchall() == [("webhook", "sent", 1)]


def test_webhook_failures_are_retried_with_backoff_and_given_up_after_the_bound(ledger: Ledger, tmp_path: Path) -> None:
    with WebhookReceiver(answers=[500] * 10) as receiver:
        alerts = alerts_for(ledger, tmp_path, webhook_url=receiver.url, max_attempts=3)
        register_secret(receiver.url)  # as load_settings does: the URL is a credential
        alerts.file_done(finished_file(ledger, Outcome.COMPLETED_WITH_ERRORS), _names())
        with capture_logs() as logs:
            deliver(alerts)
    assert receiver.refused == 3
    assert receiver.taken == []
    failed = [e for e in logs if e["event"] == "notification_failed"]
    assert [e["attempt"] for e in failed] == [1, 2]
    assert all(e["error"] == "the webhook at 127.0.0.1 answered HTTP 500 (Internal Server Error)" for e in failed)
    (gave_up,) = [e for e in logs if e["event"] == "notification_given_up"]
    assert gave_up["log_level"] == "error"
    assert gave_up["note"] == "not delivered after 3 tries"
    assert "secretpart" not in repr(logs)
    assert ledger.notification_counts() == {"given_up": 1}
    data = ledger.overview()
    data["notifications"] = ledger.notification_overview()  # as `scm-daemon status` shows it
    text = render_overview(data)
    assert "notifications: given_up 1" in text
    (line,) = [line for line in text.splitlines() if "not delivered" in line]
    assert line.startswith("  not delivered (webhook, file_finished, ")
    assert line.endswith("): the webhook at 127.0.0.1 answered HTTP 500 (Internal Server Error)")


def test_a_webhook_that_fails_once_gets_the_notification_exactly_once(ledger: Ledger, tmp_path: Path) -> None:
    with WebhookReceiver(answers=[503]) as receiver:
        alerts = alerts_for(ledger, tmp_path, webhook_url=receiver.url)
        alerts.file_done(finished_file(ledger, Outcome.COMPLETED_WITH_ERRORS), _names())
        deliver(alerts)
        assert receiver.refused == 1
        assert receiver.events() == ["file_finished"]
    assert ledger.notification_counts() == {"sent": 1}


def test_a_status_outside_notify_on_queues_nothing(ledger: Ledger, tmp_path: Path) -> None:
    alerts = alerts_for(ledger, tmp_path, webhook_url="http://127.0.0.1:9/x")
    alerts.file_done(finished_file(ledger, Outcome.COMPLETED), _names())
    assert ledger.notification_counts() == {}


def _names() -> Any:
    from daemon.reporter import names_for

    return names_for("orders")


# --- pause and resume ----------------------------------------------------------------------------------------------


def test_a_pause_and_its_resume_are_each_told_once_also_across_a_restart(ledger: Ledger, tmp_path: Path) -> None:
    with WebhookReceiver() as receiver:
        uploads = Uploads(pause=Pause("token", "401 Unauthorized"))
        ledger.set_meta("uploads_paused", "the API refused the token (401 Unauthorized); renew it")
        first = alerts_for(ledger, tmp_path, webhook_url=receiver.url)
        deliver(first, uploads)
        deliver(first, uploads)  # still paused: nothing new
        first.close()

        restarted = alerts_for(ledger, tmp_path, webhook_url=receiver.url)
        deliver(restarted, Uploads())  # a new process starts unpaused, before any answer: no resume yet
        deliver(restarted, Uploads(pause=Pause("starting", "checking the API")))  # nor while it checks the API
        deliver(restarted, uploads)  # refused again: already told
        deliver(restarted, Uploads(), answered=1)  # an answer while unpaused: resumed
        deliver(restarted, Uploads(breaker=Breaker(is_open=True, failures=10)))  # the API failing: paused again
        assert receiver.events() == [UPLOADS_PAUSED_EVENT, UPLOADS_RESUMED, UPLOADS_PAUSED_EVENT]
        paused, resumed, down = receiver.taken
    assert paused["cause"] == "token"
    assert "uploads paused: the API refused the token (401 Unauthorized); renew it" in paused["text"]
    assert resumed["text"] == "scm-daemon on testhost: uploads resumed (they had paused: the API refused the token)."
    assert down["cause"] == "api_down"
    assert len({paused["id"], resumed["id"], down["id"]}) == 3


def test_a_start_up_check_that_cannot_reach_the_api_is_told_as_api_down(ledger: Ledger, tmp_path: Path) -> None:
    with WebhookReceiver() as receiver:
        alerts = alerts_for(ledger, tmp_path, webhook_url=receiver.url)
        checking = Uploads(pause=Pause("starting", "checking the API (GET /api/v2/me/) before taking files"))
        deliver(alerts, checking)
        assert receiver.events() == []
        deliver(alerts, Uploads(pause=Pause("starting", "the API cannot be reached"), start_failures=1))
        deliver(alerts, Uploads(), answered=1)  # the check passed
        assert receiver.events() == [UPLOADS_PAUSED_EVENT, UPLOADS_RESUMED]
        assert receiver.taken[0]["cause"] == "api_down"


# --- e-mail ----------------------------------------------------------------------------------------------------------


def test_email_goes_over_starttls_with_a_login_and_a_stable_message_id(ledger: Ledger, tmp_path: Path) -> None:
    with smtp_server(tmp_path, username="alerts", password=SECRET) as (mailbox, port, cert):
        alerts = alerts_for(
            ledger,
            tmp_path,
            email_to=["ops@example.com", "office@example.com"],
            email_from="scm-daemon@example.com",
            smtp_host="127.0.0.1",
            smtp_port=port,
            smtp_username="alerts",
            smtp_password=SecretStr(SECRET),
            smtp_ca_file=str(cert),
        )
        alerts.file_done(finished_file(ledger, Outcome.COMPLETED_WITH_ERRORS), _names())
        deliver(alerts)
        (mail,) = mailbox.received
    assert mail.tls
    assert mail.login == "alerts"
    assert mail.mail_from == "scm-daemon@example.com"
    assert mail.rcpt_tos == ["ops@example.com", "office@example.com"]
    message = email.message_from_bytes(mail.content, policy=email.policy.default)
    assert message["Subject"] == "scm-daemon: orders.csv completed with errors"
    (queued,) = ledger.due_notifications(0, limit=1) or [None]  # sent: nothing due any more
    assert queued is None
    assert message["Message-ID"].startswith("<file-1-")
    body = message.get_body(("plain",))
    assert body is not None
    assert "orders.csv completed with errors: 1 rejected and 0 failed of 2 rows" in body.get_content()
    assert "rows: total 2, rejected 1, uploaded 1" in body.get_content().splitlines()
    assert SECRET not in mail.content.decode()


def test_an_untrusted_mail_server_certificate_is_reported_in_plain_words(ledger: Ledger, tmp_path: Path) -> None:
    with smtp_server(tmp_path, username="alerts", password="pw") as (_mailbox, port, _cert):
        alerts = alerts_for(
            ledger, tmp_path, email_to=["ops@example.com"], smtp_host="127.0.0.1", smtp_port=port, max_attempts=1
        )
        alerts.file_done(finished_file(ledger, Outcome.FAILED, error="no key column"), _names())
        with capture_logs() as logs:
            deliver(alerts)
    (gave_up,) = [e for e in logs if e["event"] == "notification_given_up"]
    assert gave_up["error"].startswith(f"the mail server 127.0.0.1:{port}: its TLS certificate is not trusted")
    assert gave_up["error"].endswith("give its CA in notify.smtp_ca_file")


# --- command ---------------------------------------------------------------------------------------------------------


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "notify-script"
    path.write_text(f"#!{sys.executable}\nimport json, os, sys, time\n{body}\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_command_gets_the_summary_path_and_the_event_but_not_the_token(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCM_API__TOKEN", SECRET)
    out = tmp_path / "told.json"
    command = script(
        tmp_path,
        f"json.dump({{'argv': sys.argv[1:], 'stdin': json.load(sys.stdin), "
        f"'env': {{k: v for k, v in os.environ.items() if k.startswith('SCM_')}}}}, open({str(out)!r}, 'w'))",
    )
    alerts = alerts_for(ledger, tmp_path, command=[str(command), "--from-daemon"])
    alerts.file_done(finished_file(ledger, Outcome.COMPLETED_WITH_ERRORS), _names())
    deliver(alerts)
    told = json.loads(out.read_text(encoding="utf-8"))
    assert told["argv"] == ["--from-daemon", str(tmp_path / "outbox" / "orders.summary.json")]
    assert told["stdin"]["status"] == "completed_with_errors"
    assert told["env"]["SCM_NOTIFY_EVENT"] == "file_finished"
    assert told["env"]["SCM_NOTIFY_FILE"] == "orders.csv"
    assert "SCM_API__TOKEN" not in told["env"]
    assert ledger.notification_counts() == {"sent": 1}


def test_a_failing_or_hanging_command_is_stopped_and_said_plainly(ledger: Ledger, tmp_path: Path) -> None:
    failing = script(tmp_path, "print('mailer down', file=sys.stderr); sys.exit(3)")
    alerts = alerts_for(ledger, tmp_path, command=[str(failing)], max_attempts=1)
    alerts.file_done(finished_file(ledger, Outcome.COMPLETED_WITH_ERRORS), _names())
    with capture_logs() as logs:
        deliver(alerts)
    (gave_up,) = [e for e in logs if e["event"] == "notification_given_up"]
    assert gave_up["error"] == f"the command {failing} exited with status 3: mailer down"

    hanging = tmp_path / "hang"
    hanging.mkdir()
    sleeper = script(hanging, "time.sleep(600)")
    other = Ledger(tmp_path / "other.sqlite3")
    try:
        alerts = alerts_for(other, tmp_path, command=[str(sleeper)], max_attempts=1, timeout_seconds=0.5)
        alerts.file_done(finished_file(other, Outcome.COMPLETED_WITH_ERRORS), _names())
        with capture_logs() as logs:
            deliver(alerts)
        (gave_up,) = [e for e in logs if e["event"] == "notification_given_up"]
        assert gave_up["error"] == f"the command {sleeper} did not finish within 0.5 s and was stopped"
    finally:
        other.close()


def test_a_missing_command_is_named(ledger: Ledger, tmp_path: Path) -> None:
    alerts = alerts_for(ledger, tmp_path, command=[str(tmp_path / "nope")], max_attempts=1)
    alerts.file_done(finished_file(ledger, Outcome.FAILED, error="unreadable"), _names())
    with capture_logs() as logs:
        deliver(alerts)
    (gave_up,) = [e for e in logs if e["event"] == "notification_given_up"]
    assert gave_up["error"] == f"the command {tmp_path / 'nope'} does not exist; check notify.command"


# --- configuration ---------------------------------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_notify_is_off_by_default_and_reads_the_smtp_password_from_a_file_or_a_credential(tmp_path: Path) -> None:
    assert load_settings(None, env={}).notify.channels == ()
    (tmp_path / "smtp-password").write_text("pa ss\n", encoding="utf-8")
    config = write_config(
        tmp_path,
        '[notify]\nemail_to = ["ops@example.com"]\nsmtp_host = "mail.example.com"\nsmtp_username = "alerts"\n'
        'smtp_password_file = "smtp-password"\nwebhook_url = "https://hooks.example.com/T/B/x"\n',
    )
    notify = load_settings(config, env={}).notify
    assert notify.channels == ("webhook", "email")
    assert notify.smtp_password is not None
    assert notify.smtp_password.get_secret_value() == "pa ss"
    assert notify.on == ["completed_with_errors", "failed"]

    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "scm-smtp-password").write_text("from-systemd", encoding="utf-8")
    config = write_config(
        tmp_path, '[notify]\nemail_to = ["ops@example.com"]\nsmtp_host = "m.example.com"\nsmtp_username = "a"\n'
    )
    notify = load_settings(config, env={"CREDENTIALS_DIRECTORY": str(credentials)}).notify
    assert notify.smtp_password is not None
    assert notify.smtp_password.get_secret_value() == "from-systemd"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('email_to = ["ops@example.com"]', "email_to needs smtp_host"),
        ('email_to = ["ops@example.com"]\nsmtp_host = "m.example.com"\nsmtp_username = "a"', "no password was found"),
        ('email_to = ["ops"]\nsmtp_host = "m"', "'ops' is not an e-mail address"),
        ('email_to = ["a@b"]\nsmtp_host = "mail.example.com"\nsmtp_security = "none"', "only allowed to 127.0.0.1"),
        ('smtp_password = "hunter2"', "notify.smtp_password must not be written in the config file"),
        ('on = ["completed", "exploded"]', "notify.on.1"),
        ('smtp_password_file = "missing"\nemail_to = ["a@b"]\nsmtp_host = "m"', "cannot read the password file"),
    ],
)
def test_notify_mistakes_are_refused_with_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write_config(tmp_path, f"[notify]\n{text}\n"), env={})


def test_a_bad_webhook_url_is_refused_without_being_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            write_config(tmp_path, '[notify]\nwebhook_url = "http://hooks.example.com/T/B/topsecret"\n'), env={}
        )
    assert "must use https://" in str(caught.value)
    assert "topsecret" not in str(caught.value)


def test_row_counts_used_in_the_text_are_the_ledgers(ledger: Ledger, tmp_path: Path) -> None:
    f = finished_file(ledger, Outcome.COMPLETED_WITH_ERRORS)
    counts = ledger.row_counts(f.id)
    assert counts == {RowStatus.REJECTED: 1, RowStatus.UPLOADED: 1}
    payload = file_payload(f, counts, summary=tmp_path / "s.json", rejected=tmp_path / "r.csv", host="h")
    assert payload["rows"] == {"total": 2, "rejected": 1, "uploaded": 1}
    assert "fix them in r.csv and drop it into the inbox again" in payload["text"]


# --- scm-daemon notify-test --------------------------------------------------------------------------------------


def test_notify_test_sends_through_each_channel_and_says_how_each_went(tmp_path: Path) -> None:
    with WebhookReceiver() as receiver:
        project = make_project(
            tmp_path / "site",
            "http://127.0.0.1:9",
            notify={"webhook_url": receiver.url, "command": [str(tmp_path / "nope")]},
        )
        done = project.cli("notify-test")
        assert receiver.events() == ["test"]
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        "webhook: delivered",
        f"command: not delivered: the command {tmp_path / 'nope'} does not exist; check notify.command",
    ]
    assert "secretpart" not in done.stdout + done.stderr

    bare = make_project(tmp_path / "bare", "http://127.0.0.1:9").cli("notify-test")
    assert bare.returncode == 2
    assert "no [notify] channel is configured" in bare.stderr


def test_a_hostile_file_name_neither_pings_a_chat_channel_nor_breaks_the_mail(ledger: Ledger, tmp_path: Path) -> None:
    file_id = ledger.add_file(
        sha256="d" * 64,
        name="<!channel> &\nBcc: x@evil.example.csv",
        path="/in/x",
        size=1,
        data_key="extended_id",
        mode="sync",
    )
    ledger.transition_file(file_id, FileState.REPORTING, outcome=Outcome.FAILED, error="no key column")
    ledger.transition_file(file_id, FileState.DONE)
    with WebhookReceiver() as receiver, smtp_server(tmp_path, username="u", password="p") as (mailbox, port, cert):
        alerts = alerts_for(
            ledger,
            tmp_path,
            webhook_url=receiver.url,
            email_to=["ops@example.com"],
            smtp_host="127.0.0.1",
            smtp_port=port,
            smtp_username="u",
            smtp_password=SecretStr("p"),
            smtp_ca_file=str(cert),
        )
        alerts.file_done(ledger.file(file_id), _names())
        deliver(alerts)
        (told,) = receiver.taken
        (mail,) = mailbox.received
    assert told["text"].startswith("scm-daemon on testhost: &lt;!channel&gt; &amp;\nBcc: x@evil.example.csv failed")
    assert told["file"] == "<!channel> &\nBcc: x@evil.example.csv"  # the figures stay as they are
    message = email.message_from_bytes(mail.content, policy=email.policy.default)
    assert message["Subject"] == "scm-daemon: <!channel> & Bcc: x@evil.example.csv failed"
    assert message["Bcc"] is None
    assert mail.rcpt_tos == ["ops@example.com"]


def test_notify_keys_come_from_the_environment_too_and_the_webhook_url_is_kept_out_of_logs() -> None:
    url = "https://hooks.example.com/services/T1/B1/envsecret"
    env = {"SCM_NOTIFY__WEBHOOK_URL": url, "SCM_NOTIFY__ON": '["failed"]', "SCM_NOTIFY__COMMAND": '["/bin/true"]'}
    notify = load_settings(None, env=env).notify
    assert notify.channels == ("webhook", "command")
    assert notify.on == ["failed"]
    assert redact(f"posting to {url}") == "posting to ***"
    with pytest.raises(ConfigError, match="must be a JSON list"):
        load_settings(None, env={"SCM_NOTIFY__EMAIL_TO": "ops@example.com"})


def test_prune_drops_notifications_sent_or_given_up_and_keeps_pending_ones(ledger: Ledger) -> None:
    for key in ("sent", "given-up", "pending"):
        ledger.queue_notification(key, "file_finished", {"id": key}, ["webhook"], now=0.0)
    sent, given_up, _pending = ledger.due_notifications(1.0, limit=3)
    ledger.notification_sent(sent.id)
    ledger.notification_given_up(given_up.id, "no answer")
    later = "9999-01-01T00:00:00.000+00:00"
    assert ledger.prune_notifications(later, dry_run=True) == 2
    assert ledger.notification_counts() == {"sent": 1, "given_up": 1, "pending": 1}
    assert ledger.prune_notifications("2000-01-01T00:00:00.000+00:00") == 0  # none queued that long ago
    assert ledger.prune_notifications(later) == 2
    assert ledger.notification_counts() == {"pending": 1}
