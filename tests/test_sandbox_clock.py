"""The emulator under an injected clock, over real HTTP: tasks, the throttle and the Date header follow it."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import pytest
import requests

from daemon.sandbox import Emulator, EmulatorConfig
from daemon.sandbox.clock import EPOCH, ManualClock

SYNC = "/api/v2/scm/upload/"
ASYNC = "/api/v2/scm/upload/async/"


@pytest.fixture
def emu(clock: ManualClock) -> Iterator[Emulator]:
    config = EmulatorConfig(rate_limit=None, task_pending_seconds=10, task_running_seconds=20)
    with Emulator(config, clock=clock, wall=clock.wall) as emulator:
        yield emulator


def code(n: int) -> str:
    return f"CODE{n:08d}"


def sync(http: requests.Session, emu: Emulator, n: int) -> requests.Response:
    return http.post(emu.base_url + SYNC, json={"items": [{"extended_id": code(n), "lot": "1"}]}, timeout=5)


def test_a_task_moves_only_when_the_clock_does(emu: Emulator, clock: ManualClock, http: requests.Session) -> None:
    body = {"constraints": {"extended_id": [code(1)]}, "scm_data": {"lot": "7"}, "reference": "r"}
    task_id = http.post(emu.base_url + ASYNC, json=body, timeout=5).json()["task_id"]

    def poll() -> dict[str, object]:
        answer = http.get(f"{emu.base_url}/api/v2/scm/tasks/{task_id}/", timeout=5)
        assert answer.status_code == 200
        result: dict[str, object] = answer.json()
        return result

    assert poll()["state"] == "pending"
    clock.advance(9.999)
    assert poll()["state"] == "pending"
    assert emu.data("extended_id", code(1)) is None
    clock.advance(0.001)
    assert poll()["state"] == "in-progress"
    clock.advance(20)
    final = poll()
    assert final == {
        "id": task_id,
        "reference": "r",
        "state": "complete",
        "codes_affected": 1,
        "created_at": "2030-01-01T00:00:00Z",
        "started_at": "2030-01-01T00:00:10Z",
        "completed_at": "2030-01-01T00:00:30Z",
    }
    assert emu.data("extended_id", code(1)) == {"lot": "7"}


def test_the_throttle_counts_in_clock_time(emu: Emulator, clock: ManualClock, http: requests.Session) -> None:
    emu.configure(rate_limit=2.0)
    assert [sync(http, emu, n).status_code for n in range(3)] == [200, 200, 429]
    clock.advance(0.999)
    assert sync(http, emu, 3).status_code == 429
    clock.advance(0.001)
    assert [sync(http, emu, n).status_code for n in range(4, 7)] == [200, 200, 429]
    assert emu.stats().throttled == 3


def test_the_date_header_is_the_emulators_wall_time(emu: Emulator, clock: ManualClock, http: requests.Session) -> None:
    clock.advance(3600.5)
    answer = http.get(emu.base_url + "/api/v2/me/", timeout=5)
    assert answer.headers["Date"] == "Tue, 01 Jan 2030 01:00:00 GMT"
    assert parsedate_to_datetime(answer.headers["Date"]) == EPOCH + timedelta(hours=1)


def test_by_default_the_emulator_keeps_real_time(http: requests.Session) -> None:
    with Emulator(EmulatorConfig(rate_limit=None)) as emu:
        answer = http.get(emu.base_url + "/api/v2/me/", timeout=5)
    assert abs(parsedate_to_datetime(answer.headers["Date"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert emu.clock() > 0


def test_a_manual_clock_only_moves_forward() -> None:
    clock = ManualClock(start=5.0)
    assert clock.advance(1.5) == 6.5 == clock()
    assert clock.wall() == EPOCH + timedelta(seconds=6.5)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="forward"):
            clock.advance(bad)
    with pytest.raises(ValueError, match="aware"):
        ManualClock(epoch=datetime(2030, 1, 1))  # noqa: DTZ001 - naive on purpose
