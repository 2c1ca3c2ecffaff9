"""Tests of daemon.readers: CSV family and workbooks read into headers and rows of cell text."""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import math
import re
import zipfile
from pathlib import Path

import openpyxl
import pytest
import xlsxwriter
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from daemon.readers import (
    SUPPORTED_SUFFIXES,
    CellError,
    Number,
    Table,
    UnreadableFile,
    cell_text,
    number_text,
    open_table,
)
from daemon.readers.table import error_value
from daemon.readers.text import sniff_delimiter

Rows = list[tuple[int, list[str]]]


def naive(*parts: int) -> dt.datetime:
    """A date-time without a zone, as spreadsheets hold them."""
    return dt.datetime(*parts)  # noqa: DTZ001


def read(path: Path, sheet: str | None = None) -> tuple[Table, list[str], Rows]:
    """Open, read everything, close."""
    with open_table(path, sheet=sheet) as table:
        rows = list(table.rows())
    return table, table.headers, rows


def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# ---------------------------------------------------------------- CSV family: shape of the table


def test_csv_headers_and_rows_are_trimmed_and_numbered(tmp_path: Path) -> None:
    path = write_text(tmp_path / "a.csv", " extended_id , batch \r\n ABC123 ,  L1\r\n00042,L2\r\n")
    table, headers, rows = read(path)
    assert headers == ["extended_id", "batch"]
    assert rows == [(2, ["ABC123", "L1"]), (3, ["00042", "L2"])]
    assert table.info.format == "csv"
    assert table.info.encoding == "utf-8"
    assert table.info.delimiter == ","
    assert table.info.header_row == 1
    assert all(type(cell) is str for _, cells in rows for cell in cells)


def test_csv_blank_lines_count_as_rows_but_are_not_yielded(tmp_path: Path) -> None:
    path = write_text(tmp_path / "a.csv", "\n ,  \n\nid,x\n\nA,1\n,,\n   \nB,2\n")
    table, headers, rows = read(path)
    assert table.info.header_row == 4
    assert headers == ["id", "x"]
    assert rows == [(6, ["A", "1"]), (9, ["B", "2"])]


def test_csv_quoted_newlines_delimiters_and_quotes_make_one_row(tmp_path: Path) -> None:
    text = 'id,note\nA,"line one\nline two\r\nline three"\nB,"a, ""quoted"" b"\nC,plain\n'
    _, _, rows = read(write_text(tmp_path / "a.csv", text))
    assert rows == [
        (2, ["A", "line one\nline two\r\nline three"]),
        (3, ["B", 'a, "quoted" b']),
        (4, ["C", "plain"]),
    ]


def test_csv_trailing_empty_columns_are_dropped_and_short_rows_padded(tmp_path: Path) -> None:
    text = "id,x,,\nA,1,,\nB\nC,3,,,,\n"
    _, headers, rows = read(write_text(tmp_path / "a.csv", text))
    assert headers == ["id", "x"]
    assert rows == [(2, ["A", "1"]), (3, ["B", ""]), (4, ["C", "3"])]


def test_csv_row_longer_than_headers_keeps_its_extra_non_empty_cells(tmp_path: Path) -> None:
    _, headers, rows = read(write_text(tmp_path / "a.csv", "id,x\nA,1,surprise,,\nB,2\n"))
    assert rows == [(2, ["A", "1", "surprise"]), (3, ["B", "2"])]
    assert len(rows[0][1]) > len(headers)


def test_csv_header_with_empty_cell_in_the_middle_is_kept(tmp_path: Path) -> None:
    _, headers, rows = read(write_text(tmp_path / "a.csv", "id,,x\nA,y,1\n"))
    assert headers == ["id", "", "x"]
    assert rows == [(2, ["A", "y", "1"])]


def test_csv_error_literals_become_cell_errors(tmp_path: Path) -> None:
    _, _, rows = read(write_text(tmp_path / "a.csv", "id,x,y\nA,#N/A,#div/0!\nB,#hashtag,#REF!\n"))
    assert rows == [(2, ["A", "#N/A", "#DIV/0!"]), (3, ["B", "#hashtag", "#REF!"])]
    assert [type(cell) for cell in rows[0][1]] == [str, CellError, CellError]
    assert [type(cell) for cell in rows[1][1]] == [str, str, CellError]


