"""Notifications end to end: the real CLI as a subprocess, the emulator and a webhook receiver on loopback.

A kill -9 between queueing a notification and delivering it neither loses nor repeats it; a refused token is
told once as a pause and once as a resume when the renewed token is taken (SIGHUP).
"""

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alert_receivers import WebhookReceiver, free_port
from support import TOKEN, Project, csv_text, make_project, stop, wait_ready

from daemon.sandbox import Emulator

pytestmark = pytest.mark.slow  # subprocesses and restarts

HEADER = ["extended_id", "batch"]
FAST_RETRY = {"retry_seconds": 0.2, "max_retry_seconds": 0.5, "max_attempts": 1000}


def wait_until(predicate: Callable[[], object], project: Project, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            log = (project.root / "service.log").read_text(encoding="utf-8")
            raise AssertionError(f"{what} not reached within {timeout} s\n{log[-4000:]}")
        time.sleep(0.05)


def notifications(project: Project) -> list[tuple[Any, ...]]:
    if not project.ledger.exists():
        return []
    with sqlite3.connect(project.ledger, timeout=10) as db:
        try:
            return db.execute("SELECT event, channel, state, attempts FROM notifications ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # not migrated yet
            return []


def test_a_kill_9_between_queueing_and_delivery_loses_nothing_and_delivers_once(
    tmp_path: Path, emulator: Emulator
) -> None:
    port = free_port()  # nothing listens there yet: every delivery is refused
    project = make_project(
        tmp_path / "site", emulator.base_url, notify={"webhook_url": f"http://127.0.0.1:{port}/hook", **FAST_RETRY}
    )
    project.drop("orders.csv", csv_text(HEADER, [("ORDER0001", "x"), ("1.23457E+11", "y")]))

    with project.running() as service:

        def tried() -> bool:
            return any(state == "pending" and attempts >= 1 for _, _, state, attempts in notifications(project))

        wait_until(tried, project, "a refused delivery")
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)
    assert [(e, c, s) for e, c, s, _ in notifications(project)] == [("file_finished", "webhook", "pending")]
    assert "connection refused" in (project.root / "service.log").read_text(encoding="utf-8")

    with WebhookReceiver(port=port) as receiver:
        with project.running() as service:
            wait_until(lambda: notifications(project)[0][2] == "sent", project, "the delivery after the restart")
            assert stop(service) == 0
        done = project.cli("run", "--once")  # a third start: nothing is sent again
        assert done.returncode == 0, done.stderr
        assert receiver.events() == ["file_finished"]
        (told,) = receiver.taken
    assert told["file"] == "orders.csv"
    assert told["status"] == "completed_with_errors"
    assert told["id"].startswith("file-1-")


def test_a_refused_token_is_told_as_a_pause_and_its_renewal_as_a_resume(tmp_path: Path, emulator: Emulator) -> None:
    with WebhookReceiver() as receiver:
        project = make_project(tmp_path / "site", emulator.base_url, notify={"webhook_url": receiver.url, **FAST_RETRY})
        with project.running() as service:
            wait_ready(project)
            emulator.configure(revoked=True)  # the token expires while the service runs
            project.drop("orders.csv", csv_text(HEADER, [(f"ORDER{i:04d}", "x") for i in range(50)]))
            wait_until(lambda: receiver.events() == ["uploads_paused"], project, "the pause notification")
            emulator.configure(revoked=False)
            service.send_signal(signal.SIGHUP)  # the token is checked again at once
            wait_until((project.archive / "orders.csv").exists, project, "the file done")
            wait_until(lambda: len(receiver.events()) == 2, project, "the resume notification")
            assert stop(service) == 0
        paused, resumed = receiver.taken
    assert receiver.events() == ["uploads_paused", "uploads_resumed"]  # a completed file is not told by default
    assert paused["cause"] == "token"
    assert "uploads paused: POST /api/v2/scm/upload/: the API refused the token (401: Invalid token.)" in paused["text"]
    assert paused["text"].count("refused the token") == 1  # said once, with the API's words
    assert resumed["cause"] == "token"
    assert TOKEN not in repr(receiver.taken)
    assert project.summary("orders")["status"] == "completed"


def test_a_token_refused_at_start_up_is_told_before_the_service_ends(tmp_path: Path, emulator: Emulator) -> None:
    emulator.configure(revoked=True)
    with WebhookReceiver() as receiver:
        project = make_project(tmp_path / "site", emulator.base_url, notify={"webhook_url": receiver.url})
        with project.running() as service:
            assert service.wait(timeout=60) == 3  # the start-up check: a refused token ends the service
        assert receiver.events() == ["uploads_paused"]
        assert receiver.taken[0]["cause"] == "token"
