"""Pure planning: which pending rows are skipped, and how the rest are cut into API batches."""

from collections.abc import Sequence
from dataclasses import dataclass, field

from daemon.ledger import PlanRow

ALREADY_UPLOADED = "the same data was already uploaded for this code"


@dataclass(frozen=True)
class PlannedBatch:
    """Rows (by spreadsheet line) that go out in one API call."""

    kind: str  # sync | async
    lines: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """What to do with a set of pending rows."""

    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, detail)
    batches: list[PlannedBatch] = field(default_factory=list)

    @property
    def api_calls(self) -> int:
        """The calls this plan needs when nothing fails."""
        return len(self.batches)


def plan(rows: Sequence[PlanRow], *, sync_batch_size: int) -> Plan:
    """Skip rows whose code already holds the same data; cut the rest, in row order, into sync batches."""
    if not 1 <= sync_batch_size <= 100:
        raise ValueError(f"sync_batch_size must be 1..100, got {sync_batch_size}")
    skipped = [(r.line, ALREADY_UPLOADED) for r in rows if r.uploaded_hash == r.data_hash]
    todo = [r.line for r in rows if r.uploaded_hash != r.data_hash]
    batches = [PlannedBatch("sync", tuple(todo[i : i + sync_batch_size])) for i in range(0, len(todo), sync_batch_size)]
    return Plan(skipped, batches)