def test_csv_excel_sep_line_names_the_delimiter_and_is_not_a_row(tmp_path: Path) -> None:
    table, headers, rows = read(write_text(tmp_path / "a.csv", "sep=|\r\nid|x,y\r\nA|1,5\r\n"))
    assert table.info.delimiter == "|"
    assert (table.info.header_row, headers, rows) == (1, ["id", "x,y"], [(2, ["A", "1,5"])])


def test_rows_can_be_iterated_once_and_close_is_idempotent(tmp_path: Path) -> None:
    table = open_table(write_text(tmp_path / "a.csv", "id\nA\n"))
    with table:
        assert list(table.rows()) == [(2, ["A"])]
        with pytest.raises(RuntimeError, match="once"):
            table.rows()
    table.close()
    assert "headers=['id']" in repr(table)


# ---------------------------------------------------------------- CSV family: encodings


@pytest.mark.parametrize(
    ("encoding", "written", "expected"),
    [
        ("utf-8", "utf-8", "utf-8"),
        ("utf-8-sig", "utf-8-sig", "utf-8-sig"),
        ("utf-16", "utf-16", "utf-16"),  # BOM, little-endian here
        ("utf-16-be+bom", "utf-16-be", "utf-16"),
        ("utf-16-le, no BOM", "utf-16-le", "utf-16-le"),
        ("utf-16-be, no BOM", "utf-16-be", "utf-16-be"),
        ("cp1252", "cp1252", "cp1252"),
    ],
)
def test_csv_encodings_are_detected(tmp_path: Path, encoding: str, written: str, expected: str) -> None:
    text = "extended_id;Märkt\r\nAB€1;Köln „Süd“\r\n"
    data = text.encode(written)
    if encoding == "utf-16-be+bom":
        data = codecs.BOM_UTF16_BE + data
    table, headers, rows = read(write_bytes(tmp_path / "a.csv", data))
    assert table.info.encoding == expected
    assert table.info.delimiter == ";"
    assert headers == ["extended_id", "Märkt"]
    assert rows == [(2, ["AB€1", "Köln „Süd“"])]


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_cp1252_is_chosen_for_a_bad_byte_beyond_the_first_megabyte(tmp_path: Path) -> None:
    body = "".join(f"ID{i:08d},ok\n" for i in range(120_000))  # about 1.6 MB of valid UTF-8
    data = ("id,city\n" + body).encode() + "LAST,Café\n".encode("cp1252")
    table, _, rows = read(write_bytes(tmp_path / "a.csv", data))
    assert table.info.encoding == "cp1252"
    assert rows[-1] == (120_002, ["LAST", "Café"])


def test_bytes_that_are_neither_utf8_nor_cp1252_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFile, match=r"a\.csv is neither UTF-8 nor Windows-1252.*CSV UTF-8"):
        read(write_bytes(tmp_path / "a.csv", b"id,x\nA,\x81\x8d\n"))


def test_bom_that_lies_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFile, match="not valid utf-8-sig"):
        read(write_bytes(tmp_path / "a.csv", codecs.BOM_UTF8 + b"id\n\xff\xfe\xfa\n"))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"PK\x03\x04\x14\x00\x00\x00rest of a zip", "zip archive"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00\x00", "OLE2"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        (b"id,x\nA,\x00\x01\x02\x03\x04\x05\x06\x07\n", "NUL bytes"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "NUL bytes"),
    ],
)
def test_binary_files_named_csv_are_refused(tmp_path: Path, data: bytes, reason: str) -> None:
    with pytest.raises(UnreadableFile, match=rf"^b\.csv .*{reason}"):
        read(write_bytes(tmp_path / "b.csv", data))


def test_nul_far_into_a_utf8_file_is_refused(tmp_path: Path) -> None:
    data = b"id\n" + b"A\n" * 700_000 + b"B\x00\n"
    with pytest.raises(UnreadableFile, match="NUL bytes"):
        read(write_bytes(tmp_path / "a.csv", data))


@pytest.mark.parametrize("text", ["", "\n\n", " , ,\r\n\r\n"])
def test_empty_text_file_has_no_header(tmp_path: Path, text: str) -> None:
    with pytest.raises(UnreadableFile, match=r"a\.txt has no header row"):
        read(write_text(tmp_path / "a.txt", text))


