"""Intake: hash a settled file, read it, and record every row in the ledger before anything is uploaded."""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import structlog

from daemon.config import Settings
from daemon.ledger import Ledger
from daemon.normalize import (
    KeyShapes,
    Layout,
    LayoutError,
    cell_problem,
    cell_reference,
    json_encoder,
    key_problem,
    lost_zeros_problem,
    map_headers,
    row_hasher,
)
from daemon.readers import Table, UnreadableFile, open_table
from daemon.states import FileState, Outcome, RowStatus

log = structlog.get_logger(__name__)

HASH_CHUNK = 1 << 20
ESCAPED = frozenset("=+-@")  # report CSVs prefix cells starting with these with "'"; reading them back undoes it
TEXT_FORMATS = frozenset({"csv", "tsv", "txt"})
PROBLEM_COLUMNS_KEPT = 1000
_CELLS_JSON = json_encoder()  # the ledger's cells column: json.dumps of the row's cells


def fingerprint(path: Path) -> tuple[str, int, int]:
    """The file's SHA-256, size and mtime (ns), read in chunks."""
    before = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest(), before.st_size, before.st_mtime_ns


def unescape(cells: list[str]) -> list[str]:
    """Undo the Excel-safety escape of our own report CSVs, so a corrected rejected.csv reads back as it was."""
    for i, cell in enumerate(cells):
        if len(cell) > 1 and cell[0] == "'" and cell[1] in ESCAPED:
            cells[i] = type(cell)(cell[1:])
    return cells


def _row_records(
    table: Table,
    layout: Layout,
    data_key: str,
    clear_empty: bool,
    *,
    shapes: KeyShapes | None = None,
    number_width: int = 0,
    problem_columns: dict[int, int] | None = None,
) -> Iterator[tuple[int, str | None, str | None, str, str, str]]:
    """Ledger records of a table's rows: valid ones pending, the others rejected with a detail naming the cell.

    Workbook keys are noted in `shapes`; keys stored as numbers with fewer digits than `number_width` are
    rejected (see KeyShapes). The first rejected rows' column indexes go to `problem_columns` (line -> index).
    """
    # The hot loop of a million-row intake: checks that cannot apply to a row are not made for it.
    key_index = layout.key_index
    width = len(layout.headers)
    typed_cells = table.info.format not in TEXT_FORMATS  # only workbooks have numbers and dates
    offset = table.info.column_offset
    dumps = _CELLS_JSON
    digest = row_hasher(layout, clear_empty=clear_empty)
    see_key = shapes.see if shapes is not None else None
    for line, raw in table.rows():
        joined = "".join(raw)
        cells = unescape(raw) if "'" in joined else raw
        key = cells[key_index]
        problem = key_problem(key, data_key)
        column = key_index
        if typed_cells:
            if see_key is not None:
                see_key(key)
            if problem is None and number_width:
                problem = lost_zeros_problem(key, data_key, number_width)
        # An error cell's text starts with "#" (a CSV holds them as typed: #N/A): a cheap test for any of them.
        if problem is None and (len(cells) > width or "#" in joined):
            found = cell_problem(cells, layout)
            if found is not None:
                column, problem = found
        if problem:
            if problem_columns is not None and len(problem_columns) < PROBLEM_COLUMNS_KEPT:
                problem_columns[line] = column
            # A missing key needs no cell name; anything else names the cell holding the wrong value.
            detail = problem if not key else f"cell {cell_reference(offset + column, line)}: {problem}"
            yield line, str(key) or None, None, dumps(cells), RowStatus.REJECTED, detail
            continue
        hashed = digest(cells)
        if hashed is None:
            detail = "nothing to upload: every field of the row is empty (upload.empty_cells = skip)"
            yield line, str(key), None, dumps(cells), RowStatus.REJECTED, detail
            continue
        yield line, str(key), hashed, dumps(cells), RowStatus.PENDING, ""


