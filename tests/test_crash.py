"""Crash safety: a real service killed with SIGKILL mid-upload never re-sends what was confirmed before the kill.

The kill loop (test_killloop.py) kills again and again at random moments; SIGTERM is tested there too.
"""

import signal
import sqlite3
from pathlib import Path

import pytest
from support import csv_text, make_project, wait_until

from daemon.sandbox import Emulator

pytestmark = pytest.mark.slow  # the real CLI as a subprocess: the full suite runs these, the fast tier does not


def code(i: int) -> str:
    return f"CRASH{i:07d}"


def test_kill_9_mid_upload_then_restart_finishes_without_resending_confirmed_rows(
    tmp_path: Path, emulator: Emulator
) -> None:
    n = 3000
    emulator.configure(latency=0.05)
    project = make_project(tmp_path / "site", emulator.base_url, api={"max_in_flight": 2}, upload={"mode": "sync"})
    project.drop("big.csv", csv_text(["extended_id", "batch"], [(code(i), f"L{i % 3}") for i in range(n)]))

    with project.running() as service:
        wait_until(lambda: emulator.stats().sync_calls >= 8)
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)

    with sqlite3.connect(project.ledger) as db:
        confirmed = [k for (k,) in db.execute("SELECT key FROM rows WHERE status='uploaded'")]
        in_flight = db.execute("SELECT count(*) FROM batches WHERE state='sending'").fetchone()[0]
    assert 0 < len(confirmed) < n
    assert in_flight <= 2

    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr

    expected = {code(i): {"batch": f"L{i % 3}"} for i in range(n)}
    assert emulator.all_data("extended_id") == expected
    assert all(emulator.transactions("extended_id", k) == 1 for k in confirmed)
    counts = [emulator.transactions("extended_id", code(i)) for i in range(n)]
    assert max(counts) <= 2
    assert sum(c == 2 for c in counts) <= 2 * 100  # at most the batches that were in flight were sent again
    summary = project.summary("big")
    resent = sum(c == 2 for c in counts)
    # "uploaded" only on the API's word: a batch the kill caught in flight is sent again, and the codes the
    # second answer does not list are not_affected (with a detail saying why), never assumed uploaded.
    assert summary["rows"]["uploaded"] + summary["rows"]["not_affected"] == n
    assert summary["rows"]["not_affected"] <= resent
    assert summary["status"] == "completed"
    assert (project.archive / "big.csv").exists()