def test_unsupported_suffix_and_missing_file_are_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFile, match=r"a\.json is not a supported table file; use one of: \.csv"):
        read(write_text(tmp_path / "a.json", "{}"))
    with pytest.raises(UnreadableFile, match=r"gone\.csv cannot be opened"):
        read(tmp_path / "gone.csv")
    assert {".csv", ".tsv", ".txt", ".xlsx", ".xlsm", ".xls", ".ods"} == SUPPORTED_SUFFIXES


# ---------------------------------------------------------------- CSV family: delimiters


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("a,b,c\n1,2,3\n", ","),
        ("a;b\n1,5;2,5\n3,5;4\n", ";"),  # decimal commas
        ("a\tb\n1,2\t3;4\n", "\t"),
        ("a|b|c\n1|2|3\n", "|"),
        ('a;b\n"x,y,z";1\n"p,q";2\n', ";"),  # commas only inside quotes
        ('"a,1";"b,2"\n"c,3";"d,4"\n', ";"),
        ("name,note\nA,one; two\nB,three; four\n", ","),
        ("only_one_column\nA\nB\n", ","),  # nothing to split: the default
        ("a,b;c\n1,2;3\n4,5;6\n", ","),  # a tie goes to the default
        ("a;b,c,d\n1;2\n3;4\n", ";"),  # the candidate whose records keep the header's width
    ],
)
def test_sniff_delimiter(sample: str, expected: str) -> None:
    assert sniff_delimiter(sample, complete=True) == expected


def test_sniff_delimiter_defaults_and_cut_samples() -> None:
    assert sniff_delimiter("only\nA\n", complete=True, default="\t") == "\t"
    assert sniff_delimiter("a,b;c\n1,2;3\n", complete=True, default=";") == ";"
    # The last record of a cut sample is ignored: here it would be the only one that disagrees.
    assert sniff_delimiter("a;b\n1;2\n3;4\n5,6,7,8,9", complete=False) == ";"
    assert sniff_delimiter("", complete=True) == ","


def test_tsv_defaults_to_tab_and_txt_is_sniffed(tmp_path: Path) -> None:
    table, headers, _ = read(write_text(tmp_path / "a.tsv", "serial number\nA, B\n"))
    assert (table.info.format, table.info.delimiter, headers) == ("tsv", "\t", ["serial number"])
    table, headers, rows = read(write_text(tmp_path / "a.txt", "id|x\nA|1\n"))
    assert (table.info.format, table.info.delimiter, rows) == ("txt", "|", [(2, ["A", "1"])])


# ---------------------------------------------------------------- CSV family: round trip

CP1252_TEXT = "abcXYZ 0123456789 ,;\t|\"'\r\n#=+-@_.éÉüÜßøæœŒŸ€„“”…–—™©¼"
HEADER = r" ?[A-Za-zé_][A-Za-z0-9é_ ]{0,8} ?"


def tables(
    alphabet: st.SearchStrategy[str], header: st.SearchStrategy[str], min_width: int = 1
) -> st.SearchStrategy[list[list[str]]]:
    """A header row of non-blank cells and 0-8 rows of the same width."""
    return st.integers(min_width, 5).flatmap(
        lambda width: st.lists(
            st.lists(st.text(alphabet, max_size=12), min_size=width, max_size=width), max_size=8
        ).flatmap(lambda body: st.lists(header, min_size=width, max_size=width).map(lambda head: [head, *body]))
    )


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def expected_rows(table: list[list[str]]) -> Rows:
    """Rows as the reader yields them: trimmed, all-empty ones skipped, numbered by record."""
    trimmed = [(number, [cell.strip() for cell in row]) for number, row in enumerate(table[1:], start=2)]
    return [(number, cells) for number, cells in trimmed if any(cells)]


