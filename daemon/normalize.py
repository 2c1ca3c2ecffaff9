"""Pure rules that turn a file's header and cells into a key and the SCM data to send: mapping, checks, hashing."""

import hashlib
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from daemon.dates import DateSettings, parse_date
from daemon.readers import CellError, Number

KEY_FIELDS = ("extended_id", "serial_number")
REJECTED_ERROR_COLUMN = "error"  # the last column of every rejected file: the mark of a file scm-daemon wrote
EXTENDED_ID = re.compile(r"[A-Za-z0-9_-]{8,100}")
# What Excel shows for a long number it reformatted: 1.23457E+11, 1,23457E+11 in some locales.
# Always with "E+": a key that passes the extended_id pattern can never look like this.
SCIENTIFIC = re.compile(r"[+-]?\d+([.,]\d+)?[eE]\+\d+")
MAX_KEY_LENGTH = 100
MIN_EXTENDED_ID = 8
MAX_NUMBER_DIGITS = 15  # what a spreadsheet number holds; beyond it the last digits read as zeros


def json_encoder(separators: tuple[str, str] = (", ", ": ")) -> Callable[[Any], str]:
    """json.dumps(value, ensure_ascii=False, separators=separators) for lists of text, built once for hot loops.

    JSONEncoder.encode sets up CPython's C encoder anew on every call, which costs more than encoding a row;
    this keeps one. Without the C accelerator it falls back to JSONEncoder.encode (same output, slower).
    """
    encoder = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=separators)
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    encode_text: Any = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or encode_text is None:
        return encoder.encode
    item_separator, key_separator = separators
    chunks = make(None, encoder.default, encode_text, None, key_separator, item_separator, False, False, True)
    join = "".join
    return lambda value: join(chunks(value, 0))


_HASH_JSON = json_encoder((",", ":"))


class LayoutError(Exception):
    """A header that cannot be used: no key column, a heading repeated, a column refused by strict_fields."""


