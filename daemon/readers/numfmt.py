"""Excel number format codes (ECMA-376 §18.8.31): parse one, and render a cell value as the cell shows it.

Pure logic, no I/O. What a format does to the text we send:
- digit placeholders `0` (pads with zeros: `000000000000` keeps a code's leading zeros), `#`, `?`; fixed
  decimals (`0.00`); percent (`0%`, each `%` multiplies by 100); scientific (`0.00E+00`); literals (quoted
  `"…"`, escaped `\\x`, plain `$ - ( ) :` and so on) where the format puts them;
- thousands separators are never written, whatever the column: a code never carries one, and Excel's separator
  depends on the reader's locale (`1,234` in one country is `1.234` in another), so the figure alone is the one
  reading every consumer agrees on. A `,` after the last digit placeholder still scales by 1,000 as in Excel;
- `[Red]`-style colours, `[$-409]` locales and `_x` / `*x` padding change nothing in the text (a `[$€-407]`
  currency writes its symbol); a section with a condition (`[>100]`) or a fraction (`# ?/?`) is shown as
  General, as is a number in a text (`@`) format;
- dates and times are ISO 8601 whatever their layout: a format that shows only the date gives `YYYY-MM-DD`,
  only a time of day `HH:MM:SS`, both `YYYY-MM-DDTHH:MM:SS` (`YYYY-MM-DD` at midnight);
  elapsed time (`[h]:mm`) gives `H:MM:SS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache

GENERAL, NUMBER, TEXT = "general", "number", "text"
DATE, TIME, DATETIME, DURATION = "date", "time", "datetime", "elapsed"

# ECMA-376 §18.8.30: the built-in formats a file names by id only. Ids 5-8, 23-36 and 41-44 depend on the
# locale (currency, East Asian dates); an unknown id reads as General (calamine still recognises its dates).
BUILTIN_FORMATS: dict[int, str] = {
    0: "General",
    1: "0",
    2: "0.00",
    3: "#,##0",
    4: "#,##0.00",
    9: "0%",
    10: "0.00%",
    11: "0.00E+00",
    12: "# ?/?",
    13: "# ??/??",
    14: "mm-dd-yy",
    15: "d-mmm-yy",
    16: "d-mmm",
    17: "mmm-yy",
    18: "h:mm AM/PM",
    19: "h:mm:ss AM/PM",
    20: "h:mm",
    21: "h:mm:ss",
    22: "m/d/yy h:mm",
    37: "#,##0 ;(#,##0)",
    38: "#,##0 ;[Red](#,##0)",
    39: "#,##0.00;(#,##0.00)",
    40: "#,##0.00;[Red](#,##0.00)",
    45: "mm:ss",
    46: "[h]:mm:ss",
    47: "mmss.0",
    48: "##0.0E+0",
    49: "@",
}

# One part of a section: quoted text, an escaped or padding character, a [bracket], or one character.
_TOKEN = re.compile(r'"[^"]*"?|\\.|[_*].|\[[^\]]*\]?|.', re.DOTALL)
_DATE_LETTERS = frozenset("yYdDhHsSmM")
_CURRENCY = re.compile(r"\[\$([^-\]]*)(?:-[0-9A-Fa-f]+)?\]")
_CONDITION = re.compile(r"\[(?:<=|>=|<>|<|>|=)-?[0-9.]+\]")
_ELAPSED = re.compile(r"\[(?:h+|m+|s+)\]", re.IGNORECASE)
_EPOCH = datetime(1899, 12, 30)  # noqa: DTZ001 - serial dates have no zone; 1900 date system


@dataclass(frozen=True)
class Section:
    """One `;`-separated part of a format code, reduced to what the rendering needs."""

    kind: str  # one of GENERAL, NUMBER, TEXT, DATE, TIME, DATETIME, DURATION
    integer: tuple[str, ...] = ()  # integer-part tokens: "0", "#", "?" placeholders or literal text
    decimals: tuple[str, ...] = ()  # tokens after the decimal point
    point: bool = False  # the section has a decimal point
    percent: int = 0  # how many "%": the value is multiplied by 100 for each
    scale: int = 0  # thousands-scaling commas after the last integer placeholder
    exponent: tuple[str, str] | None = None  # scientific: (sign shown: "+" or "-", exponent placeholders)
    prefix: str = ""  # literal text before the first placeholder
    suffix: str = ""  # literal text after the last placeholder

    @property
    def plain(self) -> tuple[int, int, int] | None:
        """(least integer digits, least and most decimals) when only "0"/"#" placeholders, no literal between
        them, percent, scaling or exponent: the shape of nearly every format, rendered without Decimal."""
        parts = self.integer + self.decimals
        if self.percent or self.scale or self.exponent is not None or any(p not in ("0", "#") for p in parts):
            return None
        return self.integer.count("0"), self.decimals.count("0"), len(self.decimals)


@dataclass(frozen=True)
class NumberFormat:
    """A parsed format code: up to four sections (positive; negative; zero; text)."""

    code: str
    sections: tuple[Section, ...]
    kind: str = GENERAL  # what the first section shows: GENERAL, NUMBER, TEXT, DATE, TIME, DATETIME or DURATION
    numeric: tuple[Section, ...] = ()  # the sections a number can be shown by (text sections left out)
    shapes: tuple[tuple[int, int, int] | None, ...] = ()  # Section.plain of each numeric section
    padding: int | None = None  # a lone zero-padding section ("00000"): the digits it pads whole numbers to
    # Texts already made, by value, for the reader (dates and amounts repeat down a column); bounded by it.
    memo: dict[object, object] = field(default_factory=dict, compare=False, hash=False, repr=False)


def tokens(code: str) -> list[str]:
    """A format code's tokens; every character of the code is in exactly one part."""
    return _TOKEN.findall(code)