def round_trip(tmp_path: Path, table: list[list[str]], delimiter: str, encoding: str, quoting: int) -> None:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, delimiter=delimiter, quoting=quoting).writerows(table)
    data = buffer.getvalue().encode(encoding)
    if encoding == "cp1252":
        # Windows-1252 bytes that also happen to be valid UTF-8 ("É©" is C9 A9, UTF-8 for U+0269) are read as
        # UTF-8, which is right for nearly every real file; such tables are no test of the fallback.
        assume(data.isascii() or not is_utf8(data))
    path = write_bytes(tmp_path / "round.csv", data)
    info_table, headers, rows = read(path)
    assert headers == [cell.strip() for cell in table[0]]
    assert rows == expected_rows(table)
    if len(table[0]) > 1:
        assert info_table.info.delimiter == delimiter
    if encoding == "cp1252" and not buffer.getvalue().isascii():
        assert info_table.info.encoding == "cp1252"


ANY_TEXT = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
NON_BLANK = st.text(ANY_TEXT, min_size=1, max_size=12).filter(lambda text: text.strip() != "")
ROUND_TRIP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@ROUND_TRIP
@given(
    table=tables(ANY_TEXT, NON_BLANK),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]),
)
def test_round_trip_any_text_quoted(tmp_path: Path, table: list[list[str]], delimiter: str, encoding: str) -> None:
    # Quoting every field is what makes any text unambiguous: delimiters then appear only between fields.
    round_trip(tmp_path, table, delimiter, encoding, csv.QUOTE_ALL)


@ROUND_TRIP
@given(
    table=tables(ANY_TEXT, st.from_regex(HEADER, fullmatch=True), min_width=2),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]),
)
def test_round_trip_excel_style_quoting(tmp_path: Path, table: list[list[str]], delimiter: str, encoding: str) -> None:
    # Minimal quoting as Excel writes it. Headers are names, as real headers are, so the sniffer can tell; one
    # column is left out because it is truly ambiguous ("A" over "x,y" is two columns to Excel too).
    round_trip(tmp_path, table, delimiter, encoding, csv.QUOTE_MINIMAL)


@ROUND_TRIP
@given(
    table=tables(st.sampled_from(CP1252_TEXT), st.from_regex(HEADER, fullmatch=True), min_width=2),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
)
def test_round_trip_cp1252(tmp_path: Path, table: list[list[str]], delimiter: str, quoting: int) -> None:
    round_trip(tmp_path, table, delimiter, "cp1252", quoting)


# ---------------------------------------------------------------- Excel family: values


def xlsx(path: Path, build: object = None) -> Path:
    """Write a workbook with xlsxwriter; `build(workbook)` adds the sheets."""
    workbook = xlsxwriter.Workbook(str(path))
    assert callable(build)
    build(workbook)
    workbook.close()
    return path


def test_xlsx_values_read_as_excel_shows_them(tmp_path: Path) -> None:
    def build(wb: xlsxwriter.Workbook) -> None:
        ws = wb.add_worksheet("Data")
        date_format = wb.add_format({"num_format": "yyyy-mm-dd"})
        stamp_format = wb.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        time_format = wb.add_format({"num_format": "hh:mm:ss"})
        ws.write_row(0, 0, [" extended_id ", "qty", "ratio", "big", "made", "stamp", "at", "ok", "sum"])
        ws.write_string(1, 0, "  000123 ")
        ws.write_number(1, 1, 3.0)
        ws.write_number(1, 2, 0.1)
        ws.write_number(1, 3, 123456789012.0)
        ws.write_datetime(1, 4, naive(2024, 3, 5), date_format)
        ws.write_datetime(1, 5, naive(2024, 3, 5, 13, 4, 5), stamp_format)
        ws.write_datetime(1, 6, dt.time(13, 4, 5), time_format)
        ws.write_boolean(1, 7, True)
        ws.write_formula(1, 8, "=B2*2", None, 6)
        ws.write_string(2, 0, "K2")
        ws.write_number(2, 1, -0.0)
        ws.write_formula(2, 2, "=0.1+0.2", None, 0.30000000000000004)
        ws.write_number(2, 3, 1.5e-7)
        ws.write_boolean(2, 7, False)
        ws.write_formula(2, 8, '="a"&"b"', None, "ab")

    _, headers, rows = read(xlsx(tmp_path / "v.xlsx", build))
    assert headers == ["extended_id", "qty", "ratio", "big", "made", "stamp", "at", "ok", "sum"]
    assert rows == [
        (2, ["000123", "3", "0.1", "123456789012", "2024-03-05", "2024-03-05T13:04:05", "13:04:05", "TRUE", "6"]),
        (3, ["K2", "0", "0.3", "0.00000015", "", "", "", "FALSE", "ab"]),
    ]
    numeric = [[type(cell) is Number for cell in cells] for _, cells in rows]
    assert numeric == [
        [False, True, True, True, False, False, False, False, True],
        [False, True, True, True, False, False, False, False, False],
    ]


