"""The live progress bar at a terminal (a real pseudo-terminal), and none elsewhere."""

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import Project, csv_text, make_project

from daemon.sandbox import Emulator

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def at_terminal(project: Project, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run `scm-daemon ARGS -c config.toml` with stdout and stderr on a pseudo-terminal; its exit code and screen."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon", *args, "-c", str(project.config)],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env={**project.env(), "COLUMNS": "160", "TERM": "xterm"},
        cwd=project.root,
    )
    os.close(secondary)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif process.poll() is not None:
            break
    os.close(primary)
    code = process.wait(timeout=30)
    return code, ANSI.sub("", out.decode("utf-8", "replace"))


@pytest.fixture
def project(tmp_path: Path, emulator: Emulator) -> Project:
    return make_project(tmp_path / "site", emulator.base_url)


ROWS = [(f"BAR{i:08d}", f"L{i % 7}") for i in range(5000)]


def test_validate_at_a_terminal_shows_the_rows_read(project: Project, tmp_path: Path) -> None:
    file = tmp_path / "lot.csv"
    file.write_text(csv_text(["extended_id", "batch"], ROWS), encoding="utf-8")
    code, screen = at_terminal(project, "validate", str(file))
    assert code == 0, screen
    assert "reading lot.csv" in screen
    assert "5,000 rows" in screen
    assert "5,000 of 5,000" not in screen  # not the file bars of `run --once`


def test_validate_through_a_pipe_has_no_bar(project: Project, tmp_path: Path) -> None:
    file = tmp_path / "lot.csv"
    file.write_text(csv_text(["extended_id", "batch"], ROWS), encoding="utf-8")
    out = project.cli("validate", str(file))
    assert out.returncode == 0, out.stderr
    assert "\x1b[" not in out.stdout + out.stderr
    assert "reading lot.csv" not in out.stderr


@pytest.mark.slow
def test_run_once_at_a_terminal_shows_a_bar_per_file_and_the_log_above_it(tmp_path: Path, emulator: Emulator) -> None:
    # 100 sync calls at 10 a second: long enough for the service's progress samples (every 5 s) to see it at work.
    project = make_project(
        tmp_path / "site", emulator.base_url, upload={"mode": "sync"}, api={"requests_per_second": 10}
    )
    rows = [(f"BAR{i:08d}", f"L{i}") for i in range(10_000)]
    project.drop("lot.csv", csv_text(["extended_id", "batch"], rows))
    code, screen = at_terminal(project, "run", "--once", timeout=120)
    assert code == 0, screen
    assert re.search(r"lot\.csv .*\d+/10000 +\d+ %", screen), screen[-3000:]  # at work
    assert re.search(r"lot\.csv .*10000/10000 +100 %.*done", screen), screen[-3000:]  # and final
    assert "file_done" in screen  # the log, as readable lines, not torn by the bar
    assert '{"' not in screen  # a terminal gets the console form, not JSON
    assert project.summary("lot")["rows"]["uploaded"] == 10_000
