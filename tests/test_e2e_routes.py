"""Subfolders as routes, end to end: the real CLI in a subprocess, real folders, the emulator on a loopback socket."""

import json
import sqlite3
import time
from pathlib import Path

import pytest
from support import TOKEN, Project, csv_text, make_project, stop

from daemon.config import load_settings
from daemon.sandbox import Emulator
from daemon.service import Service

ROUTES = """
[routes."LineA"]
data_key = "serial_number"
mode = "async"
[routes."LineA".columns]
"Serial No." = "serial_number"
"""


@pytest.fixture
def project(tmp_path: Path, emulator: Emulator) -> Project:
    project = make_project(tmp_path / "site", emulator.base_url, upload={"mode": "sync"})
    with project.config.open("a", encoding="utf-8") as config:
        config.write(ROUTES)
    return project


def put(project: Project, name: str, text: str) -> None:
    path = project.inbox / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def summary(project: Project, relative: str) -> dict[str, object]:
    result: dict[str, object] = json.loads((project.outbox / relative).read_text(encoding="utf-8"))
    return result


@pytest.mark.slow
def test_nested_files_take_their_routes_and_keep_their_paths(project: Project, emulator: Emulator) -> None:
    top = [(f"TOP{i:08d}", "top") for i in range(3)]
    line_a = [(f"SN-{i:04d}", "line-a") for i in range(5)]
    deep = [(f"DEEP{i:08d}", "deep") for i in range(2)]
    put(project, "top.csv", csv_text(["extended_id", "batch"], top))
    put(project, "LineA/codes.csv", csv_text(["Serial No.", "batch"], line_a))  # the route's heading and key
    put(project, "LineB/Station 2/codes.csv", csv_text(["extended_id", "batch"], deep))  # no route: top level
    put(project, "LineA/empty.csv", "")  # unreadable: failed/ keeps its folder too
    (project.outbox / "LineA").mkdir(parents=True)
    (project.outbox / "LineA" / "codes.summary.json").write_text("{}")  # taken: the next free name in LineA

    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr + done.stdout

    # The route's data key and mode are what the emulator saw; the other files went by the top level.
    assert emulator.all_data("serial_number") == {code: {"batch": "line-a"} for code, _ in line_a}
    assert emulator.all_data("extended_id") == {code: {"batch": b} for code, b in top + deep}
    assert len(emulator.tasks()) == 1  # only LineA is async
    a = summary(project, "LineA/codes-2.summary.json")
    assert (a["source"], a["mode"], a["data_key"], a["status"]) == (
        "LineA/codes.csv",
        "async",
        "serial_number",
        "completed",
    )
    assert a["reports"] == {
        "report_csv": "LineA/codes-2.report.csv",
        "report_xlsx": None,
        "rejected_csv": None,
        "rejected_xlsx": None,
    }
    deep_summary = summary(project, "LineB/Station 2/codes.summary.json")
    assert (deep_summary["source"], deep_summary["mode"]) == ("LineB/Station 2/codes.csv", "sync")
    assert summary(project, "top.summary.json")["source"] == "top.csv"
    assert summary(project, "LineA/empty.summary.json")["status"] == "failed"
    # Archived and failed inputs keep their relative paths; the inbox's subfolders stay, emptied.
    assert (project.archive / "LineA" / "codes.csv").is_file()
    assert (project.archive / "LineB" / "Station 2" / "codes.csv").is_file()
    assert (project.archive / "top.csv").is_file()
    assert (project.failed / "LineA" / "empty.csv").is_file()
    assert sorted(p.name for p in project.inbox.rglob("*") if p.is_file()) == []
    with sqlite3.connect(project.ledger) as db:
        names = sorted(n for (n,) in db.execute("SELECT name FROM files"))
    assert names == ["LineA/codes.csv", "LineA/empty.csv", "LineB/Station 2/codes.csv", "top.csv"]

    # `status` and `retry` know the files by that name.
    status = project.cli("status", "--json")
    assert "LineB/Station 2/codes.csv" in status.stdout
    retried = project.cli("retry", "LineA/codes.csv")
    assert retried.returncode == 0, retried.stderr
    assert "LineA/codes.csv: 0 failed row(s) back in the queue" in retried.stdout


@pytest.mark.slow  # the real CLI as a subprocess
def test_same_content_in_two_folders_is_uploaded_once(project: Project, emulator: Emulator) -> None:
    # Duplicate detection by content is global: a file copied into two line folders is not sent twice.
    text = csv_text(["extended_id", "batch"], [("SAME00000001", "x")])
    put(project, "LineB/orders.csv", text)
    assert project.cli("run", "--once").returncode == 0
    put(project, "LineC/orders.csv", text)
    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr + done.stdout
    assert summary(project, "LineC/orders.summary.json")["status"] == "duplicate"
    assert "'LineB/orders.csv'" in str(summary(project, "LineC/orders.summary.json")["error"])
    assert emulator.transactions("extended_id", "SAME00000001") == 1
    assert (project.archive / "LineC" / "orders.csv").is_file()


