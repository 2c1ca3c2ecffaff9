"""PostgreSQL goes away in the middle of an upload (issue 16): the service waits, reconnects, loses nothing.

A real service (`run`, a subprocess) uploads a few thousand rows to a slowed emulator with its ledger in a database
of the test's own. Half way, the database refuses connections and every session on it is terminated, as a server
restart would do to the service, without stopping the shared server other tests use; some seconds later it is back.
The service must not exit; it logs the failure and the recovery; the file's report arrives; the emulator holds
every code with the right data; the report says every row uploaded.
"""

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import pg_admin
from support import csv_text, log_events, make_project, stop, wait_until

from daemon.sandbox import Emulator

pytestmark = pytest.mark.slow  # the real CLI as a subprocess, and seconds of outage

N = 3000  # 30 calls of 100 rows ...
LATENCY = 0.4  # ... of 0.4 s each, one at a time: a 12 s upload
OUTAGE = 6.0  # seconds the database refuses connections
UPPER_BOUND = 120.0  # seconds: "it ends", never a measure of speed


def code(i: int) -> str:
    return f"PGR{i:07d}"


class Manager:
    """systemd's end of $NOTIFY_SOCKET: collects every message with the monotonic time it arrived, in a thread."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._reading = threading.Event()
        self._reading.set()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._reading.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            lines = data.decode().split("\n")  # a line without "=" continues the value before it (an error's text)
            message: dict[str, str] = {}
            for line in lines:
                key, sep, value = line.partition("=")
                if sep and key.isupper():
                    message[key] = value
                elif message:
                    last = list(message)[-1]
                    message[last] += "\n" + line
            self.messages.append((time.monotonic(), message))

    def between(self, start: float, end: float) -> list[dict[str, str]]:
        return [m for at, m in list(self.messages) if start <= at <= end]

    def close(self) -> None:
        self._reading.clear()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = Manager(str(tmp_path / "notify.sock"))
    yield m
    m.close()


def cut_off(database: str) -> int:
    """Refuse new connections to the database and end every session on it; the number of sessions ended."""
    with pg_admin() as admin:
        admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname=%s AND pid<>pg_backend_pid()",
            (database,),
        ).fetchone()
    return int(ended[0]) if ended else 0


def restore(database: str) -> None:
    with pg_admin() as admin:
        admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")


def test_the_database_cut_off_mid_upload_the_service_waits_reconnects_and_loses_nothing(
    tmp_path: Path, emulator: Emulator, pg_own_database: str, manager: Manager
) -> None:
    database = pg_own_database.rsplit("/", 1)[1]
    emulator.configure(latency=LATENCY, rate_limit=None)
    project = make_project(
        tmp_path / "site",
        emulator.base_url,
        api={"max_in_flight": 1},
        upload={"mode": "sync"},
        paths={"ledger": pg_own_database},
    )
    project.drop("big.csv", csv_text(["extended_id", "batch"], [(code(i), f"L{i % 3}") for i in range(N)]))

    # As under systemd: STATUS= lines (which read the ledger) and watchdog pings, which only a turning loop sends.
    with project.running(NOTIFY_SOCKET=manager.address, WATCHDOG_USEC="2000000") as service:
        wait_until(lambda: emulator.stats().sync_calls >= 8, what="the upload under way")
        calls_before = emulator.stats().sync_calls
        try:
            assert cut_off(database) >= 1  # the service's sessions (its pool, its lock) were there to end
            cut_at = time.monotonic()
            time.sleep(OUTAGE)
            assert service.poll() is None, "the service exited while the database was away"
            # Nothing can be recorded, so nothing more is sent than what was in flight at the cut.
            assert emulator.stats().sync_calls <= calls_before + 2
        finally:
            restore(database)
        away = manager.between(cut_at, cut_at + OUTAGE)
        # The loop kept turning (a ping at least every second: the watchdog never fired), and said why it is stuck.
        assert sum(m == {"WATCHDOG": "1"} for m in manager.between(cut_at + 1.0, cut_at + OUTAGE)) >= 3, away
        assert any(m.get("STATUS", "").startswith("PROBLEM: ") for m in away), away

        summary = project.outbox / "big.summary.json"
        project.wait_for(summary, timeout=UPPER_BOUND)
        assert service.poll() is None, "the service exited"
        assert stop(service) == 0

    log = log_events(project)
    failed = [e for e in log if e["event"] == "step_failed"]
    recovered = [e for e in log if e["event"] == "step_recovered"]
    assert failed, "the outage was not logged"
    assert "OperationalError" in failed[0]["error"], failed[0]
    assert {e["part"] for e in failed} <= {e["part"] for e in recovered}, (failed, recovered)

    expected = {code(i): {"batch": f"L{i % 3}"} for i in range(N)}
    assert emulator.all_data("extended_id") == expected
    counts = [emulator.transactions("extended_id", code(i)) for i in range(N)]
    assert max(counts) <= 2
    resent = sum(c == 2 for c in counts)
    assert resent <= 2 * 100  # at most the calls caught in flight at the cut are sent again
    done = project.summary("big")
    assert done["status"] == "completed"
    assert done["rows"]["uploaded"] + done["rows"]["not_affected"] == N
    assert done["rows"]["not_affected"] <= resent
    assert done["rows"]["failed"] == done["rows"]["rejected"] == 0
    report = project.report("big")
    assert len(report) == N
    assert (project.archive / "big.csv").exists()
