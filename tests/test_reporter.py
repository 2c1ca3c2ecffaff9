"""Report helpers: Excel safety, never-overwrite names, atomic writes."""

import csv
import io
import os
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.reporter import atomic_write, choose_base, excel_safe, outcome_for, unescape
from daemon.states import Outcome, RowStatus


@pytest.mark.parametrize(
    ("cell", "shown"),
    [("=1+1", "'=1+1"), ("+31 6", "'+31 6"), ("-5", "'-5"), ("@SUM(A1)", "'@SUM(A1)"), ("a=b", "a=b"), ("", "")],
)
def test_cells_excel_would_run_are_escaped(cell: str, shown: str) -> None:
    assert excel_safe(cell) == shown


@given(st.lists(st.text(max_size=6), max_size=5))
def test_reading_an_escaped_cell_back_gives_the_original(cells: list[str]) -> None:
    # A corrected rejected.csv dropped back into the inbox must carry the values it was written with.
    # Every cell, a typed "'=x" included: the escape is one-to-one, so its inverse gives back exactly the original.
    assert unescape([excel_safe(c) for c in cells]) == cells


def test_report_names_never_collide(tmp_path: Path) -> None:
    assert choose_base(tmp_path, "orders") == "orders"
    (tmp_path / "orders.report.csv").write_text("")
    assert choose_base(tmp_path, "orders") == "orders-2"
    (tmp_path / "orders-2.rejected.csv").write_text("")
    assert choose_base(tmp_path, "orders") == "orders-3"
    # Fixed for another file whose reports are not written yet (its delivery failed): taken as well.
    assert choose_base(tmp_path, "orders", reserved={"orders-3"}) == "orders-4"


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "r.csv"

    def write_half() -> None:
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_half()
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target) as f:
        f.write("whole")
    assert target.read_bytes() == b"\xef\xbb\xbfwhole"
    assert list(tmp_path.iterdir()) == [target]


def test_outcome_follows_the_rows() -> None:
    assert outcome_for({RowStatus.UPLOADED: 3, RowStatus.SKIPPED: 1}) is Outcome.COMPLETED
    assert outcome_for({RowStatus.UPLOADED: 3, RowStatus.FAILED: 1}) is Outcome.COMPLETED_WITH_ERRORS


def test_reports_are_readable_as_the_umask_allows_not_private(tmp_path: Path) -> None:
    target = tmp_path / "r.csv"
    with atomic_write(target) as f:
        f.write("x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_every_report_cell_is_excel_safe_and_scrubbed_whatever_its_source() -> None:
    # Issue 11, findings 4 and 5: a task id from the API and an API message echoing the token.
    from daemon.logs import register_secret
    from daemon.reporter import _report_row

    register_secret("s3cr3t-token-for-the-report-test")
    row = _report_row([7, "=1+1", "failed", "UAT s3cr3t-token-for-the-report-test refused", 3, '=HYPERLINK("x")'])
    assert row == ["7", "'=1+1", "failed", "UAT *** refused", "3", '\'=HYPERLINK("x")']
    assert _report_row([None, "\tx", "@SUM(A1)"]) == ["", "'\tx", "'@SUM(A1)"]


_CELL = st.one_of(
    st.none(),
    st.integers(),
    st.lists(
        st.sampled_from(["=", "+", "-", "@", "\t", "\r", "'", "'=", "''-", "\x00", "a", "s3cr", "s3", "cr", " "]),
        max_size=8,
    ).map("".join),
)


@given(st.lists(_CELL, max_size=6))
def test_a_report_row_is_each_cell_scrubbed_then_made_excel_safe(cells: list[object]) -> None:
    # The row is checked joined, for speed; the result is exactly the cell-by-cell rule's, a secret included.
    from daemon.logs import redact, register_secret
    from daemon.reporter import _report_row

    register_secret("s3cr")
    expected = [excel_safe(redact("" if cell is None else str(cell))) for cell in cells]
    assert _report_row(cells) == expected


@given(st.lists(st.lists(_CELL, min_size=1, max_size=4), max_size=12), st.integers(1, 5))
def test_a_report_written_a_chunk_at_a_time_is_what_row_by_row_would_write(
    rows: list[list[object]], chunk: int
) -> None:
    # Clean chunks go to csv.writer as they are; a chunk with a secret or a cell at risk goes row by row.
    from daemon import reporter
    from daemon.logs import register_secret

    register_secret("s3cr")
    row_by_row = io.StringIO()
    csv.writer(row_by_row).writerows(reporter._report_row(cells) for cells in rows)
    chunked = io.StringIO()
    with patch.object(reporter, "SAFE_CHUNK", chunk):
        csv.writer(chunked).writerows(reporter.safe_rows(rows))
    assert chunked.getvalue() == row_by_row.getvalue()
