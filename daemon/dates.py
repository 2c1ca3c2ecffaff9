"""Text dates as the API wants them: the common written forms read as YYYY-MM-DD, or a reason why not (pure)."""

import re
from dataclasses import dataclass
from datetime import date
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Literal

DateOrder = Literal["DMY", "MDY", "YMD", ""]
DATE_ORDERS: tuple[DateOrder, ...] = ("DMY", "MDY", "YMD", "")
DEFAULT_DATE_FIELDS = ("*_date", "date")  # upload.date_fields: the SCM field keys whose values are dates

# A time of day after a date: " 14:30", "T14:30:00Z", " 2:30 PM", ", 09:15:00.5".
_TIME_PART = (
    r"(?:[ T]+|,\s*)(?P<h>\d{1,2})[:.](?P<m>\d{2})(?:[:.](?P<s>\d{2})(?:[.,]\d{1,9})?)?"
    r"(?:\s*(?P<ampm>[AaPp])\.?[Mm]\.?)?(?:\s*(?:Z|[+-]\d{2}:?\d{2}))?"
)
# A date of digits with one kind of separator, the year first or last, then perhaps a time of day:
# 2026-12-31, 2026/12/31, 2026.12.31, 31/12/2026, 31.12.2026, 12/31/2026, 31-12-2026, "31.12.2026 14:30",
# "2026-12-31T14:30:00Z", "12/31/2026 2:30 PM".
_DATE = re.compile(
    r"(?:(?P<y1>\d{4})(?P<s1>[-/.])(?P<a1>\d{1,2})(?P=s1)(?P<b1>\d{1,2})"
    r"|(?P<a2>\d{1,2})(?P<s2>[-/.])(?P<b2>\d{1,2})(?P=s2)(?P<y2>\d{4}|\d{2}))"
    rf"(?P<time>{_TIME_PART})?",
    re.ASCII,
)
# A date with the month named in English, which reads one way only: "31 Dec 2026", "31-Dec-2026",
# "31 December 2026", "Dec 31, 2026", "December 31 2026 14:30".
_NAMED = re.compile(
    r"(?:(?P<d1>\d{1,2})\.?[ -](?P<m1>[A-Za-z]{3,9})\.?[ -](?P<y1>\d{4}|\d{2})"
    r"|(?P<m2>[A-Za-z]{3,9})\.? (?P<d2>\d{1,2}),? (?P<y2>\d{4}|\d{2}))"
    rf"(?P<time>{_TIME_PART})?",
    re.ASCII,
)
_TIME = re.compile(_TIME_PART, re.ASCII)
_MONTHS = {
    name: number
    for number, full in enumerate(
        (
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ),
        start=1,
    )
    for name in (full, full[:3], *(("sept",) if number == 9 else ()))
}


@dataclass(frozen=True)
class DateSettings:
    """What row normalization needs to know about dates: which fields hold them and the order to assume."""

    fields: tuple[str, ...] = DEFAULT_DATE_FIELDS  # glob patterns over SCM field keys
    order: DateOrder = ""  # intake.date_order; "" = only dates that read one way

    def matches(self, field_key: str) -> bool:
        """Whether a field's values are dates."""
        return any(fnmatchcase(field_key, pattern) for pattern in self.fields)


@dataclass(frozen=True)
class DateResult:
    """A date cell read: its ISO text, or a problem; `rewritten` when the ISO text differs from the cell."""

    iso: str = ""
    problem: str = ""
    rewritten: bool = False


def _valid(year: int, month: int, day: int) -> str | None:
    """The ISO text of a calendar date, or None when there is no such day."""
    try:
        return date(year, month, day).isoformat()
    except ValueError:
        return None


def _time_problem(text: str) -> str | None:
    """Why the time part of a date cell is not a time of day, or None."""
    found = _TIME.fullmatch(text)
    if found is None:  # pragma: no cover - _DATE only lets through what _TIME reads
        return "its time is not a time of day"
    hour, minute, second = int(found["h"]), int(found["m"]), int(found["s"] or 0)
    top = 12 if found["ampm"] else 23
    low = 1 if found["ampm"] else 0
    if not low <= hour <= top or minute > 59 or second > 59:
        return f"its time {text.strip(' T,')!r} is not a time of day"
    return None


