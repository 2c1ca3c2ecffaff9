"""`scm-daemon status` as text: clock times, never a next time already past, a few short error lines."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.clocktext import clock_time, next_time
from daemon.ledger import Ledger
from daemon.status import LAST_ERRORS, render_overview

NOW = datetime(2026, 12, 2, 14, 0, 0, tzinfo=UTC).timestamp()


@pytest.fixture(autouse=True)
def berlin() -> Iterator[None]:
    """A machine whose local time is not UTC: the operator reads local clock times."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def overview(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "ledger": "/var/lib/scm-daemon/ledger.sqlite3",
        "uploads_paused": None,
        "files": {"done": 1},
        "rows": {"uploaded": 10},
        "batches": {"queued": 1},
        "in_flight": 0,
        "tasks_in_flight": [],
        "next_retry_at": None,
        "recent_files": [],
        "undelivered": [],
        "last_errors": [],
    }
    data.update(changes)
    return data


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def test_the_next_try_is_a_local_clock_time() -> None:
    text = render_overview(overview(next_retry_at=iso(NOW + 310)), NOW)
    assert "next try at 15:05:10" in text  # 14:05:10 UTC is 15:05:10 in Berlin in December


def test_a_next_try_already_past_is_shown_as_now() -> None:
    text = render_overview(overview(next_retry_at=iso(NOW - 3600)), NOW)
    assert "next try now" in text
    assert "14:00" not in text
    assert "15:00" not in text


def test_another_days_time_carries_its_date() -> None:
    assert clock_time(NOW + 86400, NOW) == "2026-12-03 15:00:00"
    assert clock_time(NOW, NOW, seconds=False) == "15:00"
    assert next_time(None, NOW) is None


def test_at_most_five_short_lines_of_last_errors() -> None:
    long = "cannot connect to api.example.test:443 (connection refused)\n" + "x" * 500
    errors = [
        {"file": f"f{i}.csv", "batch": i, "state": "queued", "attempts": 3, "error": long}
        for i in range(LAST_ERRORS + 4)
    ]
    lines = render_overview(overview(last_errors=errors), NOW).splitlines()
    shown = lines[lines.index("last errors:") + 1 :]
    assert len(shown) == LAST_ERRORS
    assert all(line.startswith("  f") and len(line) <= 2 + 110 and line.endswith("...") for line in shown)
    assert "\n" not in "".join(shown)


def test_the_systemd_status_says_first_what_blocks_the_service() -> None:
    from daemon.status import systemd_status
    from daemon.work import Pause

    base = {
        "files": 1,
        "in_flight": 2,
        "busy": True,
        "inbox": "/srv/scm/inbox",
        "active": [],
        "settling": 1,
        "problems": [],
        "pause": None,
        "breaker_open": False,
    }
    assert systemd_status(**base) == "working: 1 file(s) in progress, 2 request(s) in flight, 1 file(s) settling"
    idle = systemd_status(**{**base, "files": 0, "busy": False, "settling": 0})
    assert idle == "idle: watching /srv/scm/inbox"
    problem = systemd_status(**{**base, "problems": ["outbox gone"], "breaker_open": True})
    assert problem.startswith("uploads paused for a while after repeated API failures. PROBLEM: outbox gone (retried).")
    token = systemd_status(**{**base, "pause": Pause("token", "401"), "breaker_open": True})
    assert token.startswith("uploads paused: the API refused the token; renew it. working:")
    starting = systemd_status(**{**base, "pause": Pause("starting", "the API cannot be reached (...)")})
    assert starting.startswith("starting: the API cannot be reached (...). working:")


def test_status_loads_neither_the_service_nor_the_api_client_nor_the_readers(tmp_path: Path) -> None:
    """`status` must answer within a second on a ten-million-row ledger, and most of its time went to importing
    modules it never uses: the real command, in a fresh interpreter, says which of the heavy ones it loaded."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.add_file(sha256="a" * 64, name="a.csv", path="/in/a.csv", size=1, data_key="extended_id", mode="sync")
    ledger.close()
    heavy = ("daemon.service", "daemon.api", "daemon.uploader", "daemon.sandbox", "daemon.readers", "daemon.intake")
    script = (
        "import sys\n"
        "from daemon.__main__ import run\n"
        "code = run()\n"
        f"print('loaded:', *[m for m in {heavy!r} if m in sys.modules])\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "SCM_PATHS__LEDGER": str(tmp_path / "ledger.sqlite3"), "SCM_PATHS__INBOX": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script, "status"], capture_output=True, text=True, env=env, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "received" in done.stdout  # it did read the ledger
    assert done.stdout.splitlines()[-1] == "loaded:"
