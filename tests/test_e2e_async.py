"""The async path end to end: groups of identical data become jobs, tasks are followed to their end."""

import signal
import sqlite3
import time
from pathlib import Path

import pytest
from support import Project, csv_text, make_project

from daemon.planner import plan
from daemon.sandbox import Emulator

pytestmark = pytest.mark.slow  # the real CLI as a subprocess: the full suite runs these, the fast tier does not

FAST_POLL = {"interval_seconds": 0.05, "max_interval_seconds": 0.2}


def code(i: int) -> str:
    return f"ASYNC{i:07d}"


@pytest.fixture
def project(tmp_path: Path, emulator: Emulator) -> Project:
    emulator.configure(task_pending_seconds=0.05, task_running_seconds=0.1)
    return make_project(tmp_path / "site", emulator.base_url, poll=FAST_POLL)


def production_file() -> tuple[str, dict[str, dict[str, str]]]:
    """5,000 rows in three production lots (identical data per lot), then 300 rows with data of their own."""
    rows, expected = [], {}
    lots = [("2026-11-01", "L1", "cn", 2000), ("2026-11-02", "L2", "de", 2000), ("2026-11-03", "L3", "fr", 1000)]
    i = 0
    for date, lot, market, count in lots:
        for _ in range(count):
            rows.append((code(i), date, lot, market))
            i += 1
    for j in range(300):
        rows.append((code(i), "2026-11-04", f"S{j}", "us"))
        i += 1
    for key, date, lot, market in rows:
        expected[key] = {"production_date": date, "batch": lot, "intended_market": market}
    return csv_text(["extended_id", "production_date", "batch", "intended_market"], rows), expected


def test_auto_mode_uses_the_planners_bound_and_the_data_arrives_exactly(project: Project, emulator: Emulator) -> None:
    text, expected = production_file()
    project.drop("lots.csv", text)

    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr

    assert emulator.all_data("extended_id") == expected
    assert all(emulator.transactions("extended_id", k) == 1 for k in expected)
    sizes = [2000, 2000, 1000] + [1] * 300
    bound = plan(
        {f"g{n}": list(range(s)) for n, s in enumerate(sizes)},
        mode="auto",
        sync_batch_size=100,
        async_batch_size=1000,
    )
    stats = emulator.stats()
    assert (stats.async_jobs, stats.sync_calls) == (bound.async_jobs, bound.sync_calls) == (5, 3)

    summary = project.summary("lots")
    assert summary["status"] == "completed"
    assert summary["rows"]["uploaded"] == 5300
    assert summary["api_calls"] == 8
    assert summary["batches"] == 8
    tasks = summary["tasks"]
    assert len(tasks) == 5
    assert all(t["state"] == "complete" for t in tasks)
    assert sorted(t["codes_sent"] for t in tasks) == [1000] * 5
    assert all(t["codes_affected"] == t["codes_sent"] for t in tasks)
    report = project.report("lots")
    by_key = {r["extended_id"]: r for r in report}
    task_ids = {t["task_id"] for t in tasks}
    assert by_key[code(0)]["task_id"] in task_ids
    assert by_key[code(5299)]["task_id"] == ""


def test_a_failed_task_fails_its_rows_into_rejected_csv(project: Project, emulator: Emulator) -> None:
    emulator.configure(task_fail_rate=1.0)
    rows = [(code(i), "L9") for i in range(150)]
    project.drop("lot.csv", csv_text(["extended_id", "batch"], rows))

    done = project.cli("run", "--once", SCM_UPLOAD__MODE="async")
    assert done.returncode == 0, done.stderr

    summary = project.summary("lot")
    assert summary["status"] == "completed_with_errors"
    assert summary["rows"]["failed"] == 150
    assert [t["state"] for t in summary["tasks"]] == ["failed"]
    rejected = project.report("lot", "rejected")
    assert len(rejected) == 150
    task_id = summary["tasks"][0]["task_id"]
    assert rejected[0]["error"] == f"Scantrust task {task_id} ended in state 'failed'"
    assert emulator.all_data("extended_id") == {}


def test_the_docs_vocabulary_and_unknown_states_are_followed_to_the_end(project: Project, emulator: Emulator) -> None:
    emulator.configure(task_states="docs")
    project.drop("a.csv", csv_text(["extended_id", "batch"], [(code(i), "L1") for i in range(5)]))
    done = project.cli("run", "--once", SCM_UPLOAD__MODE="async")
    assert done.returncode == 0, done.stderr
    assert project.summary("a")["rows"]["uploaded"] == 5


def test_kill_9_after_tasks_were_created_never_submits_them_again(tmp_path: Path, emulator: Emulator) -> None:
    emulator.configure(task_pending_seconds=1.0, task_running_seconds=0.5)
    project = make_project(tmp_path / "site", emulator.base_url, poll=FAST_POLL)
    rows = [(code(i), f"L{i // 1000}") for i in range(4000)]
    project.drop("lots.csv", csv_text(["extended_id", "batch"], rows))

    with project.running() as service:
        deadline = time.monotonic() + 60
        while emulator.stats().async_jobs < 4:
            assert time.monotonic() < deadline, (project.root / "service.log").read_text()[-3000:]
            time.sleep(0.02)
        time.sleep(0.3)  # let the task ids be committed
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)
    with sqlite3.connect(project.ledger) as db:
        submitted = db.execute("SELECT count(*) FROM batches WHERE task_id IS NOT NULL").fetchone()[0]
    assert submitted == 4

    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr
    assert emulator.stats().async_jobs == 4
    assert all(emulator.transactions("extended_id", code(i)) == 1 for i in range(4000))
    assert project.summary("lots")["rows"]["uploaded"] == 4000
