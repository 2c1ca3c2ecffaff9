"""Tests for daemon.logs: JSON and console output, levels, stdlib routing, secret redaction."""

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from daemon.logs import configure_logging, redact, register_secret


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Each test configures logging; put the process back as it was afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_event_level_logger_and_utc_timestamp() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    structlog.get_logger("daemon.uploader").info("batch_uploaded", batch_id=7, rows=100)
    [event] = lines(stream)
    assert event["event"] == "batch_uploaded"
    assert (event["batch_id"], event["rows"]) == (7, 100)
    assert event["level"] == "info"
    assert event["logger"] == "daemon.uploader"
    stamp = datetime.fromisoformat(event["timestamp"])
    assert stamp.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


def test_json_is_chosen_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    structlog.get_logger().info("plain_pipe", n=1)
    assert lines(stream)[0]["event"] == "plain_pipe"


def test_console_output_on_a_terminal() -> None:
    stream = _Terminal()
    configure_logging(stream=stream)
    structlog.get_logger().warning("folder_missing", folder="/srv/in")
    text = stream.getvalue()
    assert "folder_missing" in text
    assert "folder" in text
    assert "/srv/in" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_console_output_can_be_forced_off_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging(json=False, stream=stream)
    structlog.get_logger().info("forced_console", k="v")
    text = stream.getvalue()
    assert "forced_console" in text
    assert "k=v" in text
    assert not text.startswith("{")


@pytest.mark.parametrize(("level", "shown"), [("debug", 4), ("info", 3), ("warning", 2), ("ERROR", 1)])
def test_level_filters_events(level: str, shown: int) -> None:
    stream = io.StringIO()
    configure_logging(json=True, level=level, stream=stream)
    log = structlog.get_logger()
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [e["event"] for e in lines(stream)] == ["d", "i", "w", "e"][4 - shown :]


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging(level="loud", stream=io.StringIO())


def test_exceptions_are_rendered_in_json() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        structlog.get_logger().exception("tick_failed")
    [event] = lines(stream)
    assert event["level"] == "error"
    assert "Traceback" in event["exception"]
    assert "RuntimeError: disk on fire" in event["exception"]


def test_stdlib_loggers_go_to_the_same_stream_from_warning_up() -> None:
    stream = io.StringIO()
    configure_logging(json=True, level="debug", stream=stream)
    logging.getLogger("urllib3.connectionpool").info("Starting new HTTPS connection")
    logging.getLogger("watchdog.observers").warning("inotify limit %d reached", 8192)
    [event] = lines(stream)
    assert event["event"] == "inotify limit 8192 reached"
    assert event["logger"] == "watchdog.observers"
    assert event["level"] == "warning"
    assert "timestamp" in event


def test_configuring_twice_does_not_duplicate_output() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(json=True, stream=first)
    configure_logging(json=True, stream=second)
    structlog.get_logger().info("once")
    logging.getLogger("urllib3").error("stdlib once")
    assert first.getvalue() == ""
    assert [e["event"] for e in lines(second)] == ["once", "stdlib once"]


def test_events_are_still_captured_by_capture_logs() -> None:
    configure_logging(json=True, stream=io.StringIO())
    with capture_logs() as captured:
        structlog.get_logger().info("file_settled", file="a.csv")
    assert captured == [{"event": "file_settled", "file": "a.csv", "log_level": "info"}]


def test_a_registered_secret_never_appears_in_json_lines() -> None:
    secret = "s3cr3t-json-0001"
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    register_secret(secret)
    log = structlog.get_logger()
    log.info("request_sent", header=f"UAT {secret}", nested={"list": [secret, ("x", secret)]}, n=3)
    log.info(f"event name with {secret}")
    log.info("object_value", obj=_Leaky(secret))
    try:
        raise PermissionError(f"refused {secret}")
    except PermissionError:
        log.exception("call_failed")
    logging.getLogger("urllib3").warning("retrying with %s", secret)
    text = stream.getvalue()
    assert secret not in text
    events = lines(stream)
    assert events[0]["header"] == "UAT ***"
    assert events[0]["nested"] == {"list": ["***", ["x", "***"]]}
    assert events[0]["n"] == 3
    assert "***" in events[2]["obj"]
    assert "refused ***" in events[3]["exception"]
    assert events[4]["event"] == "retrying with ***"


def test_a_registered_secret_never_appears_on_the_console() -> None:
    secret = "s3cr3t-console-0002"
    register_secret(secret)
    stream = _Terminal()
    configure_logging(stream=stream)
    try:
        raise ValueError(secret)
    except ValueError:
        structlog.get_logger().exception("boom", token=secret)
        logging.getLogger("watchdog").error("with %s", secret, exc_info=True)
    assert secret not in stream.getvalue()
    assert "***" in stream.getvalue()


def test_a_secret_that_json_would_escape_is_redacted_before_rendering() -> None:
    secret = 'pa"ss\\wörd-0004'
    register_secret(secret)
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    structlog.get_logger().info("escaped", value=f"<{secret}>")
    assert lines(stream)[0]["value"] == "<***>"


def test_redact_replaces_longer_secrets_first_and_ignores_empty_ones() -> None:
    register_secret("")
    register_secret("   ")
    register_secret("abc-0003")
    register_secret("abc-0003-longer")
    assert redact("x abc-0003-longer y abc-0003") == "x *** y ***"
    assert redact("nothing to hide") == "nothing to hide"


class _Leaky:
    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __repr__(self) -> str:
        return f"_Leaky({self.secret})"
