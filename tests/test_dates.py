"""The text-date parser: every common written form of a day reads back as that day, or says why it cannot."""

import re
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.dates import DateSettings, parse_date

dates = st.dates(min_value=date(1000, 1, 1), max_value=date(9999, 12, 31))
separators = st.sampled_from(["/", ".", "-"])
times = st.sampled_from(["", " 14:30", " 14:30:59", "T08:05:00", "T08:05:00Z", " 2:30 PM", " 00:00:00.123", ", 9:15"])
ISO = re.compile(r"\d{4}-\d{2}-\d{2}")


def written(day: date, order: str, sep: str, pad: bool) -> str:
    d, m = (f"{day.day:02d}", f"{day.month:02d}") if pad else (str(day.day), str(day.month))
    y = f"{day.year:04d}"
    return {"DMY": f"{d}{sep}{m}{sep}{y}", "MDY": f"{m}{sep}{d}{sep}{y}", "YMD": f"{y}{sep}{m}{sep}{d}"}[order]


@given(dates, st.sampled_from(["DMY", "MDY", "YMD"]), separators, st.booleans(), times)
def test_a_date_written_in_the_configured_order_reads_as_that_day(
    day: date, order: str, sep: str, pad: bool, time: str
) -> None:
    got = parse_date(written(day, order, sep, pad) + time, order)  # type: ignore[arg-type]
    assert (got.iso, got.problem) == (day.isoformat(), "")


@given(dates, st.sampled_from(["DMY", "MDY"]), separators, st.booleans())
def test_without_an_order_a_date_is_read_only_when_it_reads_one_way(day: date, order: str, sep: str, pad: bool) -> None:
    text = written(day, order, sep, pad)
    got = parse_date(text)
    one_way = day.day > 12 or day.day == day.month
    if one_way:
        assert got.iso == day.isoformat()
        assert got.rewritten
    else:
        assert got.iso == ""
        swapped = date(day.year, day.day, day.month).isoformat()
        assert day.isoformat() in got.problem
        assert swapped in got.problem
        assert "intake.date_order" in got.problem


@given(dates, separators, st.booleans())
def test_year_first_is_always_year_month_day(day: date, sep: str, pad: bool) -> None:
    for order in ("", "DMY", "MDY", "YMD"):
        assert parse_date(written(day, "YMD", sep, pad), order).iso == day.isoformat()  # type: ignore[arg-type]


MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


@given(dates, st.sampled_from(["{d} {b} {y}", "{d}-{b}-{y}", "{d} {B} {y}", "{b} {d}, {y}", "{B} {d} {y}"]), times)
def test_a_date_with_its_month_named_in_english_reads_as_that_day_in_any_order(day: date, form: str, time: str) -> None:
    full = MONTHS[day.month - 1]
    text = form.format(d=day.day, b=full[:3], B=full, y=f"{day.year:04d}") + time
    for order in ("", "DMY", "MDY", "YMD"):
        assert parse_date(text.upper(), order).iso == day.isoformat()  # type: ignore[arg-type]


@given(dates)
def test_an_iso_date_is_kept_as_it_is(day: date) -> None:
    got = parse_date(day.isoformat())
    assert (got.iso, got.rewritten, got.problem) == (day.isoformat(), False, "")


@given(st.text(max_size=30), st.sampled_from(["", "DMY", "MDY", "YMD"]))
def test_any_text_gives_a_valid_iso_date_or_a_reason(text: str, order: str) -> None:
    got = parse_date(text, order)  # type: ignore[arg-type]
    assert bool(got.iso) != bool(got.problem)
    if got.iso:
        assert ISO.fullmatch(got.iso)
        date.fromisoformat(got.iso)


@given(st.integers(1000, 9999), st.integers(1, 12), st.integers(29, 35))
def test_a_day_past_the_end_of_its_month_is_refused(year: int, month: int, day: int) -> None:
    try:
        date(year, month, day)
    except ValueError:
        got = parse_date(f"{year}-{month:02d}-{day:02d}")
        assert (got.iso, "is not a date" in got.problem) == ("", True)


@pytest.mark.parametrize(
    ("text", "order", "iso"),
    [
        ("31/12/2026", "", "2026-12-31"),
        ("31.12.2026", "", "2026-12-31"),
        ("2026/12/31", "", "2026-12-31"),
        ("12/31/2026", "", "2026-12-31"),
        ("31.12.2026 14:30", "", "2026-12-31"),
        ("2026-11-02T14:30:00", "", "2026-11-02"),
        ("03/04/2026", "DMY", "2026-04-03"),
        ("03/04/2026", "MDY", "2026-03-04"),
        ("04/04/2026", "", "2026-04-04"),
        (" 1.2.2026 ", "DMY", "2026-02-01"),
        ("31-Dec-2026", "", "2026-12-31"),
        ("Sept 3, 2026", "", "2026-09-03"),
    ],
)
def test_common_forms(text: str, order: str, iso: str) -> None:
    assert parse_date(text, order).iso == iso  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "order", "says"),
    [
        ("03/04/2026", "", "'03/04/2026' is ambiguous: 2026-04-03 as day-month-year or 2026-03-04 as month-day-year"),
        ("03/04/2026", "YMD", "intake.date_order = 'YMD' is for year-first dates"),
        ("2026-02-30", "", "there is no day 30 in month 2 of 2026"),
        ("31/31/2026", "", "neither day-month-year nor month-day-year"),
        ("12/31/2026", "DMY", "as month-day-year it would be 2026-12-31"),
        ("31/12/2026", "MDY", "as day-month-year it would be 2026-12-31"),
        ("31/12/26", "", "two-digit year"),
        ("31/12-2026", "", "is not a date"),
        ("next week", "", "'next week' is not a date; write it as YYYY-MM-DD"),
        ("2026-12-31 25:00", "", "is not a time of day"),
        ("2026-12-31 13:00 PM", "", "is not a time of day"),
        ("31 Foo 2026", "", "'foo' is no month (in English)"),
        ("31-Dec-26", "", "two-digit year"),
        ("31 Feb 2026", "", "there is no day 31 in month 2 of 2026"),
    ],
)
def test_refused_forms_say_why(text: str, order: str, says: str) -> None:
    got = parse_date(text, order)  # type: ignore[arg-type]
    assert got.iso == ""
    assert says in got.problem


def test_date_fields_default_to_keys_ending_in_date_and_date_itself() -> None:
    rule = DateSettings()
    assert [rule.matches(k) for k in ("production_date", "date", "expiry_date")] == [True] * 3
    assert [rule.matches(k) for k in ("dates", "update", "date_code")] == [False] * 3
    assert DateSettings(fields=("best_before",)).matches("best_before")
    assert not DateSettings(fields=()).matches("production_date")
