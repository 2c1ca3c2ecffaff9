"""Self-healing end to end (issue 10): the real CLI in a subprocess against the emulator on loopback.

Each test drives one symptom of the issue and asserts the behaviour the rework promises: nothing left half done
in the ledger, every file reported and moved on, every code uploaded exactly as often as it should be, and a
service (or a `run --once`) that ends, or keeps going, when it should.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import Project, csv_text, make_project, stop, wait_until

from daemon.sandbox import Emulator

HEADER = ["extended_id", "intended_market"]
SYNC = {"mode": "sync"}
pytestmark = pytest.mark.slow  # the real CLI as a subprocess: the full suite runs these, the fast tier does not

UPPER_BOUND = 90.0  # seconds: "it ends", never a measure of speed


def code(i: int) -> str:
    return f"HEAL{i:08d}"


def rows(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [(code(i), f"M{i % 3}") for i in range(start, start + n)]


def expected(n: int, start: int = 0) -> dict[str, dict[str, str]]:
    return {key: {"intended_market": market} for key, market in rows(n, start)}


def events(text: str) -> list[dict[str, Any]]:
    """The JSON events of a service's log (stdout), in order; other lines are ignored."""
    found = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event:
            found.append(event)
    return found


def service_log(project: Project) -> str:
    path = project.root / "service.log"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def logged(project: Project, name: str) -> list[dict[str, Any]]:
    return [e for e in events(service_log(project)) if e["event"] == name]


def query(project: Project, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(project.ledger, timeout=10) as db:
        return [tuple(r) for r in db.execute(sql)]


def sending_batches(project: Project) -> int:
    return int(query(project, "SELECT count(*) FROM batches WHERE state='sending'")[0][0])


def row_statuses(project: Project) -> dict[str, int]:
    return {str(s): int(n) for s, n in query(project, "SELECT status, count(*) FROM rows GROUP BY status")}


def processing(project: Project) -> list[str]:
    folder = project.inbox / ".processing"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- 2. an expired token with several batches in flight ----------------------------------------------------------


def test_a_token_refused_with_batches_in_flight_leaves_none_sending_and_uploads_once_later(
    tmp_path: Path, emulator: Emulator
) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload=SYNC, api={"max_in_flight": 8})
    # The 401s come back while the other requests are still out (the start-up check is spared: it would stop the
    # run before any file is taken).
    emulator.configure(revoked=True, latency=0.2, faults_spare_me=True)
    n = 800  # eight sync batches, all in flight at once
    project.drop("orders.csv", csv_text(HEADER, rows(n)))

    for attempt in range(3):
        done = project.cli("run", "--once")
        assert done.returncode == 3, f"run {attempt + 1}: {done.stderr}\n{done.stdout[-3000:]}"
        assert "refused the token" in done.stderr
        assert sending_batches(project) == 0, f"run {attempt + 1} left batches `sending`"
        assert row_statuses(project) == {"queued": n}
        assert processing(project) == ["1-orders.csv"]
        assert project.reports() == []
    assert emulator.stats().max_concurrency >= 2  # several requests really were in flight together
    assert emulator.all_data("extended_id") == {}

    emulator.configure(revoked=False, latency=0.0)
    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr + done.stdout[-3000:]
    assert emulator.all_data("extended_id") == expected(n)
    assert all(emulator.transactions("extended_id", c) == 1 for c in expected(n))
    summary = project.summary("orders")
    assert summary["status"] == "completed"
    assert summary["rows"]["uploaded"] == n
    assert summary["batches"] == 8
    report = project.report("orders")
    assert len(report) == n
    assert {r["status"] for r in report} == {"uploaded"}
    assert sending_batches(project) == 0
    assert (project.archive / "orders.csv").exists()


# --- 3. a corrected file under the same name while the first is being uploaded ---------------------------------


