"""Issue 11, findings 1 and 2 past the pre-checks: workbooks are read in a reader process under a memory and a time
limit, so whatever python-calamine does (abort, exhaust memory, take for ever) is a failed read with a reason."""

import datetime as dt
import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import xlsxwriter
from hostile_corpus import CONTENT_TYPES, ROOT_RELS, far_cell_xlsx, repeated_ods
from structlog.testing import capture_logs
from support import csv_text, make_project, stop
from test_hostile_scans import RELS, WORKBOOK

from daemon.logs import register_secret
from daemon.readers import CellError, Imprecise, Number, ReadLimits, UnreadableFile, open_table, wire
from daemon.readers.isolated import STDERR_KEPT, _StderrTail, exit_reason
from daemon.sandbox import Emulator

GENEROUS = ReadLimits(max_rows=2_000_000, max_columns=20_000)  # past the pre-check: the reader meets the bomb
MEMORY_MESSAGE = "needs more than"


def readers() -> list[tuple[int, str]]:
    """This process's reader children, alive or zombie: (pid, state)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == os.getpid() and b"daemon.readers.worker" in command:
            found.append((int(entry.name), state))
    return found


def numbers_xlsx(rows: int, columns: int = 5) -> bytes:
    """A sheet of `rows` rows of numbers under a header, written as XML directly (faster than any library)."""
    letters = [chr(65 + c) for c in range(columns)]
    header = "".join(f'<c r="{x}1" t="inlineStr"><is><t>h{x}</t></is></c>' for x in letters)
    header = header.replace("<t>hA</t>", "<t>extended_id</t>", 1)
    body = "".join(
        f'<row r="{r}">' + "".join(f'<c r="{x}{r}"><v>{r * 7 + i}</v></c>' for i, x in enumerate(letters)) + "</row>"
        for r in range(2, rows + 2)
    )
    sheet = (
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
        f'<row r="1">{header}</row>{body}</sheetData></worksheet>'
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", CONTENT_TYPES)
        archive.writestr("_rels/.rels", ROOT_RELS)
        archive.writestr("xl/workbook.xml", WORKBOOK)
        archive.writestr("xl/_rels/workbook.xml.rels", RELS)
        archive.writestr("xl/worksheets/sheet1.xml", sheet)
    return out.getvalue()


def test_a_workbook_that_aborts_the_reader_is_a_failed_read(tmp_path: Path) -> None:
    # One value in XFD1048576: calamine allocates the dense range and Rust aborts the process it runs in.
    path = tmp_path / "far.xlsx"
    path.write_bytes(far_cell_xlsx())
    with pytest.raises(UnreadableFile) as caught, open_table(path, limits=GENEROUS):
        pass
    text = str(caught.value)
    assert text.startswith("far.xlsx: ")
    assert "the reader crashed (signal 6)" in text or f"{MEMORY_MESSAGE} 1 GiB to read" in text, text
    assert readers() == []  # waited for: no zombie


def test_the_ods_repeat_bomb_is_refused_by_the_memory_limit(tmp_path: Path) -> None:
    path = tmp_path / "repeated.ods"
    path.write_bytes(repeated_ods())
    limits = ReadLimits(max_rows=2_000_000, max_columns=20_000, max_reader_memory_mb=200)
    with (
        pytest.raises(UnreadableFile, match="the workbook needs more than 200 MB to read"),
        open_table(path, limits=limits),
    ):
        pass
    assert readers() == []


def test_the_cell_types_cross_the_pipe(tmp_path: Path) -> None:
    path = tmp_path / "types.xlsx"
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet("Codes")
    sheet.write_row(0, 0, ["extended_id", "qty", "big", "check", "day"])
    sheet.write_string(1, 0, "CODE1")
    sheet.write_number(1, 1, 12)
    sheet.write_number(1, 2, 12345678901234567)
    sheet.write_formula(1, 3, "=NA()", None, "#N/A")
    sheet.write_datetime(1, 4, dt.datetime(2026, 3, 4), book.add_format({"num_format": "yyyy-mm-dd"}))  # noqa: DTZ001
    book.close()
    with open_table(path) as table:
        assert (table.info.format, table.info.sheet, table.info.header_row) == ("xlsx", "Codes", 1)
        [(number, cells)] = list(table.rows())
    assert number == 2
    assert cells == ["CODE1", "12", "12345678901234600", "#N/A", "2026-03-04"]
    assert [type(cell) for cell in cells] == [str, Number, Imprecise, CellError, str]


def test_closing_a_table_early_kills_the_reader_and_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "long.xlsx"
    path.write_bytes(numbers_xlsx(60_000))  # more than the pipe holds: the reader is still sending
    with open_table(path) as table:
        first = next(iter(table.rows()))
        assert readers(), "the reader is still running"
        started = time.monotonic()
    assert first[0] == 2
    assert time.monotonic() - started < 2
    assert readers() == []


def test_the_readers_log_events_reach_this_process(tmp_path: Path) -> None:
    path = tmp_path / "small.xlsx"
    path.write_bytes(numbers_xlsx(3))
    with capture_logs() as logs, open_table(path) as table:
        list(table.rows())
    opened = [event for event in logs if event["event"] == "table_opened"]
    assert opened == [
        {
            "event": "table_opened",
            "log_level": "debug",
            "file": "small.xlsx",
            "format": "xlsx",
            "sheet": "S",
            "cell_scan": False,
        }
    ]


@pytest.mark.parametrize(
    ("returncode", "out_of_memory", "words"),
    [
        (-6, False, "the reader crashed (signal 6)"),
        (-11, False, "the reader crashed (signal 11)"),
        (-6, True, "the workbook needs more than 1 GiB to read"),  # Rust's message on stderr, then abort
        (wire.EXIT_MEMORY, False, "the workbook needs more than 1 GiB to read"),  # a Python MemoryError
        (1, False, "the reader stopped with exit status 1"),
    ],
)
def test_how_a_reader_ended_is_its_reason(returncode: int, out_of_memory: bool, words: str) -> None:
    reason = exit_reason("a.xlsx", returncode, out_of_memory, ReadLimits())
    assert reason.startswith("a.xlsx: ")
    assert words in reason


def test_the_readers_stderr_is_kept_short_and_scrubbed() -> None:
    register_secret("tok-4f7a9c")
    script = (
        "import sys; w = sys.stderr.write; w('memory allocation of 64 bytes failed\\n'); "
        "w('x' * 200_000); w(' tok-4f7a9c the end')"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    assert process.stderr is not None
    tail = _StderrTail(process.stderr)
    process.wait(timeout=30)
    tail.close()
    text = tail.text()
    assert len(text) <= STDERR_KEPT
    assert text.endswith("*** the end")
    assert tail.out_of_memory  # seen as it passed, though long gone from the tail


@pytest.mark.slow
def test_a_workbook_read_longer_than_the_time_limit_fails(tmp_path: Path) -> None:
    path = tmp_path / "slow.xlsx"
    path.write_bytes(numbers_xlsx(400_000))  # 2,000,000 cells: calamine takes seconds over them
    started = time.monotonic()
    with pytest.raises(UnreadableFile) as caught, open_table(path, limits=ReadLimits(max_read_seconds=0.3)):
        pass
    assert time.monotonic() - started < 5
    assert "slow.xlsx: reading the workbook took longer than 0.3 s (intake.max_read_seconds)" in str(caught.value)
    assert readers() == []


def good_workbook() -> bytes:
    out = io.BytesIO()
    book = xlsxwriter.Workbook(out)
    sheet = book.add_worksheet("Codes")
    sheet.write_row(0, 0, ["extended_id", "batch"])
    sheet.write_row(1, 0, ["CODE00000003", "b3"])
    book.close()
    return out.getvalue()


@pytest.mark.slow
def test_the_service_outlives_the_bombs_and_uploads_the_good_files_beside_them(
    tmp_path: Path, emulator: Emulator
) -> None:
    # The pre-check limits raised so far that the bombs reach calamine: the reader aborts or runs out of memory.
    intake = {"max_rows": 2_000_000, "max_columns": 20_000, "max_reader_memory_mb": 200}
    project = make_project(tmp_path / "site", emulator.base_url, intake=intake)
    emulator.configure(known_codes=frozenset({f"CODE0000000{i}" for i in (1, 2, 3)}))
    project.drop("far.xlsx", far_cell_xlsx())
    project.drop("repeated.ods", repeated_ods())
    with project.running() as service:
        project.wait_for(project.outbox / "far.summary.json")
        project.wait_for(project.outbox / "repeated.summary.json")
        assert service.poll() is None, "the service is still running"
        project.drop("lot.csv", csv_text(["extended_id", "batch"], [("CODE00000001", "b1"), ("CODE00000002", "b2")]))
        project.drop("sheet.xlsx", good_workbook())  # read by a reader process under the same limits
        project.wait_for(project.outbox / "lot.summary.json")
        project.wait_for(project.outbox / "sheet.summary.json")
        assert stop(service) == 0
    far, repeated = project.summary("far"), project.summary("repeated")
    assert (far["status"], repeated["status"]) == ("failed", "failed")
    assert "the reader crashed (signal 6)" in far["error"] or "needs more than 200 MB" in far["error"], far["error"]
    assert "the workbook needs more than 200 MB to read" in repeated["error"]
    assert sorted(p.name for p in project.failed.iterdir() if p.is_file()) == ["far.xlsx", "repeated.ods"]
    assert emulator.all_data("extended_id") == {
        "CODE00000001": {"batch": "b1"},
        "CODE00000002": {"batch": "b2"},
        "CODE00000003": {"batch": "b3"},
    }