def split_sections(code: str) -> list[list[str]]:
    """The tokens of each `;`-separated section (a `;` inside quotes, brackets or after `\\` does not split)."""
    sections: list[list[str]] = [[]]
    for part in tokens(code):
        if part == ";":
            sections.append([])
        else:
            sections[-1].append(part)
    return sections


def _literal(part: str) -> str:
    """The text a literal part shows: quoted text without quotes, the escaped character, nothing for padding."""
    if part[:1] == '"':
        return part[1:-1] if part.endswith('"') and len(part) > 1 else part[1:]
    if part[:1] == "\\":
        return part[1:]
    if part[:1] in "_*":
        return ""  # _x leaves the width of x (trimmed away), *x repeats x to fill the column
    if part[:1] == "[":
        currency = _CURRENCY.fullmatch(part)
        return currency.group(1) if currency else ""  # [Red], [Color10], [$-409]: nothing shown
    return part


def _date_kind(parts: list[str]) -> str | None:
    """DATE, TIME, DATETIME or DURATION when the section's tokens show a date or time, else None."""
    letters = [t for t in parts if len(t) == 1 and t in _DATE_LETTERS]
    if any(_ELAPSED.fullmatch(t) for t in parts):
        return DURATION
    if not letters:
        return None
    lowered = [t.lower() for t in letters]
    has_time = any(t in "hs" for t in lowered)
    # "m" is minutes next to h or s, else month; only the date side needs telling apart here.
    has_date = any(t in "yd" for t in lowered) or ("m" in lowered and not has_time)
    if has_time and has_date:
        return DATETIME
    return TIME if has_time else DATE


def _section(parts: list[str]) -> Section:
    """One section's tokens, reduced to a Section."""
    plain = [t for t in parts if not (t[:1] in '"\\_*' or (t[:1] == "[" and not _ELAPSED.fullmatch(t)))]
    if not parts or "general" in "".join(plain).lower():
        return Section(GENERAL)
    kind = _date_kind(plain)
    if kind is not None:
        return Section(kind)
    if "@" in plain:
        return Section(TEXT)
    if any(_CONDITION.fullmatch(t) for t in parts) or "/" in plain:
        return Section(GENERAL)  # conditions and fractions: shown as General (see the module docstring)
    return _number_section(parts)


def _exponent(parts: list[str], i: int) -> tuple[tuple[str, str], int]:
    """The scientific part starting at parts[i] ("E"): (sign shown, exponent placeholders), and where it ends."""
    digits = ""
    j = i + 2
    while j < len(parts) and parts[j] in ("0", "#", "?"):
        digits += parts[j]
        j += 1
    return (parts[i + 1], digits or "0"), j