def test_xlsx_error_cells_become_cell_errors(tmp_path: Path) -> None:
    def build(wb: xlsxwriter.Workbook) -> None:
        ws = wb.add_worksheet()
        ws.write_row(1, 1, ["id", "x", "y"])  # data starts at B2: errors must land in the right column
        ws.write_row(2, 1, ["A", "fine", "also fine"])
        ws.write_string(3, 1, "B")
        ws.write_formula(3, 2, "=1/0", None, "#DIV/0!")
        ws.write_formula(3, 3, "=NA()", None, "#N/A")

    table, headers, rows = read(xlsx(tmp_path / "e.xlsx", build))
    assert (table.info.header_row, table.info.column_offset, headers) == (2, 1, ["id", "x", "y"])
    assert rows == [(3, ["A", "fine", "also fine"]), (4, ["B", "#DIV/0!", "#N/A"])]
    assert [type(cell) for cell in rows[1][1]] == [str, CellError, CellError]


def test_xlsx_error_cells_past_the_first_megabyte_of_sheet_xml(tmp_path: Path) -> None:
    error_rows = {3, 17_000, 29_999}

    def build(wb: xlsxwriter.Workbook) -> None:
        ws = wb.add_worksheet("Big")
        ws.write_row(0, 0, ["id", "note", "value"])
        for index in range(1, 30_000):
            ws.write_row(index, 0, [f"ID{index:08d}", "a note of some length"])
            if index in error_rows:
                ws.write_formula(index, 2, "=NA()", None, "#N/A")
            else:
                ws.write_number(index, 2, index)

    path = xlsx(tmp_path / "big.xlsx", build)
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("xl/worksheets/sheet1.xml").file_size > 1_500_000
    _, _, rows = read(path)
    errors = {number - 1 for number, cells in rows if type(cells[2]) is CellError}
    assert errors == error_rows
    assert rows[-1] == (30_000, ["ID00029999", "a note of some length", "#N/A"])


def test_xlsx_error_cells_without_cell_references(tmp_path: Path) -> None:
    # Cell references are optional in the format; some writers leave them out, calamine then counts columns.
    def build(wb: xlsxwriter.Workbook) -> None:
        ws = wb.add_worksheet()
        ws.write_row(0, 0, ["id", "x", "y"])
        ws.write_string(1, 0, "A")
        ws.write_formula(1, 1, "=1/0", None, "#DIV/0!")
        ws.write_number(1, 2, 5)

    source = xlsx(tmp_path / "refs.xlsx", build)
    path = tmp_path / "norefs.xlsx"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, "w") as copy:
        for item in original.infolist():
            data = original.read(item)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = re.sub(rb'(<c) r="[A-Z]+[0-9]+"', rb"\1", data)
                assert b' r="B2"' not in data
            copy.writestr(item, data)
    _, _, rows = read(path)
    assert rows == [(2, ["A", "#DIV/0!", "5"])]
    assert type(rows[0][1][1]) is CellError


@pytest.mark.parametrize(
    ("text", "error"), [("#n/a", "#N/A"), (" #DIV/0! ", "#DIV/0!"), ("#NEW!", "#NEW!"), ("odd", "#odd"), ("", "#ERROR")]
)
def test_error_values_always_start_with_a_hash(text: str, error: str) -> None:
    # Intake looks for "#" in a row's text before it looks for error cells.
    assert error_value(text) == error
    assert type(error_value(text)) is CellError


