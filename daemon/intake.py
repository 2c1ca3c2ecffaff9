"""Intake: hash a settled file, read it, and record every row in the ledger before anything is uploaded."""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import structlog

from daemon.config import Settings
from daemon.ledger import Ledger
from daemon.normalize import Layout, LayoutError, cell_problem, key_problem, map_headers, row_hasher
from daemon.readers import Table, UnreadableFile, open_table
from daemon.states import FileState, Outcome, RowStatus

log = structlog.get_logger(__name__)

HASH_CHUNK = 1 << 20
ESCAPED = frozenset("=+-@")
TEXT_FORMATS = frozenset({"csv", "tsv", "txt"})
_CELLS_JSON = json.JSONEncoder(
    ensure_ascii=False, check_circular=False
)  # report CSVs prefix cells starting with these with "'"; reading them back undoes it


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
    table: Table, layout: Layout, data_key: str, clear_empty: bool
) -> Iterator[tuple[int, str | None, str | None, str, str, str]]:
    # The hot loop of a million-row intake: checks that cannot apply to a row are not made for it.
    key_index = layout.key_index
    width = len(layout.headers)
    typed_cells = table.info.format not in TEXT_FORMATS  # only spreadsheets have error cells
    dumps = _CELLS_JSON.encode
    digest = row_hasher(layout, clear_empty=clear_empty)
    for line, raw in table.rows():
        cells = unescape(raw) if "'" in "".join(raw) else raw
        key = cells[key_index]
        problem = key_problem(key, data_key)
        if problem is None and (typed_cells or len(cells) > width):
            problem = cell_problem(cells, layout)
        if problem:
            yield line, str(key) or None, None, dumps(cells), RowStatus.REJECTED, problem
            continue
        hashed = digest(cells)
        if hashed is None:
            detail = "nothing to upload: every field of the row is empty (upload.empty_cells = skip)"
            yield line, str(key), None, dumps(cells), RowStatus.REJECTED, detail
            continue
        yield line, str(key), hashed, dumps(cells), RowStatus.PENDING, ""


def take(path: Path, ledger: Ledger, settings: Settings) -> int | None:
    """Claim a settled file: record it and all its rows; returns its ledger id, or None if it changed meanwhile."""
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

    try:
        with open_table(path, sheet=settings.intake.sheet or None) as table:
            layout = map_headers(
                table.headers,
                data_key=upload.data_key,
                columns=settings.columns,
                fields=upload.fields,
                strict_fields=upload.strict_fields,
            )
            clear_empty = upload.empty_cells == "clear"
            info = {**asdict(table.info), **layout.to_record(), "clear_empty": clear_empty}
            ledger.set_file(file_id, layout=json.dumps(info))
            count = ledger.insert_rows(file_id, _row_records(table, layout, upload.data_key, clear_empty))
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
    ledger.transition_file(file_id, FileState.REPORTING, outcome=Outcome.FAILED, error=f"{path.name}: {reason}")
    return file_id


def discard_partial(ledger: Ledger) -> int:
    """Forget files caught mid-intake by a crash; the next scan takes them again from the inbox."""
    stale = ledger.files([FileState.RECEIVED])
    for f in stale:
        ledger.forget_file(f.id)
        log.info("intake_restarted", file=f.name, file_id=f.id)
    return len(stale)
