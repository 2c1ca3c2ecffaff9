"""The outbox dashboard: rendering from a real SQLite ledger (escaping, banner, counts, chart), its schedule, and the
cost of its queries. The page in a real headless Chromium is in test_dashboard_browser.py (slow tier)."""

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from support import TOKEN, make_project
from test_query_plans import captured, plan_of, scans_rows

from daemon.chart import last_days, nice_ceiling, outcome_chart
from daemon.config import load_settings
from daemon.dashboard import (
    INDEX_NAME,
    MIN_GAP_SECONDS,
    REFRESH_SECONDS,
    Dashboard,
    Page,
    banner_for,
    due,
    gather,
    render,
)
from daemon.ledger import UPLOADS_PAUSED, FileLine, Ledger
from daemon.progress import Progress
from daemon.sandbox import Emulator
from daemon.service import Service
from daemon.states import FileState, Outcome
from daemon.uploader import Pause

NOW = datetime(2026, 12, 2, 14, 30, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script>.csv'


@dataclass
class Dom(HTMLParser):
    """What a test needs of a page: every tag, the text, and the files table and chart as data."""

    tags: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # file id -> status, counts, name, reason, links
    days: dict[str, int] = field(default_factory=dict)  # chart: day -> total
    ids: set[str] = field(default_factory=set)
    attrs_of: dict[str, dict[str, str]] = field(default_factory=dict)  # element id -> its attributes
    _row: str | None = None
    _cell: str | None = None

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
            self.attrs_of[a["id"]] = a
        if tag == "tr" and "data-file-id" in a:
            self._row = a["data-file-id"]
            self.files[self._row] = {"data-status": a["data-status"]}
        elif tag == "td" and self._row is not None:
            self._cell = a.get("data-count") or a.get("class", "")
        elif tag == "a" and self._row is not None:
            row = self.files[self._row]
            row["links"] = (row.get("links", "") + " " + a["href"]).strip()
        elif tag == "g" and "data-day" in a:
            self.days[a["data-day"]] = int(a["data-total"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._row is not None and self._cell and self._cell != "links":
            row = self.files[self._row]
            row[self._cell] = row.get(self._cell, "") + data

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def parse(page: str) -> Dom:
    dom = Dom()
    dom.feed(page)
    dom.close()
    return dom


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "ledger.sqlite3", clock=clock)
    yield ledger
    ledger.close()


def done_file(ledger: Ledger, name: str, statuses: dict[str, int], *, outcome: Outcome, base: str) -> int:
    """A file that went through the ledger to `done`, with rows in these final statuses."""
    file_id = ledger.add_file(
        sha256=f"{len(name):x}{name}".encode().hex()[:64].ljust(64, "0"),
        name=name,
        path=f"/in/{name}",
        size=1,
        data_key="extended_id",
        mode="sync",
    )
    line = iter(range(2, 10**6))
    records = [(next(line), f"K{n}", "h", "[]", s, "") for s, count in statuses.items() for n in range(count)]
    ledger.insert_rows(file_id, iter(records))
    ledger.transition_file(file_id, FileState.ACTIVE)
    ledger.transition_file(file_id, FileState.REPORTING, outcome=outcome)
    ledger.set_file(file_id, report_base=base)
    ledger.transition_file(file_id, FileState.DONE)
    return file_id


def refused_file(ledger: Ledger, name: str, outcome: Outcome, reason: str) -> int:
    file_id = ledger.add_file(
        sha256="f" * 64, name=name, path=f"/in/{name}", size=1, data_key="extended_id", mode="sync"
    )
    ledger.transition_file(file_id, FileState.REPORTING, outcome=outcome, error=reason)
    ledger.set_file(file_id, report_base=name.rsplit(".", 1)[0])
    ledger.transition_file(file_id, FileState.DONE)
    return file_id


def page_of(ledger: Ledger, **kwargs: object) -> str:
    args: dict[str, object] = {"pause": None, "api_down": False, "progress": []} | kwargs
    return render(gather(ledger, NOW, **args))  # type: ignore[arg-type]


def test_a_hostile_file_name_and_reason_show_as_text(ledger: Ledger) -> None:
    done_file(ledger, HOSTILE, {"uploaded": 2}, outcome=Outcome.COMPLETED, base='<script>alert("x")</script>')
    refused_file(ledger, "bad.csv", Outcome.FAILED, 'no key column; found <img src=x onerror="alert(1)">')

    dom = parse(page_of(ledger))

    assert "script" not in dom.tags
    assert "img" not in dom.tags
    assert HOSTILE in dom.all_text
    assert 'no key column; found <img src=x onerror="alert(1)">' in dom.all_text
    (hostile,) = (f for f in dom.files.values() if f.get("name") == HOSTILE)
    # Relative links, percent-encoded: the browser asks for exactly the report's name beside the page.
    assert hostile["links"].split() == [
        "%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E.summary.json",
        "%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E.report.csv",
    ]


@given(st.text(min_size=1, max_size=40))
def test_any_file_name_is_text_and_adds_no_element(name: str) -> None:
    line = FileLine(1, name, FileState.DONE, Outcome.FAILED, "2026-12-02T10:00", None, name, {}, name)
    plain = FileLine(1, "plain.csv", FileState.DONE, Outcome.FAILED, "2026-12-02T10:00", None, "plain", {}, "plain")

    def tags(f: FileLine) -> list[str]:
        return parse(render(Page(NOW, True, None, [], [f], {}))).tags

    assert tags(line) == tags(plain)
    dom = parse(render(Page(NOW, True, None, [], [line], {})))
    assert dom.files["1"]["name"] == name
    assert dom.files["1"]["reason"] == name


def test_the_files_table_holds_the_ledger_counts_status_reason_and_links(ledger: Ledger) -> None:
    done_file(
        ledger,
        "orders.csv",
        {"uploaded": 7, "not_affected": 2, "rejected": 1},
        outcome=Outcome.COMPLETED_WITH_ERRORS,
        base="orders",
    )
    done_file(ledger, "clean.csv", {"uploaded": 3, "skipped": 4}, outcome=Outcome.COMPLETED, base="clean")
    refused_file(ledger, "again.csv", Outcome.DUPLICATE, "the same content was received before as 'clean.csv'")

    dom = parse(page_of(ledger))

    assert [f["data-status"] for f in dom.files.values()] == ["duplicate", "completed", "completed_with_errors"]
    orders = dom.files["1"]
    assert {k: orders[k] for k in ("total", "uploaded", "not_affected", "skipped", "rejected", "failed")} == {
        "total": "10",
        "uploaded": "7",
        "not_affected": "2",
        "skipped": "0",
        "rejected": "1",
        "failed": "0",
    }
    assert orders["links"].split() == ["orders.summary.json", "orders.report.csv", "orders.rejected.csv"]
    assert dom.files["2"]["links"].split() == ["clean.summary.json", "clean.report.csv"]  # nothing rejected
    assert dom.files["3"]["reason"] == "the same content was received before as 'clean.csv'"
    # The status is a word as well as a colour, so the page reads in black and white.
    assert "completed with errors" in dom.all_text
    assert "duplicate" in dom.all_text


def test_only_the_200_latest_files_are_listed(ledger: Ledger) -> None:
    for n in range(205):
        refused_file(ledger, f"f{n}.csv", Outcome.FAILED, "empty")
    dom = parse(page_of(ledger))
    assert len(dom.files) == 200
    assert min(int(i) for i in dom.files) == 6


def test_the_banner_says_why_uploads_pause_and_what_to_do(ledger: Ledger) -> None:
    assert banner_for(None, False, None) is None
    token = banner_for(Pause("token", "HTTP 401: Invalid token."), False, "the API refused the token (...); renew it")
    assert token is not None
    assert token.cause == "token"
    assert token.detail == "the API refused the token (...); renew it"  # the ledger's operator text wins
    assert "renew" in token.action
    config = banner_for(Pause("configuration", "404 on /api/v2/scm/upload/"), True, None)
    assert config is not None
    assert (config.cause, config.detail) == ("configuration", "404 on /api/v2/scm/upload/")
    down = banner_for(None, True, "5 failed requests in a row: sending again after 30 s")
    assert down is not None
    assert down.cause == "api_down"
    assert "resumes by itself" in down.action

    ledger.set_meta(UPLOADS_PAUSED, "the API refused the token (HTTP 401); renew it in the token file")
    dom = parse(page_of(ledger, pause=Pause("token", "HTTP 401")))
    assert dom.attrs_of["banner"]["data-cause"] == "token"
    assert dom.attrs_of["banner"]["role"] == "alert"
    assert "renew it in the token file" in dom.all_text
    assert "banner" not in parse(page_of(ledger)).ids


def test_active_files_show_a_bar_and_an_eta_or_why_they_are_paused(ledger: Ledger) -> None:
    file_id = ledger.add_file(sha256="a" * 64, name="big.csv", path="/in/big.csv", size=1, data_key="k", mode="sync")
    ledger.transition_file(file_id, FileState.ACTIVE)
    eta = NOW.timestamp() + 600
    moving = Progress(file_id, "big.csv", 45_000, 120_000, 125.0, eta)
    dom = parse(page_of(ledger, progress=[moving]))
    assert "45,000 / 120,000 rows (37 %), 125 rows/s" in dom.all_text
    assert "ETA 14:40 UTC" in dom.all_text
    paused = Progress(file_id, "big.csv", 45_000, 120_000, None, None, "the API refused the token")
    dom = parse(page_of(ledger, progress=[paused]))
    assert "paused: the API refused the token" in dom.all_text
    assert "At work (1)" in dom.all_text
    stopped = parse(render(gather(ledger, NOW, pause=None, api_down=False, progress=[moving], running=False)))
    assert "paused: see above" in stopped.all_text  # not an ETA from a service that no longer runs
    assert "stopped" in stopped.ids
    assert "progressbar" in page_of(ledger, progress=[moving])


def test_the_chart_counts_rows_by_outcome_per_day_over_30_days(ledger: Ledger, clock: Clock) -> None:
    clock.now = NOW - timedelta(days=40)  # outside the chart
    done_file(ledger, "old.csv", {"uploaded": 50}, outcome=Outcome.COMPLETED, base="old")
    clock.now = NOW - timedelta(days=29, hours=10)  # the chart's first day
    done_file(ledger, "first.csv", {"uploaded": 5, "failed": 1}, outcome=Outcome.COMPLETED_WITH_ERRORS, base="a")
    clock.now = NOW - timedelta(hours=1)
    done_file(ledger, "today1.csv", {"uploaded": 3, "rejected": 2}, outcome=Outcome.COMPLETED_WITH_ERRORS, base="b")
    done_file(ledger, "today2.csv", {"skipped": 4}, outcome=Outcome.COMPLETED, base="c")
    clock.now = NOW

    assert ledger.daily_outcomes("2026-11-03T00:00:00.000+00:00") == {
        "2026-11-03": {"uploaded": 5, "failed": 1},
        "2026-12-02": {"uploaded": 3, "rejected": 2, "skipped": 4},
    }
    dom = parse(page_of(ledger))
    assert len(dom.days) == 30
    assert {d: n for d, n in dom.days.items() if n} == {"2026-11-03": 6, "2026-12-02": 9}
    assert "2026-12-02: 3 uploaded, 4 skipped, 2 rejected" in dom.all_text  # the bar's tooltip, in words


def test_an_empty_ledger_renders_an_empty_page() -> None:
    chart = parse(outcome_chart({}, NOW))
    assert set(chart.days.values()) == {0}
    assert "No file finished in the last 30 days." in chart.all_text


@given(st.integers(0, 10**9))
def test_the_scale_top_is_the_next_1_2_5_step(n: int) -> None:
    top = nice_ceiling(n)
    assert top >= max(n, 1)
    assert str(top).strip("0") in ("1", "2", "5")
    assert top < 2.5 * max(n, 1) or top == 1


def test_the_chart_days_end_today() -> None:
    days = last_days(NOW)
    assert (len(days), days[0], days[-1]) == (30, "2026-11-03", "2026-12-02")


def test_written_at_start_on_changes_and_every_30_s_while_files_are_at_work(tmp_path: Path, ledger: Ledger) -> None:
    outbox = tmp_path / "outbox"
    board = Dashboard(ledger, outbox, clock=lambda: NOW)
    with pytest.raises(FileNotFoundError):  # no outbox yet: the loop's error boundary logs it
        board.tick(0.0, False, None, False, [])
    outbox.mkdir()
    assert board.tick(1.0, False, None, False, []) == 1  # still due after the failure
    assert (outbox / INDEX_NAME).read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not list(outbox.glob(".*.tmp"))
    assert board.tick(2.0, False, None, False, []) == 0
    assert board.tick(3.0, True, None, False, []) == 1  # a file started or finished
    assert board.tick(3.5, True, None, False, []) == 0  # another within MIN_GAP_SECONDS: written together...
    assert board.tick(4.0, False, None, False, []) == 1  # ...once the gap has passed
    assert board.tick(1000.0, False, None, False, []) == 0  # nothing at work: no periodic rewrite
    assert board.tick(1001.0, False, Pause("token", "401"), False, []) == 1  # the pause came
    assert board.tick(1001.5, False, Pause("token", "401"), False, []) == 0
    assert board.tick(1001.6, False, None, False, []) == 1  # and went: at once, whatever the gap
    assert board.tick(1002.0, False, None, True, []) == 1  # the breaker opened: the API is not answering
    assert 'data-cause="api_down"' in (outbox / INDEX_NAME).read_text(encoding="utf-8")
    assert board.tick(1002.1, False, None, False, []) == 1  # and closed
    assert board.tick(1003.0, False, None, False, []) == 0

    file_id = ledger.add_file(sha256="a" * 64, name="a.csv", path="/in/a.csv", size=1, data_key="k", mode="sync")
    assert board.tick(1004.0, True, None, False, []) == 1
    assert "a.csv" in (outbox / INDEX_NAME).read_text(encoding="utf-8")
    assert board.tick(1004.0 + REFRESH_SECONDS - 1, False, None, False, []) == 0
    assert board.tick(1004.0 + REFRESH_SECONDS, False, None, False, []) == 1
    ledger.transition_file(file_id, FileState.REPORTING, outcome=Outcome.FAILED, error="empty")
    ledger.transition_file(file_id, FileState.DONE)
    assert board.tick(2000.0, True, None, False, [], running=False) == 1  # the service stops
    assert "The service stopped at 2026-12-02 14:30:00 UTC" in (outbox / INDEX_NAME).read_text(encoding="utf-8")


@given(st.booleans(), st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0, 1e6))
def test_due_when_pending_or_its_time_came(pending: bool, now: float, next_at: float, last_at: float) -> None:
    expected = (pending and now >= last_at + MIN_GAP_SECONDS) or now >= next_at
    assert due(pending=pending, now=now, next_at=next_at, last_at=last_at) == expected


def test_the_dashboard_never_scans_rows(tmp_path: Path) -> None:
    """Every 30 s on a ledger that may hold millions of rows: the files table only (its stored counts)."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    file_id = ledger.add_file(sha256="a" * 64, name="big.csv", path="/in/big.csv", size=1, data_key="k", mode="sync")
    ledger.insert_rows(file_id, iter([(n + 2, f"K{n}", "h", "[]", "uploaded", "") for n in range(2000)]))
    ledger.transition_file(file_id, FileState.ACTIVE)
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    with captured(ledger) as statements:
        gather(ledger, NOW, pause=Pause("token", "401"), api_down=False, progress=[])
    assert len(statements) >= 4
    for statement, parameters in statements:
        plan = plan_of(ledger, statement, parameters)
        assert not any(scans_rows(step) or "rows" in step.split() for step in plan), (statement, plan)
    ledger.close()


def test_summary_counts_match_what_the_page_shows(ledger: Ledger, tmp_path: Path) -> None:
    """The page and summary.json read the same stored counts (one home): a file's total is the sum of its rows."""
    file_id = done_file(
        ledger, "x.csv", {"uploaded": 2, "rejected": 1}, outcome=Outcome.COMPLETED_WITH_ERRORS, base="x"
    )
    with ledger.engine.connect() as conn:
        stored = json.loads(conn.exec_driver_sql("SELECT counts FROM files WHERE id=?", (file_id,)).scalar_one())
    assert parse(page_of(ledger)).files[str(file_id)]["total"] == str(sum(stored.values()))


def test_the_service_loop_survives_a_failed_write_and_writes_the_page_later(tmp_path: Path, emulator: Emulator) -> None:
    """The real service, stepped by hand on a clock the test moves: the outbox missing is logged, not fatal."""
    project = make_project(tmp_path / "site", emulator.base_url)
    (project.root / "state").mkdir()
    mono = [100.0]
    service = Service.from_settings(
        load_settings(project.config, env={"SCM_API__TOKEN": TOKEN}), once=True, monotonic=lambda: mono[0]
    )
    try:
        service.start()
        with structlog.testing.capture_logs() as logs:
            assert service.turn()
        (failed,) = [e for e in logs if e["event"] == "step_failed"]
        assert failed["part"] == "dashboard"
        assert "FileNotFoundError" in failed["error"]
        assert not project.outbox.exists()

        project.outbox.mkdir()
        with structlog.testing.capture_logs() as logs:
            service.turn()  # still backing off: not tried yet
            assert not (project.outbox / INDEX_NAME).exists()
            mono[0] += 5.0
            service.turn()
        assert [e["part"] for e in logs if e["event"] == "step_recovered"] == ["dashboard"]
        dom = parse((project.outbox / INDEX_NAME).read_text(encoding="utf-8"))
        assert "No file is being processed." in dom.all_text
        service.shutdown()
        assert "stopped" in parse((project.outbox / INDEX_NAME).read_text(encoding="utf-8")).ids
    finally:
        service.uploader.close()
        service.ledger.close()