def take(
    path: Path, ledger: Ledger, settings: Settings, *, problem_columns: dict[int, int] | None = None
) -> int | None:
    """Claim a settled file: record it and all its rows; returns its ledger id, or None if it changed meanwhile.

    `problem_columns`, when given, receives the column index of the first rejected rows (validate shows them).
    """
    sha256, size, mtime_ns = fingerprint(path)
    upload = settings.upload
    file_id = ledger.add_file(
        sha256=sha256, name=path.name, path=str(path), size=size, data_key=upload.data_key, mode=upload.mode
    )
    bound = log.bind(file=path.name, file_id=file_id, sha256=sha256[:12])
    earlier = ledger.processed(sha256, other_than=file_id)
    if earlier is not None:
        bound.info("file_duplicate", same_as=earlier.name)
        ledger.transition_file(
            file_id,
            FileState.REPORTING,
            outcome=Outcome.DUPLICATE,
            error=f"the same content was received before as {earlier.name!r} at {earlier.received_at}",
        )
        return file_id

    sheet = settings.intake.sheet or None
    clear_empty = upload.empty_cells == "clear"
    try:
        with open_table(path, sheet=sheet) as table:
            layout = map_headers(
                table.headers,
                data_key=upload.data_key,
                columns=settings.columns,
                fields=upload.fields,
                strict_fields=upload.strict_fields,
            )
            info = {**asdict(table.info), **layout.to_record(), "clear_empty": clear_empty}
            ledger.set_file(file_id, layout=json.dumps(info))
            shapes = KeyShapes() if table.info.format not in TEXT_FORMATS else None
            records = _row_records(
                table, layout, upload.data_key, clear_empty, shapes=shapes, problem_columns=problem_columns
            )
            count = ledger.insert_rows(file_id, records)
        if shapes is not None and shapes.numbers_lost_zeros():
            # Only the whole key column shows the codes' width: read the workbook again, now rejecting the
            # number keys that are too short. Rare (a column mixing text and number keys), so a second pass
            # costs less than holding rows back.
            bound.info("number_keys_lost_zeros", width=shapes.width)
            ledger.discard_rows(file_id)
            if problem_columns is not None:
                problem_columns.clear()
            with open_table(path, sheet=sheet) as table:
                records = _row_records(
                    table,
                    layout,
                    upload.data_key,
                    clear_empty,
                    number_width=shapes.width,
                    problem_columns=problem_columns,
                )
                count = ledger.insert_rows(file_id, records)
    except (UnreadableFile, LayoutError, UnicodeDecodeError, OSError) as exc:
        return _refuse(ledger, file_id, path, str(exc), bound)

    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (size, mtime_ns):
        bound.warning("file_changed_while_read", action="taken again once it settles")
        ledger.forget_file(file_id)
        return None
    if count == 0:
        return _refuse(ledger, file_id, path, "the file has a header but no data rows", bound)

    skipped, rejected = ledger.resolve_in_file_duplicates(file_id)
    ledger.transition_file(file_id, FileState.ACTIVE)
    bound.info("file_recorded", rows=count, repeats_skipped=skipped, conflicts_rejected=rejected)
    return file_id


def _refuse(ledger: Ledger, file_id: int, path: Path, reason: str, bound: structlog.typing.FilteringBoundLogger) -> int:
    bound.warning("file_unreadable", reason=reason)
    ledger.discard_rows(file_id)
    # The reason names the file already where it matters; summary.json carries the name as `source`.
    ledger.transition_file(file_id, FileState.REPORTING, outcome=Outcome.FAILED, error=reason)
    return file_id


def discard_partial(ledger: Ledger) -> int:
    """Forget files caught mid-intake by a crash; the next scan takes them again from the inbox."""
    stale = ledger.files([FileState.RECEIVED])
    for f in stale:
        ledger.forget_file(f.id)
        log.info("intake_restarted", file=f.name, file_id=f.id)
    return len(stale)
