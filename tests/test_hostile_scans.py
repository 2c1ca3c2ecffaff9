"""Issue 11, finding 3: the xlsx error-cell scan is one linear streaming pass, checked against a plain reference.

The crafted sheets are the worst cases of the old regular expression (many `<c t="e"` never closed, huge attribute
runs); the test times nothing, it checks the scan's answer against a reference built from the same cells.
"""

import zipfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.readers.xlsx_cells import error_cells

WORKBOOK = (
    '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
    '<sheets><sheet name="S" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
RELS = (
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="worksheet" Target="worksheets/sheet1.xml"/></Relationships>'
)


def column_letters(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def unique(cells: list[tuple[int, int, str | None]]) -> dict[tuple[int, int], str | None]:
    """One value per cell, the last given."""
    return {(row, col): error for row, col, error in cells}


def sheet_xml(cells: list[tuple[int, int, str | None]], padding: int) -> str:
    """Cells (row, col, error text or None for a plain value); `padding` adds hostile attribute runs."""
    rows: dict[int, list[str]] = {}
    noise = " x=" + '"' + "t" * padding + '"' if padding else ""
    for (row, col), error in sorted(unique(cells).items()):
        ref = f"{column_letters(col)}{row + 1}"
        if error is None:
            rows.setdefault(row, []).append(f'<c r="{ref}"{noise}><v>1</v></c>')
        else:
            rows.setdefault(row, []).append(f'<c r="{ref}"{noise} t="e"><v>{error}</v></c>')
    body = "".join(f'<row r="{r + 1}">{"".join(c)}</row>' for r, c in sorted(rows.items()))
    return f'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>{body}</sheetData></worksheet>'


def workbook(path: Path, sheet: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("xl/workbook.xml", WORKBOOK)
        archive.writestr("xl/_rels/workbook.xml.rels", RELS)
        archive.writestr("xl/worksheets/sheet1.xml", sheet)
    return path


def reference(cells: list[tuple[int, int, str | None]]) -> dict[int, dict[int, str]]:
    found: dict[int, dict[int, str]] = {}
    for (row, col), error in unique(cells).items():
        if error is not None:
            found.setdefault(row, {})[col] = error
    return found


cell = st.tuples(st.integers(0, 50), st.integers(0, 40), st.sampled_from([None, "#N/A", "#DIV/0!", "#REF!"]))


@settings(max_examples=40, deadline=None)
@given(cells=st.lists(cell, max_size=60), padding=st.sampled_from([0, 3, 2000]))
def test_error_cells_match_the_reference(cells: list[tuple[int, int, str | None]], padding: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = workbook(Path(folder) / "s.xlsx", sheet_xml(cells, padding))
        assert error_cells(path, "S") == reference(cells)


def test_the_old_backtracking_case_is_read_correctly(tmp_path: Path) -> None:
    # Thousands of error cells opened in attribute text (never real cells) ahead of one real error cell: the
    # old pattern retried each from every start; the XML parser sees them as one attribute value.
    hostile = '<c t="e" ' * 20_000
    sheet = (
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
        f'<row r="1"><c r="A1" t="s" x="{hostile.replace(chr(34), "&quot;").replace("<", "&lt;")}"><v>0</v></c>'
        '<c r="B1" t="e"><v>#N/A</v></c></row></sheetData></worksheet>'
    )
    assert error_cells(workbook(tmp_path / "bad.xlsx", sheet), "S") == {0: {1: "#N/A"}}
