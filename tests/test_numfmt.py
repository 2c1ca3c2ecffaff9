"""Excel number format codes: parsing and rendering, by example and by property."""

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.readers import number_text
from daemon.readers.numfmt import (
    BUILTIN_FORMATS,
    DATE,
    DATETIME,
    DURATION,
    GENERAL,
    NUMBER,
    TEXT,
    TIME,
    parse,
    render,
    split_sections,
    tokens,
)


def shown(code: str, value: float | dt.datetime | dt.date | dt.time | dt.timedelta) -> str:
    general = number_text(float(value)) if isinstance(value, (int, float)) else "general"
    text = render(parse(code), value)
    return general if text is None else text


@pytest.mark.parametrize(
    ("code", "value", "text"),
    [
        ("000000000000", 7, "000000000007"),
        ("00000", 123, "00123"),
        ("00000", 1234567, "1234567"),  # more digits than placeholders: all of them
        ("0.00", 3, "3.00"),
        ("0.00", 2.675, "2.68"),  # Excel rounds the 15 digits it keeps, half away from zero
        ("0.00", 1234.5, "1234.50"),
        ("#,##0", 1234567, "1234567"),  # no thousands separator, ever
        ("#,##0.00", 1234567.891, "1234567.89"),
        ("#,##0,", 1234567, "1235"),  # a trailing comma scales by 1,000
        ("0.0,,", 1234567, "1.2"),
        ("0%", 0.25, "25%"),
        ("0.0%", 0.25, "25.0%"),
        ("0.00%", 0.12345, "12.35%"),
        ("0.00\\%", 5, "5.00%"),  # an escaped % is a literal: no scaling
        ("0.00E+00", 12345, "1.23E+04"),
        ("0.00E+00", 0.00012, "1.20E-04"),
        ("##0.0E+0", 12345, "12.3E+3"),
        ('"SN-"0000', 42, "SN-0042"),
        ("000-000", 45, "000-045"),
        ("#,##0 ;(#,##0)", -5, "(5)"),
        ("0;-0;\\z\\e\\r\\o", 0, "zero"),
        ("[Red]0.00;[Red]-0.00", -1.5, "-1.50"),
        ("[Red]0.00", -1.5, "-1.50"),
        ("[$-409]0.00", 1.25, "1.25"),
        ("[$€-407] #,##0.00", 3.5, "€ 3.50"),
        ("0_);(0)", 5, "5"),
        ("0.00*x", 1, "1.00"),
        ("#", 0, ""),
        ("#.##", 5, "5."),
        ("#.00", 0.5, ".50"),
        ("0.0#", 1.5, "1.5"),
        ("0.0#", 1.555, "1.56"),
        ("@", 12, "12"),  # a number in a text format shows as General
        ("General", 1.5, "1.5"),
        ("[>100]0;0.0", 5, "5"),  # conditions: General
        ("# ?/?", 1.5, "1.5"),  # fractions: General
        ("dd.mm.yyyy", 46328.6041666, "2026-11-02"),  # a serial number in a date format
        ("h:mm", 0.5, "12:00:00"),
    ],
)
def test_numbers_read_as_excel_shows_them(code: str, value: float, text: str) -> None:
    assert shown(code, value) == text


@pytest.mark.parametrize(
    ("code", "value", "text"),
    [
        ("dd.mm.yyyy", dt.datetime(2026, 11, 2, 14, 30), "2026-11-02"),  # noqa: DTZ001
        ("m/d/yy", dt.date(2026, 11, 2), "2026-11-02"),
        ("yyyy-mm-dd hh:mm", dt.datetime(2026, 11, 2, 14, 30), "2026-11-02T14:30:00"),  # noqa: DTZ001
        ("yyyy-mm-dd hh:mm", dt.datetime(2026, 11, 2), "2026-11-02"),  # noqa: DTZ001 - midnight: a date
        ("hh:mm", dt.time(14, 30), "14:30:00"),
        ("h:mm AM/PM", dt.datetime(1899, 12, 31, 14, 30), "14:30:00"),  # noqa: DTZ001
        ("[h]:mm:ss", dt.timedelta(hours=30, minutes=5), "30:05:00"),
        ("0.00", dt.date(2026, 11, 2), "general"),  # calamine saw a date this format does not show
    ],
)
def test_dates_and_times_read_as_iso(code: str, value: dt.datetime, text: str) -> None:
    assert shown(code, value) == text


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("General", GENERAL),
        ("0.00", NUMBER),
        ("@", TEXT),
        ("dd.mm.yyyy", DATE),
        ("mmm-yy", DATE),
        ("h:mm", TIME),
        ("mm:ss", TIME),
        ("m/d/yy h:mm", DATETIME),
        ("[h]:mm:ss", DURATION),
        ('"d"0', NUMBER),  # a quoted letter is no date part
        ("0\\h", NUMBER),
        ("0.00E+00", NUMBER),  # the E of an exponent is no date part
    ],
)
def test_format_kinds(code: str, kind: str) -> None:
    assert parse(code).kind == kind