def test_openpyxl_error_values_and_durations(tmp_path: Path) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["id", "err", "duration", "stamp"])
    ws.append(["A", "#N/A", dt.timedelta(hours=25, minutes=30), naive(2024, 3, 5, 23, 59, 59, 999_999)])
    ws.append(["B", "#VALUE!", dt.timedelta(minutes=5), naive(2024, 3, 5)])
    wb.save(tmp_path / "o.xlsx")
    _, _, rows = read(tmp_path / "o.xlsx")
    # Calamine rounds a time stored as a fraction of a day to the nearest second.
    assert rows == [
        (2, ["A", "#N/A", "25:30:00", "2024-03-06"]),
        (3, ["B", "#VALUE!", "0:05:00", "2024-03-05"]),
    ]
    assert type(rows[0][1][1]) is CellError


def test_xlsx_blank_rows_columns_short_and_long_rows(tmp_path: Path) -> None:
    def build(wb: xlsxwriter.Workbook) -> None:
        ws = wb.add_worksheet()
        ws.write_row(2, 2, ["id", "x", "", ""])
        ws.write_row(3, 2, ["A"])
        ws.write_row(5, 2, ["B", "2", "", "extra"])
        ws.write_row(6, 2, ["", "  "])

    table, headers, rows = read(xlsx(tmp_path / "b.xlsx", build))
    assert (table.info.header_row, headers) == (3, ["id", "x"])
    assert rows == [(4, ["A", ""]), (6, ["B", "2", "", "extra"])]


def test_sheet_choice(tmp_path: Path) -> None:
    def build(wb: xlsxwriter.Workbook) -> None:
        hidden = wb.add_worksheet("Lookup")
        hidden.write_row(0, 0, ["lookup"])
        first = wb.add_worksheet("Codes")
        first.write_row(0, 0, ["id"])
        first.write_row(1, 0, ["A"])
        other = wb.add_worksheet("Batch 2")
        other.write_row(0, 0, ["serial_number"])
        other.write_row(1, 0, ["0007"])
        first.activate()
        hidden.hide()

    path = xlsx(tmp_path / "s.xlsx", build)
    table, headers, _ = read(path)
    assert (table.info.sheet, headers) == ("Codes", ["id"])  # the first sheet a person sees
    assert read(path, "Batch 2")[1:] == (["serial_number"], [(2, ["0007"])])
    assert read(path, " batch 2")[0].info.sheet == "Batch 2"
    assert read(path, "Lookup")[1] == ["lookup"]
    with pytest.raises(UnreadableFile, match=r"s\.xlsx has no sheet named 'Nope'; its sheets are 'Lookup', 'Codes'"):
        read(path, "Nope")


def test_empty_sheet_has_no_header(tmp_path: Path) -> None:
    path = xlsx(tmp_path / "empty.xlsx", lambda wb: wb.add_worksheet())
    with pytest.raises(UnreadableFile, match=r"empty\.xlsx has no header row: sheet 'Sheet1' is empty"):
        read(path)


