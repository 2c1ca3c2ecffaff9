"""Intake: hash a settled file, read it, and record every row in the ledger before anything is uploaded."""

import hashlib
import os
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import structlog

from daemon.config import Settings
from daemon.config.routes import settings_for
from daemon.dates import DateSettings
from daemon.ledger import FileLayout, Ledger
from daemon.ledger.rows import RowRecord
from daemon.names import fit_name, free_path
from daemon.normalize import (
    KeyShapes,
    Layout,
    LayoutError,
    cell_problem,
    cell_reference,
    date_columns,
    fix_dates,
    json_encoder,
    key_problem,
    lost_zeros_problem,
    map_headers,
    row_hasher,
)
from daemon.readers import Imprecise, Table, UnreadableFile, open_table
from daemon.reporter import unescape
from daemon.states import OPEN_FILE_STATES, FileState, Outcome, RowStatus
from daemon.steps import Inline, Offload, Steps, offloaded, run_through

log = structlog.get_logger(__name__)
T = TypeVar("T")

HASH_CHUNK = 1 << 20
HASH_STEP = 8 << 20  # bytes hashed in one step of the loop
STEP_ROWS = 2_000  # rows parsed and recorded in one step of the loop (a transaction each)
TEXT_FORMATS = frozenset({"csv", "tsv", "txt"})
PROBLEM_COLUMNS_KEPT = 1000
_CELLS_JSON = json_encoder()  # the ledger's cells column: json.dumps of the row's cells


def fingerprint_steps(path: Path) -> Steps[tuple[str, int, int]]:
    """The file's SHA-256, size and mtime (ns), a few megabytes per step (each worth a row per 200 bytes)."""
    before = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        read = 0
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            read += len(chunk)
            if read >= HASH_STEP:
                yield read // 200
                read = 0
    return digest.hexdigest(), before.st_size, before.st_mtime_ns


def _row_records(
    table: Table,
    layout: Layout,
    data_key: str,
    clear_empty: bool,
    *,
    dates: DateSettings,
    dates_rewritten: dict[str, int],
    shapes: KeyShapes | None = None,
    number_width: int = 0,
    problem_columns: dict[int, int] | None = None,
) -> Iterator[RowRecord]:
    """Ledger records of a table's rows: valid ones pending, the others rejected with a detail naming the cell.

    Workbook keys are noted in `shapes`; keys stored as numbers with fewer digits than `number_width` are
    rejected (see KeyShapes). The first rejected rows' column indexes go to `problem_columns` (line -> index).
    Date cells (see `dates`) are written as YYYY-MM-DD; `dates_rewritten` counts the rewrites per field.
    The report's formula escape is undone only in a rejected file this daemon wrote (Layout.written_by_daemon).
    """
    # The hot loop of a million-row intake: checks that cannot apply to a row are not made for it.
    key_index = layout.key_index
    width = len(layout.headers)
    typed_cells = table.info.format not in TEXT_FORMATS  # only workbooks have numbers and dates
    offset = table.info.column_offset
    dumps = _CELLS_JSON
    digest = row_hasher(layout, clear_empty=clear_empty)
    see_key = shapes.see if shapes is not None else None
    ours = layout.written_by_daemon
    dated = date_columns(layout, dates)
    for line, raw in table.rows():
        joined = "".join(raw)
        cells = unescape(raw) if ours and "'" in joined else raw
        key = cells[key_index]
        problem = key_problem(key, data_key)
        column = key_index
        if typed_cells:
            if see_key is not None:
                see_key(key)
            if problem is None and number_width:
                problem = lost_zeros_problem(key, data_key, number_width)
        # An error cell's text starts with "#" (a CSV holds them as typed: #N/A): a cheap test for any of them.
        # A workbook number of more than 15 digits is Imprecise, in any column (the key's check is key_problem's).
        if problem is None and (len(cells) > width or "#" in joined or (typed_cells and Imprecise in map(type, cells))):
            found = cell_problem(cells, layout)
            if found is not None:
                column, problem = found
        if problem is None and dated:
            found = fix_dates(cells, dated, layout, dates, dates_rewritten)
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


