"""outbox/index.html in a real headless Chromium, written by a real service against the emulator over loopback.

The page is loaded from file:// as an office would open it from the share; the DOM Chromium built is compared with
the ledger; its console must stay silent; a screenshot is kept (.artifacts/dashboard.png, path printed).
"""

import json
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import Project, csv_text, make_project, stop
from test_dashboard import Dom, parse

from daemon.sandbox import Emulator

pytestmark = pytest.mark.slow  # a real service and a browser: the full suite runs it, the fast tier does not

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run installs it)"
)
ARTIFACTS = Path(__file__).resolve().parent.parent / ".artifacts"
HOSTILE = "<script>.csv"


def chromium(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on a page from file://, with its console logged to stderr."""
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            "--enable-logging=stderr",
            "--v=0",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def console_lines(stderr: str) -> list[str]:
    """What the page wrote to the console (messages, uncaught errors, CSP violations)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.1)


def index(project: Project) -> Dom | None:
    path = project.outbox / "index.html"
    return parse(path.read_text(encoding="utf-8")) if path.exists() else None


def ledger_files(project: Project) -> dict[str, tuple[str, str | None, dict[str, int]]]:
    with sqlite3.connect(project.ledger) as db:
        rows = db.execute("SELECT id, name, outcome, counts FROM files").fetchall()
    return {str(i): (name, outcome, json.loads(counts) if counts else {}) for i, name, outcome, counts in rows}


@needs_chromium
def test_the_console_detector_sees_a_console_error(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><p>x</p><script>console.error("boom"); missing();</script>', encoding="utf-8")
    lines = console_lines(chromium(page, tmp_path, "--dump-dom").stderr)
    assert any("boom" in line for line in lines), lines
    assert any("Uncaught ReferenceError" in line for line in lines), lines


@needs_chromium
def test_the_dashboard_in_chromium_shows_what_the_ledger_holds(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url)
    orders = csv_text(
        ["extended_id", "intended_market"],
        [*((f"CODE{i:08d}", "de") for i in range(300)), ("", "de"), ("", "fr")],  # two rows without a key
    )
    with project.running() as service:
        project.drop("orders.csv", orders)
        project.drop(HOSTILE, csv_text(["extended_id", "batch"], [(f"CODE{i + 5000:08d}", "b") for i in range(5)]))
        project.drop("broken.csv", csv_text(["colour", "size"], [("red", "L")]))  # no key column: failed
        for stem in ("orders", "<script>", "broken"):
            project.wait_for(project.outbox / f"{stem}.summary.json", timeout=90)
        project.drop("orders-copy.csv", orders)  # the same bytes again: duplicate
        project.wait_for(project.outbox / "orders-copy.summary.json", timeout=90)
        wait_until(
            lambda: (dom := index(project)) is not None and len(dom.files) == 4 and "busy" not in str(dom.files),
            "the dashboard listing four finished files",
        )

        # The token is refused while a file waits: the banner says so, the file shows as paused.
        emulator.configure(revoked=True)
        project.drop("late.csv", csv_text(["extended_id", "batch"], [(f"CODE{i + 6000:08d}", "b") for i in range(20)]))
        wait_until(
            lambda: (dom := index(project)) is not None and "banner" in dom.ids and "late.csv" in dom.all_text,
            "the paused banner",
        )
        wait_until(lambda: "paused: see above" in (index(project) or Dom()).all_text, "late.csv shown as paused", 30)

        page = project.outbox / "index.html"
        shown = chromium(page, tmp_path, "--dump-dom")
        ledger = ledger_files(project)  # as the page was read: nothing moves while uploads are paused
        screenshot = tmp_path / "dashboard.png"
        shot = chromium(page, tmp_path, f"--screenshot={screenshot}", "--window-size=1280,1400", "--hide-scrollbars")
        ARTIFACTS.mkdir(exist_ok=True)
        kept = ARTIFACTS / "dashboard.png"
        shutil.copyfile(screenshot, kept)
        shutil.copyfile(page, ARTIFACTS / "dashboard.html")  # the page itself, as it was shown
        print(f"dashboard screenshot: {kept}")

        # Restored and reloaded: the banner goes.
        emulator.configure(revoked=False)
        service.send_signal(signal.SIGHUP)
        project.wait_for(project.outbox / "late.summary.json", timeout=90)
        wait_until(lambda: "banner" not in (index(project) or Dom(ids={"banner"})).ids, "the banner to clear")
        assert stop(service) == 0

    assert console_lines(shown.stderr) == []
    assert console_lines(shot.stderr) == []
    assert screenshot.stat().st_size > 10_000
    dom = parse(shown.stdout)  # the DOM as Chromium built it from the file
    assert "script" not in dom.tags
    assert HOSTILE in dom.all_text
    assert dom.attrs_of["banner"]["data-cause"] == "token"
    assert "refused the token" in dom.all_text
    assert "sandbox-token" not in shown.stdout
    expected_status = {"orders.csv": "completed_with_errors", HOSTILE: "completed", "broken.csv": "failed"}
    expected_status |= {"orders-copy.csv": "duplicate", "late.csv": "active"}
    for file_id, row in dom.files.items():
        name, outcome, counts = ledger[file_id]
        assert row["name"] == name
        assert row["data-status"] == expected_status[name]
        if outcome is not None:
            assert row["data-status"] == outcome
            assert int(row["total"].replace(",", "")) == sum(counts.values())
            for status in ("uploaded", "not_affected", "skipped", "rejected", "failed"):
                assert int(row[status].replace(",", "")) == counts.get(status, 0), (name, status)
    assert len(dom.files) == 5
    orders_row = next(r for r in dom.files.values() if r["name"] == "orders.csv")
    assert (orders_row["uploaded"], orders_row["rejected"]) == ("300", "2")
    assert orders_row["links"].split() == ["orders.summary.json", "orders.report.csv", "orders.rejected.csv"]
    broken = next(r for r in dom.files.values() if r["name"] == "broken.csv")
    assert broken["reason"]  # the plain reason, from the ledger
    assert ledger[next(i for i, r in dom.files.items() if r["name"] == "broken.csv")][1] == "failed"
    today = sum(dom.days.values())
    assert today == sum(sum(c.values()) for _n, o, c in ledger.values() if o is not None)  # the chart's rows

    final = index(project)
    assert final is not None
    assert "stopped" in final.ids  # written as the service stopped
