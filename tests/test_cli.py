"""The command line as a user meets it: help, exit codes, and the read-only commands."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import Project, csv_text, make_project, stop

from daemon.cli import COMMANDS, build_parser
from daemon.sandbox import Emulator


@pytest.fixture
def project(tmp_path: Path, emulator: Emulator) -> Project:
    return make_project(tmp_path / "site", emulator.base_url)


@pytest.mark.slow
def test_every_command_has_help_text() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub._choices_actions}  # type: ignore[attr-defined]
    assert set(helps) == set(COMMANDS)
    assert all(helps.values())
    for name in COMMANDS:
        out = subprocess.run(
            [sys.executable, "-m", "daemon", name, "--help"], capture_output=True, text=True, check=False
        )
        assert out.returncode == 0
        assert "usage: scm-daemon" in out.stdout


def test_bad_usage_exits_2() -> None:
    out = subprocess.run([sys.executable, "-m", "daemon", "frobnicate"], capture_output=True, text=True, check=False)
    assert out.returncode == 2


def test_a_bad_config_value_exits_2_naming_the_key_and_the_file(project: Project) -> None:
    project.config.write_text(
        project.config.read_text().replace("[upload]", "") + "\n[upload]\nsync_batch_size = 500\n"
    )
    out = project.cli("status")
    assert out.returncode == 2
    assert "upload.sync_batch_size" in out.stderr
    assert "config.toml" in out.stderr


def test_a_missing_inbox_is_named_with_the_fix(project: Project) -> None:
    project.inbox.rmdir()
    out = project.cli("run", "--once")
    assert out.returncode == 2
    assert f"inbox {project.inbox} does not exist; create it or set paths.inbox" in out.stderr


def test_run_without_a_token_exits_2_and_says_how_to_give_one(project: Project) -> None:
    out = project.cli("run", "--once", SCM_API__TOKEN="")
    assert out.returncode == 2, out.stderr
    assert "SCM_API__TOKEN" in out.stderr


def test_check_accepts_a_good_token_and_exits_3_on_a_refused_one(project: Project, emulator: Emulator) -> None:
    out = project.cli("check")
    assert out.returncode == 0, out.stderr
    assert "token: accepted" in out.stdout
    emulator.configure(revoked=True)
    out = project.cli("check")
    assert out.returncode == 3
    assert "sandbox-token" not in out.stdout + out.stderr


@pytest.mark.slow
def test_status_reports_files_rows_and_batches(project: Project) -> None:
    project.drop("a.csv", csv_text(["extended_id", "batch"], [("CODE00000001", "x"), ("", "y")]))
    assert project.cli("run", "--once").returncode == 0
    out = project.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["files"] == {"completed_with_errors": 1}
    assert data["rows"] == {"uploaded": 1, "rejected": 1}
    assert data["batches"] == {"done": 1}
    assert data["recent_files"][0]["name"] == "a.csv"
    text = project.cli("status")
    assert "completed_with_errors" in text.stdout
    assert "a.csv" in text.stdout


def test_validate_shows_the_plan_without_uploading(project: Project, emulator: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "plan.csv"
    rows = [(f"CODE{i:08d}", "cn") for i in range(250)] + [("1.23457E+11", "cn")]
    path.write_text(csv_text(["Extended ID", "intended_market"], rows, delimiter=";"))
    out = subprocess.run(
        [sys.executable, "-m", "daemon", "validate", str(path), "-c", str(project.config), "--json"],
        capture_output=True,
        text=True,
        check=False,
        env=project.env(),
    )
    assert out.returncode == 1, out.stderr  # a row would be rejected
    report = json.loads(out.stdout)
    assert report["format"]["delimiter"] == ";"
    assert report["rows"] == {"total": 251, "to_upload": 250, "skipped": 0, "rejected": 1}
    # 250 rows with the same data: one async job instead of three sync calls.
    assert report["api_calls"] == 1
    assert report["plan"] == {"mode": "auto", "groups": 1, "sync_calls": 0, "async_jobs": 1, "sync_only_calls": 3}
    assert report["problems"][0]["row"] == 252
    assert "reformatted" in report["problems"][0]["detail"]
    assert emulator.stats().total_requests == 0
    assert not project.ledger.exists()


@pytest.mark.slow
def test_prune_keeps_status_counts_and_duplicate_detection(project: Project, emulator: Emulator) -> None:
    text = csv_text(["extended_id", "batch"], [("CODE00000001", "x"), ("CODE00000002", "y")])
    project.drop("a.csv", text)
    assert project.cli("run", "--once").returncode == 0
    before = json.loads(project.cli("status", "--json").stdout)

    out = project.cli("prune", "--older-than", "0")
    assert out.returncode == 0, out.stderr
    assert "dropped 2 row(s) of 1 file(s)" in out.stdout
    after = json.loads(project.cli("status", "--json").stdout)
    assert after["rows"] == before["rows"] == {"uploaded": 2}

    project.drop("a-again.csv", text)
    assert project.cli("run", "--once").returncode == 0
    assert project.summary("a-again")["status"] == "duplicate"
    assert project.cli("prune", "--older-than", "-1").returncode == 2


@pytest.mark.slow
def test_a_second_service_on_the_same_ledger_is_refused(project: Project, emulator: Emulator) -> None:
    with project.running() as service:
        project.wait_for(project.ledger.with_name("ledger.sqlite3.lock"))
        deadline = time.monotonic() + 30
        while str(service.pid) not in project.ledger.with_name("ledger.sqlite3.lock").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = project.cli("run", "--once")
        assert second.returncode == 2
        assert f"another scm-daemon (pid {service.pid}) is already running with the ledger" in second.stderr
        assert service.poll() is None
        assert stop(service) == 0
    assert project.cli("run", "--once").returncode == 0  # the lock went with the first service


def test_status_retry_and_prune_read_the_sandbox_ledger_with_sandbox(tmp_path: Path) -> None:
    folder = tmp_path / "try"
    (folder / "inbox").mkdir(parents=True)
    (folder / "inbox" / "a.csv").write_text(csv_text(["extended_id", "batch"], [("CODE00000001", "x")]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCM_")} | {"SCM_WATCH__SETTLE_SECONDS": "0.1"}
    run = subprocess.run(
        [sys.executable, "-m", "daemon", "run", "--sandbox", "--once"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert (folder / "ledger.sandbox.sqlite3").exists()
    assert not (folder / "ledger.sqlite3").exists()
    status = subprocess.run(
        [sys.executable, "-m", "daemon", "status", "--sandbox", "--json"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["rows"] == {"uploaded": 1}