def test_every_builtin_format_parses() -> None:
    kinds = {number: parse(code).kind for number, code in BUILTIN_FORMATS.items()}
    assert [kinds[0], kinds[49], kinds[14], kinds[22]] == [GENERAL, TEXT, DATE, DATETIME]
    assert [kinds[21], kinds[46], kinds[10]] == [TIME, DURATION, NUMBER]


# Literal text a format can carry without changing the figures: quoted text, escapes, brackets, padding.
literal = st.sampled_from(['"abc"', '"a;b"', "\\-", "\\;", "[Red]", "[Color10]", "[$-409]", "_)", "_-", "*x"])


@given(code=st.text(max_size=40))
def test_any_text_parses_and_renders_without_raising(code: str) -> None:
    fmt = parse(code)
    assert 1 <= len(fmt.sections) <= 4
    for value in (0.0, 1.5, -2.25, 123456.0, 1e-7):
        assert isinstance(render(fmt, value), str | None)
    assert "".join(tokens(code)) == code  # every character belongs to exactly one token


section_text = st.lists(st.sampled_from(["0", "#", ".", "%", '"a;b"', "\\;", "[Red]", "_;"]), max_size=5)


@given(parts=st.lists(section_text, min_size=1, max_size=4))
def test_sections_split_only_at_bare_semicolons(parts: list[list[str]]) -> None:
    code = ";".join("".join(p) for p in parts)
    assert len(split_sections(code)) == len(parts)


@given(quoted=st.text(alphabet=st.characters(blacklist_characters='"'), max_size=10))
def test_a_semicolon_in_quotes_does_not_split(quoted: str) -> None:
    assert len(split_sections(f'"{quoted};"0;0')) == 2


@given(width=st.integers(1, 15), value=st.integers(0, 10**15 - 1))
def test_zero_padding_keeps_the_zeros(width: int, value: int) -> None:
    assert shown("0" * width, value) == str(value).zfill(width)


@given(places=st.integers(0, 6), value=st.floats(0, 1e9, allow_nan=False))
def test_fixed_decimals_round_half_up_as_excel(places: int, value: float) -> None:
    expected = Decimal(format(value, ".15g")).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    code = "0." + "0" * places if places else "0"
    assert shown(code, value) == format(expected, "f")


@given(value=st.integers(0, 10**6), extra=literal, width=st.integers(1, 8))
def test_colours_locales_and_padding_change_no_figure(value: int, extra: str, width: int) -> None:
    plain = shown("0" * width, value)
    if extra.startswith('"'):
        assert shown(extra + "0" * width, value) == extra.strip('"') + plain
    elif extra.startswith("\\"):
        assert shown(extra + "0" * width, value) == extra[1:] + plain
    else:
        assert shown(extra + "0" * width, value) == plain
        assert shown("0" * width + extra, value) == plain


@given(value=st.integers(0, 10**6), places=st.integers(0, 3))
def test_percent_multiplies_by_a_hundred(value: int, places: int) -> None:
    share = value / 1000
    code = ("0." + "0" * places if places else "0") + "%"
    expected = Decimal(format(share, ".15g")) * 100
    figure = expected.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    assert shown(code, share) == f"{figure:f}%"


@given(value=st.floats(-1e12, 1e12, allow_nan=False), places=st.integers(0, 4))
def test_thousands_separators_are_never_written(value: float, places: int) -> None:
    code = "#,##0" + ("." + "0" * places if places else "")
    assert "," not in shown(code, value)
    assert shown(code, value) == shown(code.replace("#,##", ""), value)
