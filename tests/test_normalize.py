"""The pure rules from header and cells to key and SCM data."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.normalize import Layout, LayoutError, data_hash, key_problem, map_headers, row_hasher, scm_data
from daemon.readers import CellError, Number


def layout(headers: list[str], **kw: object) -> Layout:
    options: dict[str, object] = {"data_key": "extended_id", "columns": {}, "fields": [], "strict_fields": False}
    options.update(kw)
    return map_headers(headers, **options)  # type: ignore[arg-type]


def test_headers_map_to_the_key_and_fields() -> None:
    got = layout(["extended_id", "intended_market", "batch"])
    assert got.key_index == 0
    assert got.fields == ((1, "intended_market"), (2, "batch"))
    assert got.warnings == ()


def test_a_heading_that_differs_by_case_or_spaces_is_matched_with_a_warning() -> None:
    got = layout(["Extended ID", "Intended_Market"], fields=["intended_market"])
    assert got.key_index == 0
    assert got.fields == ((1, "intended_market"),)
    assert len(got.warnings) == 2
    assert "'Extended ID' read as 'extended_id'" in got.warnings[0]


def test_columns_config_renames_headings() -> None:
    got = layout(["Code", "Market"], columns={"Code": "extended_id", "Market": "intended_market"})
    assert (got.key_index, got.fields) == (0, ((1, "intended_market"),))


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (["code", "market"], "no 'extended_id' column (upload.data_key); columns found: 'code', 'market'"),
        (["extended_id", "market", "Market "], "heading repeated: 'Market', 'market'"),
        (["extended_id", "extended id"], "heading repeated: 'extended_id'"),
        (["extended_id"], "no SCM field columns besides 'extended_id'"),
    ],
)
def test_unusable_headers_say_what_was_found(headers: list[str], message: str) -> None:
    with pytest.raises(LayoutError, match=message.replace("(", r"\(").replace(")", r"\)")):
        layout(headers)


def test_columns_outside_the_campaign_are_warned_about_or_refused() -> None:
    got = layout(["extended_id", "intended_market", "colour"], fields=["intended_market"])
    assert got.fields == ((1, "intended_market"), (2, "colour"))
    assert "'colour' are not campaign fields and would be discarded by Scantrust" in got.warnings[0]
    with pytest.raises(LayoutError, match="strict_fields"):
        layout(["extended_id", "colour"], fields=["intended_market"], strict_fields=True)


def test_the_other_key_column_is_not_uploaded() -> None:
    got = layout(["extended_id", "serial_number", "batch"])
    assert got.fields == ((2, "batch"),)
    assert "'serial_number' is not uploaded" in got.warnings[0]


@pytest.mark.parametrize(
    ("value", "data_key", "problem"),
    [
        ("HGDTQD54D5SD86EEDFS", "extended_id", None),
        ("abc_DEF-1234", "extended_id", None),
        ("", "extended_id", "no extended_id"),
        ("1.23457E+11", "serial_number", "reformatted"),
        ("1,23457E+11", "serial_number", "reformatted"),
        ("short", "extended_id", "not 8 to 100"),
        ("has space1", "extended_id", "not 8 to 100"),
        ("x" * 101, "extended_id", "not 8 to 100"),
        ("0001234", "serial_number", None),
        (Number("1234.5"), "serial_number", "stored as a number"),
        (Number("123456"), "serial_number", None),
        (CellError("#N/A"), "serial_number", "error cell (#N/A)"),
        ("s" * 101, "serial_number", "longer than 100"),
    ],
)
def test_key_problems(value: str, data_key: str, problem: str | None) -> None:
    got = key_problem(value, data_key)
    if problem is None:
        assert got is None
    else:
        assert got is not None
        assert problem in got


def test_empty_cells_are_left_out_or_cleared() -> None:
    lay = layout(["extended_id", "a", "b"])
    assert scm_data(["K", "1", ""], lay, clear_empty=False) == {"a": "1"}
    assert scm_data(["K", "1", ""], lay, clear_empty=True) == {"a": "1", "b": ""}


def test_a_layout_survives_its_ledger_record() -> None:
    lay = layout(["Extended ID", "", "batch"])
    assert Layout.from_record(lay.to_record()) == lay


data = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=6)


@given(data, st.randoms())
def test_the_data_hash_ignores_field_order(d: dict[str, str], rnd: object) -> None:
    items = list(d.items())
    rnd.shuffle(items)  # type: ignore[attr-defined]
    assert data_hash(dict(items)) == data_hash(d)


@given(data, data)
def test_different_data_hashes_differently(a: dict[str, str], b: dict[str, str]) -> None:
    assert (data_hash(a) == data_hash(b)) == (a == b)


@given(st.lists(st.sampled_from(["", "x", "y", "1"]), min_size=4, max_size=4), st.booleans())
def test_the_row_hasher_agrees_with_the_data_hash(cells: list[str], clear_empty: bool) -> None:
    lay = layout(["extended_id", "b", "a", "c"])
    expected_data = scm_data(cells, lay, clear_empty=clear_empty)
    expected = data_hash(expected_data) if expected_data else None
    assert row_hasher(lay, clear_empty=clear_empty)(cells) == expected


def test_the_error_column_of_a_rejected_csv_is_not_uploaded_again() -> None:
    got = layout(["extended_id", "batch", "error"])
    assert got.fields == ((1, "batch"),)
    assert "added by scm-daemon to rejected.csv" in got.warnings[0]
    assert layout(["extended_id", "error", "batch"]).fields == ((1, "error"), (2, "batch"))  # not ours: not last
    assert layout(["extended_id", "batch", "error"], fields=["batch", "error"]).fields == ((1, "batch"), (2, "error"))
