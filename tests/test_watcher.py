"""The inbox scanner's settling on real files, and the supervised watchdog observer that wakes the loop."""

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

import daemon.watcher as daemon_watcher
from daemon.watcher import EMPTY_GRACE_SECONDS, InboxEvents, InboxScanner, ignored

IGNORE = [".*", "~$*", "*.tmp", "*.part", "*.crdownload"]


def write(path: Path, text: str, mtime_ns: int | None = None) -> Path:
    path.write_text(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def test_a_file_is_handed_over_only_after_settle_seconds_unchanged(inbox: Path) -> None:
    scanner = InboxScanner(inbox, settle_seconds=2, ignore=IGNORE)
    path = write(inbox / "a.csv", "extended_id\n")
    assert scanner.scan(100.0, claimed=()) == []
    assert scanner.next_check() == 102.0
    assert scanner.scan(101.9, claimed=()) == []
    assert scanner.scan(102.0, claimed=()) == [path]


def test_a_file_that_keeps_changing_is_rechecked_and_never_forgotten(inbox: Path) -> None:
    scanner = InboxScanner(inbox, settle_seconds=2, ignore=IGNORE)
    path = inbox / "growing.csv"
    for i in range(10):
        write(path, "x" * (i + 1), mtime_ns=1_000_000_000 * (i + 1))
        assert scanner.scan(100.0 + 2 * i, claimed=()) == []
        assert scanner.waiting == 1
        assert scanner.next_check() == 100.0 + 2 * i + 2  # looked at again once it could have settled
    assert scanner.scan(120.0, claimed=()) == [path]


def test_a_touch_without_a_size_change_restarts_the_wait(inbox: Path) -> None:
    scanner = InboxScanner(inbox, settle_seconds=1, ignore=IGNORE)
    path = write(inbox / "a.csv", "abc", mtime_ns=1_000_000_000)
    scanner.scan(0.0, claimed=())
    write(path, "xyz", mtime_ns=2_000_000_000)  # same size, new content
    assert scanner.scan(1.0, claimed=()) == []
    assert scanner.scan(2.0, claimed=()) == [path]


def test_an_empty_file_waits_a_grace_period_then_is_taken(inbox: Path) -> None:
    scanner = InboxScanner(inbox, settle_seconds=0.2, ignore=IGNORE)
    path = inbox / "copy-not-started.csv"
    path.touch()
    assert scanner.scan(0.0, claimed=()) == []
    assert scanner.next_check() == pytest.approx(0.2 + EMPTY_GRACE_SECONDS)
    assert scanner.scan(30.0, claimed=()) == []  # a copy that has not started writing yet: it waits
    assert scanner.scan(0.2 + EMPTY_GRACE_SECONDS, claimed=()) == [path]  # still empty: taken (an empty file)


def test_an_empty_file_that_fills_settles_as_usual(inbox: Path) -> None:
    scanner = InboxScanner(inbox, settle_seconds=0.2, ignore=IGNORE)
    path = inbox / "copy.csv"
    path.touch()
    assert scanner.scan(0.0, claimed=()) == []
    write(path, "extended_id\n")
    assert scanner.scan(5.0, claimed=()) == []
    assert scanner.scan(5.2, claimed=()) == [path]


def test_run_once_takes_an_empty_file_without_a_grace(inbox: Path) -> None:
    scanner = InboxScanner(inbox, settle_seconds=0.2, ignore=IGNORE, empty_grace=0.0)
    path = inbox / "empty.csv"
    path.touch()
    assert scanner.scan(0.0, claimed=()) == []
    assert scanner.scan(0.2, claimed=()) == [path]


def test_ignored_claimed_and_hidden_folder_entries_are_left_alone(inbox: Path) -> None:
    scanner = InboxScanner(inbox, settle_seconds=0, ignore=IGNORE)
    for name in ("~$orders.xlsx", ".orders.csv.part", "orders.tmp", "x.crdownload", ".hidden.csv"):
        write(inbox / name, "data")
    (inbox / ".processing").mkdir()
    write(inbox / ".processing" / "7-claimed.csv", "data")  # the service's own claims
    claimed = write(inbox / "claimed.csv", "data")
    wanted = write(inbox / "orders.xlsx", "data")
    scanner.scan(0.0, claimed=())
    assert scanner.scan(1.0, claimed={str(claimed)}) == [wanted]


def test_a_file_taken_and_changed_afterwards_settles_again_from_scratch(inbox: Path) -> None:
    scanner = InboxScanner(inbox, settle_seconds=1, ignore=IGNORE)
    path = write(inbox / "a.csv", "one", mtime_ns=1_000_000_000)
    scanner.scan(0.0, claimed=())
    assert scanner.scan(1.0, claimed=()) == [path]
    scanner.taken(path)
    assert scanner.scan(1.5, claimed=()) == []  # a fresh sighting, not the old one
    assert scanner.scan(2.5, claimed=()) == [path]


def test_settled_files_come_oldest_sighting_first(inbox: Path) -> None:
    scanner = InboxScanner(inbox, settle_seconds=1, ignore=IGNORE)
    b = write(inbox / "b.csv", "b")
    scanner.scan(0.0, claimed=())
    a = write(inbox / "a.csv", "a")
    scanner.scan(0.5, claimed=())
    assert scanner.scan(2.0, claimed=()) == [b, a]


def test_a_vanished_file_is_forgotten(inbox: Path) -> None:
    scanner = InboxScanner(inbox, settle_seconds=1, ignore=IGNORE)
    path = write(inbox / "a.csv", "a")
    scanner.scan(0.0, claimed=())
    path.unlink()
    assert scanner.scan(1.0, claimed=()) == []
    assert scanner.waiting == 0
    assert scanner.next_check() is None


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1))
def test_names_excel_and_browsers_use_while_writing_are_ignored(stem: str) -> None:
    for name in (f"~${stem}.xlsx", f"{stem}.tmp", f"{stem}.part", f"{stem}.crdownload", f".{stem}"):
        assert ignored(name, IGNORE)
    assert not ignored(f"x{stem}.csv", IGNORE)