def _number_section(parts: list[str]) -> Section:
    """A number section's placeholders, literals, percent, scaling and exponent."""
    integer: list[str] = []
    decimals: list[str] = []
    prefix: list[str] = []
    suffix: list[str] = []
    point = False
    percent = scale = 0
    exponent: tuple[str, str] | None = None
    seen_digit = False
    pending_commas = 0
    i = 0
    while i < len(parts):
        part = parts[i]
        if part in ("E", "e") and i + 1 < len(parts) and parts[i + 1] in "+-" and seen_digit:
            exponent, i = _exponent(parts, i)
            continue
        if part in ("0", "#", "?"):
            if exponent is not None:
                suffix.append(part)
            elif point:
                decimals.append(part)
            else:
                integer.append(part)
            seen_digit = True
            pending_commas = 0
        elif part == "." and not point and exponent is None:
            point = True
            scale += pending_commas
            pending_commas = 0
        elif part == "," and seen_digit and exponent is None:
            pending_commas += 1  # grouping when a placeholder follows, else scaling by 1,000
        elif part == "%":
            percent += 1
            (suffix if seen_digit else prefix).append("%")
        else:
            text = _literal(part)
            later = _later_digit(parts, i)
            if not seen_digit:
                prefix.append(text)
            elif exponent is not None or not later:
                suffix.append(text)
            elif point:
                decimals.append("'" + text)  # a literal between decimal placeholders: kept in place
            else:
                integer.append("'" + text)  # a literal between integer placeholders: kept in place
        i += 1
    scale += pending_commas
    if not seen_digit:
        return Section(NUMBER, prefix="".join(prefix))
    return Section(
        NUMBER,
        integer=tuple(integer),
        decimals=tuple(decimals),
        point=point,
        percent=percent,
        scale=scale,
        exponent=exponent,
        prefix="".join(prefix),
        suffix="".join(suffix),
    )


def _later_digit(parts: list[str], index: int) -> bool:
    """Whether a digit placeholder follows position `index` in the section."""
    return any(t in ("0", "#", "?") for t in parts[index + 1 :])


@lru_cache(maxsize=256)  # formats seen; each holds the reader's memo (at most excel._MEMO_SIZE texts)
def parse(code: str) -> NumberFormat:
    """Parse a format code; never raises (what cannot be understood reads as General)."""
    sections = tuple(_section(parts) for parts in split_sections(code)[:4])
    numeric = tuple(s for s in sections if s.kind != TEXT) or (Section(GENERAL),)
    shapes = tuple(s.plain for s in numeric)
    first = numeric[0]
    padding = None
    if len(numeric) == 1 and shapes[0] and not first.point and not first.prefix and not first.suffix:
        padding = shapes[0][0]
    return NumberFormat(code, sections, sections[0].kind, numeric, shapes, padding)


def _fill_integer(placeholders: tuple[str, ...], digits: str) -> str:
    """Integer digits placed right to left into the placeholders; extra digits go before the first one."""
    out: list[str] = []
    rest = digits.lstrip("0")
    slots = [t for t in placeholders if t[:1] != "'"]
    # Excel writes a lone 0 for zero only where a "0" placeholder asks for it.
    for part in reversed(placeholders):
        if part[:1] == "'":
            out.append(part[1:] if rest or _zero_left(placeholders, part) else "")
            continue
        slots.pop()
        if rest:
            out.append(rest[-1])
            rest = rest[:-1]
        elif part == "0":
            out.append("0")
        elif part == "?":
            out.append(" ")
        if not slots and rest:
            out.append(rest)
            rest = ""
    return "".join(reversed(out))


def _zero_left(placeholders: tuple[str, ...], literal: str) -> bool:
    """Whether a "0" placeholder stands left of the literal (so the literal is shown even without digits)."""
    index = placeholders.index(literal)
    return "0" in placeholders[:index]


def _fill_decimals(placeholders: tuple[str, ...], digits: str) -> str:
    """Decimal digits placed left to right; trailing zeros kept only where a "0" placeholder asks."""
    slots = [t for t in placeholders if t[:1] != "'"]
    keep = len(digits)
    for index in range(len(slots) - 1, -1, -1):
        if keep > index and digits[index] == "0" and slots[index] != "0":
            keep = index
        else:
            break
    out: list[str] = []
    position = 0
    for part in placeholders:
        if part[:1] == "'":
            out.append(part[1:])
            continue
        if position < keep:
            out.append(digits[position])
        elif part == "?":
            out.append(" ")
        position += 1
    return "".join(out)


def _decimal(value: float) -> Decimal:
    """A float as the 15 significant digits Excel keeps (so 2.675 rounds to 2.68 as Excel shows it)."""
    return Decimal(format(value, ".15g"))


def _plain(section: Section, shape: tuple[int, int, int], value: float) -> str | None:
    """A non-negative number through a plain section (see Section.plain) without rounding; None if it must round."""
    least, fewest, most = shape
    if value.is_integer() and value < 1e15:
        whole, fraction = str(int(value)), ""
    else:
        text = repr(value)
        if "e" in text:
            return None
        whole, _, fraction = text.partition(".")
        fraction = fraction.rstrip("0")
        if len(fraction) > most:
            return None  # it has to round: the Decimal path rounds as Excel does
    if whole == "0" and not least:
        whole = ""
    text = whole.zfill(least) + ("." + fraction.ljust(fewest, "0") if section.point else "")
    return section.prefix + text + section.suffix


