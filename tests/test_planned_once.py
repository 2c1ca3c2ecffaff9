"""A file is planned once per process that takes it up: after it is recorded, or after a restart for an active one.

Planning a file again costs a pass over all its rows (the skip lookups and the plannable rows' scan: 7 s for a
million rows on PostgreSQL) and finds nothing new, so the loop must not start it twice. The service is the
production one built in this process, against the emulator on loopback; the ledger's planning query is counted
at its seam (it still runs).
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import Project, csv_text, in_process, make_project

from daemon.sandbox import Emulator
from daemon.service import Service

HEADER = ["extended_id", "intended_market"]


def turn_until(service: Service, done: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if done():
            return
        service.turn()
    raise AssertionError(f"not reached in {seconds} s: {what}")


def counted_planning(service: Service, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file ids the service's ledger was asked for plannable rows, in order."""
    asked: list[int] = []
    real = service.ledger.plannable_groups

    def counting(file_id: int) -> Any:
        asked.append(file_id)
        return real(file_id)

    monkeypatch.setattr(service.ledger, "plannable_groups", counting)
    return asked


def drop(project: Project, name: str, rows: int) -> None:
    part = project.inbox / f".{name}.part"
    part.write_text(csv_text(HEADER, [(f"ONCE{i:08d}", f"M{i % 3}") for i in range(rows)]))
    part.rename(project.inbox / name)


def done(project: Project, name: str) -> Callable[[], bool]:
    return (project.outbox / f"{Path(name).stem}.summary.json").exists


@pytest.fixture
def project(tmp_path: Path, emulator: Emulator) -> Project:
    return make_project(tmp_path / "site", emulator.base_url, watch={"settle_seconds": 0})


def test_a_dropped_file_is_planned_once(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    service = in_process(project, time.monotonic)
    asked = counted_planning(service, monkeypatch)
    service.start()
    try:
        drop(project, "a.csv", 450)
        turn_until(service, done(project, "a.csv"), "a.csv reported")
    finally:
        service.shutdown()
        service.ledger.close()
    assert project.summary("a")["rows"]["uploaded"] == 450
    assert asked == [1]


def test_an_active_file_is_planned_once_after_a_restart(
    project: Project, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.configure(outage=frozenset({"scm_upload", "scm_upload_async"}))  # its uploads wait: it stays active
    first = in_process(project, time.monotonic)
    first.start()
    try:
        drop(project, "b.csv", 450)
        turn_until(first, lambda: len(emulator.upload_arrivals()) > 0, "an upload tried")
    finally:
        first.shutdown()
        first.ledger.close()
    emulator.configure(outage=frozenset())

    second = in_process(project, time.monotonic)
    asked = counted_planning(second, monkeypatch)
    second.start()
    try:
        turn_until(second, done(project, "b.csv"), "b.csv reported after the restart", seconds=60)
    finally:
        second.shutdown()
        second.ledger.close()
    assert project.summary("b")["rows"]["uploaded"] == 450
    assert asked == [1]
