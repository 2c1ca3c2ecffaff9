"""The state machines of files, rows and batches: every state and every allowed transition, written down once."""

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

S = TypeVar("S", bound=StrEnum)


class FileState(StrEnum):
    RECEIVED = "received"  # claimed and hashed; its rows are being recorded (a crash here re-reads the file)
    ACTIVE = "active"  # every row recorded; rows are being planned, uploaded and confirmed
    REPORTING = "reporting"  # every row is final (or the file is a duplicate/unreadable); reports are being written
    DONE = "done"  # reports written and the input moved to archive/ or failed/


class Outcome(StrEnum):
    """A file's status as its summary.json reports it."""

    COMPLETED = "completed"  # every row uploaded, not affected or skipped
    COMPLETED_WITH_ERRORS = "completed_with_errors"  # some rows rejected or failed
    FAILED = "failed"  # the file could not be read at all
    DUPLICATE = "duplicate"  # the same bytes were processed before


class RowStatus(StrEnum):
    PENDING = "pending"  # recorded, waiting to be planned into a batch
    QUEUED = "queued"  # in a batch that has not reached a final state
    UPLOADED = "uploaded"  # Scantrust confirmed the change
    NOT_AFFECTED = "not_affected"  # the API answered but did not list the code: unknown code or values already set
    SKIPPED = "skipped"  # the same data for the same code was already uploaded, earlier or in this file
    REJECTED = "rejected"  # invalid row, conflicting values in one file, or refused by the API
    FAILED = "failed"  # transient errors outlasted the retries


class BatchState(StrEnum):
    QUEUED = "queued"  # waiting for its next attempt (next_attempt_at)
    SENDING = "sending"  # a request is (or may be) in flight; committed before the request goes out
    SUBMITTED = "submitted"  # an async job exists (its task id is stored): polled until final, never sent again
    DONE = "done"  # the API answered and every row of the batch has its outcome
    FAILED = "failed"  # given up; its rows are failed or rejected
    SPLIT = "split"  # refused or timing out: its rows went into smaller batches (or were rejected one by one)


ERROR_ROW_STATUSES = frozenset({RowStatus.REJECTED, RowStatus.FAILED})
OPEN_FILE_STATES = (FileState.RECEIVED, FileState.ACTIVE, FileState.REPORTING)  # not finished: work, and a claim
OPEN_ROW_STATUSES = frozenset({RowStatus.PENDING, RowStatus.QUEUED})  # waiting for an outcome (the rows_open index)
OPEN_BATCH_STATES = frozenset({BatchState.QUEUED, BatchState.SENDING, BatchState.SUBMITTED})  # not final yet

FILE_TRANSITIONS: dict[FileState, frozenset[FileState]] = {
    FileState.RECEIVED: frozenset({FileState.ACTIVE, FileState.REPORTING}),
    FileState.ACTIVE: frozenset({FileState.REPORTING}),
    FileState.REPORTING: frozenset({FileState.DONE}),
    FileState.DONE: frozenset({FileState.ACTIVE}),  # `scm-daemon retry`: failed rows go back to the queue
}

ROW_TRANSITIONS: dict[RowStatus, frozenset[RowStatus]] = {
    RowStatus.PENDING: frozenset({RowStatus.QUEUED, RowStatus.SKIPPED, RowStatus.REJECTED}),
    RowStatus.QUEUED: frozenset(
        {RowStatus.UPLOADED, RowStatus.NOT_AFFECTED, RowStatus.REJECTED, RowStatus.FAILED, RowStatus.PENDING}
    ),
    RowStatus.FAILED: frozenset({RowStatus.PENDING}),  # `scm-daemon retry`
    RowStatus.UPLOADED: frozenset(),
    RowStatus.NOT_AFFECTED: frozenset(),
    RowStatus.SKIPPED: frozenset(),
    RowStatus.REJECTED: frozenset(),
}

BATCH_TRANSITIONS: dict[BatchState, frozenset[BatchState]] = {
    BatchState.QUEUED: frozenset({BatchState.SENDING, BatchState.FAILED}),
    # SENDING -> QUEUED: a transient error (retry later) or a crash while the request was in flight.
    BatchState.SENDING: frozenset(
        {BatchState.QUEUED, BatchState.SUBMITTED, BatchState.DONE, BatchState.FAILED, BatchState.SPLIT}
    ),
    BatchState.SUBMITTED: frozenset({BatchState.DONE, BatchState.FAILED}),
    BatchState.DONE: frozenset(),
    BatchState.FAILED: frozenset(),
    BatchState.SPLIT: frozenset(),
}


def sources(table: Mapping[S, frozenset[S]], target: S) -> list[str]:
    """The states from which `target` may be entered, as plain strings for a guarded UPDATE."""
    return sorted(str(s) for s, allowed in table.items() if target in allowed)
