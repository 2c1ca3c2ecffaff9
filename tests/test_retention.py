"""Retention (issue 15, item 5): old inputs and reports removed from real folders after a real run against the
emulator; only what the ledger says this daemon wrote, never through a symbolic link; `prune --dry-run` lists
and removes nothing; the service sweeps at its start and then once a day."""

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs
from support import Project, csv_text, in_process, make_project

from daemon import retention
from daemon.cli import UsageError, build_parser, cmd_prune
from daemon.config import RetentionSettings, Settings
from daemon.ledger import utcnow
from daemon.sandbox import Emulator
from daemon.service import Service

HEADER = ["extended_id", "intended_market"]
GOOD = csv_text(HEADER, [(f"RET{i:08d}", f"M{i}") for i in range(20)])
DAY = 86400.0


class Clock:
    """The service's monotonic clock: real time plus an offset a test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def site(tmp_path: Path, emulator: Emulator, **retention_keys: float) -> Project:
    sections = {"retention": dict(retention_keys)} if retention_keys else {}
    return make_project(tmp_path / "site", emulator.base_url, watch={"settle_seconds": 0}, **sections)


def service_for(project: Project, clock: Clock) -> Service:
    service = in_process(project, clock)
    service.start()
    return service


def close(service: Service) -> None:
    service.retention.close()
    service.events.stop()
    service.uploader.close()
    service.ledger.close()


def run_files(service: Service, project: Project, stems: list[str]) -> None:
    for _ in range(3000):
        service.turn()
        if all((project.outbox / f"{s}.summary.json").exists() for s in stems) and service.idle():
            return
    raise AssertionError("the files were not finished")


def drop_four(project: Project) -> None:
    project.drop("good.csv", GOOD)
    project.drop("errors.csv", csv_text(HEADER, [("RETERR000001", "x"), ("1.23457E+11", "y")]))
    project.drop("broken.xlsx", b"not a workbook")


@pytest.fixture
def finished(tmp_path: Path, emulator: Emulator) -> Iterator[tuple[Project, Service]]:
    """A site after a real run: good.csv, errors.csv (with rejected rows), broken.xlsx (failed), good-again.csv
    (a duplicate), each reported and moved."""
    project = site(tmp_path, emulator)
    drop_four(project)
    service = service_for(project, Clock())
    run_files(service, project, ["good", "errors", "broken"])
    project.drop("good-again.csv", GOOD)
    run_files(service, project, ["good-again"])
    yield project, service
    close(service)


def ours(project: Project) -> set[Path]:
    reports = {
        project.outbox / f"{stem}.{kind}"
        for stem in ("good", "errors", "broken", "good-again")
        for kind in ("summary.json", "report.csv")
    }
    inputs = {project.archive / n for n in ("good.csv", "errors.csv", "good-again.csv")}
    return reports | inputs | {project.outbox / "errors.rejected.csv", project.failed / "broken.xlsx"}


def planned(project: Project, service: Service, days_later: float, **keys: float) -> set[Path]:
    settings = RetentionSettings(**keys)
    now = utcnow() + timedelta(days=days_later)
    return {r.path for r in retention.plan(service.ledger, service.settings.paths, settings, now)}


def test_old_inputs_and_reports_go_and_nothing_else(tmp_path: Path, finished: tuple[Project, Service]) -> None:
    project, service = finished
    assert all(p.is_file() for p in ours(project))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    keep = {
        project.outbox / "notes.txt": "the user's own file",
        project.archive / "user.csv": "extended_id\nMINE\n",
        project.outbox / "mine.summary.json": json.dumps({"sha256": "0" * 64, "source": "mine.csv"}),
        project.outbox / "mine.report.csv": "row\n",
        elsewhere / "outside.summary.json": (project.outbox / "good.summary.json").read_text(),
        elsewhere / "same-size.csv": "x" * (project.archive / "errors.csv").stat().st_size,
    }
    for path, text in keep.items():
        path.write_text(text)
    # Links where the daemon's files were, or pointing at copies of them: never followed, never removed.
    (project.outbox / "link.summary.json").symlink_to(elsewhere / "outside.summary.json")
    (project.archive / "errors.csv").unlink()
    (project.archive / "errors.csv").symlink_to(elsewhere / "same-size.csv")
    (project.archive / "good-again.csv").write_text("edited by someone: another size")

    assert planned(project, service, 10, archive_days=30, outbox_days=30) == set()
    expected = ours(project) - {project.archive / "errors.csv", project.archive / "good-again.csv"}
    removals = retention.plan(
        service.ledger,
        service.settings.paths,
        RetentionSettings(archive_days=30, outbox_days=30),
        utcnow() + timedelta(days=31),
    )
    assert {r.path for r in removals} == expected
    assert retention.remove(removals)[0] == len(expected)

    assert not any(p.exists() for p in expected)
    assert all(path.read_text() == text for path, text in keep.items())
    assert (project.outbox / "link.summary.json").is_symlink()
    assert (project.archive / "errors.csv").is_symlink()
    assert (project.archive / "good-again.csv").read_text() == "edited by someone: another size"
    assert service.ledger.overview()["files"] == {
        "completed": 1,
        "completed_with_errors": 1,
        "failed": 1,
        "duplicate": 1,
    }
    assert planned(project, service, 31, archive_days=30, outbox_days=30) == set()


def test_each_kind_has_its_own_age(finished: tuple[Project, Service]) -> None:
    project, service = finished
    inputs = {project.archive / n for n in ("good.csv", "errors.csv", "good-again.csv")} | {
        project.failed / "broken.xlsx"
    }
    assert planned(project, service, 31, archive_days=30) == inputs
    assert planned(project, service, 31, outbox_days=30) == ours(project) - inputs
    assert planned(project, service, 31, archive_days=30, outbox_days=60) == inputs


def test_an_input_recorded_below_a_linked_folder_is_not_reached(
    tmp_path: Path, finished: tuple[Project, Service]
) -> None:
    project, service = finished
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (project.archive / "good.csv").rename(elsewhere / "good.csv")
    (project.archive / "sub").symlink_to(elsewhere)
    (record,) = service.ledger.find_files("good.csv")
    service.ledger.set_file(record.id, destination=str(project.archive / "sub" / "good.csv"))
    assert project.archive / "sub" / "good.csv" not in planned(project, service, 31, archive_days=30)
    service.ledger.set_file(record.id, destination=str(tmp_path / "elsewhere" / "good.csv"))  # outside archive/
    assert elsewhere / "good.csv" not in planned(project, service, 31, archive_days=30)
    assert (elsewhere / "good.csv").is_file()


def test_prune_dry_run_lists_everything_and_removes_nothing(
    tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    # Days small enough that everything finished is old at once; the CLI reads the real clock.
    project = site(tmp_path, emulator, archive_days=1e-9, outbox_days=1e-9)
    drop_four(project)
    service = service_for(project, Clock())
    try:
        run_files(service, project, ["good", "errors", "broken"])
    finally:
        close(service)
    rows_before = _rows(project)
    files = {p for p in ours(project) if p.exists()}

    args = build_parser().parse_args(["prune", "-c", str(project.config), "--older-than", "0", "--dry-run"])
    assert cmd_prune(args) == 0
    out = capsys.readouterr().out
    assert "ledger: would drop 20 row(s) of good.csv" in out
    assert "ledger: would drop 22 row(s) of 2 file(s)" in out  # broken.xlsx has no rows
    for path in files:
        assert f"would remove {path} (" in out, path
    assert out.rstrip().endswith("dry run: nothing was removed")
    assert all(p.exists() for p in files)
    assert _rows(project) == rows_before

    assert cmd_prune(build_parser().parse_args(["prune", "-c", str(project.config), "--older-than", "0"])) == 0
    out = capsys.readouterr().out
    assert f"files: removed {len(files)} file(s)" in out
    assert not any(p.exists() for p in files)
    assert _rows(project) == 0


def test_prune_without_days_or_retention_says_what_to_give(tmp_path: Path, emulator: Emulator) -> None:
    project = site(tmp_path, emulator)
    with pytest.raises(UsageError, match=r"--older-than DAYS .* retention.archive_days"):
        cmd_prune(build_parser().parse_args(["prune", "-c", str(project.config)]))


def _rows(project: Project) -> int:
    with sqlite3.connect(project.ledger) as db:
        return int(db.execute("SELECT count(*) FROM rows").fetchone()[0])


def test_the_service_sweeps_at_its_start_and_then_once_a_day(tmp_path: Path, emulator: Emulator) -> None:
    project = site(tmp_path, emulator, archive_days=1e-9, outbox_days=1e-9)
    clock = Clock()
    service = service_for(project, clock)
    try:
        service.turn()  # the first sweep, in its own thread: nothing is finished yet
        service.retention.join()
        drop_four(project)
        run_files(service, project, ["good", "errors", "broken"])
        service.retention.join()
        assert all(p.exists() for p in ours(project) if "good-again" not in p.name)  # not a day yet

        clock.offset += DAY
        service.turn()
        service.retention.join()
        assert not any(p.exists() for p in ours(project))
        assert [p.name for p in project.archive.iterdir()] == []
    finally:
        close(service)


def test_a_sweep_that_fails_is_logged_and_the_loop_goes_on(tmp_path: Path, emulator: Emulator) -> None:
    project = site(tmp_path, emulator, archive_days=30)
    service = service_for(project, Clock())
    try:
        with pytest.MonkeyPatch.context() as mp, capture_logs() as logs:
            mp.setattr(retention, "plan", _raise)  # e.g. the archive's disk went away under the sweep
            assert service.retention.tick()
            service.retention.join()
            service.turn()  # the loop goes on
        assert not service.retention.tick()  # tried again at the next sweep, a day later
        service.retention.close()
        assert not service.retention.tick()  # a stopping service starts no sweep
    finally:
        close(service)
    (failed,) = [e for e in logs if e["event"] == "retention_failed"]
    assert "the disk is gone" in failed["error"]


def _raise(*_args: object) -> list[retention.Removal]:
    raise OSError("the disk is gone")


@given(st.lists(st.sampled_from(["a", "b", "..", ".", "", "c.csv"]), max_size=6))
def test_inside_never_leaves_the_folder(parts: list[str]) -> None:
    folder = Path("/srv/archive")
    path = Path(os.path.normpath(folder.joinpath(*parts))) if parts else folder
    found = retention.inside(folder, folder.joinpath(*parts))
    if found is not None:
        assert ".." not in found
        assert folder.joinpath(*found) == path
        assert str(path).startswith(str(folder) + os.sep)


@given(st.dictionaries(st.text(max_size=5), st.one_of(st.none(), st.text(max_size=30), st.integers())))
def test_report_siblings_are_plain_names_of_the_same_report(reports: dict[str, object]) -> None:
    names = retention.report_siblings("orders", {"reports": reports})
    assert names[:3] == ["orders.summary.json", "orders.report.csv", "orders.rejected.csv"]
    for name in names:
        assert name.startswith("orders.")
        assert "/" not in name
        assert "\\" not in name


def test_settings_refuse_zero_and_negative_days() -> None:
    assert not Settings().retention.enabled
    for bad in (0, -1):
        with pytest.raises(ValueError, match="greater than 0"):
            RetentionSettings(archive_days=bad)


def test_a_stopped_sweep_removes_no_more(finished: tuple[Project, Service]) -> None:
    _, service = finished
    removals = retention.plan(
        service.ledger, service.settings.paths, RetentionSettings(archive_days=30), utcnow() + timedelta(days=31)
    )
    stop = threading.Event()
    stop.set()
    assert retention.remove(removals, stop) == (0, 0)
    assert all(r.path.exists() for r in removals)