def test_xlsm_and_xlsx_named_xls_are_read_by_content(tmp_path: Path) -> None:
    def build(wb: xlsxwriter.Workbook) -> None:
        ws = wb.add_worksheet()
        ws.write_row(0, 0, ["id", "n"])
        ws.write_row(1, 0, ["A", 7])

    source = xlsx(tmp_path / "w.xlsx", build)
    for name in ("w.xlsm", "w.xls"):
        (tmp_path / name).write_bytes(source.read_bytes())
        table, headers, rows = read(tmp_path / name)
        assert (table.info.format, headers, rows) == (name[2:], ["id", "n"], [(2, ["A", "7"])])


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("a.xlsx", b"id,x\nA,1\n", r"a\.xlsx is not an Excel or OpenDocument workbook.*rename it to \.csv"),
        ("a.xls", b"<html><table><tr><td>id</td></tr></table></html>", "web page"),
        ("a.xlsx", b"", "empty"),
        ("a.ods", b"%PDF-1.4\n", "PDF"),
        ("a.xlsx", b"PK\x03\x04" + bytes(range(256)) * 4, "corrupt"),
        ("a.xlsx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "password-protected"),
        ("a.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "corrupt"),
    ],
)
def test_files_that_are_not_workbooks(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    with pytest.raises(UnreadableFile, match=reason):
        read(write_bytes(tmp_path / name, data))


def test_truncated_xlsx_is_unreadable(tmp_path: Path) -> None:
    source = xlsx(tmp_path / "w.xlsx", lambda wb: wb.add_worksheet().write(0, 0, "id"))
    data = source.read_bytes()
    with pytest.raises(UnreadableFile, match=r"cut\.xlsx is a corrupt"):
        read(write_bytes(tmp_path / "cut.xlsx", data[: len(data) // 2]))


# ---------------------------------------------------------------- OpenDocument


def ods(path: Path, rows: str) -> Path:
    """A minimal .ods holding one table whose rows are given as table:table-row XML."""
    content = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"'
        ' xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"'
        ' xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2">'
        f'<office:body><office:spreadsheet><table:table table:name="Tab">{rows}</table:table>'
        "</office:spreadsheet></office:body></office:document-content>"
    )
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0">'
        '<manifest:file-entry manifest:full-path="/"'
        ' manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/>'
        '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
        "</manifest:manifest>"
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        archive.writestr("META-INF/manifest.xml", manifest)
        archive.writestr("content.xml", content)
    return path


def cell(value_type: str, attributes: str = "", text: str = "") -> str:
    return f'<table:table-cell office:value-type="{value_type}" {attributes}><text:p>{text}</text:p></table:table-cell>'


def test_ods_values(tmp_path: Path) -> None:
    row = "<table:table-row>{}</table:table-row>".format
    rows = (
        row('<table:table-cell table:number-columns-repeated="4"/>')
        + row(
            cell("string", text=" id ") + cell("string", text="n") + cell("string", text="d") + cell("string", text="t")
        )
        + row(
            cell("string", text="00123")
            + cell("float", 'office:value="3"')
            + cell("date", 'office:date-value="2024-03-05"')
            + cell("time", 'office:time-value="PT13H04M05S"')
        )
        + row(
            cell("string", 'table:formula="of:=NA()"', "#N/A")
            + cell("percentage", 'office:value="0.25"')
            + cell("date", 'office:date-value="2024-03-05T13:04:05"')
            + cell("boolean", 'office:boolean-value="false"')
        )
    )
    table, headers, read_rows = read(ods(tmp_path / "a.ods", rows))
    assert (table.info.format, table.info.sheet, table.info.header_row) == ("ods", "Tab", 2)
    assert headers == ["id", "n", "d", "t"]
    assert read_rows == [
        (3, ["00123", "3", "2024-03-05", "13:04:05"]),
        (4, ["#N/A", "0.25", "2024-03-05T13:04:05", "FALSE"]),
    ]
    assert type(read_rows[0][1][1]) is Number
    assert type(read_rows[1][1][0]) is CellError


# ---------------------------------------------------------------- number and cell text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3.0, "3"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (0.1 + 0.2, "0.3"),
        (123456789012.0, "123456789012"),
        (-42.5, "-42.5"),
        (1.5e-7, "0.00000015"),
        (1e15, "1000000000000000"),
        (12345678901234567890.0, "12345678901234600000"),
        (1e20, "100000000000000000000"),
        (1e25, "1e+25"),
        (1 / 3, "0.333333333333333"),
    ],
)
def test_number_text(value: float, text: str) -> None:
    assert number_text(value) == text


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15))
def test_number_text_is_the_value_to_15_digits_without_exponent(value: float) -> None:
    text = number_text(value)
    assert ("e" in text) == (0 < abs(value) < 1e-20)  # only magnitudes Excel itself shows as 1E-21 and below
    assert not text.endswith(".0")
    assert math.isclose(float(text), value, rel_tol=1e-14, abs_tol=1e-300)
    if float(f"{value:.15g}") == value:  # a value Excel can show exactly shows exactly
        assert float(text) == value


def test_cell_text_of_each_calamine_type() -> None:
    assert cell_text("  x ") == "x"
    assert cell_text(7) == "7"
    assert type(cell_text(7)) is Number
    assert cell_text(True) == "TRUE"  # as Excel shows it
    assert cell_text(dt.date(2024, 1, 2)) == "2024-01-02"
    assert cell_text(naive(2024, 1, 2, 0, 0)) == "2024-01-02"
    assert cell_text(naive(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05"
    assert cell_text(dt.time(3, 4, 5)) == "03:04:05"
    assert cell_text(dt.timedelta(days=2, seconds=61)) == "48:01:01"
    assert cell_text(-dt.timedelta(minutes=90)) == "-1:30:00"
