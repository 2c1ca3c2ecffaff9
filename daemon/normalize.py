"""Pure rules that turn a file's header and cells into a key and the SCM data to send: mapping, checks, hashing."""

import hashlib
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from daemon.readers import CellError, Number

KEY_FIELDS = ("extended_id", "serial_number")
EXTENDED_ID = re.compile(r"[A-Za-z0-9_-]{8,100}")
# What Excel shows for a long number it reformatted: 1.23457E+11, 1,23457E+11 in some locales.
# Always with "E+": a key that passes the extended_id pattern can never look like this.
SCIENTIFIC = re.compile(r"[+-]?\d+([.,]\d+)?[eE]\+\d+")
_HASH_JSON = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":"))
MAX_KEY_LENGTH = 100


class LayoutError(Exception):
    """A header that cannot be used: no key column, a heading repeated, a column refused by strict_fields."""


@dataclass(frozen=True)
class Layout:
    """How a file's columns map to the key and to SCM field keys."""

    headers: tuple[str, ...]
    key_index: int
    fields: tuple[tuple[int, str], ...]  # (column index, SCM field key), in column order
    warnings: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """The layout as JSON-ready data, as the ledger keeps it."""
        return {
            "headers": list(self.headers),
            "key_index": self.key_index,
            "fields": [list(f) for f in self.fields],
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Layout":
        """The layout from what to_record produced."""
        return cls(
            tuple(record["headers"]),
            int(record["key_index"]),
            tuple((int(i), str(f)) for i, f in record["fields"]),
            tuple(record.get("warnings", ())),
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
    # Headings that differ only by case or spaces are one field twice, whatever the campaign defines.
    targets = [canonical(t) for _, t in mapped]
    repeated = sorted({t for _, t in mapped if targets.count(canonical(t)) > 1})
    if repeated:
        raise LayoutError(
            f"heading repeated: {', '.join(map(repr, repeated))}; each field may appear once. Columns found: {found}"
        )
    key_index = next((i for i, t in mapped if t == data_key), None)
    if key_index is None:
        raise LayoutError(
            f"no {data_key!r} column (upload.data_key); columns found: {found}. "
            f"Name the key column {data_key!r} or map it in [columns]"
        )
    data_fields: list[tuple[int, str]] = []
    for index, target in mapped:
        if target == data_key:
            continue
        if target in KEY_FIELDS:
            warnings.append(f"column {target!r} is not uploaded: the key is {data_key!r} (upload.data_key)")
            continue
        data_fields.append((index, target))
    if fields:
        outside = [t for _, t in data_fields if t not in fields]
        if outside and strict_fields:
            raise LayoutError(
                f"columns outside the campaign's fields: {', '.join(map(repr, outside))} "
                "(upload.strict_fields = true); "
                f"expected some of: {', '.join(sorted(fields))}"
            )
        if outside:
            warnings.append(
                f"columns {', '.join(map(repr, outside))} are not campaign fields and would be discarded by Scantrust"
            )
    if not data_fields:
        raise LayoutError(f"no SCM field columns besides {data_key!r}; columns found: {found}")
    return Layout(tuple(headers), key_index, tuple(data_fields), tuple(warnings))


def key_problem(value: str, data_key: str) -> str | None:
    """Why a key cell cannot be used as a code, or None when it can."""
    if data_key == "extended_id" and type(value) is str and EXTENDED_ID.fullmatch(value):
        return None  # the common case, first: plain text of the right shape
    if isinstance(value, CellError):
        return f"{data_key} is an error cell ({value})"
    if not value:
        return f"no {data_key}"
    if SCIENTIFIC.fullmatch(value):
        return (
            f"{data_key} {value!r} is a number the spreadsheet reformatted, so the code is lost; "
            "format the column as Text and export it again"
        )
    if isinstance(value, Number) and not value.isdigit():
        return (
            f"{data_key} {value!r} was stored as a number, so digits may be lost; "
            "format the column as Text and export it again"
        )
    if data_key == "extended_id" and not EXTENDED_ID.fullmatch(value):
        return f"extended_id {value!r} is not 8 to 100 letters, digits, '-' or '_'"
    if len(value) > MAX_KEY_LENGTH:
        return f"{data_key} is longer than {MAX_KEY_LENGTH} characters"
    return None


def scm_data(cells: Sequence[str], layout: Layout, *, clear_empty: bool) -> dict[str, str]:
    """The SCM fields a row sets: empty cells are left out, or sent as "" when clear_empty."""
    if clear_empty:
        return {field: cells[i] for i, field in layout.fields}
    return {field: cells[i] for i, field in layout.fields if cells[i]}


def cell_problem(cells: Sequence[str], layout: Layout) -> str | None:
    """Why a row's data cells cannot be sent (an error cell, extra cells), or None."""
    for i, field in layout.fields:
        if isinstance(cells[i], CellError):
            return f"column {layout.headers[i]!r} ({field}) is an error cell ({cells[i]})"
    if len(cells) > len(layout.headers):
        extra = [c for c in cells[len(layout.headers) :] if c]
        if extra:
            return f"the row has {len(extra)} more cells than the header has columns"
    return None


def _digest(names: Sequence[str], values: Sequence[str]) -> str:
    # JSON of [names, values]: unambiguous for any text, and encoded in C.
    return hashlib.blake2b(_HASH_JSON.encode([names, values]).encode(), digest_size=16).hexdigest()


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
