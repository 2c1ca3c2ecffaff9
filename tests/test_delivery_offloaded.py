"""A big file's final rows are counted and its reports written off the loop's thread (issue 13: no step holds the
loop for long): the loop turns meanwhile, the delivery is recorded once they are written, and a failure there is
retried like any other.

Every file counts as big here (OFFLOAD_ROWS = 1), the service is the production one built in this process, with
its real reader threads, against the emulator on loopback; the reports are held at a seam to see the loop go on.
"""

import errno
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from support import Project, csv_text, in_process, make_project

from daemon import folders, steps
from daemon.flow import DELIVERY_RETRY
from daemon.sandbox import Emulator
from daemon.service import Service

HEADER = ["extended_id", "intended_market"]
TEXT = csv_text(HEADER, [(f"OFF{i:08d}", f"M{i}") for i in range(30)])


class Clock:
    """Real monotonic time plus an offset the test moves forward (past a backoff)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
def site(tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> tuple[Project, Clock]:
    monkeypatch.setattr(steps, "OFFLOAD_ROWS", 1)
    return make_project(tmp_path / "site", emulator.base_url, watch={"settle_seconds": 0}), Clock()


def started_service(project: Project, clock: Clock) -> Service:
    service = in_process(project, clock)
    service.start()
    return service


def close(service: Service) -> None:
    service.shutdown()
    service.ledger.close()


def turn_until(service: Service, done: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if done():
            return
        service.turn()
    raise AssertionError(f"not reached in {seconds} s: {what}")


def file_state(project: Project) -> tuple[str | None, str | None]:
    """The one file's state and delivery error (None, None before it is claimed)."""
    with sqlite3.connect(project.ledger) as db:
        row = db.execute("SELECT state, delivery_error FROM files").fetchone()
    return (None, None) if row is None else (row[0], row[1])


def test_the_loop_turns_while_a_big_files_reports_are_written(
    site: tuple[Project, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, clock = site
    entered, release = threading.Event(), threading.Event()
    write_reports = folders.write_reports

    def held(*args: Any, **kwargs: Any) -> Any:
        assert threading.current_thread() is not threading.main_thread()  # off the loop's thread
        entered.set()
        assert release.wait(30)
        return write_reports(*args, **kwargs)

    monkeypatch.setattr(folders, "write_reports", held)
    project.drop("lot.csv", TEXT)
    service = started_service(project, clock)
    counted_on: list[threading.Thread] = []
    row_counts = service.ledger.row_counts

    def counting(file_id: int) -> Any:
        counted_on.append(threading.current_thread())
        return row_counts(file_id)

    monkeypatch.setattr(service.ledger, "row_counts", counting)
    try:
        turn_until(service, entered.is_set, "the reports started")
        assert counted_on  # the file's final rows were counted, before its reports
        assert threading.main_thread() not in counted_on  # and off the loop's thread
        began = time.monotonic()
        for _ in range(5):
            service.turn()  # returns while the reports are held
        assert time.monotonic() - began < 5
        assert file_state(project) == ("reporting", None)
        assert not (project.outbox / "lot.summary.json").exists()
        release.set()
        turn_until(service, lambda: file_state(project)[0] == "done", "the delivery recorded")
    finally:
        release.set()
        close(service)
    assert project.summary("lot")["rows"]["uploaded"] == 30
    assert {r["status"] for r in project.report("lot")} == {"uploaded"}
    assert (project.archive / "lot.csv").read_bytes() == TEXT.encode()


def test_a_failure_writing_them_off_the_loop_is_retried_with_backoff(
    site: tuple[Project, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, clock = site
    failures = [OSError(errno.ENOSPC, "No space left on device", str(project.outbox / "lot.report.csv"))]
    write_reports = folders.write_reports

    def full_once(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return write_reports(*args, **kwargs)

    monkeypatch.setattr(folders, "write_reports", full_once)
    project.drop("lot.csv", TEXT)
    service = started_service(project, clock)
    try:
        with capture_logs() as logs:
            turn_until(service, lambda: file_state(project)[1] is not None, "the failure recorded")
        failed = [e for e in logs if e["event"] == "delivery_failed"]
        assert len(failed) == 1, failed
        assert "No space left on device" in failed[0]["error"]
        assert file_state(project)[0] == "reporting"
        for _ in range(3):
            service.turn()  # backing off: not tried again yet
        assert file_state(project)[0] == "reporting"
        clock.offset += DELIVERY_RETRY[0] * 2
        turn_until(service, lambda: file_state(project) == ("done", None), "delivered after the backoff")
    finally:
        close(service)
    assert project.summary("lot")["rows"]["uploaded"] == 30
    assert (project.archive / "lot.csv").exists()
