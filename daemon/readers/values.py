"""The text of a calamine cell value as Excel shows it in General format (no calamine needed to make it)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal

from daemon.readers.table import Imprecise, Number

_MIDNIGHT = time(0)


def number_text(value: float) -> str:
    """A number as Excel's formula bar shows it: 15 significant digits, no exponent, no ".0".

    Excel keeps 15 significant digits, so 0.1+0.2 shows as 0.3 where repr() would say 0.30000000000000004;
    and it writes 123456789012 or 0.00000015 in full. Magnitudes beyond 1e±20 keep an exponent ("1e+25").
    """
    if value.is_integer() and -1e15 < value < 1e15:
        return str(int(value))  # also turns -0.0 into "0"
    text = format(value, ".15g")
    if "e" in text and -20 <= int(text.partition("e")[2]) <= 20:
        text = format(Decimal(text), "f")
    return text


def _duration_text(value: timedelta) -> str:
    """A duration as Excel's [h]:mm:ss shows it, hours beyond 24 included."""
    seconds = round(value.total_seconds())
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    return f"{sign}{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def cell_text(value: object) -> str:
    """The text of one calamine cell value in General format: Number for numbers, ISO 8601 for dates and times.

    A number of 16 or more digits before the point is Imprecise: Excel keeps 15 significant digits, so the
    rest is already lost (or will be, the first time someone saves the file in Excel).
    """
    if type(value) is str:
        return value.strip()
    if type(value) is float:
        if -1e15 < value < 1e15:
            return Number(number_text(value))
        return Imprecise(number_text(value))
    if type(value) is bool:
        return "TRUE" if value else "FALSE"  # as Excel shows them
    if type(value) is int:
        return Number(str(value)) if -(10**15) < value < 10**15 else Imprecise(str(value))
    if isinstance(value, datetime):
        if value.time() == _MIDNIGHT:
            return value.date().isoformat()
        return value.isoformat(timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.isoformat(timespec="seconds")
    if isinstance(value, timedelta):
        return _duration_text(value)
    return str(value).strip()
