"""Per-file progress: the pure pace/ETA/log decisions (hypothesis) and the tracker over a real SQLite ledger."""

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from test_ledger import add_file, add_rows

from daemon import steps
from daemon.ledger import Ledger
from daemon.progress import ProgressTracker, eta, percent, rate, should_log, snapshot
from daemon.states import FileState
from daemon.status import render_overview
from daemon.steps import ThreadOffload


@given(st.integers(0, 10**7), st.integers(0, 10**7))
def test_percent_is_within_bounds(final: int, total: int) -> None:
    p = percent(min(final, total), total)
    assert 0 <= p <= 100
    assert (p == 100) == (total == 0 or final >= total)


@given(st.lists(st.tuples(st.floats(0, 1000), st.integers(0, 10**6)), max_size=20), st.floats(0, 2000))
def test_rate_never_negative_and_only_from_the_window(samples: list[tuple[float, int]], now: float) -> None:
    samples = sorted(samples)
    r = rate(samples, now)
    assert r is None or r >= 0
    if len([s for s in samples if now - s[0] <= 60]) < 2:
        assert r is None


def test_rate_and_eta_from_a_steady_pace() -> None:
    assert rate([(0.0, 0), (10.0, 100), (20.0, 200)], 20.0) == 10.0
    assert rate([(0.0, 0), (100.0, 100), (110.0, 200)], 110.0) == 10.0  # the first sample is outside the minute
    assert eta(200, 1200, 10.0, 20.0) == 120.0
    assert eta(5, 10, None, 3.0) is None
    assert eta(10, 10, None, 3.0) == 3.0


@given(st.floats(0, 100), st.integers(0, 100), st.floats(0, 100), st.integers(0, 100))
def test_should_log_at_most_every_ten_seconds_unless_a_ten_percent_step(
    last_at: float, last_pct: int, dt: float, current: int
) -> None:
    logged = should_log(last_at, last_pct, last_at + dt, current)
    if dt < 10 and current // 10 <= last_pct // 10:
        assert not logged
    else:
        assert logged


EMPTY: dict[str, object] = {
    "ledger": "ledger.sqlite3",
    "files": {},
    "rows": {},
    "batches": {},
    "in_flight": 0,
    "tasks_in_flight": [],
    "next_retry_at": None,
    "recent_files": [],
    "last_errors": [],
}


def test_tracker_reads_the_ledger_and_logs_file_progress(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    fid = add_file(ledger, "1" * 64, "<orders>.csv")
    add_rows(ledger, fid, [(f"K{i}", f"h{i}") for i in range(10)])
    ledger.transition_file(fid, FileState.ACTIVE)
    ledger.add_batches(fid, [("sync", [2, 3, 4, 5], None)])
    batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
    ledger.complete_sync(batch, "extended_id", ["K0", "K1", "K2", "K3"], changed={"K0", "K1", "K2", "K3"})
    tracker = ProgressTracker(ledger)
    with structlog.testing.capture_logs() as logs:
        first = tracker.sample(1000.0)
        tracker.sample(1001.0)  # under 10 s and no new 10 % step: not logged
        paused = tracker.sample(1011.0, paused="the API refused the token")
    assert [(p.final, p.total, p.percent) for p in first] == [(4, 10, 40)]
    assert first[0].eta is None  # one sample: no pace yet
    assert "<orders>.csv: 4 / 10 rows (40 %)" in first[0].text()
    assert paused[0].eta is None
    assert "paused: the API refused the token" in paused[0].text()
    events = [e for e in logs if e["event"] == "file_progress"]
    assert len(events) == 2
    assert events[0]["rows_final"] == 4
    assert events[0]["rows_total"] == 10
    assert snapshot(ledger, 0.0)[0].percent == 40
    # `status` (another process) sees the pause the service measured within the last minute, and only then
    assert snapshot(ledger, 1020.0)[0].paused == "the API refused the token"
    assert snapshot(ledger, 1011.0 + 61)[0].paused is None
    ledger.transition_file(fid, FileState.REPORTING, outcome="completed")
    assert tracker.sample(1012.0) == []
    assert snapshot(ledger, 0.0) == []
    assert ledger.get_meta("progress_pace") is None  # nothing at work: nothing left for `status`
    ledger.close()


def test_status_shows_the_pace_the_service_measured(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    fid = add_file(ledger, "2" * 64, "lot.csv")
    add_rows(ledger, fid, [(f"K{i}", f"h{i}") for i in range(400)])
    ledger.transition_file(fid, FileState.ACTIVE)
    ledger.add_batches(fid, [("sync", list(range(2, 102)), None), ("sync", list(range(102, 202)), None)])
    tracker = ProgressTracker(ledger)
    tracker.sample(1000.0)
    for batch_id in (1, 2):
        batch, rows = ledger.start_sending(batch_id)
        keys = [key for _, key, _ in rows]
        ledger.complete_sync(batch, "extended_id", keys, changed=set(keys))
    tracker.sample(1010.0)  # 200 rows in 10 s
    (seen,) = snapshot(ledger, 1012.0)
    assert (seen.final, seen.total, seen.rate) == (200, 400, 20.0)
    # `status` counts the rows of the files at work once, for its totals and these lines: the same progress.
    live = ledger.live_row_counts()
    assert live == {fid: {"uploaded": 200, "pending": 200}}
    assert snapshot(ledger, 1012.0, live) == [seen]
    assert ledger.overview(live=live)["rows"] == ledger.overview()["rows"] == {"uploaded": 200, "pending": 200}
    assert seen.eta == 1012.0 + 200 / 20.0
    text = render_overview({**EMPTY, "active_files": [seen.as_dict()]}, 1012.0)
    assert "lot.csv: 200 / 400 rows (50 %), 20 rows/s, ETA " in text
    ledger.close()


def test_a_big_files_counts_are_read_off_the_loops_thread_and_taken_in_when_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Millions of open rows take a second or two to count: the sample hands the count to the service's reader
    threads, returns the files as last sampled meanwhile, and collect() takes the count in once it is done."""
    monkeypatch.setattr(steps, "OFFLOAD_ROWS", 1)  # every file counts as big
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    fid = add_file(ledger, "3" * 64, "big.csv")
    add_rows(ledger, fid, [(f"K{i}", f"h{i}") for i in range(10)])
    ledger.transition_file(fid, FileState.ACTIVE)
    offload = ThreadOffload()
    release = threading.Event()
    offload_call = offload.__call__

    def held(fn: Callable[[], Any]) -> Future[Any]:
        def later() -> Any:
            assert threading.current_thread() is not threading.main_thread()
            assert release.wait(10)
            return fn()

        return offload_call(later)

    tracker = ProgressTracker(ledger, held)  # type: ignore[arg-type]
    try:
        assert tracker.sample(1000.0) == []  # counting: nothing sampled yet
        assert tracker.counting
        assert tracker.collect() == []
        release.set()
        deadline = time.monotonic() + 10
        while tracker.counting and time.monotonic() < deadline:
            time.sleep(0.01)
            seen = tracker.collect()
        assert not tracker.counting
        assert [(p.final, p.total) for p in seen] == [(0, 10)]
        assert snapshot(ledger, 1001.0)[0].total == 10  # the pace was written on this (the loop's) thread
    finally:
        release.set()
        offload.close()
        ledger.close()
