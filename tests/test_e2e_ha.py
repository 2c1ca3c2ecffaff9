"""High availability: two real service processes on one PostgreSQL ledger and one shared inbox; the leader is
killed with SIGKILL in the middle of an upload and the standby finishes the work.

The two instances name different hosts (`ha.host`), so the standby cannot see that the leader's process is gone and
must wait for its lease to run out: the worst case of a takeover between two machines.
"""

import json
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from support import Project, csv_text, log_events, make_project, wait_until

from daemon.ledger import Ledger
from daemon.sandbox import Emulator

pytestmark = pytest.mark.slow  # real services as subprocesses

LEASE, RENEW = 6.0, 2.0
RATE, IN_FLIGHT = 8, 2
FILES, ROWS = 3, 1500


def instance(root: Path, name: str, inbox: Path, emulator: Emulator, ledger: str) -> Project:
    return make_project(
        root / name,
        emulator.base_url,
        api={"requests_per_second": RATE, "max_in_flight": IN_FLIGHT},
        upload={"mode": "sync"},
        paths={"ledger": ledger, "inbox": str(inbox)},
        ha={"lease_seconds": LEASE, "renew_seconds": RENEW, "host": f"host-{name}"},
    )


def code(f: int, i: int) -> str:
    return f"HA{f}X{i:07d}"


def test_the_leader_killed_mid_upload_is_taken_over_by_the_standby_and_nothing_is_lost_or_doubled(
    tmp_path: Path, emulator: Emulator, pg_ledger: str
) -> None:
    emulator.configure(latency=0.05, rate_limit=float(RATE))  # the account's rate: a 429 for any excess
    inbox = tmp_path / "share" / "inbox"
    inbox.mkdir(parents=True)
    a = instance(tmp_path, "a", inbox, emulator, pg_ledger)
    b = instance(tmp_path, "b", inbox, emulator, pg_ledger)
    expected = {code(f, i): {"batch": f"L{f}"} for f in range(FILES) for i in range(ROWS)}

    leader = a.start()
    standby = leader  # until b starts
    try:
        wait_until(lambda: log_events(a, "api_ready"), 60, "a leads and passes its start-up check", a)
        standby = b.start()
        wait_until(lambda: log_events(b, "standby"), 60, "b stands by", b)
        assert log_events(b, "standby")[0]["leader"].startswith("host-a:")
        shown = json.loads(b.cli("status", "--json").stdout)["leader"]
        assert shown["instance"].startswith("host-a:")
        assert 0 < shown["lease_left"] <= LEASE
        for f in range(FILES):
            part = inbox / f".f{f}.csv.part"
            part.write_text(csv_text(["extended_id", "batch"], [(code(f, i), f"L{f}") for i in range(ROWS)]))
            part.rename(inbox / f"f{f}.csv")
        total_calls = FILES * ROWS // 100
        wait_until(lambda: emulator.stats().sync_calls >= total_calls // 3, 60, "a third uploaded", a)
        leader.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        leader.wait(timeout=10)
        at_kill = emulator.stats().sync_calls
        assert at_kill < total_calls  # killed in the middle

        wait_until(lambda: log_events(b, "lease_taken"), 30, "b takes over", b)
        takeover = time.monotonic() - killed
        wait_until(lambda: emulator.stats().sync_calls > at_kill, 30, "b sends", b)
        resumed = time.monotonic() - killed
        summaries = lambda: sorted(  # noqa: E731
            p.name for project in (a, b) for p in project.outbox.glob("*.summary.json")
        )
        wait_until(lambda: len(summaries()) == FILES, 120, "every file reported", a, b)
        assert standby.poll() is None  # b goes on running
        standby.send_signal(signal.SIGTERM)
        assert standby.wait(timeout=60) == 0
    finally:
        for process in (leader, standby):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)

    # The standby waited for the lease to run out (it could not see a's process), then went on at once.
    assert LEASE - RENEW <= takeover <= LEASE + RENEW + 3.0, takeover
    assert resumed <= LEASE + RENEW + 6.0, resumed
    # One report per file, across both outboxes; each file recorded once in the ledger, and completed.
    assert summaries() == [f"f{f}.summary.json" for f in range(FILES)]
    reported = {
        p.stem.removesuffix(".summary"): project for project in (a, b) for p in project.outbox.glob("*.summary.json")
    }
    for stem, project in reported.items():
        summary = project.summary(stem)
        assert summary["status"] == "completed", (stem, summary)
        assert summary["rows"]["uploaded"] + summary["rows"]["not_affected"] == ROWS
    ledger = Ledger(pg_ledger)
    try:
        with ledger.connect() as conn:
            files = conn.execute(text("SELECT name, state, claimed_by FROM files ORDER BY name")).all()
            holder = conn.execute(text("SELECT holder FROM leases")).scalar_one_or_none()
    finally:
        ledger.close()
    assert [(n, s) for n, s, _ in files] == [(f"f{f}.csv", "done") for f in range(FILES)]
    assert holder is None  # b released the lease at its graceful stop
    b_files = {n for n, _, claimed in files if claimed is not None and claimed.startswith("host-b:")}
    assert b_files, files  # b finished at least the file the kill caught
    # The API: every code exact; sent twice only if its batch was in flight at the kill; never above the rate.
    assert emulator.all_data("extended_id") == expected
    counts = [emulator.transactions("extended_id", c) for c in expected]
    assert max(counts) <= 2
    resent = sum(c == 2 for c in counts)
    assert resent <= IN_FLIGHT * 100, resent
    assert emulator.stats().throttled == 0
    print(f"takeover {takeover:.1f} s (first request after the kill {resumed:.1f} s), codes sent twice {resent}")


def test_a_leader_frozen_past_its_lease_stands_by_when_it_wakes_and_leads_again_once_free(
    tmp_path: Path, emulator: Emulator, pg_ledger: str
) -> None:
    from daemon.lease import WORK, Instance

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    a = instance(tmp_path, "a", inbox, emulator, pg_ledger)
    other = Instance("host-z", 1, 1.0)
    process = a.start()
    ledger = Ledger(pg_ledger)
    try:
        wait_until(lambda: log_events(a, "api_ready"), 60, "a leads", a)
        process.send_signal(signal.SIGSTOP)  # a frozen VM: no renewal
        wait_until(lambda: ledger.lease(WORK).remaining == 0, 30, "the lease runs out", a)
        assert ledger.take_lease(WORK, other, 30.0, alive=lambda pid: True).holder == other.id
        process.send_signal(signal.SIGCONT)
        wait_until(lambda: log_events(a, "standby"), 30, "a stands by", a)
        assert log_events(a, "lease_lost")[0]["holder"] == other.id
        assert log_events(a, "standby")[-1]["leader"] == other.id
        assert process.poll() is None  # restarted in the same process, not ended
        ledger.release_lease(WORK, other)
        wait_until(lambda: len(log_events(a, "lease_taken")) == 2, 30, "a leads again", a)
        part = inbox / ".late.csv.part"
        part.write_text(csv_text(["extended_id", "batch"], [(code(9, i), "L9") for i in range(5)]))
        part.rename(inbox / "late.csv")
        a.wait_for(a.outbox / "late.summary.json")
        assert a.summary("late")["rows"]["uploaded"] == 5
    finally:
        ledger.close()
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait(timeout=30)
