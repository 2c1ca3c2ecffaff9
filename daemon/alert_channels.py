"""Delivering one notification: a webhook POST, an e-mail over SMTP, or a local command (no shell).

Each sender either returns (delivered) or raises DeliveryError with a message in plain words that names the
receiver but never a secret (the webhook's URL, the SMTP password); the worker logs it and retries.
"""

import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from daemon.logs import redact

ANSWER_LIMIT = 64 * 1024  # bytes of a webhook's answer that are read (and ignored)
STDERR_SHOWN = 200  # characters of a failed command's last error line that go into the log


class DeliveryError(Exception):
    """A notification was not delivered; the message says why in plain words and holds no secret."""


def chat_text(text: str) -> str:
    """`text` as Slack reads it literally: a file named `<!channel>.csv` must not notify a whole channel.

    Slack's formatting rules ask for exactly these three escapes; the structured fields stay as they are.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def post_webhook(url: str, payload: Mapping[str, Any], timeout: float) -> None:
    """POST the payload as JSON (its `text` escaped for chat); any 2xx answer is a delivery."""
    host = urlsplit(url).hostname or "?"
    body = {**payload, "text": chat_text(str(payload.get("text", "")))}
    request = urllib.request.Request(  # noqa: S310 -- the scheme is checked (http(s) only) when the config is read
        url,
        data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
        method="POST",
        headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": "scm-daemon"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 -- as above
            answer.read(ANSWER_LIMIT)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"the webhook at {host} answered HTTP {exc.code} ({exc.reason})") from None
    except urllib.error.URLError as exc:
        raise DeliveryError(f"cannot reach the webhook at {host}: {_os_reason(exc.reason, timeout)}") from None
    except OSError as exc:  # a timeout or reset while reading the answer
        raise DeliveryError(f"the webhook at {host} did not answer properly: {_os_reason(exc, timeout)}") from None


def _os_reason(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "the host name is not known (DNS)"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({reason.verify_message})"
    if isinstance(reason, OSError):
        return reason.strerror or type(reason).__name__
    return redact(str(reason))


def email_message(payload: Mapping[str, Any], *, sender: str, to: Sequence[str]) -> EmailMessage:
    """The e-mail for a notification: its subject and text, the fields below, and a Message-ID from its id."""
    message = EmailMessage()
    # A file name may hold a line break: a header must not (it would be refused, or inject headers).
    message["Subject"] = " ".join(str(payload["subject"]).split())
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = formatdate(usegmt=True)
    # The event's stable id: a notification sent twice (a crash between delivery and its record) is one thread.
    message["Message-ID"] = f"<{payload['id']}@scm-daemon>"
    shown = {k: v for k, v in payload.items() if k not in ("text", "subject") and v is not None}
    fields = "\n".join(f"{k}: {_plain(v)}" for k, v in shown.items())
    message.set_content(f"{payload['text']}\n\n{fields}\n")
    return message


def _plain(value: Any) -> str:
    """A field as a person reads it in a mail: a table of figures as `total 2, rejected 1`."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def send_email(
    message: EmailMessage,
    *,
    host: str,
    port: int,
    security: str,
    username: str,
    password: str | None,
    ca_file: str,
    timeout: float,
) -> None:
    """Send through the SMTP server: STARTTLS (or implicit TLS, or, to this machine only, none), then login."""
    where = f"the mail server {host}:{port}"
    context = ssl.create_default_context(cafile=ca_file or None)
    try:
        client = (
            smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
            if security == "tls"
            else smtplib.SMTP(host, port, timeout=timeout)
        )
        with client:
            if security == "starttls":
                client.starttls(context=context)
            if username:
                client.login(username, password or "")
            client.send_message(message)
    except smtplib.SMTPNotSupportedError:
        raise DeliveryError(
            f'{where} does not offer STARTTLS; use its TLS port with notify.smtp_security = "tls"'
        ) from None
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(
            f"{where} refused the login of {username!r} ({exc.smtp_code}); check smtp_username and the password"
        ) from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"{where} refused the recipients {', '.join(exc.recipients)}") from None
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        raise DeliveryError(f"{where} answered {exc.smtp_code} {redact(text)[:200]}") from None
    except smtplib.SMTPException as exc:
        raise DeliveryError(f"{where}: {redact(str(exc))[:200]}") from None
    except ssl.SSLCertVerificationError as exc:
        raise DeliveryError(
            f"{where}: its TLS certificate is not trusted ({exc.verify_message}); give its CA in notify.smtp_ca_file"
        ) from None
    except ssl.SSLError as exc:
        raise DeliveryError(f"{where}: TLS failed ({exc.reason or exc})") from None
    except OSError as exc:
        raise DeliveryError(f"cannot reach {where}: {_os_reason(exc, timeout)}") from None


def run_command(argv: Sequence[str], payload: Mapping[str, Any], *, arguments: Sequence[str], timeout: float) -> None:
    """Run the command (no shell) with `arguments` appended, the payload as JSON on stdin and SCM_NOTIFY_*
    variables; exit status 0 is a delivery. The daemon's own SCM_* variables (the token) are not passed on."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCM_") and k != "CREDENTIALS_DIRECTORY"}
    for key in ("id", "event", "text", "file", "status", "summary", "cause"):
        value = payload.get(key)
        if value is not None:
            env[f"SCM_NOTIFY_{key.upper()}"] = str(value)
    program = argv[0]
    try:
        # Its own session, so that a timeout stops the command and whatever it started.
        with subprocess.Popen(  # noqa: S603 -- a list of arguments from the configuration, no shell
            [*argv, *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        ) as process:
            try:
                _, err = process.communicate(json.dumps(payload, ensure_ascii=False).encode("utf-8"), timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise DeliveryError(
                    f"the command {program} did not finish within {timeout:g} s and was stopped"
                ) from None
    except FileNotFoundError:
        raise DeliveryError(f"the command {program} does not exist; check notify.command") from None
    except PermissionError:
        raise DeliveryError(f"the command {program} may not be run (is it executable?)") from None
    except OSError as exc:
        raise DeliveryError(f"the command {program} could not be started ({exc.strerror or exc})") from None
    if process.returncode != 0:
        lines = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
        said = f": {redact(lines[-1].strip())[:STDERR_SHOWN]}" if lines else ""
        raise DeliveryError(f"the command {program} exited with status {process.returncode}{said}")