def _named_date(value: str, named: re.Match[str]) -> DateResult:
    """A date whose month is named in English."""
    month_name = (named["m1"] or named["m2"]).lower()
    month = _MONTHS.get(month_name)
    if month is None:
        return DateResult(problem=f"{value!r} is not a date: {month_name!r} is no month (in English)")
    day, year = int(named["d1"] or named["d2"]), named["y1"] or named["y2"]
    if len(year) == 2:
        return DateResult(problem=f"{value!r} has a two-digit year; write the year with four digits, or YYYY-MM-DD")
    iso = _valid(int(year), month, day)
    if iso is None:
        return DateResult(problem=f"{value!r} is not a date: there is no day {day} in month {month} of {year}")
    return DateResult(iso=iso, rewritten=True)


@lru_cache(maxsize=4096)  # a file's dates repeat: each distinct text is read once
def parse_date(text: str, order: DateOrder = "") -> DateResult:
    """Read a cell of a date field: YYYY-MM-DD when it names one day, else why not (impossible, ambiguous...).

    The year first is always year-month-day. The year last is day-month-year or month-day-year: a part above 12
    is the day; when both parts could be the month, `order` decides ("DMY" or "MDY"), and without it the cell is
    ambiguous (unless both readings are the same day). A cell that reads only in the order not configured is
    refused rather than guessed: the file probably uses the other order throughout.
    """
    value = text.strip()
    found = _DATE.fullmatch(value) or _NAMED.fullmatch(value)
    if found is None:
        return DateResult(problem=f"{value!r} is not a date; write it as YYYY-MM-DD (e.g. 2026-12-31)")
    if found["time"]:
        wrong_time = _time_problem(found["time"])
        if wrong_time:
            return DateResult(problem=f"{value!r} is not a date: {wrong_time}")
    if found.re is _NAMED:
        return _named_date(value, found)
    return _numeric_date(value, found, order)


def _numeric_date(value: str, found: re.Match[str], order: DateOrder) -> DateResult:
    """A date of digits only (see parse_date)."""
    if found["y1"] is not None:
        year, month, day = int(found["y1"]), int(found["a1"]), int(found["b1"])
        iso = _valid(year, month, day)
        if iso is None:
            return DateResult(problem=f"{value!r} is not a date: there is no day {day} in month {month} of {year}")
        return DateResult(iso=iso, rewritten=iso != value)
    if len(found["y2"]) == 2:
        return DateResult(problem=f"{value!r} has a two-digit year; write the year with four digits, or YYYY-MM-DD")
    year, first, second = int(found["y2"]), int(found["a2"]), int(found["b2"])
    as_dmy, as_mdy = _valid(year, second, first), _valid(year, first, second)
    if as_dmy is None and as_mdy is None:
        return DateResult(problem=f"{value!r} is not a date, neither day-month-year nor month-day-year")
    if order == "DMY" and as_dmy is None:
        return DateResult(
            problem=f"{value!r} is not a date as day-month-year (intake.date_order = 'DMY'); "
            f"as month-day-year it would be {as_mdy}: check the file's date order"
        )
    if order == "MDY" and as_mdy is None:
        return DateResult(
            problem=f"{value!r} is not a date as month-day-year (intake.date_order = 'MDY'); "
            f"as day-month-year it would be {as_dmy}: check the file's date order"
        )
    if order == "DMY" or as_mdy is None:
        return DateResult(iso=as_dmy or "", rewritten=True)
    if order == "MDY" or as_dmy is None or as_dmy == as_mdy:
        return DateResult(iso=as_mdy or "", rewritten=True)
    setting = "intake.date_order is not set" if not order else f"intake.date_order = {order!r} is for year-first dates"
    return DateResult(
        problem=f"{value!r} is ambiguous: {as_dmy} as day-month-year or {as_mdy} as month-day-year ({setting}); "
        "write it as YYYY-MM-DD or set intake.date_order to 'DMY' or 'MDY'"
    )