# --- events ------------------------------------------------------------------------------------------------


def woken(wake: threading.Event, timeout: float = 5.0) -> bool:
    got = wake.wait(timeout)
    wake.clear()
    return got


def quiet(wake: threading.Event, seconds: float = 0.5) -> bool:
    time.sleep(seconds)
    got = wake.is_set()
    wake.clear()
    return not got


@pytest.fixture(params=[False, True], ids=["inotify", "polling"])
def events(request: pytest.FixtureRequest, inbox: Path) -> Iterator[InboxEvents]:
    wake = threading.Event()
    watcher = InboxEvents(inbox, wake, polling=request.param, ignore=IGNORE, poll_interval=0.1)
    for folder in ("sub", ".processing", "old.tmp"):
        (inbox / folder).mkdir()
    watcher.check()
    assert watcher.alive()
    wake.clear()
    yield watcher
    watcher.stop()


def test_created_written_and_moved_in_files_wake_the_loop(events: InboxEvents, inbox: Path, tmp_path: Path) -> None:
    wake = events.wake
    write(inbox / "new.csv", "a")
    assert woken(wake)
    time.sleep(0.3)
    wake.clear()
    write(inbox / "new.csv", "ab")
    assert woken(wake)
    outside = write(tmp_path / "outside.csv", "abc")
    time.sleep(0.3)
    wake.clear()
    outside.rename(inbox / "moved-in.csv")
    assert woken(wake)
    (inbox / ".copy.part").write_text("x")
    time.sleep(0.3)
    wake.clear()
    (inbox / ".copy.part").rename(inbox / "copy.csv")  # the usual end of a copy: renamed to its real name
    assert woken(wake)
    write(inbox / "sub" / "deep.csv", "deep")  # subfolders are routes
    assert woken(wake)