@pytest.mark.slow  # the real CLI as a subprocess
def test_validate_shows_the_route_a_path_takes(project: Project) -> None:
    put(project, "LineA/x.csv", csv_text(["Serial No.", "batch"], [("SN-1", "b")]))
    outside = project.root / "x.csv"
    outside.write_text(csv_text(["Serial No.", "batch"], [("SN-1", "b")]), encoding="utf-8")

    inside = project.cli("validate", str(project.inbox / "LineA" / "x.csv"))
    assert inside.returncode == 0, inside.stderr + inside.stdout
    assert "route:    routes.\"LineA\": data_key = 'serial_number'; mode = 'async'" in inside.stdout
    assert "plan:     mode async" in inside.stdout

    top = project.cli("validate", str(outside), "--json")  # outside the inbox: the top level's extended_id
    assert top.returncode == 1
    assert json.loads(top.stdout)["route"] is None
    assert json.loads(top.stdout)["error"].startswith("no 'extended_id' column (upload.data_key)")

    asked = project.cli("validate", str(outside), "--route", "LineA", "--json")
    report = json.loads(asked.stdout)
    assert (report["route"], report["data_key"], report["ok"]) == ("LineA", "serial_number", True)

    unknown = project.cli("validate", str(outside), "--route", "LineZ")
    assert unknown.returncode == 2
    assert '--route \'LineZ\' is not a [routes."FOLDER"] of the configuration (routes: "LineA")' in unknown.stderr


@pytest.mark.slow
def test_a_running_service_is_woken_by_files_in_folders_made_after_it_started(
    tmp_path: Path, emulator: Emulator
) -> None:
    # The periodic scan is far away: only the recursive watch can find these files in time.
    project = make_project(tmp_path / "site", emulator.base_url, watch={"settle_seconds": 0.2, "rescan_seconds": 600})
    (project.inbox / "LineA").mkdir()
    with project.running() as service:
        log = project.root / "service.log"
        deadline = time.monotonic() + 30
        while "watcher_started" not in (log.read_text() if log.exists() else ""):
            assert service.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        folder = project.inbox / "LineA" / "Station 2"
        folder.mkdir()  # made after the watch began
        # Its creation wakes a scan that finds nothing yet: let that pass, so that only the watch of the new
        # folder can see the file below (were the wait too short, the test would pass without testing that).
        time.sleep(1.0)
        hidden = folder / ".codes.csv.part"
        hidden.write_text(csv_text(["extended_id", "batch"], [("WAKE00000001", "w")]), encoding="utf-8")
        hidden.rename(folder / "codes.csv")  # the end of a copy
        project.wait_for(project.outbox / "LineA" / "Station 2" / "codes.summary.json", timeout=20)
        assert stop(service) == 0
    assert emulator.all_data("extended_id") == {"WAKE00000001": {"batch": "w"}}
    assert (project.archive / "LineA" / "Station 2" / "codes.csv").is_file()


def test_check_lists_the_routes(project: Project) -> None:
    checked = project.cli("check")
    assert checked.returncode == 0, checked.stderr + checked.stdout
    assert "route: files directly in the inbox, and in folders no route names: (top level)" in checked.stdout
    expected = (
        f"route: {project.inbox}/LineA/ (not there yet: files dropped there once it exists take it) "
        "takes routes.\"LineA\": data_key = 'serial_number'; mode = 'async'; columns: 'Serial No.' -> serial_number"
    )
    assert expected in checked.stdout


def test_a_file_moved_to_another_route_while_settling_is_taken_there_with_its_settings(
    tmp_path: Path, emulator: Emulator
) -> None:
    # Only the service's clock moves: the scan, the settling and the claim, in process, on real folders.
    project = make_project(tmp_path / "site", emulator.base_url, watch={"rescan_seconds": 1, "settle_seconds": 2})
    with project.config.open("a", encoding="utf-8") as config:
        config.write('[routes."LineA"]\nmode = "sync"\n[routes."LineB"]\nmode = "async"\n')
    settings = load_settings(project.config, env={"SCM_API__TOKEN": TOKEN})
    project.ledger.parent.mkdir(parents=True)
    now = [1000.0]
    service = Service.from_settings(settings, monotonic=lambda: now[0])
    try:
        service.leadership.try_take()
        service.recover()
        put(project, "LineA/codes.csv", csv_text(["extended_id", "batch"], [("MOVED0000001", "x")]))
        (project.inbox / "LineB").mkdir()
        assert service.step().taken == 0  # seen in LineA, settling
        (project.inbox / "LineA" / "codes.csv").rename(project.inbox / "LineB" / "codes.csv")
        now[0] += 2.0
        assert service.step().taken == 0  # in LineB it is a new sighting: it settles anew
        now[0] += 2.0
        assert service.step().taken == 1
        (f,) = service.ledger.find_files("LineB/codes.csv")
        assert (f.mode, f.data_key, f.error) == ("async", "extended_id", None)  # LineB's mode, not LineA's
        assert service.ledger.find_files("LineA/codes.csv") == []
    finally:
        service.uploader.close()
        service.ledger.close()