def test_a_corrected_file_under_the_same_name_during_the_upload_is_a_second_file(
    tmp_path: Path, emulator: Emulator
) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload=SYNC, api={"max_in_flight": 1})
    emulator.configure(latency=0.3)
    first = csv_text(HEADER, rows(800))  # eight calls of 0.3 s, one at a time
    second = csv_text(HEADER, rows(40, start=5000))  # the corrected file: other codes
    with project.running() as service:
        project.drop("orders.csv", first)
        wait_until(lambda: emulator.stats().sync_calls >= 1, what="the first file's upload under way")
        assert processing(project) == ["1-orders.csv"]  # claimed: renamed out of the inbox's way
        assert not (project.inbox / "orders.csv").exists()
        project.drop("orders.csv", second)
        project.wait_for(project.outbox / "orders.summary.json")
        project.wait_for(project.outbox / "orders-2.summary.json")
        assert stop(service) == 0

    assert emulator.all_data("extended_id") == {**expected(800), **expected(40, start=5000)}
    summaries = [project.summary("orders"), project.summary("orders-2")]
    assert {s["source"] for s in summaries} == {"orders.csv"}
    assert sorted(s["rows"]["uploaded"] for s in summaries) == [40, 800]
    assert {s["status"] for s in summaries} == {"completed"}
    archived = {p.name: p.read_bytes() for p in project.archive.iterdir()}
    assert sorted(archived) == ["orders-2.csv", "orders.csv"]
    assert sorted(archived.values()) == sorted([first.encode(), second.encode()])
    assert processing(project) == []
    assert [p.name for p in project.inbox.iterdir()] == [".processing"]

    log = events(service_log(project))
    recorded = {e["file_id"]: i for i, e in enumerate(log) if e["event"] == "file_recorded"}
    done = {e["file_id"]: i for i, e in enumerate(log) if e["event"] == "file_done"}
    assert sorted(recorded) == sorted(done) == [1, 2]
    assert recorded[2] < done[1]  # the second file was taken while the first one was still being uploaded


# --- 4. a file that vanishes while it is read --------------------------------------------------------------------

VANISHING_CLI = """\
import os
import sys

import daemon.intake
from daemon.cli import main

real = daemon.intake.fingerprint_steps
vanished = []


def fingerprint_steps(path):
    # The first file read is deleted under the service's feet, as a user or a sync tool would.
    if not vanished:
        vanished.append(str(path))
        os.unlink(path)
        raise FileNotFoundError(2, "No such file or directory", str(path))
    return (yield from real(path))


daemon.intake.fingerprint_steps = fingerprint_steps
sys.exit(main(sys.argv[1:]))
"""


def vanishing_cli(project: Project, *args: str) -> list[str]:
    """The real CLI, with the first claimed file deleted (FileNotFoundError) the moment it is first read."""
    script = project.root / "vanishing_cli.py"
    script.write_text(VANISHING_CLI, encoding="utf-8")
    return [sys.executable, str(script), *args, "-c", str(project.config)]


def test_a_file_vanishing_while_read_is_forgotten_and_taken_when_it_comes_back(
    tmp_path: Path, emulator: Emulator
) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload=SYNC)
    text = csv_text(HEADER, rows(30))
    with (project.root / "service.log").open("a") as out:
        service = subprocess.Popen(
            vanishing_cli(project, "run"),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=project.env(),
            cwd=project.root,
        )
    try:
        project.drop("lot.csv", text)
        wait_until(lambda: logged(project, "file_vanished"), what="file_vanished in the log")
        vanished = logged(project, "file_vanished")
        assert [e["file"] for e in vanished] == ["lot.csv"]
        time.sleep(0.3)
        assert service.poll() is None
        assert query(project, "SELECT count(*) FROM files") == [(0,)]  # no file record left behind
        assert processing(project) == []
        assert emulator.stats().data_requests == 0

        project.drop("lot.csv", text)  # the same file, back again
        project.wait_for(project.outbox / "lot.summary.json")
        assert stop(service) == 0
    finally:
        if service.poll() is None:
            service.kill()
        service.wait(timeout=30)

    summary = project.summary("lot")
    assert summary["status"] == "completed"
    assert summary["rows"]["uploaded"] == 30
    assert emulator.all_data("extended_id") == expected(30)
    assert (project.archive / "lot.csv").read_bytes() == text.encode()
    assert query(project, "SELECT name, state FROM files") == [("lot.csv", "done")]


