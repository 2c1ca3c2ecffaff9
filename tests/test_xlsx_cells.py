"""The cell scan of an .xlsx sheet: each styled number's format and each error cell, by the fast pattern and by
the XML parser alike, whatever shape the cell tags have."""

from __future__ import annotations

import zipfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.readers.xlsx_cells import sheet_marks

NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
WORKBOOK = (
    f'<workbook xmlns="{NS}" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
    '<sheets><sheet name="S" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
RELS = (
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="worksheet" Target="worksheets/sheet1.xml"/></Relationships>'
)
# Style 0 General, 1 "000000", 2 "@" (no change to a number), 3 built-in 10 (0.00%), 4 "0.0".
STYLES = (
    f'<styleSheet xmlns="{NS}"><numFmts count="3"><numFmt numFmtId="164" formatCode="000000"/>'
    '<numFmt numFmtId="165" formatCode="@"/><numFmt numFmtId="166" formatCode="0.0"/></numFmts>'
    '<cellXfs count="5"><xf numFmtId="0"/><xf numFmtId="164"/><xf numFmtId="165"/><xf numFmtId="10"/>'
    '<xf numFmtId="166"/></cellXfs></styleSheet>'
)


def letters(index: int) -> str:
    text = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        text = chr(65 + rest) + text
    return text


def workbook(path: Path, cells: dict[tuple[int, int], int], shape: str, prefix: str = "") -> Path:
    """A sheet of 7s in the given styles; shape "usual" (r, s), "t-first" (t before s), "quoted" (single quotes,
    which only the XML parser reads) or "error" (one error cell as well, so the parser reads it)."""
    p = f"{prefix}:" if prefix else ""
    rows: dict[int, list[str]] = {}
    for (row, col), style in sorted(cells.items()):
        ref = f"{letters(col)}{row + 1}"
        style_attr = f' s="{style}"' if style else ""
        tag = {
            "usual": f'<{p}c r="{ref}"{style_attr}>',
            "t-first": f'<{p}c r="{ref}" t="n"{style_attr}>',
            "quoted": f"<{p}c r='{ref}'{style_attr.replace(chr(34), chr(39))}>",
            "error": f'<{p}c r="{ref}"{style_attr}>',
        }[shape]
        rows.setdefault(row, []).append(f"{tag}<{p}v>7</{p}v></{p}c>")
    if shape == "error":
        rows.setdefault(0, []).append(f'<{p}c r="ZZ1" t="e"><{p}v>#N/A</{p}v></{p}c>')
    body = "".join(f'<{p}row r="{r + 1}">{"".join(c)}</{p}row>' for r, c in sorted(rows.items()))
    xmlns = f'xmlns:{prefix}="{NS}"' if prefix else f'xmlns="{NS}"'
    sheet = f"<{p}worksheet {xmlns}><{p}sheetData>{body}</{p}sheetData></{p}worksheet>"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("xl/workbook.xml", WORKBOOK)
        archive.writestr("xl/_rels/workbook.xml.rels", RELS)
        archive.writestr("xl/styles.xml", STYLES)
        archive.writestr("xl/worksheets/sheet1.xml", sheet)
    return path


def marked(path: Path, rows: int) -> dict[tuple[int, int], str]:
    marks = sheet_marks(path, "S")
    found: dict[tuple[int, int], str] = {}
    for row in range(rows):
        for col, mark in (marks.row(row) or {}).items():
            found[row, col] = getattr(mark, "code", str(mark))
    marks.close()
    return found


CODES = {1: "000000", 3: "0.00%", 4: "0.0"}  # the styles whose format changes a number
cells = st.dictionaries(st.tuples(st.integers(0, 30), st.integers(0, 30)), st.integers(0, 4), max_size=80)


@settings(max_examples=40, deadline=None)
@given(cells=cells, shape=st.sampled_from(["usual", "t-first", "quoted", "error"]), prefix=st.sampled_from(["", "x"]))
def test_every_shape_gives_the_same_formats(cells: dict[tuple[int, int], int], shape: str, prefix: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = workbook(Path(folder) / "s.xlsx", cells, shape, prefix)
        found = marked(path, 32)
    expected = {cell: CODES[style] for cell, style in cells.items() if style in CODES}
    if shape == "error":
        expected[0, 701] = "#N/A"
    assert found == expected


def test_a_sheet_of_many_chunks_keeps_each_rows_format(tmp_path: Path) -> None:
    # 60,000 rows of 4 cells: some 3 MB of XML, so chunk boundaries fall inside rows and tags.
    cells = {(row, col): (row + col) % 5 for row in range(60_000) for col in range(4)}
    path = workbook(tmp_path / "big.xlsx", cells, "usual")
    found = marked(path, 60_000)
    assert found == {cell: CODES[style] for cell, style in cells.items() if style in CODES}


def test_a_table_closed_early_stops_the_scan(tmp_path: Path) -> None:
    cells = {(row, 0): 1 for row in range(200_000)}
    path = workbook(tmp_path / "long.xlsx", cells, "usual")
    marks = sheet_marks(path, "S")
    assert marks.row(0) is not None
    marks.close()  # the thread sees the flag at its next hand-over and ends
    assert marks.thread is not None
    marks.thread.join(timeout=60)  # a generous bound so a regression fails instead of hanging the run
    assert not marks.thread.is_alive()


def test_a_sheet_formatted_by_column_with_gaps_keeps_each_rows_format(tmp_path: Path) -> None:
    # Whole columns in one style (the shape read chunk by chunk without work per cell), broken here and there
    # by a missing cell, another style, and rows left out.
    cells = {(row, col): col for row in range(60_000) for col in range(5) if row % 10_000 != 5}
    del cells[20_000, 1]
    cells[40_000, 3] = 1
    path = workbook(tmp_path / "columns.xlsx", cells, "usual")
    found = marked(path, 60_000)
    assert found == {cell: CODES[style] for cell, style in cells.items() if style in CODES}