PROCESSING = ".processing"  # inbox/.processing/<id>-<name>: files claimed by the service, out of the inbox's way


class Vanished(Exception):
    """The file disappeared before or while it was read: its claim is released, nothing is reported."""


def processing_folder(inbox: Path) -> Path:
    """Where claimed files wait while they are processed: hidden, inside the inbox, so a rename is atomic."""
    return inbox / PROCESSING


def take(
    path: Path,
    ledger: Ledger,
    settings: Settings,
    *,
    name: str | None = None,
    problem_columns: dict[int, int] | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> int | None:
    """Record a file where it lies and read all its rows; returns its ledger id, or None if it changed meanwhile.

    `validate` and the benchmarks use this; the service claims a file first (`claim`) and then `read`s it.
    `name` is the file's path relative to the inbox, which picks its route (default: its bare name).
    `problem_columns`, when given, receives the column index of the first rejected rows (validate shows them);
    `on_rows` is told how many rows were read so far, every thousand rows (validate's progress bar).
    """
    name = name or path.name
    upload = settings_for(settings, name).upload
    size = path.stat().st_size
    file_id = ledger.add_file(
        sha256="", name=name, path=str(path), size=size, data_key=upload.data_key, mode=upload.mode
    )
    return read(file_id, path, ledger, settings, problem_columns=problem_columns, on_rows=on_rows)


def claim(path: Path, ledger: Ledger, settings: Settings) -> tuple[int, Path]:
    """Take a settled file out of the inbox by renaming it into the processing folder, recorded first.

    The record (state `received`, with the claimed path) is committed before the rename: a crash in between
    leaves a record whose claimed path does not exist, which recovery drops (the file is still in the inbox).
    Once renamed, a new file dropped under the same name is simply a new file. Raises Vanished if the file is
    gone, OSError if it cannot be renamed (the record is dropped again in both cases). A file in a subfolder is
    recorded under its path relative to the inbox (`LineA/x.csv`), which picks its route's settings.
    """
    inbox = settings.paths.inbox
    folder = processing_folder(inbox)
    folder.mkdir(exist_ok=True)
    name = path.relative_to(inbox).as_posix()
    upload = settings_for(settings, name).upload
    size = path.stat().st_size
    file_id = ledger.add_file(
        sha256="",
        name=name,
        path="",
        size=size,
        data_key=upload.data_key,
        mode=upload.mode,
        path_for=lambda new_id: str(folder / claimed_name(new_id, path.name)),
    )
    claimed = Path(ledger.file(file_id).path)
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        ledger.forget_file(file_id)
        raise Vanished(f"{name} vanished before it could be claimed") from None
    except OSError:
        ledger.forget_file(file_id)
        raise
    return file_id, claimed


def claimed_name(file_id: int, name: str) -> str:
    """The name of a claimed file in the processing folder, within the file system's 255-byte limit."""
    return fit_name(f"{file_id}-", name, "")


def read(
    file_id: int,
    path: Path,
    ledger: Ledger,
    settings: Settings,
    *,
    problem_columns: dict[int, int] | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> int | None:
    """Read a recorded file and record every row; returns its id, or None if it changed while it was read.

    Raises Vanished (after dropping the record) when the file disappears meanwhile. The file is read with its
    route's settings (its ledger name is its path in the inbox). All at once: the service takes `reading` in steps.
    """
    return run_through(reading(file_id, path, ledger, settings, problem_columns=problem_columns, on_rows=on_rows))


def reading(
    file_id: int,
    path: Path,
    ledger: Ledger,
    settings: Settings,
    *,
    problem_columns: dict[int, int] | None = None,
    on_rows: Callable[[int], None] | None = None,
    offload: Offload | None = None,
) -> Steps[int | None]:
    """read() as steps of a few thousand rows, each recorded in its own transaction (see daemon.steps).

    The file stays `received` until its last row is recorded and its repeats are resolved: a crash in between
    leaves rows that recovery drops before the file is read again from the start. `offload` runs the search for
    repeats (a pass over every row of the file) off the loop's thread.
    """
    name = ledger.file(file_id).name
    settings = settings_for(settings, name)
    try:
        sha256, size, mtime_ns = yield from fingerprint_steps(path)
    except FileNotFoundError:
        ledger.forget_file(file_id)
        raise Vanished(f"{name} vanished while it was read") from None
    ledger.set_file(file_id, sha256=sha256, size=size)
    upload = settings.upload
    bound = log.bind(file=name, file_id=file_id, sha256=sha256[:12])
    if size == 0:
        return _refuse(ledger, file_id, path, "empty file: it has no bytes at all", bound)
    if _duplicate(ledger, file_id, sha256, bound):
        return file_id

    sheet = settings.intake.sheet or None
    clear_empty = upload.empty_cells == "clear"
    dates = upload.dates(settings.intake.date_order)
    rewritten: dict[str, int] = {}
    try:
        with open_table(path, sheet=sheet, limits=settings.intake.limits()) as table:
            layout = map_headers(
                table.headers,
                data_key=upload.data_key,
                columns=settings.columns,
                fields=upload.fields,
                strict_fields=upload.strict_fields,
            )
            info = FileLayout.of(table.info, layout, clear_empty=clear_empty)
            ledger.set_file(file_id, layout=info)
            shapes = KeyShapes() if table.info.format not in TEXT_FORMATS else None

            def rows(table: Table, **check: Any) -> Iterator[RowRecord]:
                """The table's rows as ledger records; `check` is the key-shape pass (shapes or number_width)."""
                records = _row_records(
                    table,
                    layout,
                    upload.data_key,
                    clear_empty,
                    dates=dates,
                    dates_rewritten=rewritten,
                    problem_columns=problem_columns,
                    **check,
                )
                return _counted(records, on_rows)

            count = yield from _record(ledger, file_id, rows(table, shapes=shapes))
        if shapes is not None and shapes.numbers_lost_zeros():
            # Only the whole key column shows the codes' width: read the workbook again, now rejecting the
            # number keys that are too short. Rare (a column mixing text and number keys), so a second pass
            # costs less than holding rows back.
            bound.info("number_keys_lost_zeros", width=shapes.width)
            ledger.discard_rows(file_id)
            if problem_columns is not None:
                problem_columns.clear()
            rewritten.clear()
            with open_table(path, sheet=sheet, limits=settings.intake.limits()) as table:
                count = yield from _record(ledger, file_id, rows(table, number_width=shapes.width))
        _note_dates(ledger, file_id, info, rewritten, bound)
        after = path.stat()
    except FileNotFoundError:
        ledger.forget_file(file_id)
        raise Vanished(f"{name} vanished while it was read") from None
    except (UnreadableFile, LayoutError, UnicodeDecodeError, OSError) as exc:
        return _refuse(ledger, file_id, path, str(exc), bound)

    if (after.st_size, after.st_mtime_ns) != (size, mtime_ns):
        bound.warning("file_changed_while_read", action="taken again once it settles")
        ledger.forget_file(file_id)
        return None
    if count == 0:
        return _refuse(ledger, file_id, path, "the file has a header but no data rows", bound)

    repeats = yield from offloaded(offload or Inline(), lambda: ledger.in_file_repeats(file_id), count)
    skipped, rejected = ledger.resolve_repeats(file_id, repeats)
    ledger.transition_file(file_id, FileState.ACTIVE)
    bound.info("file_recorded", rows=count, repeats_skipped=skipped, conflicts_rejected=rejected)
    return file_id


def _record(ledger: Ledger, file_id: int, records: Iterator[RowRecord]) -> Steps[int]:
    """Record rows STEP_ROWS at a time, a step (and a transaction) each; returns the count."""
    count = 0
    while chunk := list(islice(records, STEP_ROWS)):
        ledger.insert_rows(file_id, iter(chunk))
        count += len(chunk)
        yield len(chunk)
    ledger.rows_loaded(count)  # fresh statistics for the plans of its batches (PostgreSQL)
    return count


def _counted(records: Iterator[T], on_rows: Callable[[int], None] | None, every: int = 1000) -> Iterator[T]:
    """The records as they are, telling `on_rows` how many went by, every `every` rows and at the end."""
    if on_rows is None:
        return records

    def counting() -> Iterator[T]:
        n = 0
        for n, record in enumerate(records, 1):
            if n % every == 0:
                on_rows(n)
            yield record
        on_rows(n)

    return counting()


def _duplicate(ledger: Ledger, file_id: int, sha256: str, bound: structlog.typing.FilteringBoundLogger) -> bool:
    """Whether the same content was processed before (in any folder): then the file is a duplicate, reported so."""
    earlier = ledger.processed(sha256, other_than=file_id)
    if earlier is None:
        return False
    bound.info("file_duplicate", same_as=earlier.name)
    ledger.transition_file(
        file_id,
        FileState.REPORTING,
        outcome=Outcome.DUPLICATE,
        error=f"the same content was received before as {earlier.name!r} at {earlier.received_at}",
    )
    return True


def _note_dates(
    ledger: Ledger,
    file_id: int,
    info: FileLayout,
    rewritten: dict[str, int],
    bound: structlog.typing.FilteringBoundLogger,
) -> None:
    """Record in the file's layout (for summary.json and validate) how many date cells were rewritten."""
    if rewritten:
        bound.info("dates_rewritten", fields=rewritten)
        ledger.set_file(file_id, layout=info.with_dates_rewritten(rewritten))


def _refuse(ledger: Ledger, file_id: int, path: Path, reason: str, bound: structlog.typing.FilteringBoundLogger) -> int:
    bound.warning("file_unreadable", reason=reason)
    ledger.discard_rows(file_id)
    # The reason names the file already where it matters; summary.json carries the name as `source`.
    ledger.transition_file(file_id, FileState.REPORTING, outcome=Outcome.FAILED, error=reason)
    return file_id


def resume_claims(ledger: Ledger) -> list[tuple[int, Path]]:
    """Files a crash caught mid-intake: those whose claimed copy exists are read again from the start (returned);
    records whose rename never happened are dropped (the file is still in the inbox, the next scan takes it)."""
    again: list[tuple[int, Path]] = []
    for f in ledger.files([FileState.RECEIVED]):
        claimed = Path(f.path)
        if claimed.parent.name == PROCESSING and claimed.is_file():
            ledger.discard_rows(f.id)
            again.append((f.id, claimed))
            log.info("intake_restarted", file=f.name, file_id=f.id)
        else:
            ledger.forget_file(f.id)
            log.info("intake_dropped", file=f.name, file_id=f.id, note="never claimed; taken again from the inbox")
    return again


def return_orphans(inbox: Path, ledger: Ledger) -> int:
    """Move files in the processing folder that no open ledger record names back into the inbox."""
    folder = processing_folder(inbox)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    known = {f.path for f in ledger.files(OPEN_FILE_STATES)}
    returned = 0
    for entry in entries:
        if entry.path in known or not entry.is_file(follow_symlinks=False):
            continue
        original = entry.name.split("-", 1)[1] if "-" in entry.name else entry.name
        target = free_path(inbox, original)
        os.rename(entry.path, target)
        log.warning("claim_orphan_returned", file=original, moved_to=str(target))
        returned += 1
    return returned


def put_back(claimed: Path, inbox: Path, name: str) -> Path:
    """Move a claimed file back to its place in the inbox (it changed while read), under its name if that is free.

    `name` is its path relative to the inbox: a file from a subfolder goes back there (made again if removed).
    """
    relative = PurePosixPath(name)
    folder = inbox.joinpath(*relative.parent.parts)
    folder.mkdir(parents=True, exist_ok=True)
    target = free_path(folder, relative.name)
    os.rename(claimed, target)
    return target
