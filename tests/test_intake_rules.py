"""The intake rules for keys a spreadsheet stored as numbers, cell names, and header messages."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openpyxl.utils import get_column_letter

from daemon.normalize import (
    KeyShapes,
    LayoutError,
    cell_problem,
    cell_reference,
    data_hash,
    json_encoder,
    key_problem,
    lost_zeros_problem,
    map_headers,
)
from daemon.readers import CellError, Number


def shapes_of(*keys: str) -> KeyShapes:
    shapes = KeyShapes()
    for key in keys:
        shapes.see(key)
    return shapes


@pytest.mark.parametrize(
    ("keys", "width", "lost"),
    [
        (["0001234", "0001235", Number("1236")], 7, True),  # zero-padded text serials: 1236 was 0001236
        ([Number("1236"), "0001234", "12"], 7, True),  # padded evidence wins over mixed widths; order is irrelevant
        (["0001234", Number("1234567")], 7, False),  # as long as the padded codes: nothing was lost
        (["ABCDEFGH1234", "ZYXWVUT98765", Number("12345678901")], 12, True),  # every text key 12 long
        (["123456", "1234567", Number("12345")], 0, False),  # widths differ and no leading zero: no evidence
        ([Number("5"), Number("123456")], 0, False),  # numbers only: nothing to compare with
        (["", CellError("#N/A"), Number("12")], 0, False),  # empty and error keys are no evidence
        (["0012", Number("1.5")], 4, False),  # not a whole number: refused by key_problem, not counted here
    ],
)
def test_key_shapes(keys: list[str], width: int, lost: bool) -> None:
    shapes = shapes_of(*keys)
    assert shapes.width == width
    assert shapes.numbers_lost_zeros() is lost


def test_lost_zeros_problem_names_the_likely_code() -> None:
    problem = lost_zeros_problem(Number("1236"), "serial_number", 7)
    assert problem is not None
    assert "serial_number 1236 was stored as a number of 4 digits while the column's codes have 7" in problem
    assert "was it 0001236?" in problem
    assert lost_zeros_problem(Number("1234567"), "serial_number", 7) is None
    assert lost_zeros_problem("1236", "serial_number", 7) is None  # text is what the person typed
    assert lost_zeros_problem(Number("12.5"), "serial_number", 7) is None  # key_problem's business


@pytest.mark.parametrize(
    ("value", "data_key", "problem"),
    [
        (Number("12345678901234600000"), "serial_number", "a spreadsheet keeps only 15"),
        (Number("123456789012345"), "serial_number", None),
        (Number("1234"), "extended_id", "shorter than 8 characters: leading zeros were probably dropped"),
        (Number("123456789012"), "extended_id", None),
        (Number("-5"), "serial_number", "stored as a number, so digits may be lost"),
        (CellError("#REF!"), "extended_id", "error cell (#REF!); fix it in the spreadsheet"),
    ],
)
def test_number_keys(value: str, data_key: str, problem: str | None) -> None:
    got = key_problem(value, data_key)
    assert got is None if problem is None else problem in (got or "")


@given(st.integers(0, 16_383), st.integers(1, 1_048_576))
def test_cell_reference_names_cells_as_excel_does(column: int, row: int) -> None:
    assert cell_reference(column, row) == f"{get_column_letter(column + 1)}{row}"


def test_cell_problem_names_the_column() -> None:
    layout = map_headers(
        ["extended_id", "Lot", "market"],
        data_key="extended_id",
        columns={"Lot": "batch"},
        fields=[],
        strict_fields=False,
    )
    assert cell_problem(["K", "L1", CellError("#N/A")], layout) == (
        2,
        "column 'market' is an error cell (#N/A); fix the formula or clear the cell",
    )
    assert cell_problem(["K", CellError("#VALUE!"), "de"], layout) == (
        1,
        "column 'Lot' (batch) is an error cell (#VALUE!); fix the formula or clear the cell",
    )
    assert cell_problem(["K", "L1", "de", "", "x", "y"], layout) == (
        4,
        "the row has 2 more cells than the header has columns",
    )
    assert cell_problem(["K", "L1", "de", ""], layout) is None


@pytest.mark.parametrize(
    ("headers", "fields", "message"),
    [
        (
            ["code", "market"],
            ["market"],
            "'code', 'market'; expected: 'extended_id' and SCM field keys ",
        ),
        (["extended_id", "Market", "market "], [], "Columns found: 'extended_id', 'Market', 'market '; expected"),
        (["serial_number", "market"], [], "or set upload.data_key = 'serial_number' to use the 'serial_number' column"),
        (["extended_id"], ["batch"], "expected: 'extended_id' and SCM field keys among batch"),
    ],
)
def test_unusable_headers_list_what_was_found_and_expected(headers: list[str], fields: list[str], message: str) -> None:
    with pytest.raises(LayoutError) as caught:
        map_headers(headers, data_key="extended_id", columns={}, fields=fields, strict_fields=False)
    assert message in str(caught.value)


TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=10)
CELL = st.one_of(TEXT, TEXT.map(Number), TEXT.map(CellError))


@given(st.lists(st.one_of(CELL, st.lists(CELL, max_size=4)), max_size=6))
def test_the_hot_loop_json_encoder_writes_what_json_dumps_writes(value: list[object]) -> None:
    # The data hash is computed from this text: any difference would make old uploads look new.
    assert json_encoder()(value) == json.dumps(value, ensure_ascii=False)
    compact = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    assert json_encoder((",", ":"))(value) == compact


def test_the_data_hash_is_stable_across_versions() -> None:
    # Rows uploaded by an earlier version are skipped only if their hash is computed the same way.
    assert data_hash({"intended_market": "de", "batch": "B1"}) == "f8fe9b0bc83bc16f2ffcb83b99f7c8cf"