def test_run_once_ends_when_a_file_vanishes_while_read(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload=SYNC)
    project.drop("lot.csv", csv_text(HEADER, rows(30)))
    started = time.monotonic()
    done = subprocess.run(
        vanishing_cli(project, "run", "--once"),
        capture_output=True,
        text=True,
        timeout=UPPER_BOUND,
        env=project.env(),
        cwd=project.root,
        check=False,
    )
    assert time.monotonic() - started < UPPER_BOUND
    assert done.returncode == 0, done.stderr + done.stdout[-3000:]
    log = events(done.stdout)
    assert [e["file"] for e in log if e["event"] == "file_vanished"] == ["lot.csv"]
    assert log[-1]["event"] == "service_stopped"
    assert query(project, "SELECT count(*) FROM files") == [(0,)]
    assert processing(project) == []
    assert project.reports() == []
    assert emulator.stats().data_requests == 0


# --- 5. an API outage of uploads and task polls while async jobs are in flight -----------------------------------


def test_async_jobs_survive_a_full_outage_and_finish_after_it(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(
        tmp_path / "site",
        emulator.base_url,
        upload={"mode": "async"},
        api={"max_in_flight": 1},
        poll={"interval_seconds": 0.2, "max_interval_seconds": 1.0},
        retry={"breaker_failures": 3, "breaker_cooldown_seconds": 1.0},
    )
    emulator.configure(task_pending_seconds=1.0, task_running_seconds=1.0, latency=0.3)
    lots = ("L1", "L2", "L3", "L4")
    data = [(code(i), lots[i % 4]) for i in range(320)]  # four groups of identical data: four async jobs
    project.drop("lots.csv", csv_text(["extended_id", "batch"], data))
    with project.running() as service:
        wait_until(lambda: emulator.stats().async_jobs >= 1, what="the first async job")
        emulator.configure(outage=frozenset({"scm_upload", "scm_upload_async", "scm_task"}))
        time.sleep(10)
        outages = emulator.stats().outages
        emulator.configure(outage=frozenset())
        assert service.poll() is None
        project.wait_for(project.outbox / "lots.summary.json", timeout=UPPER_BOUND)
        assert stop(service) == 0

    assert outages >= 3
    assert emulator.all_data("extended_id") == {k: {"batch": lot} for k, lot in data}
    assert all(emulator.transactions("extended_id", k) == 1 for k, _ in data)
    stats = emulator.stats()
    assert stats.async_jobs == 4
    assert stats.tasks_completed == 4
    assert stats.tasks_failed == 0
    assert {t.state for t in emulator.tasks()} == {"complete"}
    summary = project.summary("lots")
    assert summary["status"] == "completed"
    assert summary["rows"]["uploaded"] == 320
    assert len(summary["tasks"]) == 4
    assert all(t["state"] == "complete" for t in summary["tasks"]), summary["tasks"]
    assert {r["status"] for r in project.report("lots")} == {"uploaded"}
    assert (project.archive / "lots.csv").exists()
    log = [e["event"] for e in events(service_log(project))]
    assert "sending_paused" in log
    assert "sending_resumed" in log
    assert log.index("sending_paused") < len(log) - 1 - log[::-1].index("sending_resumed")


# --- 6. outbox and archive problems while the service runs -------------------------------------------------------


def test_an_outbox_replaced_by_a_file_is_retried_until_it_is_a_folder_again(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload=SYNC)
    text = csv_text(HEADER, rows(20))
    with project.running() as service:
        wait_until(lambda: logged(project, "ledger_recovered"), what="the service started")
        shutil.rmtree(project.outbox)
        project.outbox.write_text("not a folder\n")
        project.drop("lot.csv", text)
        wait_until(lambda: logged(project, "delivery_failed"), what="delivery_failed in the log")
        time.sleep(0.3)
        assert service.poll() is None  # the service does not exit

        failure = logged(project, "delivery_failed")[0]
        assert failure["level"] == "error"
        assert failure["file"] == "lot.csv"
        assert str(project.outbox) in failure["error"]
        assert failure["retry_in"] > 0
        status = project.cli("status")
        assert status.returncode == 0, status.stderr
        assert "lot.csv" in status.stdout
        assert query(project, "SELECT state FROM files") == [("reporting",)]
        assert emulator.all_data("extended_id") == expected(20)  # the upload itself went on
        assert (project.inbox / ".processing" / "1-lot.csv").exists()

        project.outbox.unlink()
        project.outbox.mkdir()
        project.wait_for(project.outbox / "lot.summary.json", timeout=UPPER_BOUND)
        project.wait_for(project.archive / "lot.csv", timeout=10)
        assert service.poll() is None
        assert stop(service) == 0

    assert project.summary("lot")["rows"]["uploaded"] == 20
    assert (project.outbox / "lot.report.csv").exists()
    assert (project.archive / "lot.csv").read_bytes() == text.encode()
    assert query(project, "SELECT state, delivery_error FROM files") == [("done", None)]
    assert processing(project) == []


def test_status_names_the_delivery_problem(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload=SYNC)
    with project.running() as service:
        wait_until(lambda: logged(project, "ledger_recovered"), what="the service started")
        shutil.rmtree(project.outbox)
        project.outbox.write_text("not a folder\n")
        project.drop("lot.csv", csv_text(HEADER, rows(5)))
        wait_until(lambda: logged(project, "delivery_failed"), what="delivery_failed in the log")
        status = project.cli("status")
        as_json = project.cli("status", "--json")
        assert service.poll() is None
    assert status.returncode == 0, status.stderr
    assert "reports of lot.csv not delivered" in status.stdout
    assert "reports of lot.csv not delivered" in as_json.stdout


def test_an_unusable_archive_is_retried_until_it_is_usable_again(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload=SYNC)
    text = csv_text(HEADER, rows(20))
    as_root = os.geteuid() == 0  # root writes into a 0o500 folder: chmod cannot make it read-only for us
    with project.running() as service:
        wait_until(lambda: logged(project, "ledger_recovered"), what="the service started")
        if as_root:
            shutil.rmtree(project.archive)
            project.archive.write_text("not a folder\n")
        else:
            project.archive.chmod(0o500)
        try:
            project.drop("lot.csv", text)
            wait_until(lambda: logged(project, "delivery_failed"), what="delivery_failed in the log")
            time.sleep(0.3)
            assert service.poll() is None
            assert str(project.archive) in logged(project, "delivery_failed")[0]["error"]
            assert query(project, "SELECT state FROM files") == [("reporting",)]
            assert (project.inbox / ".processing" / "1-lot.csv").exists()
        finally:
            if as_root:
                project.archive.unlink()
                project.archive.mkdir()
            else:
                project.archive.chmod(0o755)
        project.wait_for(project.archive / "lot.csv", timeout=UPPER_BOUND)
        project.wait_for(project.outbox / "lot.summary.json", timeout=10)
        assert stop(service) == 0

    assert project.summary("lot")["rows"]["uploaded"] == 20
    assert (project.archive / "lot.csv").read_bytes() == text.encode()
    assert project.reports() == ["lot.report.csv", "lot.summary.json"]
    assert query(project, "SELECT state, delivery_error FROM files") == [("done", None)]
    assert processing(project) == []


def test_a_name_too_long_for_its_report_suffixes_gets_shortened_reports(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload=SYNC)
    name = "x" * 250 + ".csv"  # 254 bytes: a legal name, but not with `.summary.json` in place of `.csv`
    text = csv_text(HEADER, [*rows(10), ("", "de")])  # one row without a key, so rejected.csv is written too
    partial = project.inbox / ".long.part"  # support's drop() would need a hidden name longer than the limit
    partial.write_bytes(text.encode())
    partial.rename(project.inbox / name)

    with project.running("--once") as service:
        # A delivery failure would be retried for ever (run --once waits for every file to be final): stop there.
        wait_until(
            lambda: service.poll() is not None or logged(project, "delivery_failed"),
            timeout=UPPER_BOUND,
            what="run --once to end",
        )
        failures = logged(project, "delivery_failed")
        assert not failures, failures[0]["error"]
        assert service.wait(timeout=30) == 0, service_log(project)[-3000:]

    reports = project.reports()
    assert len(reports) == 3, reports
    assert all(len(os.fsencode(r)) <= 255 for r in reports)
    stems = {r.rsplit(".", 2)[0] for r in reports}
    assert len(stems) == 1, reports  # one shortened stem for all three
    stem = stems.pop()
    assert name.startswith(stem)
    assert len(stem) < 250
    assert sorted(r.removeprefix(stem) for r in reports) == [".rejected.csv", ".report.csv", ".summary.json"]
    summary = project.summary(stem)
    assert summary["source"] == name
    assert summary["status"] == "completed_with_errors"
    assert summary["rows"]["uploaded"] == 10
    assert summary["rows"]["rejected"] == 1
    assert summary["reports"] == {
        "report_csv": f"{stem}.report.csv",
        "report_xlsx": None,
        "rejected_csv": f"{stem}.rejected.csv",
        "rejected_xlsx": None,
    }
    archived = list(project.archive.iterdir())
    assert len(archived) == 1
    assert archived[0].read_bytes() == text.encode()
    assert archived[0].suffix == ".csv"
    assert len(os.fsencode(archived[0].name)) <= 255
    assert processing(project) == []
    assert emulator.all_data("extended_id") == expected(10)


def test_run_once_gives_up_delivering_after_a_few_tries_and_exits_1(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload=SYNC)
    emulator.configure(latency=2.0)  # the upload is in flight when the outbox goes away
    project.drop("lot.csv", csv_text(HEADER, rows(5)))
    with project.running("--once") as service:
        wait_until(lambda: logged(project, "file_planned"), what="the file planned")
        shutil.rmtree(project.outbox, ignore_errors=True)
        project.outbox.write_text("not a folder\n")  # the share went away: the outbox cannot be used
        assert service.wait(timeout=UPPER_BOUND) == 1
    last = events(service_log(project))[-1]
    assert last["event"] == "service_stopped"
    assert "could not be delivered" in last["reason"]
    assert query(project, "SELECT state FROM files") == [("reporting",)]  # the next run delivers them
    project.outbox.unlink()
    project.outbox.mkdir()
    assert project.cli("run", "--once").returncode == 0
    assert project.summary("lot")["rows"]["uploaded"] == 5


# --- 7. an empty file with run --once ----------------------------------------------------------------------------


def test_an_empty_file_with_run_once_ends_in_failed(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload=SYNC)
    project.drop("empty.csv", b"")
    started = time.monotonic()
    done = project.cli("run", "--once", timeout=UPPER_BOUND)
    assert time.monotonic() - started < UPPER_BOUND
    assert done.returncode == 0, done.stderr + done.stdout[-3000:]

    assert (project.failed / "empty.csv").read_bytes() == b""
    summary = project.summary("empty")
    assert summary["status"] == "failed"
    assert "empty" in summary["error"]
    assert summary["rows"]["total"] == 0
    assert [p.name for p in project.inbox.iterdir()] == [".processing"]
    assert processing(project) == []
    assert emulator.stats().data_requests == 0


# --- 8. a huge Retry-After ---------------------------------------------------------------------------------------


def test_a_429_with_a_huge_retry_after_waits_at_most_max_server_wait(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload=SYNC, retry={"max_server_wait_seconds": 2})
    emulator.throttle_burst(1, retry_after=100000000)
    project.drop("lot.csv", csv_text(HEADER, rows(300)))
    started = time.monotonic()
    done = project.cli("run", "--once", timeout=UPPER_BOUND)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr + done.stdout[-3000:]
    assert elapsed < 60

    stats = emulator.stats()
    assert stats.throttled == 1
    assert stats.sync_calls == 3
    assert emulator.all_data("extended_id") == expected(300)
    assert all(emulator.transactions("extended_id", c) == 1 for c in expected(300))
    assert project.summary("lot")["rows"]["uploaded"] == 300
    throttled = [e for e in events(done.stdout) if e["event"] == "throttled"]
    assert len(throttled) == 1
    assert 0 < throttled[0]["pause_seconds"] <= 2


def test_a_503_with_a_huge_retry_after_waits_at_most_max_server_wait(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload=SYNC, retry={"max_server_wait_seconds": 2})
    emulator.configure(outage=frozenset({"scm_upload"}), retry_after_header=100000000)
    project.drop("lot.csv", csv_text(HEADER, rows(300)))
    started = time.monotonic()
    service = project.start("--once")
    try:
        wait_until(lambda: emulator.stats().outages >= 1, what="a 503")
        emulator.configure(outage=frozenset())
        code_ = service.wait(timeout=UPPER_BOUND)
    finally:
        if service.poll() is None:
            service.kill()
        service.wait(timeout=30)
    elapsed = time.monotonic() - started
    assert code_ == 0, service_log(project)[-3000:]
    assert elapsed < 60

    assert emulator.all_data("extended_id") == expected(300)
    assert all(emulator.transactions("extended_id", c) == 1 for c in expected(300))
    assert project.summary("lot")["rows"]["uploaded"] == 300
    retries = logged(project, "batch_retry")
    assert retries, "the 503 was retried"
    assert all(e["delay"] <= 2 for e in retries), retries


# --- 9. run --once against an unreachable API --------------------------------------------------------------------


def test_run_once_against_an_api_that_keeps_failing_ends_with_failed_rows_and_exit_1(
    tmp_path: Path, emulator: Emulator
) -> None:
    # The token check answers; the upload endpoint is down (503) for the whole run. (An API unreachable already at
    # the start-up check ends the run before any file is taken: test_cli_ready.)
    emulator.configure(outage=frozenset({"scm_upload"}))
    project = make_project(
        tmp_path / "site",
        emulator.base_url,
        upload=SYNC,
        retry={"max_attempts": 2, "base_delay_seconds": 0.2, "max_delay_seconds": 0.5},
        api={"connect_timeout": 2},
    )
    project.drop("lot.csv", csv_text(HEADER, rows(150)))
    started = time.monotonic()
    done = project.cli("run", "--once", timeout=UPPER_BOUND)
    assert time.monotonic() - started < UPPER_BOUND
    assert done.returncode == 1, done.stderr + done.stdout[-3000:]

    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["event"] == "service_stopped"
    assert last["level"] == "error"
    assert "150 row(s) failed" in last["reason"]
    summary = project.summary("lot")
    assert summary["status"] == "completed_with_errors"
    assert summary["rows"]["failed"] == 150
    assert summary["rows"]["uploaded"] == 0
    report = project.report("lot")
    assert {r["status"] for r in report} == {"failed"}
    assert all("gave up after 2 failed attempts" in r["detail"] for r in report)
    rejected = project.report("lot", "rejected")
    assert len(rejected) == 150
    assert all("gave up after 2 failed attempts" in r["error"] for r in rejected)
    assert (project.archive / "lot.csv").exists()


# --- 10. leftover temporary reports -----------------------------------------------------------------------------


def test_leftover_temporary_reports_are_removed_at_start(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url)
    project.outbox.mkdir()
    leftover = project.outbox / ".orders.summary.json.abc123.tmp"
    leftover.write_text('{"half": ')
    kept = [project.outbox / "orders.summary.json", project.outbox / ".notes", project.outbox / "draft.tmp"]
    for path in kept:
        path.write_text("{}")

    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr + done.stdout[-3000:]

    assert not leftover.exists()
    assert all(path.read_text() == "{}" for path in kept)  # only the daemon's own `.<name>.XXXX.tmp` go
    recovered = [e for e in events(done.stdout) if e["event"] == "ledger_recovered"]
    assert len(recovered) == 1
    assert recovered[0]["temp_reports_removed"] == 1
    assert emulator.stats().data_requests == 0