def _number(section: Section, value: float) -> str:
    """A non-negative number through a NUMBER section."""
    amount = _decimal(value) * (Decimal(100) ** section.percent) / (Decimal(1000) ** section.scale)
    places = sum(1 for t in section.decimals if t[:1] != "'")
    if section.exponent is not None:
        return _scientific(section, amount, places)
    rounded = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    whole, _, fraction = format(rounded, "f").partition(".")
    if not section.integer and not section.decimals:
        return section.prefix + section.suffix
    text = _fill_integer(section.integer, whole) if section.integer else ("" if whole == "0" else whole)
    if section.point:
        text += "." + _fill_decimals(section.decimals, fraction.ljust(places, "0"))
    return section.prefix + text + section.suffix


def _scientific(section: Section, amount: Decimal, places: int) -> str:
    """A number in scientific notation, `integer` placeholders giving the mantissa's digits before the point."""
    sign_shown, exponent_digits = section.exponent or ("+", "0")
    width = max(1, sum(1 for t in section.integer if t[:1] != "'"))
    if amount == 0:
        exponent = 0
    else:
        exponent = amount.adjusted()
        if width > 1:
            exponent -= exponent % width  # engineering notation: exponents in steps of the integer digits
    mantissa = (amount.scaleb(-exponent)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    whole, _, fraction = format(mantissa, "f").partition(".")
    text = _fill_integer(section.integer, whole) if section.integer else whole
    if section.point:
        text += "." + _fill_decimals(section.decimals, fraction.ljust(places, "0"))
    mark = "-" if exponent < 0 else ("+" if sign_shown == "+" else "")
    zeros = sum(1 for t in exponent_digits if t == "0")
    return section.prefix + text + "E" + mark + str(abs(exponent)).zfill(zeros) + section.suffix


def _section_for(fmt: NumberFormat, value: float) -> tuple[int, bool]:
    """The numeric section a number is shown by, and whether a "-" must be written (only the first adds one)."""
    count = len(fmt.numeric)
    if value < 0 and count >= 2:
        return 1, False
    if value == 0 and count >= 3:
        return 2, False
    return 0, value < 0


def serial_datetime(value: float) -> datetime:
    """An Excel serial number (1900 date system) as a date-time, to the second."""
    return _EPOCH + timedelta(seconds=round(value * 86400))


def _temporal(kind: str, value: datetime | date | time | timedelta | float) -> str:
    """A date, time or elapsed time as ISO 8601 text, as far as the format shows it."""
    if isinstance(value, timedelta) or kind == DURATION:
        delta = value if isinstance(value, timedelta) else timedelta(days=float(value))  # type: ignore[arg-type]
        if isinstance(delta, timedelta):
            seconds = round(delta.total_seconds())
            sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
            return f"{sign}{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    if isinstance(value, time):
        return value.isoformat(timespec="seconds")
    if isinstance(value, (int, float)):
        value = serial_datetime(value)
    if not isinstance(value, datetime):
        assert isinstance(value, date)
        value = datetime(value.year, value.month, value.day)  # noqa: DTZ001 - a calendar date, no zone
    if kind == DATE or value.time() == time(0):
        return value.date().isoformat()  # a date-time at midnight is a date, as before formats were read
    if kind == TIME:
        return value.time().isoformat(timespec="seconds")
    return value.isoformat(timespec="seconds")


def render(fmt: NumberFormat, value: float | datetime | date | time | timedelta) -> str | None:
    """The text a cell holding `value` shows in format `fmt`; None where it shows as in General format."""
    # The two shapes of nearly every formatted cell first: a padded whole number, a date.
    if fmt.padding is not None and type(value) is float and 0 <= value < 1e15 and value.is_integer():
        return str(int(value)).zfill(fmt.padding)
    if fmt.kind == DATE:
        if type(value) is datetime:
            return value.date().isoformat()
        if type(value) is date:
            return value.isoformat()
    if isinstance(value, (datetime, date, time, timedelta)):
        kind = fmt.kind if fmt.kind in (DATE, TIME, DATETIME, DURATION) else None
        if kind is None:
            return None  # calamine saw a date where this parser does not: keep its reading
        return _temporal(kind, value)
    value = float(value)
    index, minus = _section_for(fmt, value)
    section = fmt.numeric[index]
    if section.kind in (DATE, TIME, DATETIME, DURATION):
        try:
            return _temporal(section.kind, value)
        except (OverflowError, ValueError):
            return None
    if section.kind != NUMBER:
        return None
    shape = fmt.shapes[index]
    try:
        text = (_plain(section, shape, abs(value)) if shape else None) or _number(section, abs(value))
    except (InvalidOperation, OverflowError, ValueError):
        return None
    return ("-" + text if minus and any(c in "123456789" for c in text) else text).strip()