@dataclass(frozen=True)
class Layout:
    """How a file's columns map to the key and to SCM field keys."""

    headers: tuple[str, ...]
    key_index: int
    fields: tuple[tuple[int, str], ...]  # (column index, SCM field key), in column order
    warnings: tuple[str, ...] = ()
    # A rejected file this daemon wrote (its last column is the `error` it added): only its cells had the
    # report's formula escape added, so only they have it undone.
    written_by_daemon: bool = False

    def to_record(self) -> dict[str, Any]:
        """The layout as JSON-ready data, as the ledger keeps it."""
        return {
            "headers": list(self.headers),
            "key_index": self.key_index,
            "fields": [list(f) for f in self.fields],
            "warnings": list(self.warnings),
            "written_by_daemon": self.written_by_daemon,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Layout":
        """The layout from what to_record produced."""
        return cls(
            tuple(record["headers"]),
            int(record["key_index"]),
            tuple((int(i), str(f)) for i, f in record["fields"]),
            tuple(record.get("warnings", ())),
            bool(record.get("written_by_daemon", False)),
        )


def canonical(heading: str) -> str:
    """A heading compared loosely: lower case, trimmed, inner runs of spaces as one underscore."""
    return "_".join(heading.strip().lower().split())


def map_headers(
    headers: Sequence[str],
    *,
    data_key: str,
    columns: Mapping[str, str],
    fields: Collection[str],
    strict_fields: bool,
) -> Layout:
    """Map a header row to the key column and SCM field keys, or raise LayoutError saying what was found."""
    renames = {canonical(heading): key for heading, key in columns.items()}
    known = {canonical(f): f for f in (*fields, *KEY_FIELDS)}
    warnings: list[str] = []
    mapped: list[tuple[int, str]] = []
    for index, raw in enumerate(headers):
        heading = raw.strip()
        if not heading:
            warnings.append(f"column {index + 1} has no heading; its cells are not uploaded")
            continue
        if heading in columns:
            target = columns[heading]
        elif canonical(heading) in renames:
            target = renames[canonical(heading)]
            warnings.append(f"heading {heading!r} matched [columns] entry for {target!r} ignoring case and spaces")
        elif heading in known.values():
            target = heading
        elif canonical(heading) in known:
            target = known[canonical(heading)]
            warnings.append(f"heading {heading!r} read as {target!r} (differs only by case or spaces)")
        else:
            target = heading
        mapped.append((index, target))

    found = ", ".join(repr(h) for h in headers) or "none"
    expected = f"{data_key!r} and SCM field keys" + (f" among {', '.join(sorted(fields))}" if fields else "")
    # Headings that differ only by case or spaces are one field twice, whatever the campaign defines.
    targets = [canonical(t) for _, t in mapped]
    repeated = sorted({t for _, t in mapped if targets.count(canonical(t)) > 1})
    if repeated:
        raise LayoutError(
            f"heading repeated: {', '.join(map(repr, repeated))}; each field may appear once (case and spaces "
            f"aside). Columns found: {found}; expected: {expected}, each once"
        )
    key_index = next((i for i, t in mapped if t == data_key), None)
    if key_index is None:
        other = next((t for _, t in mapped if t in KEY_FIELDS), None)
        hint = f", or set upload.data_key = {other!r} to use the {other!r} column" if other else ""
        raise LayoutError(
            f"no {data_key!r} column (upload.data_key); columns found: {found}; expected: {expected}. "
            f"Name the key column {data_key!r} or map it in [columns]{hint}"
        )
    data_fields = _data_fields(mapped, len(headers), data_key, fields, warnings)
    ours = any(_is_error_column(i, t, len(headers), fields) for i, t in mapped)
    if fields:
        outside = [t for _, t in data_fields if t not in fields]
        if outside and strict_fields:
            raise LayoutError(
                f"columns outside the campaign's fields: {', '.join(map(repr, outside))} "
                f"(upload.strict_fields = true); columns found: {found}; expected some of: {', '.join(sorted(fields))}"
            )
        if outside:
            warnings.append(
                f"columns {', '.join(map(repr, outside))} are not campaign fields and would be discarded by Scantrust"
            )
    if not data_fields:
        raise LayoutError(f"no SCM field columns besides {data_key!r}; columns found: {found}; expected: {expected}")
    return Layout(tuple(headers), key_index, tuple(data_fields), tuple(warnings), ours)


def _is_error_column(index: int, target: str, width: int, fields: Collection[str]) -> bool:
    """Whether a column is the `error` column scm-daemon adds last to a rejected file (the campaign has none)."""
    return target == REJECTED_ERROR_COLUMN and index == width - 1 and REJECTED_ERROR_COLUMN not in fields


def _data_fields(
    mapped: Sequence[tuple[int, str]], width: int, data_key: str, fields: Collection[str], warnings: list[str]
) -> list[tuple[int, str]]:
    """The columns that carry SCM data: all but the key, the other key, and rejected.csv's own error column."""
    data_fields: list[tuple[int, str]] = []
    for index, target in mapped:
        if target == data_key:
            continue
        if target in KEY_FIELDS:
            warnings.append(f"column {target!r} is not uploaded: the key is {data_key!r} (upload.data_key)")
            continue
        if _is_error_column(index, target, width, fields):
            # The column scm-daemon adds to rejected.csv: a corrected one dropped back must not upload it.
            warnings.append(f"column {target!r} (added by scm-daemon to rejected.csv) is not uploaded")
            continue
        data_fields.append((index, target))
    return data_fields


def key_problem(value: str, data_key: str) -> str | None:
    """Why a key cell cannot be used as a code, or None when it can (see also KeyShapes for lost leading zeros)."""
    if data_key == "extended_id" and type(value) is str and EXTENDED_ID.fullmatch(value):
        return None  # the common case, first: plain text of the right shape
    if isinstance(value, CellError):
        return f"{data_key} is an error cell ({value}); fix it in the spreadsheet"
    if not value:
        return f"no {data_key}"
    if SCIENTIFIC.fullmatch(value):
        return (
            f"{data_key} {value!r} is a number the spreadsheet reformatted, so the code is lost; "
            "format the column as Text and export it again"
        )
    if isinstance(value, Number):
        if not value.isdigit():
            return (
                f"{data_key} {value!r} was stored as a number, so digits may be lost; "
                "format the column as Text and export it again"
            )
        if len(value) > MAX_NUMBER_DIGITS:
            return (
                f"{data_key} {value!r} was stored as a number of {len(value)} digits, but a spreadsheet keeps only "
                f"{MAX_NUMBER_DIGITS}, so its last digits are lost; format the column as Text and type the codes again"
            )
        if data_key == "extended_id" and len(value) < MIN_EXTENDED_ID:
            return (
                f"extended_id {value!r} was stored as a number and is shorter than {MIN_EXTENDED_ID} characters: "
                "leading zeros were probably dropped; format the column as Text and export it again"
            )
    if data_key == "extended_id" and not EXTENDED_ID.fullmatch(value):
        return f"extended_id {value!r} is not 8 to 100 letters, digits, '-' or '_'"
    if len(value) > MAX_KEY_LENGTH:
        return f"{data_key} is longer than {MAX_KEY_LENGTH} characters"
    return None


@dataclass
class KeyShapes:
    """What a workbook's key column shows about code width, gathered row by row (the one mutable helper here).

    A spreadsheet number has no leading zeros, so a key stored as a number may have lost some. The text keys
    of the same column tell: when some of them are all digits with a leading zero ("000123"), or when every
    text key has the same length, codes have that width; a number key with fewer digits lost its zeros.
    Without such evidence (e.g. every key is a number) number keys are taken as they are.
    """

    text_widths: set[int] = field(default_factory=set)
    padded_width: int = 0  # the longest all-digit text key that starts with "0"
    shortest_number: int | None = None  # the fewest digits of a whole-number key

    def see(self, key: str) -> None:
        """Take note of one key cell."""
        if type(key) is str:
            if key:
                self.text_widths.add(len(key))
                if key[0] == "0" and len(key) > self.padded_width and key.isdigit():
                    self.padded_width = len(key)
        elif type(key) is Number and key.isdigit() and len(key) < (self.shortest_number or MAX_KEY_LENGTH + 1):
            self.shortest_number = len(key)

    @property
    def width(self) -> int:
        """The digits a number key must have to be trusted; 0 when the text keys show no width."""
        if self.padded_width:
            return self.padded_width
        if len(self.text_widths) == 1:
            return next(iter(self.text_widths))
        return 0

    def numbers_lost_zeros(self) -> bool:
        """Whether some number key seen is shorter than the width the text keys show."""
        return self.shortest_number is not None and self.shortest_number < self.width


def lost_zeros_problem(value: str, data_key: str, width: int) -> str | None:
    """Why a key stored as a number is shorter than the column's codes (see KeyShapes), or None."""
    if type(value) is not Number or len(value) >= width or not value.isdigit():
        return None
    return (
        f"{data_key} {value} was stored as a number of {len(value)} digits while the column's codes have {width}: "
        f"its leading zeros were dropped (was it {value.zfill(width)}?); "
        "format the column as Text and export it again"
    )


def cell_reference(column: int, row: int) -> str:
    """A spreadsheet cell name such as "C4" for a 0-based column index and a row number."""
    letters = ""
    column += 1
    while column:
        column, rest = divmod(column - 1, 26)
        letters = chr(65 + rest) + letters
    return f"{letters}{row}"


def scm_data(cells: Sequence[str], layout: Layout, *, clear_empty: bool) -> dict[str, str]:
    """The SCM fields a row sets: empty cells are left out, or sent as "" when clear_empty."""
    if clear_empty:
        return {name: cells[i] for i, name in layout.fields}
    return {name: cells[i] for i, name in layout.fields if cells[i]}


def cell_problem(cells: Sequence[str], layout: Layout) -> tuple[int, str] | None:
    """Why a row's data cells cannot be sent (an error cell, extra cells), with the column concerned, or None."""
    for i, field_key in layout.fields:
        if isinstance(cells[i], CellError):
            named = repr(layout.headers[i]) + ("" if layout.headers[i] == field_key else f" ({field_key})")
            return i, f"column {named} is an error cell ({cells[i]}); fix the formula or clear the cell"
    width = len(layout.headers)
    if len(cells) > width:
        extra = [i for i in range(width, len(cells)) if cells[i]]
        if extra:
            cells_word = "cell" if len(extra) == 1 else "cells"
            return extra[0], f"the row has {len(extra)} more {cells_word} than the header has columns"
    return None


def date_columns(layout: Layout, dates: DateSettings) -> tuple[tuple[int, str], ...]:
    """The layout's fields whose values are dates (upload.date_fields), as (column index, field key)."""
    return tuple((i, key) for i, key in layout.fields if dates.matches(key))


def fix_dates(
    cells: list[str], columns: Sequence[tuple[int, str]], layout: Layout, dates: DateSettings, rewritten: dict[str, int]
) -> tuple[int, str] | None:
    """Write a row's date cells as YYYY-MM-DD in place, counting rewrites per field in `rewritten`; or the first
    cell that is no date (with its column index and why)."""
    for i, key in columns:
        value = cells[i]
        if not value or type(value) is CellError:
            continue  # empty, or an error cell (cell_problem names those)
        found = parse_date(value, dates.order)
        if found.problem:
            named = repr(layout.headers[i]) + ("" if layout.headers[i] == key else f" ({key})")
            return i, f"column {named} (upload.date_fields): {found.problem}"
        if found.rewritten:
            cells[i] = found.iso
            rewritten[key] = rewritten.get(key, 0) + 1
    return None


def _digest(names: Sequence[str], values: Sequence[str]) -> str:
    # JSON of [names, values]: unambiguous for any text, and encoded in C.
    return hashlib.blake2b(_HASH_JSON([names, values]).encode(), digest_size=16).hexdigest()


def data_hash(data: Mapping[str, str]) -> str:
    """A stable digest of SCM data: equal data, equal hash, whatever the column order."""
    names = sorted(data)
    return _digest(names, [data[n] for n in names])


def row_hasher(layout: Layout, *, clear_empty: bool) -> Callable[[Sequence[str]], str | None]:
    """data_hash(scm_data(cells)) for a layout's rows without building the dict; None when there is no data."""
    order = sorted(layout.fields, key=lambda f: f[1])
    names = [field for _, field in order]
    indexes = [i for i, _ in order]

    def values_of(cells: Sequence[str]) -> Sequence[str]:
        return [cells[i] for i in indexes]

    pick: Callable[[Sequence[str]], Sequence[str]] = itemgetter(*indexes) if len(indexes) > 1 else values_of

    def digest(cells: Sequence[str]) -> str | None:
        values = pick(cells)
        if clear_empty or all(values):
            return _digest(names, values) if values else None
        kept = [(n, v) for n, v in zip(names, values, strict=True) if v]
        return _digest([n for n, _ in kept], [v for _, v in kept]) if kept else None

    return digest