def test_ignored_names_hidden_folders_and_moves_out_do_not_wake(
    events: InboxEvents, inbox: Path, tmp_path: Path
) -> None:
    wake = events.wake
    inside = write(inbox / "a.csv", "a")
    time.sleep(0.3)
    wake.clear()
    write(inbox / "~$a.xlsx", "lock")
    write(inbox / "a.tmp", "temp")
    write(inbox / "sub" / "~$b.xlsx", "lock")
    write(inbox / "old.tmp" / "deep.csv", "deep")  # watch.ignore applies to every path part
    inside.rename(inbox / ".processing" / "1-a.csv")  # a claim
    shutil.move(inbox / ".processing" / "1-a.csv", tmp_path / "a.csv")
    assert quiet(wake)


def test_a_dead_observer_is_restarted_and_says_so(events: InboxEvents, inbox: Path, tmp_path: Path) -> None:
    wake = events.wake
    replacement = tmp_path / "remounted"
    replacement.mkdir()
    shutil.rmtree(inbox)  # the share went away: the emitter stops
    deadline = time.monotonic() + 5
    while events.alive():
        assert time.monotonic() < deadline, "the observer did not notice the inbox was gone"
        time.sleep(0.05)
    replacement.rename(inbox)  # ... and came back: another directory under the same name
    with capture_logs() as logs:
        events.check()
    assert [e["event"] for e in logs] == ["watcher_died", "watcher_restarted"]
    assert logs[1]["restarts"] == 1
    assert events.alive()
    assert woken(wake)  # a restart wakes the loop: whatever arrived meanwhile is found by a scan
    write(inbox / "after.csv", "a")
    assert woken(wake)


def test_an_inbox_that_cannot_be_watched_leaves_the_scan_alone_and_is_retried(tmp_path: Path) -> None:
    now = [0.0]
    missing = tmp_path / "not-mounted-yet"
    watcher = InboxEvents(missing, threading.Event(), polling=False, ignore=IGNORE, clock=lambda: now[0])
    with capture_logs() as logs:
        watcher.check()
        watcher.check()  # too soon to try again
    assert [e["event"] for e in logs] == ["watcher_unavailable"]
    missing.mkdir()
    now[0] = 10.0
    with capture_logs() as logs:
        watcher.check()
    assert [e["event"] for e in logs] == ["watcher_started"]
    assert watcher.alive()
    watcher.stop()
    assert not watcher.alive()


def test_running_out_of_inotify_instances_leaves_the_scan_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another program on the machine may use up the user's inotify instances: the daemon must carry on scanning.
    def no_inotify() -> object:
        raise OSError(24, "inotify instance limit reached")

    monkeypatch.setattr(daemon_watcher, "Observer", no_inotify)  # the fault, injected at watchdog's seam
    watcher = InboxEvents(tmp_path, threading.Event(), polling=False, ignore=IGNORE, clock=lambda: 0.0)
    with capture_logs() as logs:
        watcher.check()
    assert [(e["event"], e["error"]) for e in logs] == [
        ("watcher_unavailable", "[Errno 24] inotify instance limit reached")
    ]
    assert not watcher.alive()


def test_fifos_sockets_and_symlinks_are_ignored_with_one_warning_each(inbox: Path, tmp_path: Path) -> None:
    # Issue 11: a FIFO must never be opened (it would block the loop); a symlink may point anywhere.
    import socket

    os.mkfifo(inbox / "pipe.csv")
    outside = write(tmp_path / "outside.csv", "extended_id\n")
    (inbox / "link.csv").symlink_to(outside)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(inbox / "sock.csv"))
    good = write(inbox / "good.csv", "extended_id\n")
    scanner = InboxScanner(inbox, settle_seconds=0, ignore=IGNORE)
    with capture_logs() as logs:
        scanner.scan(1.0, claimed=())
        assert scanner.scan(2.0, claimed=()) == [good]
        scanner.scan(3.0, claimed=())
    listener.close()
    warned = sorted((e["file"], e["kind"]) for e in logs if e["event"] == "inbox_entry_ignored")
    assert warned == [("link.csv", "symlink"), ("pipe.csv", "fifo"), ("sock.csv", "socket")]
    assert (inbox / "pipe.csv").exists()
    assert (inbox / "link.csv").is_symlink()
